"""Tiny generated trees of every file dataset layout (8-frame 32x24 videos), with the traps users meet.

Each ``make_*`` writes a tree under ``root`` and returns what a correct reader must find, written
out by hand here (not computed by the code under test): class names in label order, and the
training and evaluation videos as ``{relative path: label}``.
"""

from __future__ import annotations

import os

import fake_ucf101

FRAMES, HEIGHT, WIDTH = 8, 24, 32
CODECS = {".webm": "libvpx"}  # the others: MPEG-4 part 2


def video(path: str, seed: int = 0, frames: int = FRAMES) -> str:
    """A tiny video at ``path`` (container from the extension, in any case)."""
    codec = CODECS.get(os.path.splitext(path)[1].lower(), "mpeg4")
    return fake_ucf101.write_video(path, fake_ucf101.frames_for(seed, frames, HEIGHT, WIDTH), codec=codec)


def text(path: str, content: str, encoding: str = "utf-8") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding=encoding, newline="") as f:
        f.write(content)
    return path


def _write(root: str, videos: dict[str, int]) -> None:
    for i, rel in enumerate(sorted(videos)):
        video(os.path.join(root, rel), seed=i)


# Class folders, split layout: spaces, non-ASCII, nesting, upper-case and varied containers; a text
# file and a macOS resource fork that must be ignored. Sorted by code point: "Dog walking" < "café" < "cat".
FOLDER_CLASSES = ("Dog walking", "café", "cat")
FOLDER_TRAIN = {
    "train/cat/a.mp4": 2,
    "train/cat/sub dir/b clip.MP4": 2,
    "train/cat/c.mkv": 2,
    "train/café/crème brûlée.avi": 1,
    "train/café/d.MOV": 1,
    "train/Dog walking/e.webm": 0,
    "train/Dog walking/deep/er/f.mp4": 0,
}
FOLDER_VAL = {"val/cat/g.mp4": 2, "val/café/h.avi": 1, "val/Dog walking/i i.mkv": 0}


def make_folder_split(root: str) -> dict:
    _write(root, {**FOLDER_TRAIN, **FOLDER_VAL})
    text(os.path.join(root, "train", "cat", "notes.txt"), "not a video\n")
    text(os.path.join(root, "train", "cat", "._a.mp4"), "AppleDouble resource fork\n")
    return {"classes": FOLDER_CLASSES, "train": FOLDER_TRAIN, "val": FOLDER_VAL}


# One class tree, split by a hash of the relative path.
TREE = {
    f"{c}/{n}": i
    for i, c in enumerate(("jump", "run"))
    for n in ("1.mp4", "2.avi", "3.mp4", "x/4.mp4", "5.MP4", "6.mkv")
}


def make_folder_tree(root: str) -> dict:
    _write(root, TREE)
    return {"classes": ("jump", "run"), "videos": TREE}


# List files: MMAction2's "path LABEL" (class names or indices, spaces in paths) and a CSV with a BOM
# and CRLF line ends. The class names file's order is not sorted: labels follow it.
LIST_CLASSES = ("wave", "brush_hair", "kick")
LIST_VIDEOS = {
    "clips/kick/k 1.mp4": 2,
    "clips/kick/k2.avi": 2,
    "clips/wave/w1.mp4": 0,
    "clips/brush hair/b1.mkv": 1,
    "clips/brush hair/b2.mp4": 1,
    "other/w2.MP4": 0,
    "other/k3.mp4": 2,
}
LIST_TRAIN = ("clips/kick/k 1.mp4", "clips/kick/k2.avi", "clips/wave/w1.mp4", "clips/brush hair/b1.mkv")
LIST_VAL = ("clips/brush hair/b2.mp4", "other/w2.MP4", "other/k3.mp4")


def make_lists(root: str) -> dict:
    _write(root, LIST_VIDEOS)
    text(os.path.join(root, "classes.txt"), "wave\nbrush_hair\nkick\n")
    # class names as labels, then an index; trailing spaces and a blank line
    text(
        os.path.join(root, "train.txt"),
        "clips/kick/k 1.mp4 kick\nclips/kick/k2.avi kick\n\nclips/wave/w1.mp4 wave   \nclips/brush hair/b1.mkv 1\n",
    )
    # the evaluation list as CSV: a BOM, CRLF line ends, a quoted path, an extra column, indices
    text(
        os.path.join(root, "val.csv"),
        '\ufeffpath,label,comment\r\n"clips/brush hair/b2.mp4",1,x\r\nother/w2.MP4,0,y\r\nother/k3.mp4,2,z\r\n',
    )
    return {
        "classes": LIST_CLASSES,
        "train": {p: LIST_VIDEOS[p] for p in LIST_TRAIN},
        "val": {p: LIST_VIDEOS[p] for p in LIST_VAL},
    }


