"""UCF-101 (official release): the split lists and labels as a video index (``dataset.name='ucf101'``).

Layout under ``dataset.data_dir``::

    UCF-101/<Class>/v_<Class>_gGG_cCC.avi
    ucfTrainTestlist/classInd.txt                 "1 ApplyEyeMakeup" (1-based)
    ucfTrainTestlist/trainlist0{1,2,3}.txt        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1"
    ucfTrainTestlist/testlist0{1,2,3}.txt         "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi"

Labels are 0-based inside. List entries are matched to files case-insensitively (the release's
``HandstandPushups`` folder holds ``v_HandStandPushups_*`` files while the lists say otherwise).
A list entry whose file is missing is an error before training starts, unless
``dataset.skip_missing`` is set: then it is skipped and named like an unreadable file. Loading,
sampling and evaluation: ``video_list``.
"""

from __future__ import annotations

import os

import ml_collections

from semicnn_jax.data import index

VIDEOS, LISTS = "UCF-101", "ucfTrainTestlist"
FIELDS = {"data_dir": "", "split": 1, "skip_missing": False}  # the dataset.* fields this reader uses
LAYOUT = (
    f"the official UCF-101 release ({VIDEOS}/<Class>/*.avi and {LISTS}/classInd.txt, trainlist0N.txt, testlist0N.txt)"
)


def list_file(data_dir: str, subset: str, split: int = 1) -> str:
    name = "classInd.txt" if subset == "classes" else f"{subset}list{split:02d}.txt"
    return os.path.join(data_dir, LISTS, name)


def _lines(path: str, what: str) -> list[tuple[str, list[str]]]:
    try:
        return [(where, text.split()) for where, text in index.read_lines(path, what)]
    except ValueError as e:
        raise ValueError(f"{e}; dataset.data_dir must hold {LAYOUT}") from None


def read_class_names(data_dir: str) -> tuple[str, ...]:
    """Class names in label order from classInd.txt (``"1 ApplyEyeMakeup"`` -> label 0)."""
    path = list_file(data_dir, "classes")
    names = {}
    for where, parts in _lines(path, "the class index"):
        if len(parts) != 2 or not parts[0].isdigit():
            raise ValueError(f"{where}: expected '<index> <ClassName>', got {' '.join(parts)!r}")
        names[int(parts[0])] = parts[1]
    if sorted(names) != list(range(1, len(names) + 1)):
        raise ValueError(f"{path}: class indices must run 1..{len(names)}, got {sorted(names)}")
    return tuple(names[i] for i in range(1, len(names) + 1))


def read_split(data_dir: str, split: int, subset: str, class_names: tuple[str, ...]) -> list[tuple[str, str, int]]:
    """``(path:line, relative path, 0-based label)`` of a split list; a train line's label must agree with
    its folder."""
    path = list_file(data_dir, subset, split)
    by_folder = {name.lower(): i for i, name in enumerate(class_names)}
    out = []
    for where, parts in _lines(path, f"the {subset} list of split {split}"):
        rel = index.check_relative(parts[0], where)
        label = by_folder.get(rel.split("/")[0].lower())
        if label is None or "/" not in rel:
            raise ValueError(f"{where}: {rel!r} is not under a class folder of classInd.txt")
        if len(parts) > 1 and parts[1] != str(label + 1):
            raise ValueError(
                f"{where}: label {parts[1]} disagrees with the folder of {rel!r} "
                f"({class_names[label]} = {label + 1} in classInd.txt)"
            )
        out.append((where, rel, label))
    return out


def _check(ds: ml_collections.ConfigDict) -> None:
    if not ds.data_dir:
        raise ValueError(f"dataset.data_dir is empty: set it to the folder holding {VIDEOS}/ and {LISTS}/")
    if ds.split not in (1, 2, 3):
        raise ValueError(f"dataset.split must be 1, 2 or 3 (UCF-101's splits), got {ds.split!r}")


def read_index(ds: ml_collections.ConfigDict) -> index.VideoIndex:
    """Reads the class index and the split's lists and finds each listed video."""
    _check(ds)
    names = read_class_names(ds.data_dir)
    lists = {s: read_split(ds.data_dir, ds.split, s, names) for s in ("train", "test")}
    root = os.path.join(ds.data_dir, VIDEOS)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: the video folder of the release is missing (dataset.data_dir={ds.data_dir!r})")
    files = index.Files(root)
    train, test = (index.find_listed(files, lists[s]) for s in ("train", "test"))
    index.check_duplicates(train + test)
    return index.VideoIndex(f"ucf101 split {ds.split}", names, root, train, test)


def all_videos(ds: ml_collections.ConfigDict) -> tuple[str, list[str]]:
    """Every video of the release (all three splits): what ``prepare`` re-encodes."""
    _check(ds)
    read_class_names(ds.data_dir)  # fails early, naming the path, on a wrong data_dir
    root = os.path.join(ds.data_dir, VIDEOS)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: the video folder of the release is missing (dataset.data_dir={ds.data_dir!r})")
    return root, [v for folder in index.subfolders(root) for v in index.scan_videos(root, folder)[0]]
