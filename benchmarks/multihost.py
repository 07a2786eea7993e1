"""Steps/s of one run as 2 processes x 1 device (jax.distributed on localhost, gloo collectives) against
1 process x 2 devices: the cost of the cross-process collectives (and of the per-step stop check).

    python benchmarks/multihost.py [--width=0.125 --frames=8 --size=64 --per_device=4]

Each layout trains ``semi_resnet18`` on synthetic_motion for A and then B steps (fresh workdirs);
steps/s = (B - A) / (time_B - time_A), so start-up, compilation and the final save cancel out.
"""

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, REPO)

from benchmarks.machine import cpu_model  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(layout: str, steps: int, args) -> float:
    """Seconds for one training run of ``steps`` steps in ``layout`` ('2x1' or '1x2')."""
    workdir = tempfile.mkdtemp(prefix=f"multihost_{layout}_")
    common = [
        sys.executable,
        "-m",
        "semicnn_jax.main",
        f"--workdir={workdir}",
        "--config=experiments/demo.py",
        f"--config.model.width={args.width}",
        f"--config.num_frames={args.frames}",
        f"--config.crop_size={args.size}",
        f"--config.per_device_batch_size={args.per_device}",
        "--config.dataset.train_size=100000",
        f"--config.max_steps={steps}",
        "--config.log_every_steps=1000",
    ]
    env = dict(os.environ, PYTHONPATH=REPO)
    start = time.perf_counter()
    if layout == "1x2":
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        subprocess.run(common, cwd=REPO, env=env, check=True, capture_output=True)
    else:
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        port = free_port()
        procs = [
            subprocess.Popen(
                common + [f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
                cwd=REPO,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            for i in range(2)
        ]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise RuntimeError(err.decode()[-2000:])
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--per_device", type=int, default=4)
    parser.add_argument("--steps", type=int, nargs=2, default=(5, 25))
    args = parser.parse_args()
    a, b = args.steps
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} (before)")
    print(
        f"semi_resnet18 width {args.width}, {args.frames}x{args.size}x{args.size} clips, global batch "
        f"{2 * args.per_device} (2 devices), steps {a} -> {b}\n"
    )
    print("| layout | steps/s | ms/step |\n|---|---|---|")
    rates = {}
    for layout, name in (("1x2", "1 process x 2 devices"), ("2x1", "2 processes x 1 device")):
        rate = (b - a) / (run(layout, b, args) - run(layout, a, args))
        rates[layout] = rate
        print(f"| {name} | {rate:.2f} | {1000 / rate:.0f} |", flush=True)
    print(
        f"\n2 processes / 1 process: {rates['2x1'] / rates['1x2']:.2f}x the steps/s; "
        f"load average {os.getloadavg()[0]:.2f} (after)"
    )


if __name__ == "__main__":
    main()
