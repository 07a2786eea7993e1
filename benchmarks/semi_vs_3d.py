"""The paper's comparison where it runs on a CPU: Semi-ResNet-18 vs 3D ResNet-18 on synthetic_motion.

Both models at the same width, clip size, steps and recipe (experiments/demo.py, with fewer
epochs by default so that both runs fit in about 15 minutes on 2 CPU cores); prints final eval
accuracies, parameter counts, wall time and training steps per second side by side.

    python benchmarks/semi_vs_3d.py [--epochs 5] [--width 0.125] [--workdir /tmp/semi_vs_3d]

Steps per second is the whole run's steps over its wall time (rendering, evaluation, compilation
and checkpoints included), so it is comparable between the two rows of one run only.
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments import demo  # noqa: E402
from semicnn_jax import models, train  # noqa: E402

MODELS = ("semi_resnet18", "resnet18_3d")


def run(name: str, args) -> dict:
    config = demo.get_config()
    config.model.name = name
    config.model.width = args.width
    config.num_epochs = args.epochs
    workdir = os.path.join(args.workdir, name)
    shutil.rmtree(workdir, ignore_errors=True)
    start, cpu_start = time.time(), time.process_time()
    train.train_and_evaluate(config, workdir)
    seconds, cpu = time.time() - start, time.process_time() - cpu_start
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        curve = [json.loads(line) for line in f]
    last = curve[-1]
    clip = (1, config.num_frames, config.crop_size, config.crop_size, 3)
    model = models.create(name, num_classes=8, width=args.width)
    return {
        "model": name,
        "params": models.num_params(models.abstract_variables(model, clip)["params"]),
        "top1": last["eval/top1"],
        "top5": last["eval/top5"],
        "loss": last["eval/loss"],
        "train_top1": last["train/top1"],
        "seconds": seconds,
        "cpu": cpu,
        "steps": last["step"],
        "curve": [round(100 * r["eval/top1"], 1) for r in curve],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--width", type=float, default=demo.get_config().model.width)
    parser.add_argument("--workdir", default="/tmp/semi_vs_3d")
    args = parser.parse_args()
    rows = [run(name, args) for name in MODELS]
    config = demo.get_config()
    print(
        f"\nsynthetic_motion, {config.num_frames} x {config.crop_size} x {config.crop_size} clips, width "
        f"{args.width}, {args.epochs} epochs of the demo recipe (experiments/demo.py has "
        f"{config.num_epochs}), same steps for both\n"
    )
    print(
        "| model | parameters | eval top-1 | eval top-5 | eval loss | train top-1 | steps | wall s | CPU s | steps/s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['params']:,} | {100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % | "
            f"{r['loss']:.3f} | {100 * r['train_top1']:.1f} % | {r['steps']} | {r['seconds']:.0f} | "
            f"{r['cpu']:.0f} | {r['steps'] / r['seconds']:.2f} |"
        )
    print()
    for r in rows:
        print(f"{r['model']} eval top-1 per epoch (%): {r['curve']}")


if __name__ == "__main__":
    main()
