"""UCF-101 input pipeline on a tiny fake release the tests encode with PyAV (tests/fake_ucf101.py)."""

import os

import fake_ucf101
import grain
import jax
import numpy as np
import pytest

from semicnn_jax.data import video

# ---------------------------------------------------------------------------- video.py


def test_read_video_frames_shapes_and_content(tmp_path):
    frames = fake_ucf101.frames_for(0, 7)
    path = fake_ucf101.write_video(str(tmp_path / "a.avi"), frames)
    got = video.read_video(path)
    assert got.dtype == np.uint8 and got.shape == (7, 240, 320, 3)
    assert np.abs(got.astype(int) - frames).mean() < 6  # lossy MPEG-4, same picture
    assert video.probe_num_frames(path) == 7


def test_read_video_mp4_with_audio_other_size_and_rate(tmp_path):
    path = fake_ucf101.write_video(str(tmp_path / "b.mp4"), fake_ucf101.frames_for(1, 5, 96, 128), fps=30, audio=True)
    assert video.read_video(path).shape == (5, 96, 128, 3)


@pytest.mark.parametrize("content", [None, b"", b"RIFF\x00\x00\x00\x00AVI garbage" * 20])
def test_read_video_unreadable_file_is_a_video_error_naming_the_path(tmp_path, content):
    path = str(tmp_path / "bad.avi")
    if content is not None:
        with open(path, "wb") as f:
            f.write(content)
    with pytest.raises(video.VideoError, match="bad.avi") as err:
        video.read_video(path)
    assert err.value.path == path and isinstance(err.value, ValueError)


def test_read_video_truncated_file(tmp_path):
    path = fake_ucf101.write_video(str(tmp_path / "t.avi"), fake_ucf101.frames_for(2, 12))
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:400])  # headers only
    with pytest.raises(video.VideoError, match="t.avi"):
        video.read_video(path)


