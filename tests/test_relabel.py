import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3 import SAC

from conftest import GOAL
from vlm_reward_wrappers import OracleLabeler, RelabelingReplayBuffer, VLMRewardWrapper
from vlm_reward_wrappers.frames import resize_frame
from vlm_reward_wrappers.replay import REWARD_INPUT_KEY, REWARD_MODEL_KEY, register_reward_model
from vlm_reward_wrappers.reward_model import RewardModel


class StepRecorder(gym.Wrapper):
    """Records, in step order, what each env step returned: its observation and reward, and the frame
    rendered after it (resized to ``image_size``), so a test can recompute rewards on its own."""

    def __init__(self, env, image_size=64):
        super().__init__(env)
        self.image_size = image_size
        self.next_observations, self.rewards, self.frames = [], [], {}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.next_observations.append(np.array(obs, dtype=np.float32))
        self.rewards.append(float(reward))
        return obs, reward, terminated, truncated, info

    def render(self):
        frame = self.env.render()
        # Keyed by the step just taken: the frame the VLMRewardWrapper above scores for it.
        self.frames[len(self.next_observations) - 1] = resize_frame(frame, self.image_size)
        return frame


@pytest.mark.parametrize("reward_input, learn_calls, background", [
    ("frame", 1, False),
    ("observation", 1, False),
    ("frame", 2, False),  # training resumed with a second learn() call and the same replay buffer
    ("observation", 2, False),
    ("frame", 1, True),
])
@pytest.mark.slow
def test_each_stored_reward_is_the_current_models_reward_of_its_own_transition(cartpole, reward_input, learn_calls,
                                                                              background):
    below = StepRecorder(cartpole)  # sees the frame and next observation of each step
    env = VLMRewardWrapper(below, goal=GOAL, labeler=OracleLabeler(), reward_input=reward_input, seed=0,
                           seed_steps=100, query_every=100, pairs_per_query=20, asynchronous=False)
    above = StepRecorder(env)  # sees the reward the agent was given when the step was taken
    model = SAC("MlpPolicy", above, learning_starts=50, buffer_size=5000, seed=0,
                replay_buffer_class=RelabelingReplayBuffer,
                replay_buffer_kwargs=dict(relabel_in_background=background))
    steps = 320  # 3 episodes of 100 steps and some: terminal transitions included
    # Queries at steps 100, 200 and 300; their labels arrive, and the model is updated, a step later.
    if learn_calls == 1:
        model.learn(steps)
    else:
        model.learn(150)
        model.learn(steps - 150, reset_num_timesteps=False)

    learner, buffer = env.learner, model.replay_buffer
    if background:
        buffer.finish_relabel()
    assert learner.reward_model.version == 3 and (buffer.relabels >= 3 if background else buffer.relabels == 3)
    assert buffer.pos == steps == len(below.next_observations) and not buffer.full
    # Slot i holds step i: its next observation is the one step i returned (the terminal one at an end).
    np.testing.assert_array_equal(buffer.next_observations[:steps, 0], np.stack(below.next_observations))
    if reward_input == "frame":
        assert sorted(below.frames) == list(range(steps))
        inputs = np.stack([below.frames[i] for i in range(steps)])
    else:
        inputs = np.stack(below.next_observations)
    expected = learner.reward_model.predict(inputs)
    np.testing.assert_allclose(buffer.rewards[:steps, 0], expected, atol=1e-5)
    # Steps before the last update were paid by older models, and relabelling rewrote their rewards;
    # the steps since were paid by the current model.
    given = np.array(above.rewards, dtype=np.float32)
    assert np.abs(given[:300] - expected[:300]).max() > 1e-2
    np.testing.assert_allclose(given[300:], expected[300:], atol=1e-5)
    env.close()


