"""Training-loader throughput (clips/s) at 16x224x224: the .avi release against its prepared copy.

    python benchmarks/loader_throughput.py                  # 24 videos of 150 frames, workers 1 and 2
    python benchmarks/loader_throughput.py --videos 48 --batches 24 --workers 1,2,4
    python benchmarks/loader_throughput.py --source 1280x720 --short_side 240 --videos 8 --frames 60  # HD videos

Writes a fake release (official layout, 320x240 MPEG-4 .avi at ~600 kbit/s like UCF-101, detailed
panning content) twice: with a keyframe every 12 frames (FFmpeg's default) and every 250 (a long-GOP
encoder such as Xvid's default; how often UCF-101's files have keyframes varies); then prepares the
second with ``semicnn_jax.data.prepare`` (``--quantizer``, default 3 like ``prepare``'s). For each format it reports

* the prepared copy's fidelity: PSNR of its centre crops (what evaluation reads) against the release's;
* per core: clips/s of one training example (``video.read_train_clip``, what the loader's workers
  run) built in this process, from CPU time (robust to other jobs on the machine), split into
  decoding alone (``video.decode_clip``: the YUV frames) and the rest (crop + resize + flip + RGB);
* the loader: clips/s of ``UCF101.train_batches`` (grain workers, batch 8) after a warm-up, wall
  clock, and that rate per worker.

The machine's load average is printed: on a shared machine, wall-clock rates with as many workers as
cores mostly measure the other jobs.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests")]
import fake_ucf101  # noqa: E402  (the test helper that writes releases)

from benchmarks.machine import cpu_model  # noqa: E402
from experiments import base  # noqa: E402
from semicnn_jax.data import index, pipeline, prepare, video  # noqa: E402

CLASSES = ("ApplyEyeMakeup", "Basketball", "HandstandPushups", "YoYo")


def write_release(
    root: str, videos: int, frames: int, keyframe_every: int, width: int = 320, height: int = 240
) -> None:
    names = []
    for i in range(videos):
        cls = CLASSES[i % len(CLASSES)]
        name = fake_ucf101.ucf_name(cls, 8 + i // len(CLASSES), 1)
        fake_ucf101.write_video(
            os.path.join(root, "UCF-101", name),
            fake_ucf101.textured_frames(i, frames, height, width),
            gop_size=keyframe_every,
            bit_rate=600_000 * width * height // (320 * 240),  # UCF-101's bits per pixel
        )
        names.append((name, i % len(CLASSES)))
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists, exist_ok=True)
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES))
    with open(os.path.join(lists, "trainlist01.txt"), "w") as f:  # every video but the first 2 (the test list)
        f.writelines(f"{n} {y + 1}\n" for n, y in names[2:])
    with open(os.path.join(lists, "testlist01.txt"), "w") as f:
        f.writelines(f"{n}\n" for n, _ in names[:2])


def config_for(data_dir: str, prepared_dir: str, workers: int, args):
    config = base.get_config("semi_resnet18")
    config.dataset.data_dir, config.dataset.prepared_dir, config.dataset.workers = data_dir, prepared_dir, workers
    config.num_frames, config.crop_size, config.num_epochs = args.num_frames, args.crop, 10_000
    return config


def per_core(source, clips: int, args) -> tuple[float, float]:
    """(decode, crop+resize+flip+RGB) CPU seconds per training clip, built in this process, after an
    untimed pass over the same clips (a worker configures one filter graph per crop box once)."""
    for i in range(clips):
        video.read_train_clip(
            source.train[i % len(source.train)].path,
            video.train_params(np.random.default_rng([0, 0, i])),
            args.num_frames,
            args.crop,
        )
    decode = total = 0.0
    for i in range(clips):
        row = source.train[i % len(source.train)]
        params = video.train_params(np.random.default_rng([0, 0, i]))
        start = time.process_time()
        video.decode_clip(row[0], args.num_frames, params["position"])
        middle = time.process_time()
        video.read_train_clip(row[0], params, args.num_frames, args.crop)
        decode, total = decode + middle - start, total + time.process_time() - middle
    return decode / clips, (total - decode) / clips


def psnr_to_release(source, release, args, videos: int = 4) -> float:
    """PSNR (dB) of the first ``videos`` training videos' centre crops (what evaluation reads, at
    ``args.crop``) in ``source`` against the same crops of ``release``: what preparing a copy loses."""
    errors = [
        np.mean(
            (video.read_eval_frames(a.path, args.crop).astype(float) - video.read_eval_frames(b.path, args.crop)) ** 2
        )
        for a, b in zip(source.train[:videos], release.train[:videos])
    ]
    return 10 * np.log10(255**2 / np.mean(errors))


def loader_rate(source, args) -> float:
    """Wall-clock clips/s of the training loader after ``args.warmup`` batches."""
    steps = source.info.num_train // args.batch
    batches = (b for epoch in range(10_000) for b in source.train_batches(epoch, 0, args.batch))
    for _ in range(args.warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(args.batches):
        assert next(batches)["video"].shape == (args.batch, args.num_frames, args.crop, args.crop, 3)
    rate = args.batches * args.batch / (time.perf_counter() - start)
    source.close()
    return rate if steps else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=24)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per loader measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--clips", type=int, default=96, help="clips per per-core measurement")
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--num_frames", type=int, default=16)
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--quantizer", type=int, default=3, help="prepare's --quantizer")
    parser.add_argument("--short_side", type=int, default=0, help="prepare's --short_side")
    parser.add_argument("--source", default="320x240", help="the fake release's frame size, WxH")
    parser.add_argument("--dir", default="", help="where to write the videos (default: a temporary folder)")
    args = parser.parse_args()
    root = args.dir or tempfile.mkdtemp(prefix="loader_throughput_")
    print(f"CPU: {cpu_model()}; {os.cpu_count()} cores; load average before: {os.getloadavg()}; videos in {root}")
    formats = {}
    width, height = (int(n) for n in args.source.split("x"))
    for keyframe_every in (12, 250):
        data_dir = os.path.join(root, f"avi_{args.source}_k{keyframe_every}")
        if not os.path.exists(os.path.join(data_dir, "ucfTrainTestlist")):
            write_release(data_dir, args.videos, args.frames, keyframe_every, width, height)
        formats[f".avi, keyframe every {keyframe_every}"] = (data_dir, "")
    shrunk = f", short side {args.short_side}" if args.short_side else ""
    prepared = os.path.join(root, f"prepared_{args.source}_q{args.quantizer}_s{args.short_side}")
    if not os.path.exists(os.path.join(prepared, index.PREPARED_INDEX)):
        prepare.prepare(
            formats[".avi, keyframe every 250"][0],
            prepared,
            workers=1,
            keyframe_every=args.num_frames,
            quantizer=args.quantizer,
            short_side=args.short_side,
        )
    formats[f"prepared (MPEG-4, keyframe every {args.num_frames}, quantiser {args.quantizer}{shrunk})"] = (
        formats[".avi, keyframe every 250"][0],
        prepared,
    )

    def size(folder):
        return sum(
            os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(folder) for f in fs if f.endswith(".avi")
        )

    rows = []
    for name, (data_dir, prepared_dir) in formats.items():
        kib = size(prepared_dir or os.path.join(data_dir, "UCF-101")) / 1024 / (args.videos * args.frames)
        source = pipeline.create(config_for(data_dir, prepared_dir, 0, args))
        decode, augment = per_core(source, args.clips, args)
        psnr = (
            psnr_to_release(source, pipeline.create(config_for(data_dir, "", 0, args)), args) if prepared_dir else None
        )
        row = [
            name,
            f"{kib:.1f}",
            f"{psnr:.1f}" if psnr else "(release)",
            f"{1000 * decode:.1f}",
            f"{1000 * augment:.1f}",
        ]
        row.append(f"{1 / (decode + augment):.0f}")
        for workers in (int(w) for w in args.workers.split(",")):
            rate = loader_rate(pipeline.create(config_for(data_dir, prepared_dir, workers, args)), args)
            row.append(f"{rate:.0f} ({rate / workers:.0f}/worker)")
        rows.append(row)
    header = [
        "format",
        "KiB/frame",
        "PSNR to the release, dB",
        "decode ms/clip",
        "crop+resize+RGB ms/clip",
        "clips/s/core (CPU time)",
    ]
    header += [f"loader, {w} worker(s), clips/s" for w in args.workers.split(",")]
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    print(
        f"\n{args.num_frames}x{args.crop}x{args.crop} training clips, batch {args.batch}, "
        f"{args.videos} videos of {args.frames} frames at {args.source}"
    )
    for r in [header, ["-" * w for w in widths]] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