def test_eval_clips_non_overlapping_loop_padded_centre_crop():
    length, n = 21, 8
    frames = np.zeros((length, 30, 40, 3), np.uint8)
    frames[:, :, :5] = 255  # left border outside the centre crop
    frames[..., 1] = np.arange(length, dtype=np.uint8)[:, None, None] * 10  # frame index in green
    clips = video.eval_clips(frames, n, 16)
    assert clips.shape == (3, n, 16, 16, 3) and clips.dtype == np.uint8
    assert (clips[..., 0] == 0).all()  # the centre 30x30 box excludes the white border
    index = clips[:, :, 8, 8, 1] // 10
    np.testing.assert_array_equal(index[0], np.arange(8))
    np.testing.assert_array_equal(index[1], np.arange(8, 16))
    np.testing.assert_array_equal(index[2], [16, 17, 18, 19, 20, 16, 17, 18])  # loop-padded
    short = video.eval_clips(frames[:3], n, 16)
    assert short.shape == (1, n, 16, 16, 3)
    np.testing.assert_array_equal(short[0, :, 0, 0, 1] // 10, [0, 1, 2, 0, 1, 2, 0, 1])


@pytest.mark.parametrize("name,gop", [("s.avi", 5), ("s.mp4", 4)])
def test_read_clip_equals_the_clip_of_the_whole_video(tmp_path, name, gop):
    path = fake_ucf101.write_video(
        str(tmp_path / name), fake_ucf101.frames_for(3, 30, 48, 64), gop_size=gop, audio=name.endswith(".mp4")
    )
    full = video.read_video(path)
    for num_frames, position in [(8, 0.0), (8, 0.5), (8, 0.99), (40, 0.3)]:
        start = video.clip_start(len(full), num_frames, position)
        expected = full[video.loop_indices(start, num_frames, len(full))]
        np.testing.assert_array_equal(video.read_clip(path, num_frames, position), expected)


def test_train_params_cover_the_papers_crops_and_train_clip_applies_them():
    params = [video.train_params(np.random.default_rng([0, 0, i])) for i in range(400)]
    assert {p["scale"] for p in params} == set(video.CROP_SCALES)
    assert {p["corner"] for p in params} == set(video.CROP_POSITIONS)
    assert 0.4 < np.mean([p["flip"] for p in params]) < 0.6
    frames = np.random.default_rng(0).integers(0, 255, (3, 40, 60, 3), np.uint8)
    p = {"position": 0.0, "scale": 0.5, "corner": "bottom_right", "flip": True}
    assert video.crop_box(40, 60, 0.5, "bottom_right") == (40, 20, 60, 40)
    np.testing.assert_array_equal(video.train_clip(frames, p, 20), frames[:, 20:40, 40:60][:, :, ::-1])


def test_crop_boxes_have_even_sides():
    assert video.crop_box(240, 320) == (40, 0, 280, 240)
    assert video.crop_box(240, 320, 2**-0.25, "top_right") == (120, 0, 320, 200)  # 201.8 -> 200
    assert video.crop_box(240, 320, 2**-0.75, "bottom_left") == (0, 98, 142, 240)
    assert video.crop_box(52, 72, 2**-0.25, "center") == (15, 5, 57, 47)  # odd offsets: chroma sits between


def _pil_crops(frames, box, size, flip=False):
    """Independent reference: Pillow's bilinear resize of each RGB frame's box."""
    from PIL import Image

    left, top, right, bottom = box
    out = np.stack(
        [np.asarray(Image.fromarray(f[top:bottom, left:right]).resize((size, size), Image.BILINEAR)) for f in frames]
    )
    return out[:, :, ::-1] if flip else out


@pytest.mark.parametrize(
    "scale,corner,flip",
    [(1.0, "center", False), (2**-0.25, "center", True), (0.5, "bottom_right", False), (2**-0.75, "top_right", True)],
)
def test_read_train_clip_crops_the_decoded_frames_like_pillow(tmp_path, scale, corner, flip):
    path = fake_ucf101.write_video(str(tmp_path / "c.avi"), fake_ucf101.frames_for(4, 24, 52, 72), gop_size=6)
    params = {"position": 0.4, "scale": scale, "corner": corner, "flip": flip}
    got = video.read_train_clip(path, params, 8, 32)
    assert got.shape == (8, 32, 32, 3) and got.dtype == np.uint8
    import av
    from av.video.reformatter import Interpolation

    exact = (
        Interpolation.BICUBIC | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP | Interpolation.ACCURATE_RND
    )
    with av.open(path) as container:  # whole frames to RGB with interpolated chroma, then Pillow
        full = np.stack(
            [f.reformat(format="rgb24", interpolation=exact).to_ndarray() for f in container.decode(video=0)]
        )
    idx = video.loop_indices(video.clip_start(len(full), 8, 0.4), 8, len(full))
    expected = _pil_crops(full[idx], video.crop_box(52, 72, scale, corner), 32, flip)
    # 0.25 here; 0.67 with the chroma misplaced by the odd offsets of the (15, 5, 57, 47) box
    assert np.abs(got.astype(int) - expected).mean() < 0.4
    np.testing.assert_array_equal(video.read_train_clip(path, params, 8, 32), got)  # deterministic (cached graphs)
    arrays = video.train_clip(video.read_clip(path, 8, 0.4), params, 32)  # RGB frames, then crop + resize
    assert np.abs(arrays.astype(int) - got).mean() < 2


def test_read_eval_clips_agrees_with_eval_clips_of_the_frames(tmp_path):
    path = fake_ucf101.write_video(str(tmp_path / "e.avi"), fake_ucf101.frames_for(5, 21, 48, 64))
    got = video.read_eval_clips(path, 8, 24)
    frames = video.read_video(path)
    expected = video.eval_clips(frames, 8, 24)
    assert got.shape == expected.shape == (3, 8, 24, 24, 3)
    assert np.abs(got.astype(int) - expected).mean() < 2
    assert np.abs(got[0].astype(int) - _pil_crops(frames[:8], video.crop_box(48, 64), 24)).mean() < 2
    with pytest.raises(video.VideoError, match="missing.avi"):
        video.read_eval_clips(str(tmp_path / "missing.avi"), 8, 24)


# ---------------------------------------------------------------------------- the release and its source

from experiments import base  # noqa: E402
from semicnn_jax.data import pipeline, ucf101  # noqa: E402
from semicnn_jax.data.source import epoch_order  # noqa: E402

NUM_FRAMES, CROP = 16, 32


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("ucf"))
    return root, fake_ucf101.make_tree(root)


