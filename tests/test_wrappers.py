import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from conftest import GOAL
from vlm_reward_wrappers import (
    FrameInfoWrapper,
    OracleLabeler,
    RelabelReplayBufferCallback,
    VLMRewardVecEnvWrapper,
    VLMRewardWrapper,
)
from vlm_reward_wrappers.frames import resize_frame


@pytest.mark.parametrize("env_id", ["vlmrw/CartPoleAngle-v0", "CartPole-v1", "Pendulum-v1"])
def test_wrapped_env_passes_gymnasium_and_sb3_checkers(env_id):
    env = VLMRewardWrapper(gym.make(env_id, render_mode="rgb_array"), goal=GOAL, labeler=OracleLabeler(), seed=0)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(env)
    assert env.observation_space == env.unwrapped.observation_space
    assert env.action_space == env.unwrapped.action_space
    env.close()


def test_env_without_rgb_rendering_fails_at_wrap_time_with_the_fix():
    with pytest.raises(ValueError, match=r"render_mode='rgb_array'"):
        VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0"), goal=GOAL, labeler=OracleLabeler())
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1")])
    with pytest.raises(ValueError, match=r"render_mode='rgb_array'"):
        VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler())


def test_reward_is_the_models_and_true_reward_goes_to_info(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0)
    env.reset(seed=3)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5], dtype=np.float32))
    expected_frame = resize_frame(env.unwrapped.render(), 64)
    assert reward == pytest.approx(float(env.learner.reward_model.predict(expected_frame[None])[0]), abs=1e-6)
    assert info["gt_reward"] == pytest.approx(-abs(obs[2]), abs=1e-6)
    assert not terminated and not truncated
    env.close()


def test_seeded_resets_are_reproducible(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0)
    first, _ = env.reset(seed=11)
    env.step(env.action_space.sample())
    again, _ = env.reset(seed=11)
    np.testing.assert_array_equal(first, again)
    env.close()


def test_observation_reward_input_uses_an_mlp_on_states(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), reward_input="observation", seed=0)
    obs, _ = env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert env.learner.reward_model.input_shape == (4,)
    assert reward == pytest.approx(float(env.learner.reward_model.predict(obs[None].astype(np.float32))[0]), abs=1e-6)
    env.close()


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_wrapper_batches_rewards_and_keeps_terminal_frames(vec_cls):
    venv = make_vec_env(
        "CartPole-v1", n_envs=2, seed=0, vec_env_cls=vec_cls, env_kwargs={"render_mode": "rgb_array"},
        wrapper_class=FrameInfoWrapper, wrapper_kwargs={"image_size": 48},
    )
    env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler(), image_size=48, seed=0)
    env.reset()
    saw_done = False
    for _ in range(60):
        obs, rewards, dones, infos = env.step(np.array([env.action_space.sample() for _ in range(2)]))
        assert rewards.shape == (2,)
        np.testing.assert_allclose(rewards, env.learner.reward_model.predict(env.learner.last_inputs), atol=1e-6)
        assert all(info["gt_reward"] == 1.0 and "vlm_frame" not in info for info in infos)
        saw_done |= bool(dones.any())
    assert saw_done
    assert env.learner.num_timesteps == 120
    env.close()


def test_vec_env_wrapper_without_frame_info_warns():
    venv = DummyVecEnv([lambda: gym.make("CartPole-v1", render_mode="rgb_array")])
    with pytest.warns(UserWarning, match="FrameInfoWrapper"):
        env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler())
    env.reset()
    _, rewards, _, _ = env.step(np.array([0]))
    assert rewards.shape == (1,)
    env.close()


def test_three_lines_with_ppo(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=100, query_every=100,
                           pairs_per_query=10)
    PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0).learn(256)
    env.learner.flush(timeout=30)
    assert env.learner.metrics["labels_used"] > 0
    assert env.learner.reward_model.version >= 1
    env.close()


def test_three_lines_with_sac_and_relabelling(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=100, query_every=100,
                           pairs_per_query=10)
    callback = RelabelReplayBufferCallback(env)
    SAC("MlpPolicy", env, learning_starts=50, seed=0).learn(300, callback=callback)
    assert callback.relabels >= 1
    env.close()


def test_metrics_reach_sb3_logger(cartpole, tmp_path):
    import csv

    from stable_baselines3.common.logger import configure

    from vlm_reward_wrappers import VLMMetricsCallback

    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=64, query_every=64,
                           pairs_per_query=8, asynchronous=False)
    model = PPO("MlpPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.set_logger(configure(str(tmp_path), ["csv"]))
    model.learn(384, callback=VLMMetricsCallback(env))
    rows = list(csv.DictReader(open(tmp_path / "progress.csv")))
    assert {"vlm/labels_used", "vlm/label_accuracy", "vlm/reward_model/loss", "vlm/queue_length"} <= set(rows[-1])
    assert float(rows[-1]["vlm/labels_used"]) > 0 and float(rows[-1]["vlm/label_accuracy"]) == 1.0
    env.close()
