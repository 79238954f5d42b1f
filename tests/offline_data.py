"""Tiny datasets for the offline tests: RL-VLM-F's CartPole with frames and a sparse reward."""

import gymnasium as gym
import minari
import numpy as np
import pytest

from vlm_reward_wrappers.offline import OfflineDataset, record_episodes

UPRIGHT = 0.2  # rad: the sparse reward pays 1 when the pole ends an episode within this of upright


def cartpole_dataset(n_episodes=3, horizon=10, frame_size=32, seed=0) -> OfflineDataset:
    """Random-action episodes of RL-VLM-F's CartPole with a sparse "upright at the end" reward;
    the true reward -|angle| stays in the infos."""
    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array", max_episode_steps=horizon)
    dataset = record_episodes(env, lambda obs: env.action_space.sample(), n_episodes, frame_size, seed)
    env.close()
    for episode in dataset.episodes:
        episode.rewards = np.zeros(len(episode))
        episode.rewards[-1] = float(abs(episode.observations[-1][2]) < UPRIGHT)
    return dataset


def assert_same_data_but_rewards(a: minari.MinariDataset, b: minari.MinariDataset) -> None:
    assert a.total_episodes == b.total_episodes and a.total_steps == b.total_steps
    for x, y in zip(a.iterate_episodes(), b.iterate_episodes()):
        for field in ("observations", "actions", "terminations", "truncations"):
            np.testing.assert_array_equal(getattr(x, field), getattr(y, field))
        assert x.infos.keys() == y.infos.keys()
        for key in x.infos:
            np.testing.assert_array_equal(x.infos[key], y.infos[key])
    assert a.observation_space == b.observation_space and a.action_space == b.action_space


@pytest.fixture(autouse=True)
def minari_home(tmp_path, monkeypatch):
    """Every dataset of a test lives in its own folder, never in ~/.minari (import this fixture to use it)."""
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    return tmp_path / "minari"