def ucf_config(data_dir, **dataset):
    config = base.get_config("semi_resnet18")
    config.dataset.data_dir = data_dir
    config.dataset.workers = 0
    config.dataset.update(dataset)
    config.num_frames, config.crop_size = NUM_FRAMES, CROP
    return config


def test_release_index_labels_split_membership_and_the_handstand_trap(release):
    root, written = release
    r = ucf101.read_index(ucf_config(root).dataset)
    assert r.class_names == fake_ucf101.CLASSES and not r.missing() and r.root == os.path.join(root, "UCF-101")
    assert [(v.rel, v.label) for v in r.train] == written["train"]
    assert [(v.rel, v.label) for v in r.val] == written["test"]
    handstand = [v.rel for v in r.train + r.val if v.label == 2]
    assert handstand and all(os.path.isfile(os.path.join(r.root, p)) and "v_HandStandPushups_" in p for p in handstand)
    with open(os.path.join(root, "ucfTrainTestlist", "testlist01.txt")) as f:
        assert "HandstandPushups/v_HandStandPushups_g01_c01.avi" in f.read()  # the list's spelling


@pytest.mark.parametrize("broken", ["classInd.txt", "trainlist01.txt", "testlist01.txt"])
def test_missing_index_file_is_an_error_naming_it(release, tmp_path, broken):
    import shutil

    root = str(tmp_path / "copy")
    os.makedirs(os.path.join(root, "ucfTrainTestlist"))
    os.symlink(os.path.join(release[0], "UCF-101"), os.path.join(root, "UCF-101"))
    for name in {"classInd.txt", "trainlist01.txt", "testlist01.txt"} - {broken}:
        shutil.copy(os.path.join(release[0], "ucfTrainTestlist", name), os.path.join(root, "ucfTrainTestlist"))
    with pytest.raises(ValueError, match=os.path.join(root, "ucfTrainTestlist", broken)):
        pipeline.validate(ucf_config(root))


def test_config_errors_name_the_key_or_path(release, tmp_path):
    root, written = release
    for key, value, match in [
        ("name", "ucf102", "ucf102"),
        ("split", 4, "split"),
        ("data_dir", "", "data_dir"),
        ("data_dir", str(tmp_path / "nowhere"), "nowhere"),
    ]:
        config = ucf_config(root)
        config.dataset[key] = value
        with pytest.raises(ValueError, match=match):
            pipeline.validate(config)


