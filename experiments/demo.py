"""The demo on the embedded synthetic_motion dataset: a tiny Semi-ResNet-18 on 2 CPU cores.

    python -m semicnn_jax.main --workdir=runs/demo --config=experiments/demo.py

Clips of 8 frames at 48x48 whose class (8 kinds of motion) no single frame reveals. 12 epochs
of 128 steps of 32 clips take about 4.5 minutes on 2 idle CPU cores. Measured: eval top-1 45% after
epoch 3, 78% after 4, about 85% at the end; translations, growing and shrinking are ~99% right,
but rotate_cw vs rotate_ccw stays a coin flip at this size and budget (ceiling 87.5%).

lr 0.02 with dampening 0 is twice the paper's step (its lr 0.1 with dampening 0.9 moves like lr
0.01 with dampening 0); lr >= 0.04 stalls at chance (the model collapses to the class prior),
and at 32x32 (a 2x2 map at the temporal stage, after 16x spatial downsampling) learning starts
several epochs later. The learning rate is cut x0.1 after 2 epochs without a better eval loss.
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
    config.plateau_patience = 1
    config.num_epochs = 12
    config.log_every_steps = 32
    return config
