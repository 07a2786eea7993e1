"""Your own videos in class folders (``dataset.name='folder'``).

Either ``data_dir/train/<class>/...`` and ``data_dir/val/<class>/...``, or one ``data_dir/<class>/...``
tree whose videos are split by ``dataset.val_fraction`` (default 0.2): a video goes to the evaluation
side when a hash of its path relative to ``data_dir`` falls below the fraction, so it keeps its side
when files are added or removed. Videos may sit anywhere below their class folder, in any container
PyAV reads (by extension, any case: ``index.VIDEO_EXTENSIONS``); names may hold spaces and
non-ASCII characters. Classes are the folder names, sorted (of ``train/`` in the first layout).
Hidden files and other files (``.txt``, ``.jpg``) are ignored and counted in one log line.
"""

from __future__ import annotations

import os

import ml_collections
from absl import logging

from semicnn_jax.data import index

FIELDS = {"data_dir": "", "val_fraction": 0.2}  # the dataset.* fields this reader uses


def _class_videos(data_dir: str, subset: str, classes: list[str]) -> tuple[dict[str, list[str]], int]:
    """``{class: [relative path]}`` of ``data_dir/subset/<class>/``; a class folder without videos is an error."""
    out, ignored = {}, 0
    for name in classes:
        folder = os.path.join(subset, name) if subset else name
        videos, others = index.scan_videos(data_dir, folder)
        ignored += len(others)
        if not videos:
            shown = f" (only {len(others)} other files, e.g. {others[0]!r})" if others else ""
            raise ValueError(
                f"{os.path.join(data_dir, folder)}: class folder without videos{shown}; remove it or "
                f"add videos (extensions: {', '.join(sorted(index.VIDEO_EXTENSIONS))})"
            )
        out[name] = videos
    return out, ignored


def read_index(ds: ml_collections.ConfigDict) -> index.VideoIndex:
    data_dir = ds.data_dir
    if not data_dir:
        raise ValueError(
            "dataset.data_dir is empty: set it to the folder holding <class>/ folders "
            "(or train/<class>/ and val/<class>/)"
        )
    if not os.path.isdir(data_dir):
        raise ValueError(f"dataset.data_dir={data_dir!r}: no such folder")
    top = index.subfolders(data_dir)
    split = [s for s in ("train", "val") if s in top]
    if len(split) == 1:
        raise ValueError(
            f"{data_dir} has {split[0]}/ but no {({'train', 'val'} - set(split)).pop()}/: give both "
            "(train/<class>/ and val/<class>/), or one <class>/ tree split by dataset.val_fraction"
        )
    if split:
        names = index.subfolders(os.path.join(data_dir, "train"))
        val_names = index.subfolders(os.path.join(data_dir, "val"))
        stray = sorted(set(val_names) - set(names))
        if stray:
            raise ValueError(
                f"{os.path.join(data_dir, 'val', stray[0])}: class folder not in "
                f"{os.path.join(data_dir, 'train')} ({len(stray)} such: {', '.join(stray[:5])})"
            )
        train, ignored = _class_videos(data_dir, "train", names)
        val, more = _class_videos(data_dir, "val", val_names)
        ignored += more
        sides = {
            "train": [(rel, names.index(c)) for c in names for rel in train[c]],
            "val": [(rel, names.index(c)) for c in val_names for rel in val[c]],
        }
        name = f"folder {data_dir} (train/, val/)"
    else:
        fraction = float(ds.get("val_fraction", FIELDS["val_fraction"]))
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"dataset.val_fraction must be in (0, 1), got {fraction!r}")
        names = top
        videos, ignored = _class_videos(data_dir, "", names)
        labelled = [(rel, i) for i, c in enumerate(names) for rel in videos[c]]
        sides = {
            "train": [v for v in labelled if not index.in_val(v[0], fraction)],
            "val": [v for v in labelled if index.in_val(v[0], fraction)],
        }
        name = f"folder {data_dir} (val_fraction {fraction:g})"
    if not names:
        raise ValueError(
            f"{data_dir}: no class folders; expected {data_dir}/<class>/<video> (or train/<class>/ and val/<class>/)"
        )
    loose = [f for f in os.listdir(data_dir) if os.path.isfile(os.path.join(data_dir, f)) and index.is_video(f)]
    if loose or ignored:
        logging.warning(
            "%s: ignored %d videos outside class folders and %d files that are not videos",
            data_dir,
            len(loose),
            ignored,
        )
    for subset, videos in sides.items():
        if not videos:
            raise ValueError(
                f"{data_dir}: no {'evaluation' if subset == 'val' else 'training'} videos "
                f"({sum(len(v) for v in sides.values())} videos in all)"
            )
    train, val = (tuple(index.Video(rel, label) for rel, label in sides[s]) for s in ("train", "val"))
    return index.VideoIndex(name, tuple(names), data_dir, train, val)