def test_a_listed_video_that_is_missing_fails_validation_or_is_skipped_and_named(release, tmp_path):
    root, written = release
    lists = tmp_path / "ucfTrainTestlist"
    lists.mkdir()
    os.symlink(os.path.join(root, "UCF-101"), tmp_path / "UCF-101")
    for name in ("classInd.txt", "testlist01.txt"):
        (lists / name).write_text(open(os.path.join(root, "ucfTrainTestlist", name)).read())
    train = open(os.path.join(root, "ucfTrainTestlist", "trainlist01.txt")).read()
    (lists / "trainlist01.txt").write_text(train + "Basketball/v_Basketball_g99_c09.avi 2\n")
    missing = str(tmp_path / "UCF-101" / "Basketball" / "v_Basketball_g99_c09.avi")
    with pytest.raises(ValueError, match=missing):
        pipeline.validate(ucf_config(str(tmp_path)))
    config = ucf_config(str(tmp_path), skip_missing=True)
    pipeline.validate(config)
    source = pipeline.create(config)
    assert source.info.num_train == len(written["train"]) + 1
    batches = list(source.train_batches(0, 0, source.info.num_train))
    assert batches[0]["mask"].sum() == source.info.num_train - 2  # the missing and the corrupt video
    corrupt = written["corrupt"][0].replace(root, str(tmp_path))  # through the symlink
    assert set(source.skipped_files()) == {missing, corrupt}


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def test_train_batches_shapes_labels_corrupt_file_and_determinism(release):
    root, written = release
    source = pipeline.create(ucf_config(root))
    info = source.info
    assert (info.num_train, info.num_eval, info.num_classes) == (12, 6, 3)
    batches = list(source.train_batches(epoch=0, start_step=0, global_batch=4))
    assert len(batches) == 3
    order = epoch_order(0, 0, info.num_train)
    labels = np.array([y for _, y in written["train"]])
    for step, batch in enumerate(batches):
        assert batch["video"].shape == (4, NUM_FRAMES, CROP, CROP, 3) and batch["video"].dtype == np.uint8
        assert batch["label"].dtype == np.int32 and batch["mask"].dtype == bool
        np.testing.assert_array_equal(batch["label"], labels[order[4 * step : 4 * step + 4]])
    corrupt = written["train"].index(
        next(e for e in written["train"] if os.path.join(root, "UCF-101", e[0]) == written["corrupt"][0])
    )
    masked = np.concatenate([b["mask"] for b in batches])
    assert not masked[list(order).index(corrupt)] and masked.sum() == 11
    assert not np.concatenate([b["video"] for b in batches])[~masked].any()
    assert list(source.skipped_files()) == written["corrupt"]
    assert_same_batches(batches, list(pipeline.create(ucf_config(root)).train_batches(0, 0, 4)))
    assert_same_batches(batches[1:], list(source.train_batches(0, 1, 4)))  # resume at step 1
    other = list(source.train_batches(1, 0, 4))
    assert not np.array_equal(other[0]["label"], batches[0]["label"]) or not np.array_equal(
        other[0]["video"], batches[0]["video"]
    )
    assert len(source.skipped_files()) == 1  # cumulative, named once


def test_each_process_gets_its_rows(release, monkeypatch):
    root, _ = release
    whole = list(pipeline.create(ucf_config(root)).train_batches(2, 0, 4))
    parts = []
    for index in (0, 1):
        monkeypatch.setattr(jax, "process_count", lambda: 2)
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        parts.append(list(pipeline.create(ucf_config(root)).train_batches(2, 0, 4)))
    monkeypatch.undo()
    for batch, first, second in zip(whole, *parts):
        for key in batch:
            np.testing.assert_array_equal(batch[key], np.concatenate([first[key], second[key]]))


