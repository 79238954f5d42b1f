"""The labeler sees the rendered frame at its own resolution, kept apart from the reward model's input."""

import numpy as np
import pytest
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.vec_env import SubprocVecEnv

from conftest import GOAL
from fakes import FakeLabeler
from vlm_reward_wrappers import FrameInfoWrapper, OracleLabeler, PreferenceLearner, RewardModel, VLMRewardVecEnvWrapper
from vlm_reward_wrappers.frames import QueryFrameStore, resize_longer_side


@pytest.mark.parametrize("requested, expected", [(256, (171, 256, 3)), (1024, (400, 600, 3))])
def test_query_frames_from_subprocess_workers_are_at_the_labelers_size_never_enlarged(requested, expected):
    venv = make_vec_env("vlmrw/CartPoleAngle-v0", n_envs=2, seed=0, vec_env_cls=SubprocVecEnv,
                        wrapper_class=FrameInfoWrapper, env_kwargs={"render_mode": "rgb_array"})
    labeler = FakeLabeler(query_image_size=requested)  # the oracle, recording the queries it answers
    env = VLMRewardVecEnvWrapper(venv, goal=GOAL, labeler=labeler, seed=0, seed_steps=60, query_every=60,
                                 pairs_per_query=10, query_frame_every=2, asynchronous=False)
    env.reset()
    for _ in range(100):
        env.step(np.array([env.action_space.sample() for _ in range(2)]))
    stored = [env.learner.store.frame(r.hash_a) for r in env.learner.store.records()]
    env.close()
    # 600x400 renders: shrunk to the requested longer side, or sent as rendered, never enlarged.
    shapes = [q.frame_a.shape for q in labeler.answered] + [q.frame_b.shape for q in labeler.answered]
    assert shapes and set(shapes) == {expected}
    assert env.learner.buffer.frames.shape[1:] == (64, 64, 3)  # the reward model keeps its 64 px input
    # The store keeps what the labeler saw, and beside it the reward model's input.
    assert stored and all(frame.shape == expected and reward_input.shape == (64, 64, 3) for frame, reward_input in stored)


def test_the_query_frame_store_stays_within_its_memory_bound_over_20000_steps():
    # A reward model on a 1-d observation keeps the 20,000 steps cheap: the store is what is measured.
    learner = PreferenceLearner(GOAL, OracleLabeler(), reward_model=RewardModel("observation", (1,), seed=0),
                                reward_input="observation", query_image_size=300, query_frame_every=4,
                                query_frame_capacity=1000, query_frame_max_bytes=2**20, seed_steps=10**6,
                                asynchronous=False)
    rng = np.random.default_rng(0)
    small, obs, peak = np.zeros((1, 8, 8, 3), np.uint8), np.zeros((1, 1), np.float32), 0
    for t in range(20_000):
        frame = None
        if learner.query_frame_due(t):
            frame = np.full((200, 300, 3), 255, np.uint8)
            frame[75:125, (t * 7) % 280 : (t * 7) % 280 + 20] = rng.integers(0, 256, 3)  # a moving cart
        learner.observe(small, np.zeros(1), obs, query_frames=[frame])
        if t % 1000 == 999:
            learner.query_frames.flush()
            peak = max(peak, learner.query_frames.nbytes)
    store = learner.query_frames
    assert 0 < peak <= 2**20 and len(store) <= 1000
    steps = store.steps(oldest=0)
    assert steps.max() == 19_996 and np.all(steps % 4 == 0)  # the newest, every 4th step
    assert store.get(int(steps.max())).shape == (200, 300, 3)
    learner.close()


def test_resize_longer_side_never_enlarges():
    frame = np.zeros((40, 60, 3), np.uint8)
    assert resize_longer_side(frame, 30).shape == (20, 30, 3)
    assert resize_longer_side(frame, 100).shape == (40, 60, 3)
    assert resize_longer_side(frame, None).shape == (40, 60, 3)
    with pytest.raises(ValueError, match="room for at least 2 frames"):
        QueryFrameStore(capacity=1)
