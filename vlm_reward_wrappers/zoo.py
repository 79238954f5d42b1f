"""RL Baselines3 Zoo: train with the learned reward from Zoo's command line, on Zoo's tuned hyperparameters.

A Python config file for Zoo's ``--conf-file``::

    # learned_reward.py
    from vlm_reward_wrappers.zoo import learned_reward_hyperparams
    hyperparams = {"Pendulum-v1": learned_reward_hyperparams("sac", "Pendulum-v1", labeler="simulated-vlm")}

    python -m rl_zoo3.train --algo sac --env Pendulum-v1 --conf-file learned_reward.py

:func:`learned_reward_hyperparams` fills Zoo's own entries, which a YAML file can hold as well:
``env_kwargs: {render_mode: rgb_array}``, ``env_wrapper: vlm_reward_wrappers.zoo.frames_in_info``,
``vec_env_wrapper`` with ``vlm_reward_wrappers.zoo.learned_reward`` and its arguments, and
``callback: vlm_reward_wrappers.VLMMetricsCallback``. Only ``replay_buffer_class`` needs the Python file:
Zoo evaluates that string inside its own module, where no class of ours is defined.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import gymnasium as gym
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import VecEnv

from vlm_reward_wrappers.envs.tasks import goal_for
from vlm_reward_wrappers.label_store import LabelStore
from vlm_reward_wrappers.replay import RelabelingReplayBuffer
from vlm_reward_wrappers.wrappers import FrameInfoWrapper, VLMRewardVecEnvWrapper

logger = logging.getLogger(__name__)

ZOO_EXTRA = "RL Zoo is not installed: pip install 'vlm-reward-wrappers[zoo]'"


def _import_zoo():
    try:
        import rl_zoo3
    except ImportError as error:
        raise ImportError(ZOO_EXTRA) from error
    return rl_zoo3


def _zoo_evaluation_env() -> bool:
    """Whether Zoo is making its evaluation env: its ``ExperimentManager.create_envs(eval_env=True)`` is
    on the call stack (Zoo passes the same wrappers to its training and evaluation envs)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_name == "create_envs" and frame.f_globals.get("__name__", "").startswith("rl_zoo3"):
            return bool(frame.f_locals.get("eval_env", False))
        frame = frame.f_back
    return False


def make_labeler_by_name(name: str, seed: int = 0, **options: Any):
    """A labeler named as on the command line (``oracle``, ``simulated-vlm``, ``llama``, ``openai``, ``clip``,
    ``human``) with the command line's options by their Python names (``target_accuracy=0.75``,
    ``model_path=...``); the others keep the command line's defaults."""
    from vlm_reward_wrappers.cli import labeler_options, make_labeler

    defaults = vars(labeler_options().parse_args([]))
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown labeler options {sorted(unknown)}: choose from {sorted(defaults)}")
    return make_labeler(argparse.Namespace(**{**defaults, **options, "labeler": name, "seed": seed}))


def frames_in_info(env: gym.Env) -> gym.Env:
    """Zoo's ``env_wrapper`` entry: ``env`` in :class:`FrameInfoWrapper`, so each env renders its frames in
    its own worker; Zoo's evaluation env is returned as it is (it scores nothing, and Zoo makes it without
    the config's ``env_kwargs``, so it does not render)."""
    return env if _zoo_evaluation_env() else FrameInfoWrapper(env)


