"""On synthetic_motion, a single-frame classifier stays near chance while the demo model learns.

The clip model is the tiny demo run shared with the prediction tests (``demo_run.trained_demo``:
Semi-ResNet-18 at width 1/8 on 8 x 48 x 48 clips, the demo's recipe, trained until its eval top-1
reaches 70%). The single-frame model is the very same model, recipe, seed and number of steps on
clips of ``num_frames=1``: the anchor frame, which by construction carries no class information.
"""

import demo_run
import pytest

from semicnn_jax import train
from semicnn_jax.data import synthetic_motion

CHANCE = 1.0 / synthetic_motion.NUM_CLASSES
EVAL_SIZE = 512  # chance 0.125 +- 0.015 (one standard deviation)


@pytest.mark.slow
def test_clip_model_learns_while_a_single_frame_model_stays_at_chance(tmp_path_factory):
    clip_dir, clip_config = demo_run.trained_demo(tmp_path_factory)
    clip = demo_run.last_metrics(clip_dir)
    assert clip["eval/top1"] >= demo_run.DEMO_RUN_TARGET

    frame_dir = str(tmp_path_factory.mktemp("single_frame"))
    config = clip_config
    config.update_from_flattened_dict({"num_frames": 1, "dataset.eval_size": EVAL_SIZE, "num_epochs": clip["epoch"]})
    train.train_and_evaluate(config, frame_dir)
    frame = demo_run.last_metrics(frame_dir)
    assert frame["step"] == clip["step"], (frame["step"], clip["step"])
    assert frame["eval/top1"] <= CHANCE + 0.06, (
        f"single-frame model: eval top-1 {frame['eval/top1']:.3f} after {frame['step']} steps "
        f"(the clip model: {clip['eval/top1']:.3f})"
    )
