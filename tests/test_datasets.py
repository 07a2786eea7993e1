"""Your own videos: class folders, list files, HMDB-51 and Kinetics on tiny generated trees, with the traps.

Index tests read folders and lists only (empty files stand for videos where nothing is decoded); one
parametrised test builds each source and decodes one training batch and one evaluation pass.
"""

import hashlib
import logging
import os
import unicodedata

import fake_datasets as fd
import numpy as np
import pytest

from experiments import base
from semicnn_jax.data import pipeline, prepare
from semicnn_jax.data.source import epoch_order

NUM_FRAMES, CROP = 4, 16


def config(name, data_dir, **dataset):
    c = base.get_config("semi_resnet18")
    c.dataset.name, c.dataset.data_dir, c.dataset.workers = name, str(data_dir), 0
    c.dataset.update(dataset)
    c.num_frames, c.crop_size = NUM_FRAMES, CROP
    return c


LISTS = {"train_list": "train.txt", "val_list": "val.csv", "class_names": "classes.txt"}
SOURCES = {  # id -> (dataset name, tree maker, dataset fields)
    "folder split": ("folder", fd.make_folder_split, {}),
    "folder tree": ("folder", fd.make_folder_tree, {"val_fraction": 0.3}),
    "list": ("list", fd.make_lists, LISTS),
    "hmdb51": ("hmdb51", fd.make_hmdb51, {"split": 1}),
    "kinetics": ("kinetics", fd.make_kinetics, {}),
}


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = tmp_path_factory.mktemp("datasets")
    return {
        key: (str(root / key.replace(" ", "_")), make(str(root / key.replace(" ", "_"))))
        for key, (_, make, _) in SOURCES.items()
    }


def read(name, data_dir, **dataset):
    return pipeline.entry(name).read(config(name, data_dir, **dataset).dataset)


def found(videos):
    return {v.rel: v.label for v in videos if v.found}


def touch(root, *rels, content=b""):
    for rel in rels:
        path = os.path.join(str(root), rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)


# ---------------------------------------------------------------------------- indexes (nothing decoded)


def test_folder_split_layout_classes_labels_and_ignored_files(trees, caplog):
    root, expected = trees["folder split"]
    with caplog.at_level(logging.WARNING, logger="absl"):
        idx = read("folder", root)
    assert idx.class_names == expected["classes"] == ("Dog walking", "café", "cat")
    assert found(idx.train) == expected["train"] and found(idx.val) == expected["val"]
    assert "ignored 0 videos outside class folders and 2 files that are not videos" in caplog.text  # notes.txt, ._a.mp4


def expected_side(rel, fraction):
    """The issue's rule written out: SHA-1 of the NFC relative path, first 8 bytes as a fraction."""
    value = int(hashlib.sha1(unicodedata.normalize("NFC", rel).encode()).hexdigest()[:16], 16) / 2**64
    return "val" if value < fraction else "train"


def test_folder_tree_split_by_path_hash_is_stable_when_files_are_added(tmp_path):
    videos = {f"{c}/{n}.mp4": i for i, c in enumerate(("b", "a")) for n in range(12)}
    touch(tmp_path, *videos)
    idx = read("folder", tmp_path, val_fraction=0.25)
    assert idx.class_names == ("a", "b")
    labels = {rel: 1 - label for rel, label in videos.items()}  # sorted: a = 0, b = 1
    sides = {rel: expected_side(rel, 0.25) for rel in videos}
    assert found(idx.train) == {r: y for r, y in labels.items() if sides[r] == "train"}
    assert found(idx.val) == {r: y for r, y in labels.items() if sides[r] == "val"}
    assert 0 < len(idx.val) < len(idx.train)
    touch(tmp_path, *(f"a/new{n}.mp4" for n in range(10)), "c/first.webm")  # more videos, a new class
    again = read("folder", tmp_path, val_fraction=0.25)
    assert again.class_names == ("a", "b", "c")
    for rel in videos:
        assert (rel in found(again.val)) == (sides[rel] == "val")


def test_list_files_names_indices_bom_crlf_csv_and_class_order(trees):
    root, expected = trees["list"]
    idx = read("list", root, **LISTS)
    assert idx.class_names == ("wave", "brush_hair", "kick")  # the file's order, not sorted
    assert found(idx.train) == expected["train"] and found(idx.val) == expected["val"]
    assert all(v.found for v in idx.train + idx.val)
    assert idx.train[0].where == os.path.join(root, "train.txt") + ":1"
    assert idx.train[2].where.endswith("train.txt:4")  # after the blank line


