"""The demo on the embedded synthetic_motion dataset: a tiny Semi-ResNet-18 on 2 CPU cores.

    python -m semicnn_jax.main --workdir=runs/demo --config=experiments/demo.py

Clips of 8 frames at 48x48 whose class (8 kinds of motion) no single frame reveals.
"""

from experiments import base


def get_config():
    config = base.get_config("semi_resnet18")
    config.model.width = 0.125
    config.dataset.name = "synthetic_motion"
    config.dataset.train_size = 4096
    config.dataset.eval_size = 512
    config.num_frames = 8
    config.crop_size = 48
    config.per_device_batch_size = 32
    config.accumulation_steps = 1
    config.learning_rate = 0.02
    config.dampening = 0.0
    config.weight_decay = 5e-4
    config.plateau_patience = 2
    config.num_epochs = 10
    config.log_every_steps = 32
    return config
