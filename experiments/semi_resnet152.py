"""semi_resnet152 on UCF-101 split 1 with the paper's recipe (experiments/base.py)."""

from experiments import base


def get_config():
    return base.get_config("semi_resnet152")
