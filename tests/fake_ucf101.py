"""A tiny fake UCF-101 release in the official layout, encoded with PyAV (for the tests and the benchmark).

UCF-101/<Class>/v_<Class>_gGG_cCC.avi   (HandstandPushups files say HandStandPushups, as in the release)
ucfTrainTestlist/classInd.txt, trainlist01.txt, testlist01.txt
"""

from __future__ import annotations

import fractions
import os

import av
import numpy as np

CLASSES = ("ApplyEyeMakeup", "Basketball", "HandstandPushups")


def frames_for(seed: int, num_frames: int, height: int = 240, width: int = 320) -> np.ndarray:
    """A smooth colour pattern sliding right by 4 pixels a frame (compresses well): ``uint8 [T, H, W, 3]``."""
    rng = np.random.default_rng(seed)
    y, x = np.ogrid[0:height, 0 : width + 4 * num_frames]
    phase, colour = rng.uniform(0, 2 * np.pi, 3), rng.uniform(60, 200, 3).astype(np.float32)
    wave = np.sin(x[..., None] / 23.0 + phase) * np.cos(y[..., None] / 31.0 + phase)
    pattern = np.clip(colour + 50 * wave, 0, 255).astype(np.uint8)
    start = 4 * (num_frames - 1 - np.arange(num_frames))
    return np.stack([pattern[:, s : s + width] for s in start])


def textured_frames(seed: int, num_frames: int, height: int = 240, width: int = 320) -> np.ndarray:
    """Detailed content panning 3 pixels a frame (compresses about like UCF-101 at ~600 kbit/s)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    wide = width + 3 * num_frames
    coarse = rng.integers(0, 256, (height // 6 + 1, wide // 6 + 1, 3), np.uint8)
    image = np.asarray(Image.fromarray(coarse).resize((wide, height), Image.BICUBIC), np.float32)
    image = np.clip(0.85 * image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return np.stack([image[:, 3 * t : 3 * t + width] for t in range(num_frames)])


def write_video(
    path: str,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "mpeg4",
    audio: bool = False,
    gop_size: int = 12,
    bit_rate: int = 2_000_000,
) -> str:
    """Encodes ``uint8 [T, H, W, 3]`` frames (MPEG-4 part 2 by default, like UCF-101's Xvid)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with av.open(path, "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop_size
        stream.bit_rate = bit_rate
        sound = None
        if audio:
            sound = container.add_stream("aac" if path.endswith(".mp4") else "mp2", rate=44100)
            sound.layout = "mono"
        samples_per_frame = 44100 // fps
        for i, image in enumerate(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            if sound is not None:
                tone = np.sin(np.arange(samples_per_frame) * 0.05 + i).astype(np.float32)[None]
                chunk = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
                chunk.sample_rate = 44100
                chunk.pts = i * samples_per_frame
                chunk.time_base = fractions.Fraction(1, 44100)
                container.mux(sound.encode(chunk))
        container.mux(stream.encode())
        if sound is not None:
            container.mux(sound.encode())
    return path


def ucf_name(cls: str, group: int, clip: int, ext: str = ".avi") -> str:
    stem = "HandStandPushups" if cls == "HandstandPushups" else cls
    return f"{cls}/v_{stem}_g{group:02d}_c{clip:02d}{ext}"


def make_tree(
    root: str,
    train_groups=(8, 9),
    test_groups=(1,),
    clips=(1, 2),
    lengths=(20, 9, 33),
    height: int = 240,
    width: int = 320,
    corrupt: bool = True,
) -> dict:
    """Writes the fake release under ``root``; returns what it wrote (for the assertions).

    Video ``k`` has ``lengths[k % len(lengths)]`` frames; the first test video of the second class is an
    ``.mp4`` of another size and frame rate with audio, the last training video of the first class has
    audio, and with ``corrupt`` the first training video of the last class is garbage bytes.
    """
    videos = os.path.join(root, "UCF-101")
    lists = os.path.join(root, "ucfTrainTestlist")
    os.makedirs(lists, exist_ok=True)
    written = {"train": [], "test": [], "lengths": {}, "corrupt": []}
    k = 0
    for label, cls in enumerate(CLASSES):
        for split, groups in (("train", train_groups), ("test", test_groups)):
            for g in groups:
                for c in clips:
                    name = ucf_name(cls, g, c)
                    path = os.path.join(videos, name)
                    length = lengths[k % len(lengths)]
                    if split == "test" and label == 1 and (g, c) == (test_groups[0], clips[0]):
                        name = ucf_name(cls, g, c, ".mp4")
                        path = os.path.join(videos, name)
                        write_video(path, frames_for(k, length, 96, 128), fps=30, audio=True)
                    elif corrupt and split == "train" and label == len(CLASSES) - 1 and not written["corrupt"]:
                        os.makedirs(os.path.dirname(path), exist_ok=True)
                        with open(path, "wb") as f:
                            f.write(b"RIFF\x00\x00\x00\x00AVI garbage " * 40)
                        written["corrupt"].append(path)
                    else:
                        audio = split == "train" and label == 0 and (g, c) == (train_groups[-1], clips[-1])
                        write_video(path, frames_for(k, length, height, width), audio=audio)
                    written[split].append((name, label))
                    written["lengths"][name] = length
                    k += 1
    with open(os.path.join(lists, "classInd.txt"), "w") as f:
        f.writelines(f"{i + 1} {cls}\r\n" for i, cls in enumerate(CLASSES))  # the release uses CRLF
    with open(os.path.join(lists, "trainlist01.txt"), "w") as f:
        f.writelines(f"{name} {label + 1}\r\n" for name, label in written["train"])
    with open(os.path.join(lists, "testlist01.txt"), "w") as f:
        f.writelines(f"{name}\r\n" for name, _ in written["test"])
    return written
