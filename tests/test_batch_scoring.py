"""score_in_buffer: the algorithm's buffer scores rewards in batches where it consumes them, and the rewards
the agent learns from are the reward model's, as when each step is scored, timeout bootstrap included."""

import numpy as np
import pytest
from stable_baselines3 import A2C, PPO, SAC
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env

from conftest import GOAL
from vlm_reward_wrappers import (
    BatchScoringRolloutBuffer,
    FrameInfoWrapper,
    OracleLabeler,
    RelabelingReplayBuffer,
    VLMRewardVecEnvWrapper,
    VLMRewardWrapper,
)
from vlm_reward_wrappers.replay import REWARD_INPUT_KEY

SCHEDULE = dict(seed_steps=100, query_every=100, pairs_per_query=10, epochs_per_update=5, seed=0, asynchronous=False)


class RolloutRewards(BaseCallback):
    """After each rollout is scored: the stored rewards, their inputs' scores and where episodes were cut."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper, self.rollouts, self._inputs, self._truncated = wrapper, [], [], []

    def _on_rollout_start(self):
        self._inputs, self._truncated = [], []

    def _on_step(self):
        infos = self.locals["infos"]
        self._inputs.append(np.stack([info[REWARD_INPUT_KEY] for info in infos]))
        self._truncated.append([info.get("TimeLimit.truncated", False) for info in infos])
        return True

    def _on_rollout_end(self):
        buffer = self.model.rollout_buffer
        inputs = np.stack(self._inputs)
        # The model as it was when the buffer scored the rollout (compute_returns ran just before).
        scores = self.wrapper.learner.reward_model.predict(inputs.reshape(-1, *inputs.shape[2:])).reshape(buffer.rewards.shape)
        self.rollouts.append((buffer.rewards.copy(), scores, np.array(self._truncated)))


@pytest.mark.parametrize("algo", [PPO, A2C])
def test_a_rollout_is_scored_by_the_model_with_the_timeout_bootstrap_kept(cartpole, algo):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), score_in_buffer=True, **SCHEDULE)
    kwargs = dict(n_steps=128, batch_size=64, n_epochs=1) if algo is PPO else dict(n_steps=128)
    model = algo("MlpPolicy", env, rollout_buffer_class=BatchScoringRolloutBuffer,
                 rollout_buffer_kwargs=dict(wrapper=env), seed=0, **kwargs)
    recorder = RolloutRewards(env)
    model.learn(512, callback=recorder)
    env.close()
    assert len(recorder.rollouts) == 4 and env.learner.metrics["cost/scoring_s"] == 0  # none scored per step
    truncations = 0
    for rewards, scores, truncated in recorder.rollouts:
        assert np.abs(scores).max() > 0
        np.testing.assert_allclose(rewards[~truncated], scores[~truncated], atol=1e-5)
        # CartPoleAngle truncates at 100 steps: SB3 added gamma * V(terminal observation) there, and it stays.
        truncations += truncated.sum()
        assert np.all(np.abs(rewards[truncated] - scores[truncated]) > 1e-6)
    assert truncations >= 4


def test_a_vecenv_over_subprocesses_is_scored_per_rollout():
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, wrapper_class=FrameInfoWrapper,
                        env_kwargs=dict(render_mode="rgb_array"), seed=0)
    env = VLMRewardVecEnvWrapper(venv, GOAL, OracleLabeler(), score_in_buffer=True, **SCHEDULE)
    model = PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0,
                rollout_buffer_class=BatchScoringRolloutBuffer, rollout_buffer_kwargs=dict(wrapper=env))
    recorder = RolloutRewards(env)
    model.learn(512, callback=recorder)
    env.close()
    rewards, scores, truncated = recorder.rollouts[-1]
    assert rewards.shape == (64, 2)
    np.testing.assert_allclose(rewards[~truncated], scores[~truncated], atol=1e-5)


def test_sac_samples_the_models_rewards_scored_in_the_buffer(cartpole):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), score_in_buffer=True, **SCHEDULE)
    model = SAC("MlpPolicy", env, replay_buffer_class=RelabelingReplayBuffer, learning_starts=100, seed=0,
                train_freq=4, replay_buffer_kwargs=dict(wrapper=env, relabel_in_background=False))
    model.learn(400)
    buffer, learner = model.replay_buffer, env.learner
    buffer.sample(8)  # scores what came in since the last sample
    size = buffer.size()
    np.testing.assert_allclose(buffer.rewards[:size, 0], learner.reward_model.predict(buffer.reward_inputs[:size, 0]),
                               atol=1e-5)
    assert learner.metrics["cost/scoring_s"] == 0 and learner.reward_model.version >= 2
    env.close()


def test_a_run_that_leaves_rewards_to_no_buffer_is_told_what_to_pass(cartpole):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), score_in_buffer=True, **SCHEDULE)
    with pytest.raises(ValueError, match="rollout_buffer_class=BatchScoringRolloutBuffer"):
        PPO("MlpPolicy", env, n_steps=64, batch_size=64, seed=0).learn(128)
    env.close()


def test_the_rollout_buffer_needs_a_wrapper_that_defers(cartpole):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), **SCHEDULE)
    with pytest.raises(ValueError, match="score_in_buffer=True"):
        PPO("MlpPolicy", env, rollout_buffer_class=BatchScoringRolloutBuffer, rollout_buffer_kwargs=dict(wrapper=env))
    with pytest.raises(ValueError, match="rollout_buffer_kwargs=dict"):
        PPO("MlpPolicy", env, rollout_buffer_class=BatchScoringRolloutBuffer)
    env.close()
