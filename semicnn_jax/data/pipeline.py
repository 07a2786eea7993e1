"""Dataset sources behind one interface, chosen by ``config.dataset.name``: one name -> source table.

==================  =====================================================================
``synthetic_motion``  the embedded dataset (``synthetic_motion.SyntheticMotion``)
``ucf101``            UCF-101 release             \\
``hmdb51``            HMDB-51 release              |  an index reader (``ucf101``, ``hmdb51``,
``kinetics``          Kinetics download            |  ``kinetics``, ``folder``, ``lists``) and the
``folder``            your videos in class folders |  one file source, ``video_list.VideoList``
``list``              annotation list files       /
``tfds:<name>``       TensorFlow Datasets (``tfds_source.TFDSVideos``), e.g. ``tfds:ucf101/ucf101_1_256``
==================  =====================================================================

The batch format and the ``Source`` protocol: ``source`` (the package's leaf, which every source
imports; nothing but this module imports the sources). Each entry declares the ``dataset.*``
fields its source reads, with their defaults (``config_fields``).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import ml_collections

from semicnn_jax.data import folder, hmdb51, kinetics, lists, synthetic_motion, tfds_source, ucf101, video_list
from semicnn_jax.data.source import Source

TFDS_PREFIX = tfds_source.PREFIX  # "tfds:" + a TFDS name with its config, prepared under dataset.data_dir
TFDS = TFDS_PREFIX + "<name>/<config>"


@dataclasses.dataclass(frozen=True)
class Entry:
    """What the training loop and ``prepare`` need of one source."""

    validate: Callable[[ml_collections.ConfigDict], None]  # refuses missing or wrong dataset files (ValueError)
    create: Callable[[ml_collections.ConfigDict], Source]
    fields: Mapping[str, Any]  # the dataset.* fields it reads (besides name), with their defaults
    # File datasets: dataset config -> its video index (``index.VideoIndex``: classes, training and
    # evaluation videos), and -> (video root, relative paths of every video): what prepare re-encodes.
    read: Callable[[ml_collections.ConfigDict], Any] | None = None
    videos: Callable[[ml_collections.ConfigDict], tuple[str, list[str]]] | None = None


def _no_files(config: ml_collections.ConfigDict) -> None:
    """The embedded dataset has no files to check."""


def _files(reader, videos=None) -> Entry:
    """A file dataset: ``reader.read_index`` (its release -> a video index) served by ``video_list``."""
    read = reader.read_index
    return Entry(
        functools.partial(video_list.validate, read=read),
        functools.partial(video_list.VideoList, read=read),
        {**reader.FIELDS, **video_list.FIELDS},
        read,
        videos or video_list.listed_videos(read),
    )


SOURCES: dict[str, Entry] = {
    "synthetic_motion": Entry(_no_files, synthetic_motion.SyntheticMotion, synthetic_motion.FIELDS),
    "ucf101": _files(ucf101, ucf101.all_videos),
    "hmdb51": _files(hmdb51, hmdb51.all_videos),
    "kinetics": _files(kinetics),
    "folder": _files(folder),
    "list": _files(lists),
    TFDS: Entry(tfds_source.validate, tfds_source.TFDSVideos, tfds_source.FIELDS),
}


def entry(name: str) -> Entry:
    """The table's entry for ``dataset.name``; an unknown name raises ValueError listing the valid ones."""
    key = TFDS if name.startswith(TFDS_PREFIX) else name
    if key not in SOURCES:
        raise ValueError(f"dataset.name={name!r} is unknown; valid: {', '.join(SOURCES)}")
    return SOURCES[key]


def validate(config: ml_collections.ConfigDict) -> None:
    """Refuses an unknown ``dataset.name`` or missing or wrong dataset files before any work starts
    (ValueError naming the key, file, line or path)."""
    entry(config.dataset.name).validate(config)


def create(config: ml_collections.ConfigDict) -> Source:
    """The source named by ``config.dataset.name``; an unknown name raises ValueError."""
    return entry(config.dataset.name).create(config)


# dataset.* fields the training loop reads whatever the source.
COMMON_FIELDS = {"max_unreadable_fraction": 0.05}  # warn when a larger share of the videos cannot be read


def config_fields(name: str | None = None) -> dict[str, Any]:
    """The ``dataset.*`` fields (name -> default) that source ``name`` reads, or that any source reads."""
    if name is not None:
        return {"name": name, **COMMON_FIELDS, **entry(name).fields}
    fields: dict[str, Any] = {"name": "ucf101", **COMMON_FIELDS}
    for e in SOURCES.values():
        fields.update(e.fields)
    return fields
