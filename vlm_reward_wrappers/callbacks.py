"""SB3 callbacks: the learner's metrics and the true episode return in SB3's logger."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback

from vlm_reward_wrappers.learner import PreferenceLearner


def find_learner(source: Any) -> PreferenceLearner:
    """The learner of a wrapper (or of a VecEnv stack around one), or the learner itself."""
    if isinstance(source, PreferenceLearner):
        return source
    env = source
    while env is not None:
        learner = getattr(env, "learner", None)
        if isinstance(learner, PreferenceLearner):
            return learner
        env = getattr(env, "venv", None) or getattr(env, "env", None)
    raise TypeError(
        f"no PreferenceLearner found in {type(source).__name__}: pass the VLMRewardWrapper, the "
        "VLMRewardVecEnvWrapper or their .learner"
    )


class VLMMetricsCallback(BaseCallback):
    """Records the learner's metrics (labels used, label accuracy, reward-model loss, ...) in SB3's
    logger under ``vlm/``, and the true return and length of recent episodes as
    ``vlm/gt_episode_return`` and ``vlm/gt_episode_length`` (SB3's Monitor sees only the learned
    reward), so they appear in its console output and TensorBoard.

    :param env: the wrapper the algorithm trains on, or its learner.
    :param window: episodes averaged, as SB3's ``stats_window_size``.
    """

    def __init__(self, env: Any, window: int = 100, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.learner = find_learner(env)
        self.episodes: deque = deque(maxlen=window)

    def _on_step(self) -> bool:
        infos = self.locals.get("infos")
        assert infos is not None, "VLMMetricsCallback reads the step's infos from the algorithm's locals"
        self.episodes.extend(info["gt_episode"] for info in infos if "gt_episode" in info)
        return True

    def _on_rollout_end(self) -> None:
        for name, value in self.learner.metrics.items():
            self.logger.record(f"vlm/{name}", value)
        if self.episodes:
            self.logger.record("vlm/gt_episode_return", float(np.mean([e["r"] for e in self.episodes])))
            self.logger.record("vlm/gt_episode_length", float(np.mean([e["l"] for e in self.episodes])))