def test_background_relabelling_never_stalls_sampling_and_keeps_the_rewards_of_slots_written_meanwhile(monkeypatch):
    model = RewardModel("observation", (2,), ensemble_size=1, seed=0)
    key = register_reward_model(model)
    buffer = RelabelingReplayBuffer(8, spaces.Box(-1, 1, (2,)), spaces.Box(-1, 1, (1,)), device="cpu")
    release = threading.Event()
    predict = RewardModel.predict

    def blocked_off_the_main_thread(self, inputs, batch_size=1024):
        if threading.current_thread() is not threading.main_thread():
            assert release.wait(10)
        return predict(self, inputs, batch_size)

    monkeypatch.setattr(RewardModel, "predict", blocked_off_the_main_thread)

    def add(i):
        x = np.full((1, 2), i / 10, dtype=np.float32)
        buffer.add(x, x, np.zeros((1, 1)), np.array([-1.0 - i]), np.array([False]),
                   [{REWARD_INPUT_KEY: x[0], REWARD_MODEL_KEY: key}])

    for i in range(8):
        add(i)
    inputs = buffer.reward_inputs[:, 0].copy()
    model.version += 1  # a new reward model: the whole buffer is due for relabelling
    buffer.sample(4)  # starts the pass and returns while it is blocked
    assert buffer.relabels == 0 and buffer.rewards[:, 0].tolist() == [-1.0 - i for i in range(8)]
    add(8), add(9)  # the ring buffer overwrites slots 0 and 1 during the pass
    release.set()
    buffer.finish_relabel()
    assert buffer.relabels == 1
    assert buffer.rewards[:2, 0].tolist() == [-9.0, -10.0]  # what their steps were given
    np.testing.assert_allclose(buffer.rewards[2:, 0], predict(model, inputs[2:]), atol=1e-6)


def test_the_buffer_needs_a_vlm_wrapper(cartpole):
    with pytest.raises(ValueError, match="needs the env wrapped in VLMRewardWrapper"):
        SAC("MlpPolicy", cartpole, learning_starts=10, replay_buffer_class=RelabelingReplayBuffer).learn(5)


def test_a_saved_and_loaded_buffer_relabels_with_the_live_model(cartpole, tmp_path):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=50, query_every=50,
                           pairs_per_query=10, asynchronous=False)
    model = SAC("MlpPolicy", env, learning_starts=20, buffer_size=1000, seed=0, replay_buffer_class=RelabelingReplayBuffer)
    model.learn(120)
    model.save_replay_buffer(tmp_path / "buffer.pkl")
    model.load_replay_buffer(tmp_path / "buffer.pkl")
    buffer = model.replay_buffer
    assert buffer.reward_model is None and buffer.pos == 120  # the model was not pickled with it
    model.learn(10, reset_num_timesteps=False)
    assert buffer.reward_model is env.learner.reward_model
    buffer.finish_relabel()
    expected = env.learner.reward_model.predict(buffer.reward_inputs[: buffer.pos, 0])
    np.testing.assert_allclose(buffer.rewards[: buffer.pos, 0], expected, atol=1e-5)
    env.close()


def test_a_buffer_too_large_for_memory_is_refused_at_its_first_step_with_what_it_needs(cartpole, monkeypatch):
    from collections import namedtuple

    import psutil
    from stable_baselines3 import SAC

    from vlm_reward_wrappers import OracleLabeler, RelabelingReplayBuffer, VLMRewardWrapper

    # 1,000,000 transitions of 64 px frames are 11.4 GB; say 4 GB are free.
    monkeypatch.setattr(psutil, "virtual_memory", lambda: namedtuple("Memory", "available")(4 * 2**30))
    env = VLMRewardWrapper(cartpole, "the pole is upright", OracleLabeler(), seed_steps=50, query_every=50)
    model = SAC("MlpPolicy", env, buffer_size=1_000_000, replay_buffer_class=RelabelingReplayBuffer, seed=0)
    with pytest.raises(MemoryError, match=r"1,000,000 transitions of 1 envs need 11.4 GB and 4.0 GB are available"):
        model.learn(10)
    env.close()
    env = VLMRewardWrapper(cartpole, "the pole is upright", OracleLabeler(), seed_steps=50, query_every=50)
    SAC("MlpPolicy", env, buffer_size=100_000, replay_buffer_class=RelabelingReplayBuffer, seed=0).learn(10)  # 1.1 GB fits
    env.close()