def learned_reward(venv: VecEnv, goal: Optional[str] = None, labeler: str = "simulated-vlm",
                   labeler_options: Optional[Dict[str, Any]] = None, seed: int = 0, **settings: Any) -> VecEnv:
    """Zoo's ``vec_env_wrapper`` entry: ``venv`` with the learned reward (:class:`VLMRewardVecEnvWrapper`).

    Zoo's evaluation env is returned as it is: it keeps the env's true reward, so Zoo's evaluations and
    best model are judged on the true return, and no second learner asks for labels. (SB3's evaluation
    reads returns from the Monitor below any reward wrapper, so they would be true returns either way.)

    :param venv: the VecEnv Zoo made, its envs created with ``render_mode="rgb_array"``.
    :param goal: the task in words; default: RL-VLM-F's wording for known env ids (``goal_for``).
    :param labeler: a labeler's command-line name (:func:`make_labeler_by_name`).
    :param labeler_options: the labeler's command-line options by Python name.
    :param seed: seed of the labeler and the learner.
    :param settings: :class:`VLMRewardVecEnvWrapper` arguments (``config``, any ``LearnerConfig`` setting,
        ``label_store`` as a :class:`LabelStore` or its file's path, ``score_in_buffer``, ...).
    """
    if _zoo_evaluation_env():
        return venv
    goal = goal or goal_for(venv.get_attr("spec", [0])[0].id)
    if isinstance(settings.get("label_store"), (str, Path)):  # a config file names the store's file
        settings["label_store"] = LabelStore(settings["label_store"])
    return VLMRewardVecEnvWrapper(venv, goal, make_labeler_by_name(labeler, seed, **(labeler_options or {})),
                                  seed=seed, **settings)


def zoo_tuned_hyperparams(algo: str, env_id: str) -> Dict[str, Any]:
    """Zoo's tuned hyperparameters of ``algo`` on ``env_id`` (its ``hyperparams/<algo>.yml``)."""
    import yaml

    path = Path(_import_zoo().__file__).parent / "hyperparams" / f"{algo}.yml"
    if not path.exists():
        raise ValueError(f"RL Zoo has no hyperparameter file for {algo!r} ({path.name}): pass base=... instead")
    tuned = yaml.safe_load(path.read_text())
    if env_id not in tuned:
        raise ValueError(f"RL Zoo has no tuned {algo} hyperparameters for {env_id!r}: pass base=... with your own")
    return dict(tuned[env_id])


def learned_reward_hyperparams(algo: str, env_id: str, labeler: str = "simulated-vlm",
                               labeler_options: Optional[Dict[str, Any]] = None, goal: Optional[str] = None,
                               base: Optional[Dict[str, Any]] = None, **settings: Any) -> Dict[str, Any]:
    """One env's entry of a Zoo config file: ``base`` (default: Zoo's tuned hyperparameters of ``algo`` on
    ``env_id``) with the learned reward in Zoo's entries: rendering, :func:`frames_in_info` in each env,
    :func:`learned_reward` around the VecEnv, :class:`VLMMetricsCallback`, and for off-policy algorithms
    :class:`RelabelingReplayBuffer`.

    :param algo: Zoo's name of the algorithm ("sac", "ppo", "tqc", ...).
    :param env_id: the Gymnasium id Zoo trains on.
    :param labeler: as :func:`learned_reward` takes it.
    :param labeler_options: as :func:`learned_reward` takes them.
    :param goal: as :func:`learned_reward` takes it.
    :param settings: learner settings, as :func:`learned_reward` takes them.
    :param base: hyperparameters to start from instead of Zoo's tuned ones.
    """
    _import_zoo()
    from rl_zoo3.utils import ALGOS

    if algo not in ALGOS:
        raise ValueError(f"unknown Zoo algorithm {algo!r}: choose one of {sorted(ALGOS)}")
    hyperparams = dict(base) if base is not None else zoo_tuned_hyperparams(algo, env_id)
    listed = lambda key: [] if hyperparams.get(key) is None else (  # noqa: E731
        list(hyperparams[key]) if isinstance(hyperparams[key], list) else [hyperparams[key]])
    wrapper = {"labeler": labeler, "labeler_options": labeler_options or {}, "goal": goal, **settings}
    hyperparams.update(
        env_kwargs={**hyperparams.get("env_kwargs", {}), "render_mode": "rgb_array"},
        env_wrapper=[*listed("env_wrapper"), "vlm_reward_wrappers.zoo.frames_in_info"],
        vec_env_wrapper=[*listed("vec_env_wrapper"), {"vlm_reward_wrappers.zoo.learned_reward": wrapper}],
        callback=[*listed("callback"), "vlm_reward_wrappers.VLMMetricsCallback"],
    )
    if issubclass(ALGOS[algo], OffPolicyAlgorithm):
        hyperparams["replay_buffer_class"] = RelabelingReplayBuffer
    return hyperparams
