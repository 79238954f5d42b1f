from functools import partial

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv

from conftest import GOAL
from vlm_reward_wrappers import (
    FrameInfoWrapper,
    OracleLabeler,
    RelabelingReplayBuffer,
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


class StepCountEnv(gym.Env):
    """Renders its step count: every pixel of the frame after the k-th step of an episode is 10 * k."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 30}
    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, render_mode="rgb_array"):
        self.render_mode, self.t = render_mode, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(self.t), False, False, {}

    def render(self):
        return np.full((48, 48, 3), 10 * self.t, np.uint8)


def _step_count_env(horizon):
    return FrameInfoWrapper(gym.wrappers.TimeLimit(StepCountEnv(), horizon), reward_image_size=48)


@pytest.mark.parametrize("vec_cls", [DummyVecEnv, SubprocVecEnv])
def test_vec_env_wrapper_batches_rewards_and_keeps_terminal_frames(vec_cls):
    horizons = (4, 7)  # episodes of different lengths: the envs end them at different steps
    venv = vec_cls([partial(_step_count_env, h) for h in horizons])
    env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=OracleLabeler(), reward_image_size=48, seed=0,
                                 seed_steps=10**6)
    env.reset()
    model, terminal_steps = env.learner.reward_model, 0
    for t in range(30):
        obs, rewards, dones, infos = env.step(np.zeros(2, dtype=np.int64))
        assert rewards.shape == (2,)
        scored = np.stack([info["vlm_reward_input"] for info in infos])  # what the buffer class stores
        np.testing.assert_allclose(rewards, model.predict(scored), atol=1e-6)
        assert all("vlm_frame" not in info for info in infos)
        for i, (horizon, info) in enumerate(zip(horizons, infos)):
            k = t % horizon + 1  # the step of its episode that env i just took
            assert info["gt_reward"] == k and dones[i] == (k == horizon)
            # The frame scored is the state the step reached: at an episode's end the terminal state,
            # not the next episode's first (reset) state, whose frame is all 0.
            frame = np.full((48, 48, 3), 10 * k, np.uint8)
            np.testing.assert_array_equal(scored[i], frame)
            assert rewards[i] == pytest.approx(float(model.predict(frame[None])[0]), abs=1e-6)
            terminal_steps += int(dones[i])
    assert terminal_steps == 30 // 4 + 30 // 7
    # The learner's buffer, whose frames the labeler is shown, holds the same: entry j is env j % 2's
    # step j // 2, and the frame kept for an episode's last step is its terminal state's.
    buffer = env.learner.buffer
    assert len(buffer) == env.learner.num_timesteps == 60
    for j in range(60):
        k = (j // 2) % horizons[j % 2] + 1
        np.testing.assert_array_equal(buffer.frames[j], np.full((48, 48, 3), 10 * k, np.uint8))
        assert buffer.gt_rewards[j] == k
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
    model = SAC("MlpPolicy", env, learning_starts=50, seed=0, replay_buffer_class=RelabelingReplayBuffer)
    model.learn(300)
    model.replay_buffer.finish_relabel()
    assert model.replay_buffer.relabels >= 1
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
    assert {"vlm/labels_used", "vlm/label_accuracy", "vlm/reward_model/loss", "vlm/queue_length",
            "vlm/gt_episode_return"} <= set(rows[-1])
    assert float(rows[-1]["vlm/labels_used"]) > 0 and float(rows[-1]["vlm/label_accuracy"]) == 1.0
    # The true return of CartPoleAngle's 100-step episodes (-sum |angle|, |angle| <= pi / 2), not the learned one.
    assert -100 * np.pi / 2 <= float(rows[-1]["vlm/gt_episode_return"]) < 0
    assert float(rows[-1]["vlm/gt_episode_length"]) == 100
    env.close()


def test_a_run_that_rendered_a_classic_control_env_still_stops_on_sigterm():
    """pygame's SDL would take SIGTERM over at the first render and ignore it (a scheduler could not stop
    the run); importing the package keeps the default."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import os, signal, time, gymnasium as gym, vlm_reward_wrappers\n"
            "env = gym.make('vlmrw/CartPoleAngle-v0', render_mode='rgb_array'); env.reset(seed=0); env.render()\n"
            "os.kill(os.getpid(), signal.SIGTERM); time.sleep(10); print('alive')")
    env = {k: v for k, v in os.environ.items() if k != "SDL_NO_SIGNAL_HANDLERS"}
    done = subprocess.run([sys.executable, "-c", code], env={**env, "SDL_VIDEODRIVER": "dummy"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGTERM and "alive" not in done.stdout
