import numpy as np
import pytest
from stable_baselines3 import PPO, SAC

from conftest import GOAL
from vlm_reward_wrappers import OracleLabeler, RelabelReplayBufferCallback, VLMRewardWrapper


@pytest.mark.parametrize("reward_input", ["frame", "observation"])
def test_replay_rewards_are_recomputed_after_each_update(cartpole, reward_input):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), reward_input=reward_input, seed=0,
                           seed_steps=200, query_every=200, pairs_per_query=30, asynchronous=False)
    callback = RelabelReplayBufferCallback(env)
    model = SAC("MlpPolicy", env, learning_starts=1000, buffer_size=5000, seed=0)
    model.learn(199, callback=callback)  # fill the buffer before the first update
    buffer = model.replay_buffer
    before = buffer.rewards[: buffer.pos].copy()
    model.learn(60, callback=callback, reset_num_timesteps=False)  # the first update happens at step 200
    assert env.learner.reward_model.version >= 1 and callback.relabels >= 1
    after = buffer.rewards[: len(before)]
    assert np.abs(after - before).max() > 1e-3
    # Every stored reward is the current model's reward of the stored transition's input.
    if reward_input == "frame":
        inputs = callback._inputs[: buffer.pos, 0]
    else:
        inputs = buffer.next_observations[: buffer.pos, 0]
    np.testing.assert_allclose(buffer.rewards[: buffer.pos, 0], env.learner.reward_model.predict(inputs), atol=1e-5)
    assert len(callback._inputs if reward_input == "frame" else []) <= buffer.buffer_size
    env.close()


def test_relabel_callback_refuses_on_policy_algorithms(cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0)
    with pytest.raises(TypeError, match="off-policy"):
        PPO("MlpPolicy", env, n_steps=64, batch_size=64).learn(64, callback=RelabelReplayBufferCallback(env))
    env.close()


def test_relabel_callback_needs_a_vlm_wrapper(cartpole):
    with pytest.raises(TypeError, match="VLMRewardWrapper"):
        RelabelReplayBufferCallback(cartpole)
