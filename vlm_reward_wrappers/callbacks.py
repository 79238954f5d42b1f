"""SB3 callbacks: relabel an off-policy replay buffer after each reward-model update; log metrics."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm

from vlm_reward_wrappers.learner import PreferenceLearner


def _find_learner(source: Any) -> PreferenceLearner:
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


class RelabelReplayBufferCallback(BaseCallback):
    """Recomputes every reward in an off-policy replay buffer after each reward-model update.

    This is PEBBLE's and RL-VLM-F's relabelling: without it, SAC/TD3/DQN keep learning from rewards
    the old reward model gave. The callback keeps the reward-model input (the frame, by default) of
    every stored transition in an array beside the replay buffer, grown as the buffer fills and never
    larger than it (64x64 frames: 12 KB a transition). Observation-input models are relabelled from
    the buffer's own ``next_observations`` with no extra memory.

    :param env: the VLMRewardWrapper / VLMRewardVecEnvWrapper the algorithm trains on, or its learner.
    :param batch_size: inputs per reward-model forward pass while relabelling.
    """

    def __init__(self, env: Any, batch_size: int = 1024, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.learner = _find_learner(env)
        self.batch_size = batch_size
        self._inputs: Optional[np.ndarray] = None
        self._version = self.learner.reward_model.version
        #: Number of relabelling passes done.
        self.relabels = 0

    def _init_callback(self) -> None:
        if not isinstance(self.model, OffPolicyAlgorithm):
            raise TypeError(
                f"RelabelReplayBufferCallback is for off-policy algorithms (SAC, TD3, DQN); "
                f"{type(self.model).__name__} collects fresh rollouts and needs no relabelling"
            )
        # learn() runs this on every call: frames kept for a replay buffer that goes on must survive it.
        if self.learner.reward_model.reward_input == "frame" and self._inputs is None:
            n_envs = self.model.n_envs
            first = min(1024, self.model.replay_buffer.buffer_size)
            self._inputs = np.zeros((first, n_envs, *self.learner.reward_model.input_shape), dtype=np.uint8)

    def _on_step(self) -> bool:
        buffer = self.model.replay_buffer
        if self._inputs is not None:
            # on_step runs just before SB3 stores this step's transition at buffer.pos.
            if buffer.pos >= len(self._inputs):
                grown = min(buffer.buffer_size, 2 * len(self._inputs))
                self._inputs = np.concatenate([self._inputs, np.zeros((grown - len(self._inputs), *self._inputs.shape[1:]), np.uint8)])
            self._inputs[buffer.pos] = self.learner.last_inputs
        if self.learner.reward_model.version != self._version:
            self._version = self.learner.reward_model.version
            self.relabel()
        return True

    def relabel(self) -> None:
        """Recompute every stored reward with the current reward model."""
        buffer = self.model.replay_buffer
        size = buffer.buffer_size if buffer.full else buffer.pos
        if size == 0:
            return
        if self._inputs is not None:
            inputs = self._inputs[:size]
        elif buffer.next_observations is not None:
            inputs = buffer.next_observations[:size]
        else:  # optimize_memory_usage: the next observation is stored in the following slot
            inputs = buffer.observations[(np.arange(size) + 1) % buffer.buffer_size]
        flat = inputs.reshape(-1, *inputs.shape[2:])
        rewards = self.learner.reward_model.predict(flat, self.batch_size).reshape(size, -1)
        buffer.rewards[:size] = rewards
        self.relabels += 1


class VLMMetricsCallback(BaseCallback):
    """Records the learner's metrics (labels used, label accuracy, reward-model loss, ...) in SB3's
    logger under ``vlm/``, so they appear in its console output and TensorBoard.

    :param env: the wrapper the algorithm trains on, or its learner.
    """

    def __init__(self, env: Any, verbose: int = 0) -> None:
        super().__init__(verbose)
        self.learner = _find_learner(env)

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        for name, value in self.learner.metrics.items():
            self.logger.record(f"vlm/{name}", value)
