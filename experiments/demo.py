"""The demo on the embedded synthetic_motion dataset: a tiny Semi-ResNet-18 on 2 CPU cores.

    python -m semicnn_jax.main --workdir=runs/demo --config=experiments/demo.py

Clips of 8 frames at 48x48 whose class (8 kinds of motion) no single frame reveals; 20 epochs of
128 steps of 32 clips. Its time and accuracy curve are in ``benchmarks/README.md``.

lr 0.02 with dampening 0 is twice the paper's step (its lr 0.1 with dampening 0.9 moves like lr
0.01 with dampening 0); larger rates stall at chance (the model collapses to the class prior), and
at 32x32 (a 2x2 map at the temporal stage) learning starts later. The learning rate is cut x0.1
after 3 epochs without a better eval loss: an earlier cut can come before the sense of rotation is
learnt and freeze it at chance.
"""

from experiments import base


def get_config():
    config = base.get_config("semi_resnet18")
    config.model.width = 0.125
    config.dataset.name = "synthetic_motion"
    config.dataset.train_size = 4096
    config.dataset.eval_size = 512
    config.dataset.fresh_clips = False  # True: new training clips every epoch (unlimited data)
    config.num_frames = 8
    config.crop_size = 48
    config.per_device_batch_size = 32
    config.accumulation_steps = 1
    config.learning_rate = 0.02
    config.dampening = 0.0
    config.weight_decay = 5e-4
    config.plateau_patience = 3
    config.num_epochs = 20
    config.log_every_steps = 32
    return config
