import os

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import vlm_reward_wrappers  # noqa: E402,F401  (registers vlmrw/ ids)

# Small networks on 2 cores: one thread is several times faster (docs/performance.md).
torch.set_num_threads(1)

GOAL = "to balance the brown pole on the black cart to be upright"


@pytest.fixture
def cartpole():
    """RL-VLM-F's CartPole (reward -|angle|), rendered."""
    env = gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")
    yield env
    env.close()


def rollout_frames(env_id: str, n: int, image_size: int = 64, seed: int = 0):
    """Frames and true rewards of ``n`` random steps: (n, S, S, 3) uint8, (n,) float."""
    from vlm_reward_wrappers.frames import resize_frame

    env = gym.make(env_id, render_mode="rgb_array")
    env.action_space.seed(seed)
    env.reset(seed=seed)
    frames, rewards = [], []
    for _ in range(n):
        _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        frames.append(resize_frame(env.render(), image_size))
        rewards.append(reward)
        if terminated or truncated:
            env.reset()
    env.close()
    return np.stack(frames), np.asarray(rewards, dtype=np.float64)
