"""The paper's comparison where it runs on a CPU: Semi-ResNet-18 vs 3D ResNet-18 on synthetic_motion.

Both models at the same width, clip size, steps and recipe (experiments/demo.py); prints final
eval accuracies and parameter counts side by side.

    python benchmarks/semi_vs_3d.py [--epochs 8] [--width 0.125] [--workdir /tmp/semi_vs_3d]
"""

import argparse
import json
import os
import shutil
import time

from experiments import demo
from semicnn_jax import models, train


def run(name: str, args) -> dict:
    config = demo.get_config()
    config.model.name = name
    config.model.width = args.width
    config.num_epochs = args.epochs
    workdir = os.path.join(args.workdir, name)
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.time()
    train.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        last = [json.loads(line) for line in f][-1]
    clip = (1, config.num_frames, config.crop_size, config.crop_size, 3)
    model = models.create(name, num_classes=8, width=args.width)
    return {"model": name, "params": models.num_params(models.abstract_variables(model, clip)["params"]),
            "top1": last["eval/top1"], "top5": last["eval/top5"], "loss": last["eval/loss"],
            "train_top1": last["train/top1"], "seconds": time.time() - start, "steps": last["step"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=demo.get_config().num_epochs)
    parser.add_argument("--width", type=float, default=demo.get_config().model.width)
    parser.add_argument("--workdir", default="/tmp/semi_vs_3d")
    args = parser.parse_args()
    rows = [run(name, args) for name in ("semi_resnet18", "resnet18_3d")]
    print(f"\nsynthetic_motion, width {args.width}, {args.epochs} epochs, same recipe and steps\n")
    print("| model | parameters | eval top-1 | eval top-5 | eval loss | train top-1 | steps | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['params']:,} | {100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % | "
              f"{r['loss']:.3f} | {100 * r['train_top1']:.1f} % | {r['steps']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
