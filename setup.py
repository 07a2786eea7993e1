from setuptools import find_packages, setup

TORCH = ["torch>=2.4", "torchvision>=0.19"]  # ImageNet weight import and the reference tests

setup(
    name="semicnn_jax",
    version="0.1.0",
    description="Semi-CNN video action recognition in JAX/Flax",
    packages=find_packages(include=["semicnn_jax", "semicnn_jax.*", "experiments"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.10,<0.11",
        "flax>=0.12,<0.13",
        "optax>=0.2.8,<0.3",
        "orbax-checkpoint>=0.12,<0.13",
        "clu>=0.0.12",
        "ml_collections>=1.0",
        "absl-py>=2.0",
        "numpy>=2.0",
        "av>=14",
        "grain>=0.2.18,<0.3",
        "matplotlib>=3.8",
        "pillow>=10",
        "tensorflow-cpu>=2.18",
        "tensorboard>=2.18",
        "tensorflow-datasets>=4.9.7",
    ],
    extras_require={
        "cuda12": ["jax[cuda12]>=0.10,<0.11"],
        "torch": TORCH,
        "test": TORCH + ["pytest>=8", "pytest-xdist>=3.5", "ruff>=0.17,<0.18"],
    },
)