def test_eval_batches_enumerate_every_clip_of_every_test_video(release):
    root, written = release
    source = pipeline.create(ucf_config(root))
    lengths = [written["lengths"][name] for name, _ in written["test"]]
    expected = [(v, k) for v, n in enumerate(lengths) for k in range(-(-n // NUM_FRAMES))]
    assert source.eval_clips() == expected
    batches = list(source.eval_batches(4))
    assert len(batches) == -(-len(expected) // 4)
    mask = np.concatenate([b["mask"] for b in batches])
    videos = np.concatenate([b["video_index"] for b in batches])[mask]
    labels = np.concatenate([b["label"] for b in batches])[mask]
    assert mask.sum() == len(expected) and not mask[len(expected) :].any()  # padding at the end
    np.testing.assert_array_equal(videos, [v for v, _ in expected])
    np.testing.assert_array_equal(labels, [written["test"][v][1] for v, _ in expected])
    clips = np.concatenate([b["video"] for b in batches])[mask]
    for v in (1, 2):  # a 3-clip .avi and the 128x96 .mp4 with audio
        path = os.path.join(root, "UCF-101", written["test"][v][0])
        np.testing.assert_array_equal(clips[videos == v], video.read_eval_clips(path, NUM_FRAMES, CROP))
        from_rgb = video.eval_clips(video.read_video(path), NUM_FRAMES, CROP)  # the array path (predict.py)
        assert np.abs(clips[videos == v].astype(int) - from_rgb).mean() < 2
    assert_same_batches(batches, list(source.eval_batches(4)))


def run_two_epochs(source):
    """Epoch 0 from step 1, an evaluation, epoch 1, an evaluation: what the training loop asks for."""
    return (
        list(source.train_batches(0, 1, 4))
        + list(source.eval_batches(4))
        + list(source.train_batches(1, 0, 4))
        + list(source.eval_batches(4))
    )


def test_worker_processes_give_the_same_batches_across_epochs_and_evaluations(release):
    root, written = release
    in_process = run_two_epochs(pipeline.create(ucf_config(root)))
    source = pipeline.create(ucf_config(root, workers=2))
    from_workers = run_two_epochs(source)
    assert_same_batches(in_process, from_workers)
    assert list(source.skipped_files()) == written["corrupt"]  # reported from the workers
    # built in shared memory by the workers, passed by name (not copied into a new block)
    assert all(isinstance(b["video"], grain.multiprocessing.SharedMemoryArray) for b in from_workers)
    assert not any(isinstance(b["video"], grain.multiprocessing.SharedMemoryArray) for b in in_process)
    source.close()


def test_prepared_copy_reads_like_the_release(release, tmp_path):
    import json

    from semicnn_jax.data import prepare

    root, written = release
    out = str(tmp_path / "prepared")
    index = prepare.prepare(root, out, workers=1)
    corrupt = os.path.relpath(written["corrupt"][0], os.path.join(root, "UCF-101"))
    assert index["videos"][corrupt] == {"error": "no video stream"}  # the reason the loaders give
    assert json.load(open(os.path.join(out, "index.json"))) == index
    original = pipeline.create(ucf_config(root))
    config = ucf_config(root, prepared_dir=out)
    pipeline.validate(config)
    prepared = pipeline.create(config)
    assert prepared.info == original.info and prepared.eval_clips() == original.eval_clips()
    a, b = list(original.train_batches(0, 0, 4)), list(prepared.train_batches(0, 0, 4))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["label"], y["label"])
        np.testing.assert_array_equal(x["mask"], y["mask"])
        # a second encoding of the decoded YUV (0.4-0.6); through RGB, the chroma subsampled twice: 1.0-1.3
        assert np.abs(x["video"].astype(int) - y["video"]).mean() < 0.8
    assert list(prepared.skipped_files()) == written["corrupt"]  # named by its release path
    os.remove(os.path.join(out, "index.json"))
    with pytest.raises(ValueError, match="index.json"):
        pipeline.validate(config)


# ---------------------------------------------------------------------------- TFDS


def test_tfds_source_offline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    config = ucf_config(str(tmp_path), name="tfds:ucf101/ucf101_1_256")
    config.num_frames, config.crop_size = 4, 16
    with pytest.raises(ValueError, match="tfds build ucf101/ucf101_1_256"):
        pipeline.validate(config)  # never downloads
    with tfds.testing.mock_data(num_examples=5):
        source = pipeline.create(config)
        assert (source.info.num_train, source.info.num_eval, source.info.num_classes) == (5, 5, 101)
        batches = list(source.train_batches(0, 0, 2))
        assert len(batches) == 2 and batches[0]["video"].shape == (2, 4, 16, 16, 3)
        assert batches[0]["video"].dtype == np.uint8 and batches[0]["label"].dtype == np.int32
        assert all(b["mask"].all() for b in batches)
        assert_same_batches(batches[1:], list(source.train_batches(0, 1, 2)))
        evals = list(source.eval_batches(4))
        clips = source.eval_clips()
        mask = np.concatenate([b["mask"] for b in evals])
        assert mask.sum() == len(clips) and {v for v, _ in clips} == set(range(5))
        np.testing.assert_array_equal(np.concatenate([b["video_index"] for b in evals])[mask], [v for v, _ in clips])


# Training end to end on the fake release: tests/test_finetune.py (it fine-tunes that run on another dataset).
