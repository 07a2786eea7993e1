"""One run over two processes on localhost (jax.distributed, gloo collectives): the parameters equal one
process with two devices; SIGTERM to one process stops both at the same step and the rerun resumes
exactly; kill -9 of one process ends the other within the heartbeat bound."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import demo_run
import jax
import numpy as np
import pytest

from semicnn_jax import exits, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")
HEARTBEAT_S = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(folder, **overrides) -> str:
    """A config file holding ``demo_run.tiny_run_config(**overrides)`` (the in-process runs' config)."""
    path = os.path.join(str(folder), "tiny.py")
    with open(path, "w") as f:
        f.write(
            f"import sys\nsys.path[:0] = [{REPO!r}, {TESTS!r}]\nimport demo_run\n\n\n"
            f"def get_config():\n    return demo_run.tiny_run_config(**{overrides!r})\n"
        )
    return path


def start(workdir, config, *extra):
    """Two processes x one CPU device each, the same command but for --process_id."""
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
    )
    port = free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "semicnn_jax.main",
                f"--workdir={workdir}",
                f"--config={config}",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]


def finish(processes, timeout=600):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [p.returncode for p in processes], outputs


def wait_for(path, processes, timeout=300):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes), finish(processes)
        time.sleep(0.05)


def params_at(workdir, step):
    return train.checkpoint_manager(workdir, demo_run.tiny_run_config()).restore(step)["params"]


def assert_close(tree, reference):
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), tree, reference)


def test_two_processes_stopped_by_sigterm_and_rerun_train_what_one_process_with_two_devices_trains(
    tmp_path, tmp_path_factory
):
    """The tiny run (2 epochs of 8 steps, global batch 8) by two processes of one device each, SIGTERM to
    process 1 in epoch 2, then the same commands again: the parameters equal one uninterrupted process
    with two devices (so both the cross-process step and the resume are exact)."""
    config = write_config(tmp_path)
    workdir = str(tmp_path / "run")
    processes = start(workdir, config)
    wait_for(os.path.join(workdir, "checkpoints", "8"), processes)  # epoch 1 done: now mid-run
    processes[1].send_signal(signal.SIGTERM)
    codes, outputs = finish(processes)
    assert codes == [exits.PREEMPTED] * 2, outputs
    steps = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert len(steps) == 2 and 8 < steps[1] <= 16, steps  # both saved the one step they stopped at
    assert all(f"stopped at step {steps[1]}" in out for out in outputs), outputs
    assert "[process 0] " in outputs[0] and "[process 1] " in outputs[1]

    codes, outputs = finish(start(workdir, config))  # the same commands again
    assert codes == [0, 0], outputs
    reference, _ = demo_run.shared_tiny_run(tmp_path_factory)  # 1 process x 2 devices, the same config
    assert_close(params_at(workdir, 16), params_at(reference, 16))
    kept = sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))
    assert kept == sorted({8, steps[1], 16})  # one checkpoint per step, not one per process
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]  # written once, by process 0


def test_a_killed_process_ends_the_other_within_the_heartbeat_bound(tmp_path):
    workdir = str(tmp_path / "run")
    processes = start(workdir, write_config(tmp_path, num_epochs=100), f"--heartbeat_timeout_seconds={HEARTBEAT_S}")
    wait_for(os.path.join(workdir, "checkpoints", "8"), processes)
    processes[1].kill()
    killed = time.monotonic()
    try:
        output = processes[0].communicate(timeout=HEARTBEAT_S * 6)[0]
    except subprocess.TimeoutExpired:
        processes[0].kill()
        pytest.fail(f"process 0 still running {HEARTBEAT_S * 6} s after process 1 was killed")
    elapsed = time.monotonic() - killed
    assert processes[0].returncode != 0, output[-3000:]
    assert elapsed < HEARTBEAT_S * 6, elapsed
