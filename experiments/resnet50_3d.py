"""resnet50_3d on UCF-101 split 1 with the paper's recipe (experiments/base.py)."""

from experiments import base


def get_config():
    return base.get_config("resnet50_3d")
