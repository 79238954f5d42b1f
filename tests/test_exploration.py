"""PEBBLE's unsupervised exploration before the first query (``exploration_steps``)."""

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import SAC
from stable_baselines3.common.env_util import make_vec_env

from conftest import GOAL
from test_relabel import StepRecorder
from vlm_reward_wrappers import (
    FrameInfoWrapper,
    LearnerConfig,
    OracleLabeler,
    RelabelingReplayBuffer,
    VLMRewardVecEnvWrapper,
    VLMRewardWrapper,
)
from vlm_reward_wrappers.exploration import StateEntropyReward


def test_the_reward_is_the_distance_to_the_kth_nearest_earlier_state_over_its_running_std():
    states = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    reward = StateEntropyReward(capacity=50, k=3)
    got = np.concatenate([reward(states[i : i + 4]) for i in range(0, 60, 4)])
    expected, distances = [], []
    for start in range(0, 60, 4):  # by hand: each batch against the states kept before it (the first 50)
        batch, seen = states[start : start + 4], states[: min(start, 50)]
        if len(seen) < 3:
            expected += [0.0] * len(batch)  # fewer than k states seen: no reward yet
            continue
        knn = [np.sort(np.linalg.norm(seen - state, axis=1))[2] for state in batch]
        distances += knn
        expected += list(np.array(knn) / np.std(distances))  # the running std includes the batch
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    assert reward.count == 50


def test_the_first_query_waits_for_the_exploration_and_the_reward_is_the_exploration_reward_until_a_model(cartpole):
    below = StepRecorder(cartpole)
    env = VLMRewardWrapper(below, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=50, exploration_steps=150,
                           query_every=100, pairs_per_query=20, asynchronous=False)
    above = StepRecorder(env)
    model = SAC("MlpPolicy", above, learning_starts=50, buffer_size=5000, seed=0,
                replay_buffer_class=RelabelingReplayBuffer, replay_buffer_kwargs=dict(relabel_in_background=False))
    model.learn(260)
    learner = env.learner
    # One query batch, at step 200 (50 seed steps + 150 of exploration), not at 50, 150 and 250.
    assert learner.queries_issued == 20 and learner.reward_model.version == 1 and not learner.exploring
    # Steps up to the first model were paid what a fresh exploration reward pays for the same states.
    reference = StateEntropyReward(200)
    explored = np.concatenate([reference(state[None]) for state in below.next_observations[:200]])
    np.testing.assert_allclose(above.rewards[:200], explored, rtol=1e-5)
    assert np.std(above.rewards[:200]) > 0.1
    # From the first model on, and in the replay buffer for every step, the reward is the model's.
    expected = learner.reward_model.predict(np.stack([below.frames[i] for i in range(260)]))
    np.testing.assert_allclose(above.rewards[201:], expected[201:], atol=1e-5)
    np.testing.assert_allclose(model.replay_buffer.rewards[:260, 0], expected, atol=1e-5)
    env.close()


def test_vec_env_explores_on_the_observations_of_every_env_terminal_ones_included():
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, seed=0, env_kwargs={"render_mode": "rgb_array"},
                        wrapper_class=FrameInfoWrapper)
    env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=0,
                                 exploration_steps=400, asynchronous=False)
    reference = StateEntropyReward(400)
    env.reset()
    for _ in range(150):  # 300 steps: past CartPoleAngle's 100-step episodes
        obs, rewards, dones, infos = env.step(np.array([env.action_space.sample() for _ in range(2)]))
        states = np.stack([info["terminal_observation"] if done else o for o, done, info in zip(obs, dones, infos)])
        np.testing.assert_allclose(rewards, reference(states), rtol=1e-5)
    assert env.learner.queries_issued == 0 and env.learner.exploring
    env.close()


def test_frozen_wrappers_and_runs_without_exploration_never_explore(cartpole):
    frozen = VLMRewardWrapper(cartpole, goal=GOAL, labeler=None, training=False, exploration_steps=100)
    assert not frozen.learner.exploring and frozen.learner.exploration is None
    assert not VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL,
                                labeler=OracleLabeler()).learner.exploring
    with pytest.raises(ValueError, match="exploration_steps must be a whole number of at least 0"):
        LearnerConfig(exploration_steps=-1)