def test_list_classes_without_a_class_names_file(tmp_path):
    touch(tmp_path, "a.mp4", "b.mp4", "c.mp4", "d.mp4")
    fd.text(str(tmp_path / "t.txt"), "a.mp4 run\nb.mp4 jump\n")
    fd.text(str(tmp_path / "v.txt"), "c.mp4 jump\n")
    idx = read("list", tmp_path, train_list="t.txt", val_list="v.txt")
    assert idx.class_names == ("jump", "run") and found(idx.train) == {"a.mp4": 1, "b.mp4": 0}
    fd.text(str(tmp_path / "t.txt"), "a.mp4 2\nb.mp4 0\n")
    fd.text(str(tmp_path / "v.txt"), "c.mp4 1\nd.mp4 2\n")
    idx = read("list", tmp_path, train_list=str(tmp_path / "t.txt"), val_list="v.txt")
    assert idx.class_names == ("0", "1", "2") and found(idx.val) == {"c.mp4": 1, "d.mp4": 2}


def test_hmdb51_splits_tags_and_labels(trees):
    root, expected = trees["hmdb51"]
    for split in (1, 2, 3):
        idx = read("hmdb51", root, split=split)
        assert idx.class_names == ("brush_hair", "cartwheel") and idx.name == f"hmdb51 split {split}"
        assert found(idx.train) == expected["splits"][split]["train"]
        assert found(idx.val) == expected["splits"][split]["val"]
    assert found(read("hmdb51", root, split=1).train) == {  # written out for split 1
        "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi": 0,
        "cartwheel/(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi": 1,
    }


def test_kinetics_renamed_label_folders_other_containers_and_missing_clips(trees, caplog):
    root, expected = trees["kinetics"]
    idx = read("kinetics", root)
    assert idx.class_names == ("abseiling", "passing American football (in game)")
    assert found(idx.train) == expected["train"] and found(idx.val) == expected["val"]
    assert [v.rel for v in idx.train if not v.found] == ["train/abseiling/gone0000000_000000_000010.mp4"]
    pipeline.validate(config("kinetics", root))  # missing clips are normal: no skip_missing needed
    with caplog.at_level(logging.WARNING, logger="absl"):
        source = pipeline.create(config("kinetics", root))
    lines = [r.getMessage() for r in caplog.records if "missing" in r.getMessage()]
    assert lines == [
        f"1 of 5 listed clips missing under {os.path.join(root, 'train')}; skipped",
        f"1 of 3 listed clips missing under {os.path.join(root, 'val')}; skipped",
    ]
    assert (source.info.num_train, source.info.num_eval) == (4, 2)


# ---------------------------------------------------------------------------- traps: refused before training


def _list_tree(tmp_path, train, val="c.mp4 0\n", classes=None, val_name="v.txt"):
    touch(tmp_path, "a.mp4", "b b.mp4", "c.mp4")
    fd.text(str(tmp_path / "t.txt"), train)
    fd.text(str(tmp_path / val_name), val)
    fields = {"train_list": "t.txt", "val_list": val_name}
    if classes is not None:
        fd.text(str(tmp_path / "names.txt"), classes)
        fields["class_names"] = "names.txt"
    return config("list", tmp_path, **fields)


@pytest.mark.parametrize(
    "case,train,val,classes,message",
    [
        ("unknown label", "a.mp4 run\n", "c.mp4 swim\n", "run\njump\n", r"v.txt:1: unknown label 'swim'"),
        ("unknown index", "a.mp4 run\n", "c.mp4 2\n", "run\njump\n", r"v.txt:1: unknown label '2'"),
        ("label not in training", "a.mp4 run\n", "c.mp4 jump\n", None, r"v.txt:1: unknown label 'jump'"),
        (
            "names and indices",
            "a.mp4 run\nb b.mp4 1\n",
            "c.mp4 run\n",
            None,
            r"t.txt:2: label '1' is an index while other labels are class names; give dataset.class_names",
        ),
        ("no label", "a.mp4 0\nb b.mp4\n", "c.mp4 0\n", None, r"t.txt:2: no label .*'b b.mp4'"),
        ("no label, one field", "a.mp4\n", "c.mp4 0\n", None, r"t.txt:1: no label"),
        (
            "duplicated path",
            "a.mp4 0\nb b.mp4 1\n./a.mp4 1\n",
            "c.mp4 0\n",
            None,
            r"t.txt:3: 'a.mp4' is listed twice \(also at .*t.txt:1\)",
        ),
        (
            "in both lists",
            "a.mp4 0\nc.mp4 1\n",
            "C.MP4 0\n",
            None,
            r"v.txt:1: 'c.mp4' is listed twice \(also at .*t.txt:2\)",
        ),
        ("outside data_dir", "../a.mp4 0\n", "c.mp4 0\n", None, r"t.txt:1: '../a.mp4' must be a path relative"),
        ("empty list", "\n\n", "c.mp4 0\n", None, r"t.txt: the list of dataset.train_list is empty"),
        (
            "class named twice",
            "a.mp4 run\n",
            "c.mp4 run\n",
            "run\njump\nrun\n",
            r"names.txt:3: class 'run' is named twice",
        ),
    ],
)
def test_bad_list_files_are_refused_naming_file_and_line(tmp_path, case, train, val, classes, message):
    with pytest.raises(ValueError, match=message):
        pipeline.validate(_list_tree(tmp_path, train, val, classes))


