"""Video indexes: a dataset's files as class names, training videos and evaluation videos.

Every file-based dataset (``ucf101``, ``hmdb51``, ``kinetics``, ``folder``, ``list``) has a reader that
turns its release's files into a :class:`VideoIndex`; one source (``video_list.VideoList``) trains
and evaluates on any index. This module holds what the readers share: reading list files (a BOM
and CRLF line ends accepted, every error named ``file:line``), finding listed files (exactly, else
case-insensitively, one directory listing per folder), telling videos from other files, the
deterministic hash split, duplicate checks, and where ``prepare`` puts a video's re-encoded copy.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import os
import unicodedata
from typing import Iterable, NamedTuple, Sequence

# Containers PyAV (FFmpeg) reads that video datasets use, compared in lower case.
VIDEO_EXTENSIONS = frozenset(
    {
        ".3g2",
        ".3gp",
        ".asf",
        ".avi",
        ".divx",
        ".dv",
        ".f4v",
        ".flv",
        ".h264",
        ".m2t",
        ".m2ts",
        ".m4v",
        ".mj2",
        ".mjpeg",
        ".mkv",
        ".mov",
        ".mp4",
        ".mpeg",
        ".mpg",
        ".mts",
        ".mxf",
        ".nut",
        ".ogg",
        ".ogv",
        ".qt",
        ".rm",
        ".rmvb",
        ".ts",
        ".vob",
        ".webm",
        ".wmv",
        ".y4m",
    }
)
PREPARED_INDEX = "index.json"  # written last by ``semicnn_jax.data.prepare``


class Video(NamedTuple):
    """One listed or found video."""

    rel: str  # path under the index's root, '/'-separated: the file found (or, if missing, as listed)
    label: int  # 0-based class index
    found: bool = True
    where: str = ""  # "file:line" that lists it ("" for a file found by scanning folders)


@dataclasses.dataclass(frozen=True)
class VideoIndex:
    """A dataset's videos: ``train`` and ``val`` (evaluation) under ``root``, labels into ``class_names``."""

    name: str  # the DatasetInfo name, e.g. "ucf101 split 1"
    class_names: tuple[str, ...]
    root: str
    train: tuple[Video, ...]
    val: tuple[Video, ...]
    # Kinetics: listed clips that are absent are normal; they are dropped and counted in one line.
    drop_missing: bool = False

    def missing(self) -> list[str]:
        """Paths of the listed videos that do not exist."""
        return [os.path.join(self.root, v.rel) for v in self.train + self.val if not v.found]


# ---------------------------------------------------------------------------- files


def is_video(name: str) -> bool:
    """A video by its extension (any case); hidden files (``.DS_Store``, ``._clip.mp4``) are not."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def _key(name: str) -> str:
    """Case- and Unicode-normalisation-insensitive name (macOS stores decomposed accents)."""
    return unicodedata.normalize("NFC", name).casefold()


class Files:
    """Finds paths under ``root``: exactly, else (``case_insensitive``) ignoring case and Unicode
    normalisation, component by component. Each folder is listed once (``os.scandir``)."""

    def __init__(self, root: str, case_insensitive: bool = True):
        self.root, self.case_insensitive = root, case_insensitive
        self._listings: dict[str, tuple[dict[str, bool], dict[str, str]] | None] = {}

    def listing(self, rel_dir: str) -> tuple[dict[str, bool], dict[str, str]] | None:
        """``({name: is_dir}, {normalised name: name})`` of a folder under root; None if it is not one."""
        if rel_dir not in self._listings:
            try:
                with os.scandir(os.path.join(self.root, rel_dir)) as entries:
                    names = {e.name: e.is_dir() for e in entries}
            except (FileNotFoundError, NotADirectoryError):
                self._listings[rel_dir] = None
            else:
                keys: dict[str, str] = {}
                for name in sorted(names):
                    keys.setdefault(_key(name), name)
                self._listings[rel_dir] = (names, keys)
        return self._listings[rel_dir]

    def find(self, rel: str) -> str | None:
        """The actual ``rel`` of the file that ``rel`` names ('/'-separated), or None."""
        actual: list[str] = []
        parts = [p for p in rel.split("/") if p not in ("", ".")]
        for i, part in enumerate(parts):
            listing = self.listing("/".join(actual))
            if listing is None:
                return None
            names, keys = listing
            name = part if part in names else keys.get(_key(part)) if self.case_insensitive else None
            if name is None or names[name] != (i < len(parts) - 1):  # folders, then a file
                return None
            actual.append(name)
        return "/".join(actual) if actual else None


def check_relative(rel: str, where: str) -> str:
    """``rel`` with '/' separators; a path that leaves the dataset's folder is an error naming ``where``."""
    rel = rel.replace("\\", "/")
    if os.path.isabs(rel) or rel.startswith("/") or ".." in rel.split("/"):
        raise ValueError(f"{where}: {rel!r} must be a path relative to dataset.data_dir (no leading / or ..)")
    return rel