# HMDB-51 release: two classes; split 1 tags 1 (train), 2 (test), 0 (unused); split 2 another way.
HMDB_CLASSES = ("brush_hair", "cartwheel")
HMDB_TAGS = {  # name -> (split 1, split 2, split 3)
    "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi": (1, 2, 1),
    "brush_hair/Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi": (2, 1, 1),
    "brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi": (0, 1, 2),
    "cartwheel/(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi": (1, 1, 2),
    "cartwheel/Bodenturnen_2004_cartwheel_f_cm_np1_le_med_0.avi": (2, 0, 1),
}


def make_hmdb51(root: str) -> dict:
    _write(os.path.join(root, "hmdb51_org"), HMDB_TAGS)
    for split in (1, 2, 3):
        for c in HMDB_CLASSES:
            lines = [
                f"{rel.split('/')[1]} {tags[split - 1]} \n" for rel, tags in HMDB_TAGS.items() if rel.startswith(c)
            ]
            text(os.path.join(root, "testTrainMulti_7030_splits", f"{c}_test_split{split}.txt"), "".join(lines))
    expected = {}
    for split in (1, 2, 3):
        expected[split] = {
            subset: {
                rel: HMDB_CLASSES.index(rel.split("/")[0]) for rel, tags in HMDB_TAGS.items() if tags[split - 1] == tag
            }
            for subset, tag in (("train", 1), ("val", 2))
        }
    return {"classes": HMDB_CLASSES, "splits": expected}


# Kinetics: annotations with a label that has spaces and parentheses, its folder renamed with
# underscores; one clip in .mkv; two listed clips never downloaded.
KINETICS_ROWS = {  # (label, youtube_id, start, end, subset) -> file written (None: missing)
    ("abseiling", "0347ZoDXyP0", 14, 24, "train"): "train/abseiling/0347ZoDXyP0_000014_000024.mp4",
    ("abseiling", "-3B32lodo2M", 59, 69, "train"): "train/abseiling/-3B32lodo2M_000059_000069.mp4",
    ("abseiling", "gone0000000", 0, 10, "train"): None,
    (
        "passing American football (in game)",
        "AWS9hWbTu1s",
        3,
        13,
        "train",
    ): "train/passing_American_football_in_game/AWS9hWbTu1s_000003_000013.mkv",
    (
        "passing American football (in game)",
        "5tIf-2XEF7k",
        120,
        130,
        "train",
    ): "train/passing_American_football_in_game/5tIf-2XEF7k_000120_000130.mp4",
    ("abseiling", "Q8lMjYrOXZI", 30, 40, "val"): "val/abseiling/Q8lMjYrOXZI_000030_000040.mp4",
    ("passing American football (in game)", "ZZ5PLk8gB9o", 1, 11, "val"): None,
    (
        "passing American football (in game)",
        "ng2KJaG_4XE",
        7,
        17,
        "val",
    ): "val/passing_American_football_in_game/ng2KJaG_4XE_000007_000017.mp4",
}
KINETICS_CLASSES = ("abseiling", "passing American football (in game)")


def kinetics_csv(rows) -> str:
    lines = ["label,youtube_id,time_start,time_end,split,is_cc"]
    for label, youtube_id, start, end, subset in rows:
        quoted = f'"{label}"' if " " in label else label
        lines.append(f"{quoted},{youtube_id},{start},{end},{subset},0")
    return "\n".join(lines) + "\n"


def make_kinetics(root: str) -> dict:
    _write(root, {f: 0 for f in KINETICS_ROWS.values() if f})
    for subset, name in (("train", "train.csv"), ("val", "validate.csv")):
        text(os.path.join(root, "annotations", name), kinetics_csv(k for k in KINETICS_ROWS if k[4] == subset))
    found = {
        subset: {f: KINETICS_CLASSES.index(k[0]) for k, f in KINETICS_ROWS.items() if f and k[4] == subset}
        for subset in ("train", "val")
    }
    return {"classes": KINETICS_CLASSES, **found, "missing": {"train": 1, "val": 1}}
