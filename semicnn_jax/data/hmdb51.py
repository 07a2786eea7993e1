"""HMDB-51 (official release) as a video index (``dataset.name='hmdb51'``, ``dataset.split`` 1-3).

Layout under ``dataset.data_dir``, once ``hmdb51_org.rar`` and the rar of each class inside it, and
``test_train_splits.rar``, are unpacked::

    hmdb51_org/<class>/<name>.avi
    testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt     "<name>.avi 1" (1 train, 2 test, 0 unused)

Classes are the 51 names of the split files, sorted (``brush_hair`` = 0 ... ``wave`` = 50). Each
split trains on 70 and tests on 30 videos of each class. Listed videos are matched to files
case-insensitively; a missing one is an error before training unless ``dataset.skip_missing``.
"""

from __future__ import annotations

import os
import re

import ml_collections

from semicnn_jax.data import index

VIDEOS, SPLITS = "hmdb51_org", "testTrainMulti_7030_splits"
FIELDS = {"data_dir": "", "split": 1, "skip_missing": False}  # the dataset.* fields this reader uses
LAYOUT = f"the unpacked HMDB-51 release ({VIDEOS}/<class>/*.avi and {SPLITS}/<class>_test_split1.txt ...)"
_SPLIT_FILE = re.compile(r"^(.+)_test_split([123])\.txt$")
TAGS = {"1": "train", "2": "test", "0": None}


def _check(ds: ml_collections.ConfigDict) -> None:
    if not ds.data_dir:
        raise ValueError(f"dataset.data_dir is empty: set it to the folder holding {VIDEOS}/ and {SPLITS}/")
    if ds.split not in (1, 2, 3):
        raise ValueError(f"dataset.split must be 1, 2 or 3 (HMDB-51's splits), got {ds.split!r}")


def _root(data_dir: str) -> str:
    root = os.path.join(data_dir, VIDEOS)
    if not os.path.isdir(root):
        raise ValueError(f"{root}: the video folder is missing; dataset.data_dir must hold {LAYOUT}")
    return root


def class_names(data_dir: str) -> tuple[str, ...]:
    """The classes named by the split files, sorted."""
    folder = os.path.join(data_dir, SPLITS)
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: the split files are missing; dataset.data_dir must hold {LAYOUT}")
    names = sorted({m.group(1) for m in map(_SPLIT_FILE.match, os.listdir(folder)) if m})
    if not names:
        raise ValueError(f"{folder}: no <class>_test_split1.txt files; dataset.data_dir must hold {LAYOUT}")
    return tuple(names)


def read_split(data_dir: str, split: int, names: tuple[str, ...]) -> dict[str, list[tuple[str, str, int]]]:
    """``{"train": [(path:line, relative path, label)], "test": [...]}`` of one split."""
    out: dict[str, list] = {"train": [], "test": []}
    for label, name in enumerate(names):
        path = os.path.join(data_dir, SPLITS, f"{name}_test_split{split}.txt")
        for where, text in index.read_lines(path, f"split {split} of class {name!r}"):
            parts = text.rsplit(None, 1)
            if len(parts) != 2 or parts[1] not in TAGS:
                raise ValueError(f"{where}: expected '<video>.avi <0|1|2>' (1 train, 2 test, 0 unused), got {text!r}")
            if TAGS[parts[1]] is not None:
                video = index.check_relative(parts[0], where)
                out[TAGS[parts[1]]].append((where, f"{name}/{video}", label))
    return out


def read_index(ds: ml_collections.ConfigDict) -> index.VideoIndex:
    _check(ds)
    names = class_names(ds.data_dir)
    lists = read_split(ds.data_dir, ds.split, names)
    files = index.Files(_root(ds.data_dir))
    train, test = (index.find_listed(files, lists[s]) for s in ("train", "test"))
    index.check_duplicates(train + test)
    return index.VideoIndex(f"hmdb51 split {ds.split}", names, files.root, train, test)


def all_videos(ds: ml_collections.ConfigDict) -> tuple[str, list[str]]:
    """Every video of the class folders (all three splits): what ``prepare`` re-encodes."""
    _check(ds)
    names = class_names(ds.data_dir)
    root = _root(ds.data_dir)
    return root, [v for name in names for v in index.scan_videos(root, name)[0]]
