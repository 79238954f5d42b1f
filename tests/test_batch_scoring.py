"""score_in_buffer: the algorithm's buffer scores rewards in batches where it consumes them, and the rewards
the agent learns from are the reward model's, as when each step is scored, timeout bootstrap included."""

import os

import gymnasium as gym
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
from vlm_reward_wrappers import lifecycle

SCHEDULE = dict(seed_steps=100, query_every=100, pairs_per_query=10, epochs_per_update=5, seed=0, asynchronous=False)


class RolloutRewards(BaseCallback):
    """After each rollout is scored: the stored rewards, their inputs' scores and where episodes were cut."""

    def __init__(self, wrapper):
        super().__init__()
        self.wrapper, self.rollouts, self._truncated = wrapper, [], []
        deferred, take = wrapper.deferred_rewards, wrapper.deferred_rewards.take

        def take_and_keep():  # the inputs the buffer scores, as it takes them from the wrapper
            self._inputs, mask = take()
            return self._inputs, mask

        deferred.take = take_and_keep

    def _on_rollout_start(self):
        self._truncated = []

    def _on_step(self):
        infos = self.locals["infos"]
        self._truncated.append([info.get("TimeLimit.truncated", False) for info in infos])
        return True

    def _on_rollout_end(self):
        buffer = self.model.rollout_buffer
        inputs = self._inputs
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


def _stepped(env, steps: int, rollout_buffer: bool):
    """``env`` after ``steps`` seeded random steps (resets included), its deferred inputs taken as a rollout
    buffer takes them, then closed."""
    if rollout_buffer:
        env.deferred_rewards.claim("rollout")
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
    inputs = env.deferred_rewards.take()[0] if rollout_buffer else None
    env.learner.query_frames.flush()
    env.close()
    return env, inputs


class SameArrayRender(gym.Wrapper):
    """An env that renders into one array, overwritten every step (as some renderers do)."""

    def render(self):
        frame = self.env.render()
        self.__dict__.setdefault("array", np.empty_like(frame))
        np.copyto(self.array, frame)
        return self.array


@pytest.mark.parametrize("make_env", [lambda: gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"),
                                      lambda: SameArrayRender(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"))],
                         ids=["new-array", "same-array"])
def test_inputs_prepared_beside_the_loop_are_each_steps_own(make_env):
    # With a rollout buffer the wrapper prepares a step's input while the next step renders; the learner and
    # the buffer must get exactly what preparing it at once gives, in step order, every query frame included.
    settings = dict(seed_steps=10**9, reward_image_size=48, query_image_size=100, query_frame_every=7, seed=0)
    ahead, inputs = _stepped(VLMRewardWrapper(make_env(), GOAL, OracleLabeler(), score_in_buffer=True, **settings),
                             150, rollout_buffer=True)
    at_once, _ = _stepped(VLMRewardWrapper(make_env(), GOAL, OracleLabeler(), **settings), 150, rollout_buffer=False)
    assert not lifecycle.is_tracked(ahead._preparer)
    assert ahead._preparer.in_loop == (0 if os.name == "posix" else 150)  # all in the worker where one runs
    buffer, expected = ahead.learner.buffer, at_once.learner.buffer
    assert buffer.added == expected.added == 150
    np.testing.assert_array_equal(buffer.frames[:150], expected.frames[:150])
    np.testing.assert_array_equal(buffer.gt_rewards, expected.gt_rewards)
    np.testing.assert_array_equal(inputs[:, 0], expected.frames[:150])
    assert len(ahead.learner.query_frames) == len(at_once.learner.query_frames) == 22
    for step in (0, 70, 147):
        np.testing.assert_array_equal(ahead.learner.query_frames.get(step), at_once.learner.query_frames.get(step))


class FloatRender(gym.Wrapper):
    """An env that renders 0-1 float images."""

    def render(self):
        return self.env.render() / 255.0


def test_a_float_frame_prepared_beside_the_loop_is_refused_at_its_step(cartpole):
    env = VLMRewardWrapper(FloatRender(cartpole), GOAL, OracleLabeler(), score_in_buffer=True, seed_steps=10**9)
    env.deferred_rewards.claim("rollout")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="dtype float64"):  # not cast to black uint8 frames
        env.step(env.action_space.sample())
    env.close()


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
