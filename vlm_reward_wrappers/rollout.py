"""Rewards scored where the algorithm consumes them, in batches, instead of one frame per env step.

With ``score_in_buffer=True`` a wrapper only renders and stores each step's reward-model input and hands
the agent a reward of 0.0 (PEBBLE's exploration reward while it is paid); the algorithm's buffer scores
the stored inputs in one batch where it needs them. For PPO and A2C::

    env = VLMRewardWrapper(env, goal, labeler, score_in_buffer=True)
    PPO("MlpPolicy", env, rollout_buffer_class=BatchScoringRolloutBuffer, rollout_buffer_kwargs=dict(wrapper=env))

and for SAC, TD3 and DQN, :class:`~vlm_reward_wrappers.replay.RelabelingReplayBuffer` with
``replay_buffer_kwargs=dict(wrapper=env)``. The buffer is handed the wrapper, as SB3 hands
``HerReplayBuffer`` its env: nothing is looked up. With a rollout buffer, :class:`~vlm_reward_wrappers.VLMRewardWrapper`
also prepares each step's input in a worker process while the next step renders (the buffer waits for the
last when it scores).
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple, Union

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer

from vlm_reward_wrappers.frames import PreparedFrame

#: Info key, True on a step whose reward the algorithm's buffer is to score.
DEFERRED_KEY = "vlm_reward_deferred"


class DeferredRewards:
    """The reward-model inputs of the steps a wrapper left to the algorithm's buffer, in step order.

    A buffer :meth:`claim` s them when it is made. A wrapper whose deferred rewards nobody claims would
    train the agent on zeros: :meth:`add` says so, with the fix, on the third step.
    """

    def __init__(self) -> None:
        self.claimed_by: Optional[str] = None
        self._steps = 0
        self._inputs: List[Union[np.ndarray, PreparedFrame]] = []
        self._mask: List[np.ndarray] = []

    def claim(self, kind: str) -> None:
        """``kind``: "rollout" (the inputs are kept here until :meth:`take`) or "replay" (the replay buffer
        keeps them itself, from ``info``)."""
        self.claimed_by = kind

    def add(self, inputs: Union[np.ndarray, PreparedFrame], deferred: np.ndarray) -> None:
        """One env step: (n_envs, ...) reward-model inputs, or the input still being prepared, and
        (n_envs,) whether each reward is deferred."""
        self._steps += 1
        if self.claimed_by is None and self._steps >= 3:
            raise ValueError(
                "score_in_buffer=True leaves each step's reward to the algorithm's buffer, but no buffer takes it "
                "(the agent would learn from zeros): pass rollout_buffer_class=BatchScoringRolloutBuffer, "
                "rollout_buffer_kwargs=dict(wrapper=env) to PPO or A2C, or replay_buffer_class=RelabelingReplayBuffer, "
                "replay_buffer_kwargs=dict(wrapper=env) to SAC, TD3 or DQN"
            )
        if self.claimed_by == "rollout":
            self._inputs.append(inputs if isinstance(inputs, PreparedFrame) else np.array(inputs))
            self._mask.append(np.asarray(deferred, dtype=bool))

    def take(self) -> Tuple[np.ndarray, np.ndarray]:
        """(T, n_envs, ...) inputs and (T, n_envs) deferred flags of the steps since the last take."""
        inputs = np.stack([x.result() if isinstance(x, PreparedFrame) else x for x in self._inputs])
        mask = np.stack(self._mask)
        self.clear()
        return inputs, mask

    def clear(self) -> None:
        self._inputs, self._mask = [], []

    def __len__(self) -> int:
        return len(self._inputs)


class BatchScoringRolloutBuffer(RolloutBuffer):
    """SB3's :class:`RolloutBuffer` that scores a whole rollout's rewards with the reward model, in batches,
    before returns and advantages are computed (``score_in_buffer=True`` on the wrapper).

    The learned reward is added to what SB3 stored, which on a truncated step already holds its
    ``gamma * V(terminal observation)`` bootstrap, so the timeout term stays right.

    Arguments are SB3's, plus:

    :param wrapper: the wrapped env the algorithm trains on (a :class:`~vlm_reward_wrappers.VLMRewardWrapper`
        or :class:`~vlm_reward_wrappers.VLMRewardVecEnvWrapper`, under any SB3 wrapping).
    :param scoring_batch_size: inputs per reward-model forward pass.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: Union[torch.device, str] = "auto",
        gae_lambda: float = 1,
        gamma: float = 0.99,
        n_envs: int = 1,
        wrapper: Any = None,
        scoring_batch_size: int = 256,
    ) -> None:
        if wrapper is None:
            raise ValueError("BatchScoringRolloutBuffer scores the wrapper's stored frames: pass "
                             "rollout_buffer_kwargs=dict(wrapper=env)")
        from vlm_reward_wrappers.callbacks import find_reward_wrapper  # callbacks imports the learner: late

        wrapper = find_reward_wrapper(wrapper)
        self.deferred = wrapper.deferred_rewards
        if self.deferred is None:
            raise ValueError("the wrapper scores every step itself: make it with score_in_buffer=True to have "
                             "BatchScoringRolloutBuffer score whole rollouts")
        self.deferred.claim("rollout")
        self.reward_model = wrapper.learner.reward_model
        self.scoring_batch_size = scoring_batch_size
        super().__init__(buffer_size, observation_space, action_space, device, gae_lambda, gamma, n_envs)

    def reset(self) -> None:
        super().reset()
        # A rollout starts here: steps of one cut short (learn() stopped mid-rollout) are not this one's.
        if getattr(self, "deferred", None) is not None:
            self.deferred.clear()

    def compute_returns_and_advantage(self, last_values: torch.Tensor, dones: np.ndarray) -> None:
        inputs, deferred = self.deferred.take()
        if inputs.shape[:2] != (self.buffer_size, self.n_envs):
            raise RuntimeError(f"the wrapper stored {inputs.shape[0]} steps of {inputs.shape[1]} envs for a rollout of "
                               f"{self.buffer_size} x {self.n_envs}: was the env stepped outside the algorithm?")
        flat = inputs.reshape(-1, *inputs.shape[2:])
        scores = self.reward_model.predict(flat, self.scoring_batch_size).reshape(self.buffer_size, self.n_envs)
        self.rewards += np.where(deferred, scores, 0.0).astype(np.float32)
        super().compute_returns_and_advantage(last_values, dones)
