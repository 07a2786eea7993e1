"""Kinetics (400/600/700) as the common download scripts leave it (``dataset.name='kinetics'``).

Layout under ``dataset.data_dir``::

    annotations/train.csv, annotations/validate.csv     label,youtube_id,time_start,time_end,split[,is_cc]
    train/<label>/<youtube_id>_<time_start:06d>_<time_end:06d>.mp4
    val/<label>/...                                       (or validate/<label>/...)

Classes are the labels of ``train.csv``, sorted. A label folder may also be spelled with
underscores for spaces, in another case, or without parentheses and quotes (what renaming scripts
do), and a clip in another container (``.mkv``, ``.webm``) is found too. A share of the listed clips
is always missing (videos taken off YouTube): they are dropped and counted in one line per subset.
"""

from __future__ import annotations

import os
import re

import ml_collections

from semicnn_jax.data import index

ANNOTATIONS = "annotations"
SUBSETS = {"train": ("train.csv", ("train",)), "val": ("validate.csv", ("val", "validate"))}
COLUMNS = ("label", "youtube_id", "time_start", "time_end")
FIELDS = {"data_dir": ""}  # the dataset.* fields this reader uses


def folder_key(label: str) -> str:
    """A label folder's name as renaming scripts may have left it: no case, spaces = underscores, no ()'\"."""
    return re.sub(r"[()'\"]", "", label).replace(" ", "_").casefold()


def clip_name(youtube_id: str, start: str, end: str, where: str) -> str:
    try:
        return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"
    except ValueError:
        raise ValueError(f"{where}: time_start and time_end must be numbers, got {start!r}, {end!r}") from None


def _subset_folder(data_dir: str, names: tuple[str, ...]) -> str:
    for name in names:
        if os.path.isdir(os.path.join(data_dir, name)):
            return name
    raise ValueError(
        f"{os.path.join(data_dir, names[0])}: the clip folder is missing (dataset.data_dir must hold "
        f"{ANNOTATIONS}/train.csv, {ANNOTATIONS}/validate.csv, train/<label>/ and val/<label>/)"
    )


def _clips(files: index.Files, folder: str) -> dict[str, dict[str, str]]:
    """``{label folder key: {clip stem: relative path}}`` of the videos under ``data_dir/folder``."""
    out: dict[str, dict[str, str]] = {}
    for name in index.subfolders(os.path.join(files.root, folder)):
        listing = files.listing(f"{folder}/{name}")
        stems = out.setdefault(folder_key(name), {})
        for file, is_dir in sorted(listing[0].items()) if listing else ():
            if not is_dir and index.is_video(file):
                stems.setdefault(os.path.splitext(file)[0], f"{folder}/{name}/{file}")
    return out


def read_index(ds: ml_collections.ConfigDict) -> index.VideoIndex:
    if not ds.data_dir:
        raise ValueError("dataset.data_dir is empty: set it to the folder holding annotations/, train/ and val/")
    rows = {
        s: index.read_csv(os.path.join(ds.data_dir, ANNOTATIONS, csv_name), f"the Kinetics {s} annotations", COLUMNS)
        for s, (csv_name, _) in SUBSETS.items()
    }
    names = tuple(sorted({row["label"] for _, row in rows["train"]}))
    if not names:
        raise ValueError(f"{os.path.join(ds.data_dir, ANNOTATIONS, 'train.csv')}: no clips listed")
    labels = {name: i for i, name in enumerate(names)}
    files = index.Files(ds.data_dir, case_insensitive=False)
    videos = {}
    for subset, (_, folders) in SUBSETS.items():
        folder = _subset_folder(ds.data_dir, folders)
        clips = _clips(files, folder)
        out = []
        for where, row in rows[subset]:
            if row["label"] not in labels:
                raise ValueError(f"{where}: unknown label {row['label']!r} (not a label of train.csv)")
            stem = clip_name(row["youtube_id"], row["time_start"], row["time_end"], where)
            rel = clips.get(folder_key(row["label"]), {}).get(stem)
            out.append(
                index.Video(rel or f"{folder}/{row['label']}/{stem}.mp4", labels[row["label"]], rel is not None, where)
            )
        videos[subset] = tuple(out)
    index.check_duplicates(videos["train"] + videos["val"])
    return index.VideoIndex("kinetics", names, ds.data_dir, videos["train"], videos["val"], drop_missing=True)
