from setuptools import find_packages, setup

setup(
    name="semicnn_jax",
    version="0.1.0",
    description="Semi-CNN video action recognition in JAX/Flax",
    packages=find_packages(include=["semicnn_jax", "semicnn_jax.*", "experiments"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10", "flax>=0.12", "optax>=0.2.8", "orbax-checkpoint>=0.12", "clu>=0.0.12",
        "ml_collections>=1.0", "absl-py", "numpy", "av>=14", "grain>=0.2.18", "matplotlib", "tensorflow-cpu",
        "tensorboard", "tensorflow-datasets",
    ],
    extras_require={
        "cuda12": ["jax[cuda12]>=0.10"],
        "torch": ["torch==2.14.1", "torchvision==0.29.1"],
        "test": ["torch==2.14.1", "torchvision==0.29.1", "pytest", "pytest-xdist"],
    },
)