@pytest.mark.parametrize(
    "content,message",
    [
        ("\ufeffpath,label\r\nc.mp4,\r\n", r"v.csv:2: a label is missing"),
        (
            "\ufefffile,label\r\nc.mp4,0\r\n",
            r"v.csv:1: the CSV header must name the columns path, label; it lacks path",
        ),
        ('path,label\r\n"c.mp4",0\r\n"a.mp4",1\r\n', r"v.csv:3: 'a.mp4' is listed twice"),
    ],
)
def test_bad_csv_lists_are_refused_naming_file_and_line(tmp_path, content, message):
    with pytest.raises(ValueError, match=message):
        pipeline.validate(_list_tree(tmp_path, "a.mp4 0\nb b.mp4 1\n", content, val_name="v.csv"))


def test_a_missing_listed_video_is_refused_unless_skip_missing(tmp_path):
    c = _list_tree(tmp_path, "a.mp4 0\ngone.mp4 1\n")
    with pytest.raises(ValueError, match=f"1 videos listed by list do not exist, e.g.\n  {tmp_path / 'gone.mp4'}"):
        pipeline.validate(c)
    c.dataset.skip_missing = True
    pipeline.validate(c)


def test_folder_traps(tmp_path):
    touch(tmp_path / "tree", "run/a.mp4", "run/b.MKV", "jump/c.avi")
    os.makedirs(tmp_path / "tree" / "swim" / "empty")
    touch(tmp_path / "tree", "swim/readme.txt")
    with pytest.raises(ValueError, match=f"{tmp_path / 'tree' / 'swim'}: class folder without videos \\(only 1 other"):
        pipeline.validate(config("folder", tmp_path / "tree"))
    touch(tmp_path / "split", "train/run/a.mp4", "val/run/b.mp4", "val/walk/c.mp4")
    with pytest.raises(ValueError, match=f"{tmp_path / 'split' / 'val' / 'walk'}: class folder not in"):
        pipeline.validate(config("folder", tmp_path / "split"))
    touch(tmp_path / "half", "train/run/a.mp4")
    with pytest.raises(ValueError, match="has train/ but no val/"):
        pipeline.validate(config("folder", tmp_path / "half"))
    for fraction in (0.0, 1.0):
        with pytest.raises(ValueError, match="val_fraction must be in"):
            pipeline.validate(config("folder", tmp_path / "split" / "train", val_fraction=fraction))
    with pytest.raises(ValueError, match="no evaluation videos"):  # one video: nothing left to evaluate on
        pipeline.validate(config("folder", tmp_path / "split" / "train", val_fraction=0.01))


def test_release_traps_name_file_and_line(trees, tmp_path):
    root, _ = trees["hmdb51"]
    splits = tmp_path / "hmdb" / "testTrainMulti_7030_splits"
    os.makedirs(splits)
    os.symlink(os.path.join(root, "hmdb51_org"), tmp_path / "hmdb" / "hmdb51_org")
    fd.text(str(splits / "cartwheel_test_split2.txt"), "(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi 1\n")
    fd.text(str(splits / "brush_hair_test_split1.txt"), "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1\n")
    with pytest.raises(ValueError, match=r"cartwheel_test_split1.txt: split 1 of class 'cartwheel' is missing"):
        pipeline.validate(config("hmdb51", tmp_path / "hmdb"))
    fd.text(str(splits / "cartwheel_test_split1.txt"), "(Rad)Schlagen_cartwheel_f_cm_np1_le_med_0.avi 2\n")
    pipeline.validate(config("hmdb51", tmp_path / "hmdb"))
    fd.text(str(splits / "brush_hair_test_split1.txt"), "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1\nx.avi 3\n")
    with pytest.raises(ValueError, match=r"brush_hair_test_split1.txt:2: expected '<video>.avi <0\|1\|2>'"):
        pipeline.validate(config("hmdb51", tmp_path / "hmdb"))
    kinetics = tmp_path / "kinetics"
    touch(kinetics, "train/abseiling/0347ZoDXyP0_000014_000024.mp4", "val/abseiling/Q8lMjYrOXZI_000030_000040.mp4")
    fd.text(
        str(kinetics / "annotations" / "train.csv"), fd.kinetics_csv([("abseiling", "0347ZoDXyP0", 14, 24, "train")])
    )
    fd.text(
        str(kinetics / "annotations" / "validate.csv"),
        fd.kinetics_csv([("abseiling", "Q8lMjYrOXZI", 30, 40, "val"), ("juggling", "x", 1, 11, "val")]),
    )
    with pytest.raises(ValueError, match=r"validate.csv:3: unknown label 'juggling' \(not a label of train.csv\)"):
        pipeline.validate(config("kinetics", kinetics))


