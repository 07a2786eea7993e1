"""Annotation lists (``dataset.name='list'``): ``dataset.train_list`` and ``dataset.val_list``.

Either MMAction2's format, one ``relative/path LABEL`` per line (the label is the last field, so
paths may hold spaces), or a CSV file whose header names ``path`` and ``label`` (other columns are
ignored). Paths are relative to ``dataset.data_dir``; list files are found as given, else inside
``data_dir``. A byte-order mark and CRLF line ends are accepted.

LABEL is a class name or a 0-based integer index. Classes: ``dataset.class_names`` (a file, one name
per line, in index order) when given; otherwise, if every label is an integer, classes ``0 .. max``
named by their number, else the names of the training list, sorted (then no label may be an
index). An unknown label, a line
without a label, a path listed twice or a path outside ``data_dir`` is an error naming ``file:line``.
A listed video that does not exist is an error unless ``dataset.skip_missing``.
"""

from __future__ import annotations

import os

import ml_collections

from semicnn_jax.data import index

FIELDS = {"data_dir": "", "train_list": "", "val_list": "", "class_names": "", "skip_missing": False}
CSV_COLUMNS = ("path", "label")


def _path(data_dir: str, path: str, key: str) -> str:
    if not path:
        raise ValueError(
            f"dataset.{key} is empty: set it to a list file ('relative/path LABEL' lines, or a CSV "
            "with a path,label header)"
        )
    if os.path.isfile(path) or os.path.isabs(path) or not os.path.isfile(os.path.join(data_dir, path)):
        return path
    return os.path.join(data_dir, path)


def _is_csv(path: str) -> bool:
    if path.lower().endswith(".csv"):
        return True
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        header = f.readline().strip().lower().replace(" ", "")
    return header.startswith("path,") or header.startswith("label,") or header == "label,path"


def read_entries(path: str, what: str) -> list[tuple[str, str, str]]:
    """``(path:line, relative path, label text)`` of each entry of a list file (either format)."""
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} is missing")
    out = []
    if _is_csv(path):
        for where, row in index.read_csv(path, what, CSV_COLUMNS):
            if not row["path"] or not row["label"]:
                raise ValueError(f"{where}: a {'path' if not row['path'] else 'label'} is missing")
            out.append((where, index.check_relative(row["path"], where), row["label"]))
        return out
    for where, text in index.read_lines(path, what):
        parts = text.rsplit(None, 1)
        if len(parts) < 2:
            raise ValueError(f"{where}: no label (expected 'relative/path LABEL'), got {text!r}")
        rel, label = parts
        if index.is_video(label) and not index.is_video(rel):
            raise ValueError(
                f"{where}: no label (expected 'relative/path LABEL'; {label!r} is a file name), got {text!r}"
            )
        out.append((where, index.check_relative(rel, where), label))
    return out


def _is_int(text: str) -> bool:
    return text.isdigit() or (text.startswith("-") and text[1:].isdigit())


def labeller(
    class_names: tuple[str, ...] | None, train: list[tuple[str, str, str]], val: list[tuple[str, str, str]]
) -> tuple[tuple[str, ...], dict[str, int]]:
    """The class names and a label text -> index map (see the module doc)."""
    labels = [label for _, _, label in train + val]
    if class_names is None:
        if all(_is_int(label) for label in labels):
            count = max(int(label) for label in labels) + 1
            class_names = tuple(str(i) for i in range(count))
            return class_names, {str(i): i for i in range(count)}
        index = next(((where, label) for where, _, label in train + val if _is_int(label)), None)
        if index is not None:
            raise ValueError(
                f"{index[0]}: label {index[1]!r} is an index while other labels are class names; "
                "give dataset.class_names (a file of the class names, one a line, in index order)"
            )
        class_names = tuple(sorted({label for _, _, label in train}))
        return class_names, {name: i for i, name in enumerate(class_names)}
    by_name = {name: i for i, name in enumerate(class_names)}
    by_index = {str(i): i for i in range(len(class_names)) if str(i) not in by_name}
    return class_names, {**by_index, **by_name}


def read_class_names(path: str) -> tuple[str, ...]:
    names, first = [], {}
    for where, text in index.read_lines(path, "the class names file (dataset.class_names)"):
        if text in first:
            raise ValueError(f"{where}: class {text!r} is named twice (also at {first[text]})")
        first[text] = where
        names.append(text)
    if not names:
        raise ValueError(f"{path}: no class names")
    return tuple(names)


def read_index(ds: ml_collections.ConfigDict) -> index.VideoIndex:
    if not ds.data_dir:
        raise ValueError("dataset.data_dir is empty: set it to the folder the listed paths are relative to")
    if not os.path.isdir(ds.data_dir):
        raise ValueError(f"dataset.data_dir={ds.data_dir!r}: no such folder")
    paths = {key: _path(ds.data_dir, ds.get(key, ""), key) for key in ("train_list", "val_list")}
    entries = {key: read_entries(path, f"the list of dataset.{key}") for key, path in paths.items()}
    for key, rows in entries.items():
        if not rows:
            raise ValueError(f"{paths[key]}: the list of dataset.{key} is empty")
    class_file = ds.get("class_names", "")
    names = read_class_names(_path(ds.data_dir, class_file, "class_names")) if class_file else None
    names, label_of = labeller(names, entries["train_list"], entries["val_list"])
    files = index.Files(ds.data_dir)
    videos = {}
    for key, rows in entries.items():
        labelled = []
        for where, rel, label in rows:
            if label not in label_of:
                if class_file:
                    known = f"the names in {class_file} or 0 .. {len(names) - 1}"
                else:
                    known = "the training list's labels"
                raise ValueError(
                    f"{where}: unknown label {label!r} (known: {known}; "
                    f"{len(names)} classes, e.g. {', '.join(names[:3])})"
                )
            labelled.append((where, rel, label_of[label]))
        videos[key] = index.find_listed(files, labelled)
    index.check_duplicates(videos["train_list"] + videos["val_list"])
    return index.VideoIndex("list", names, ds.data_dir, videos["train_list"], videos["val_list"])
