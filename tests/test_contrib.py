"""sb3-contrib's algorithms on the learned reward: TQC and CrossQ relabel their replay buffer, RecurrentPPO
trains on rewards scored per step."""

import numpy as np
import pytest
from sb3_contrib import TQC, CrossQ, RecurrentPPO

from conftest import GOAL
from vlm_reward_wrappers import OracleLabeler, RelabelingReplayBuffer, VLMRewardWrapper

pytestmark = pytest.mark.slow  # training runs

SCHEDULE = dict(seed_steps=100, query_every=100, pairs_per_query=10, epochs_per_update=5, seed=0, asynchronous=False)


@pytest.mark.parametrize("algo", [TQC, CrossQ])
def test_off_policy_contrib_algorithms_keep_every_stored_reward_the_current_models(cartpole, algo):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), **SCHEDULE)
    model = algo("MlpPolicy", env, replay_buffer_class=RelabelingReplayBuffer, learning_starts=100, seed=0,
                 replay_buffer_kwargs=dict(wrapper=env, relabel_in_background=False))
    model.learn(350)
    buffer, reward_model = model.replay_buffer, env.learner.reward_model
    buffer.finish_relabel()
    size = buffer.size()
    assert reward_model.version >= 2 and buffer.relabels >= 1
    np.testing.assert_allclose(buffer.rewards[:size, 0], reward_model.predict(buffer.reward_inputs[:size, 0]), atol=1e-5)
    env.close()


def test_recurrent_ppo_trains_on_rewards_scored_per_step(cartpole):
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), **SCHEDULE)
    model = RecurrentPPO("MlpLstmPolicy", env, n_steps=128, batch_size=64, n_epochs=1, seed=0)
    model.learn(256)
    assert env.learner.reward_model.version >= 1 and np.abs(model.rollout_buffer.rewards).max() > 0
    env.close()


def test_recurrent_ppo_cannot_leave_rewards_to_its_buffer_and_is_told_so(cartpole):
    # Its own recurrent rollout buffer scores nothing: score_in_buffer would train it on zeros.
    env = VLMRewardWrapper(cartpole, GOAL, OracleLabeler(), score_in_buffer=True, **SCHEDULE)
    with pytest.raises(ValueError, match="no buffer takes it"):
        RecurrentPPO("MlpLstmPolicy", env, n_steps=64, batch_size=64, seed=0).learn(128)
    env.close()
