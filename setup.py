"""Packaging for vlm_reward_wrappers.

torch must be the CPU build on machines without a GPU: install ``torch==2.13.0`` first and keep it with
``-c .ci/constraints.txt`` (``bash .ci/setup`` does both), or pip pulls several GB of CUDA packages.
"""

from setuptools import find_packages, setup

EXTRAS = {
    "llama": ["llama-cpp-python>=0.3.36"],
    "server": ["llama-cpp-python[server]>=0.3.36"],
    "clip": ["open-clip-torch>=3.3"],
    # RL-VLM-F's ResNet-18 reward net (reward_net="resnet18").
    "resnet": ["torchvision"],
    "mujoco": ["mujoco==3.3.*"],
    "metaworld": ["metaworld>=3.1.1", "mujoco==3.3.*"],
    "offline": ["minari[hdf5]>=0.5.4"],
    # The label browser (vlm-reward inspect) and the human labeler's page.
    "web": ["fastapi>=0.110", "uvicorn>=0.29"],
    # Learning curves of the benchmarks (benchmarks/run.py, benchmarks/imitation_compare.py).
    "plot": ["matplotlib"],
    # sb3-contrib's algorithms (TQC, CrossQ, RecurrentPPO, ...): the release that matches SB3's.
    "contrib": ["sb3-contrib>=2.4"],
    # RL Baselines3 Zoo: train with the learned reward from its command line and YAML files.
    "zoo": ["rl_zoo3>=2.4"],
    # The benchmark grid's cells as Ray tasks, on this machine or a cluster (benchmarks/run.py --ray).
    "ray": ["ray>=2.9"],
    # The documentation site (mkdocs build --strict).
    "docs": ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=0.25"],
}
# Offline RL for benchmarks/offline_iql.py: d3rlpy 2.8.1 pins gymnasium 1.0.0, which metaworld refuses.
EXTRAS["bench"] = ["minari[hdf5]>=0.5.4", "d3rlpy==2.8.0", *EXTRAS["plot"]]
EXTRAS["dev"] = sorted(
    {"pytest>=8", "ruff>=0.6", "gguf>=0.19.0", "selenium>=4.20", "tensorboard", *EXTRAS["web"], *EXTRAS["server"],
     *EXTRAS["clip"], *EXTRAS["resnet"], *EXTRAS["metaworld"], *EXTRAS["bench"], *EXTRAS["plot"], *EXTRAS["contrib"],
     *EXTRAS["zoo"], *EXTRAS["ray"], *EXTRAS["docs"]}
)
EXTRAS["all"] = sorted({dep for deps in EXTRAS.values() for dep in deps})

setup(
    name="vlm-reward-wrappers",
    version="0.1.0",
    description="Wrap any Gymnasium env, name the goal, and train SB3 agents on a reward learned from a "
    "vision-language model's preferences between rendered frames (RL-VLM-F, RG-VLM).",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    license="MIT",
    packages=find_packages(include=["vlm_reward_wrappers", "vlm_reward_wrappers.*"]),
    install_requires=[
        "gymnasium>=1.1",
        "stable-baselines3>=2.4",
        "torch>=2.1",
        "numpy",
        "pillow",
        "psutil",  # a replay buffer of frames that would not fit in memory is refused up front
        "pygame",
        "tqdm",
    ],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["vlm-reward=vlm_reward_wrappers.cli:main"]},
)