def test_unknown_dataset_name_lists_the_sources():
    with pytest.raises(
        ValueError,
        match="dataset.name='ucf102' is unknown; valid: synthetic_motion, ucf101, hmdb51, "
        "kinetics, folder, list, tfds:<name>/<config>",
    ):
        pipeline.validate(config("ucf102", "/nowhere"))


def test_every_dataset_field_is_declared_once_with_the_base_configs_default():
    declared = pipeline.config_fields()
    dataset = base.get_config().dataset
    assert set(dataset) <= set(declared)  # the base config sets no field that no source reads
    for name in ("ucf101", "hmdb51", "kinetics", "folder", "list", "tfds:ucf101/ucf101_1_256"):
        for key, default in pipeline.config_fields(name).items():
            if key != "name":
                assert dataset[key] == default, (name, key)
    assert {"val_fraction", "train_list", "val_list", "class_names"} <= set(pipeline.config_fields("list")) | set(
        pipeline.config_fields("folder")
    )


# ---------------------------------------------------------------------------- every source decodes


@pytest.mark.parametrize("key", list(SOURCES))
def test_every_source_serves_training_and_evaluation_batches(trees, key):
    name, _, fields = SOURCES[key]
    root, expected = trees[key]
    source = pipeline.create(config(name, root, **fields))
    videos = source.index.train  # the reader's order (index tests check it against the expectations)
    train = list(source.train_batches(0, 0, 2))
    assert len(train) == source.info.num_train // 2 >= 1
    batch = train[0]
    assert batch["video"].shape == (2, NUM_FRAMES, CROP, CROP, 3) and batch["video"].dtype == np.uint8
    assert batch["mask"].all() and batch["video"].std() > 0
    order = epoch_order(0, 0, source.info.num_train)[:2]
    np.testing.assert_array_equal(batch["label"], [[v.label for v in videos if v.found][i] for i in order])
    evals = list(source.eval_batches(4))
    mask = np.concatenate([b["mask"] for b in evals])
    vids = np.concatenate([b["video_index"] for b in evals])[mask]
    # 8-frame videos in 4-frame clips: 2 clips each, .mkv and .webm (no frame count in the header) too
    np.testing.assert_array_equal(vids, np.repeat(np.arange(source.info.num_eval), 2))
    labels = np.concatenate([b["label"] for b in evals])[mask]
    np.testing.assert_array_equal(labels[::2], [v.label for v in source.index.val if v.found])
    assert not source.skipped_files()
    source.close()


def test_prepare_works_for_any_file_dataset(trees, tmp_path):
    root, expected = trees["folder split"]
    out = str(tmp_path / "prepared")
    written = prepare.prepare(root, out, workers=1, keyframe_every=4, dataset="folder")
    assert set(written["videos"]) == set(expected["train"]) | set(expected["val"])
    assert os.path.isfile(os.path.join(out, "train", "cat", "sub dir", "b clip.MP4.avi"))
    assert os.path.isfile(os.path.join(out, "train", "café", "crème brûlée.avi"))  # .avi keeps its name
    c = config("folder", root, prepared_dir=out)
    pipeline.validate(c)
    source = pipeline.create(c)
    assert source.info == pipeline.create(config("folder", root)).info
    assert all(row.path.startswith(out) and row.frames == fd.FRAMES for row in source.train + source.val)
    assert next(source.train_batches(0, 0, 2))["mask"].all()
    with pytest.raises(ValueError, match="quantizer': 3.*quantizer': 5.*new --out"):  # a rerun, other settings
        prepare.prepare(root, out, workers=1, keyframe_every=4, quantizer=5, dataset="folder")
    assert prepare.prepare(root, out, workers=1, keyframe_every=4, dataset="folder") == written  # same: kept
    old = tmp_path / "an earlier version's copies"
    old.mkdir()
    (old / "index.json").write_text("{}")
    with pytest.raises(ValueError, match="not empty and has no prepare.json"):
        prepare.prepare(root, str(old), workers=1, dataset="folder")
    lists = prepare.prepare(trees["list"][0], str(tmp_path / "lists"), workers=1, dataset="list", **LISTS)
    assert set(lists["videos"]) == set(fd.LIST_VIDEOS)