def scan_videos(root: str, folder: str) -> tuple[list[str], list[str]]:
    """Video files anywhere below ``root/folder`` (symbolic links followed), as sorted paths relative to
    ``root``, and the other files met there."""
    videos, others = [], []
    for dirpath, dirnames, filenames in os.walk(os.path.join(root, folder), followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        for name in sorted(filenames):
            (videos if is_video(name) else others).append(f"{rel_dir}/{name}")
    return videos, others


def subfolders(path: str) -> list[str]:
    """Sorted names of the (non-hidden) folders in ``path``."""
    with os.scandir(path) as entries:
        return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def in_val(rel: str, fraction: float) -> bool:
    """Whether a video goes to the evaluation side: a hash of its relative path (Unicode-normalised)
    below ``fraction``, so a video keeps its side whatever files are added or removed."""
    digest = hashlib.sha1(unicodedata.normalize("NFC", rel).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < fraction * 2**64


def check_duplicates(videos: Iterable[Video]) -> None:
    """A video listed twice (in one list or in both) is an error naming both places."""
    first: dict[str, Video] = {}
    for v in videos:
        key = _key(v.rel)
        if key in first:
            raise ValueError(
                f"{v.where or v.rel}: {v.rel!r} is listed twice (also at {first[key].where or first[key].rel}); "
                "each video must appear once, in one split"
            )
        first[key] = v


# ---------------------------------------------------------------------------- list files


def _open_text(path: str, what: str, newline: str | None = None):
    if not os.path.isfile(path):
        raise ValueError(f"{path}: {what} is missing")
    return open(path, encoding="utf-8-sig", newline=newline)  # utf-8-sig: a byte-order mark is dropped


def read_lines(path: str, what: str) -> list[tuple[str, str]]:
    """``(path:line, text)`` of every non-blank line, stripped; a BOM and CRLF line ends are accepted."""
    try:
        with _open_text(path, what) as f:  # universal newlines: \r\n and \r end lines too
            return [(f"{path}:{n}", line.strip()) for n, line in enumerate(f, 1) if line.strip()]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({e})") from None


def read_csv(path: str, what: str, columns: Sequence[str]) -> list[tuple[str, dict[str, str]]]:
    """``(path:line, row)`` of a CSV file with a header naming at least ``columns`` (any case, any order)."""
    try:
        with _open_text(path, what, newline="") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            absent = [c for c in columns if c not in header]
            if absent:
                raise ValueError(
                    f"{path}:1: the CSV header must name the columns {', '.join(columns)}; it lacks "
                    f"{', '.join(absent)} (header: {','.join(header)!r})"
                )
            rows = []
            for cells in reader:
                if not any(c.strip() for c in cells):
                    continue
                where = f"{path}:{reader.line_num}"
                if len(cells) < len(header):
                    raise ValueError(f"{where}: {len(cells)} fields, the header has {len(header)}")
                rows.append((where, {h: c.strip() for h, c in zip(header, cells)}))
            return rows
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: {what} is not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise ValueError(f"{path}: {what} is not valid CSV ({e})") from None


def find_listed(files: Files, entries: Iterable[tuple[str, str, int]]) -> tuple[Video, ...]:
    """Videos of ``(where, listed relative path, label)`` entries, found under ``files.root`` or marked missing."""
    out = []
    for where, rel, label in entries:
        actual = files.find(rel)
        out.append(Video(actual or rel, label, actual is not None, where))
    return tuple(out)


# ---------------------------------------------------------------------------- prepared copies


def prepared_name(rel: str) -> str:
    """Where ``prepare`` writes the copy of ``rel`` (relative to the prepared folder's video root): the
    same path as ``.avi`` (``x.avi`` stays, ``x.mp4`` becomes ``x.mp4.avi``: no two files collide)."""
    return rel if rel.endswith(".avi") else rel + ".avi"


def prepared_root(index: VideoIndex, data_dir: str, prepared_dir: str) -> str:
    """The prepared copy's counterpart of ``index.root`` (e.g. ``prepared_dir/UCF-101``)."""
    return os.path.normpath(os.path.join(prepared_dir, os.path.relpath(index.root, data_dir)))


def read_prepared_index(prepared_dir: str) -> dict:
    """``{relative path: {"frames": n} or {"error": reason}}`` of a finished prepared copy."""
    path = os.path.join(prepared_dir, PREPARED_INDEX)
    if not os.path.isfile(path):
        raise ValueError(
            f"{path} not found: dataset.prepared_dir={prepared_dir!r} is not a finished prepared copy; "
            "run python -m semicnn_jax.data.prepare --data_dir=<dataset> --out=<prepared_dir>"
        )
    with open(path) as f:
        return json.load(f)["videos"]
