"""The core's promises: the env loop never waits on training, frozen wrappers send nothing, a saved run
goes on where it stopped, settings come from one typed config."""

import threading

import gymnasium as gym
import numpy as np
import pytest

from conftest import GOAL, rollout_frames
from fakes import FakeLabeler
from vlm_reward_wrappers import (
    PRESETS,
    BackgroundTrainer,
    BradleyTerryTrainer,
    LabelStore,
    LearnerConfig,
    OracleLabeler,
    PreferenceLearner,
    RewardModel,
    VLMRewardWrapper,
)


class BlockedTrainer(BradleyTerryTrainer):
    """Trains like Bradley-Terry; from its second update on, only once ``release`` is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.entered, self.release, self.calls = threading.Event(), threading.Event(), 0

    def train(self, dataset, epochs=None, stop=None):
        self.calls += 1
        if self.calls > 1:
            self.entered.set()
            assert self.release.wait(timeout=60), "the test never released the trainer"
        return super().train(dataset, epochs, stop)


def test_a_step_never_waits_on_reward_model_training():
    frames, rewards = rollout_frames("vlmrw/CartPoleAngle-v0", 200)
    model = RewardModel("frame", (64, 64, 3), seed=0)
    blocked = BlockedTrainer(model.clone(), epochs=2, seed=0)
    learner = PreferenceLearner(GOAL, OracleLabeler(), reward_model=model, trainer=BackgroundTrainer(model, blocked),
                                seed_steps=20, query_every=20, pairs_per_query=10, feedback_budget=20, seed=0)
    # The first update (labels of step 20) is waited for: before it there is no reward to learn from.
    for t in range(39):
        learner.observe(frames[t : t + 1], rewards[t : t + 1])
    assert learner.flush(timeout=60) and model.version == 1
    before = model.predict(frames[:5])
    # The second batch (sent at step 40): its update starts and blocks on the trainer's thread.
    for t in range(39, 100):
        learner.observe(frames[t : t + 1], rewards[t : t + 1])
        if blocked.entered.is_set():
            break
    assert blocked.entered.wait(timeout=60) and learner.trainer.busy
    for t in range(100, 160):  # 60 more steps while the update is stuck: none waits, the model never changes
        learner.observe(frames[t : t + 1], rewards[t : t + 1])
    assert learner.num_timesteps >= 100 and model.version == 1 and learner.trainer.busy
    np.testing.assert_array_equal(model.predict(frames[:5]), before)
    blocked.release.set()
    learner.trainer._thread.join(timeout=60)
    learner.observe(frames[160:161], rewards[160:161])  # the next step swaps the trained weights in
    assert model.version == 2 and not learner.trainer.busy and learner.metrics["reward_model/updates"] == 2
    assert not np.allclose(model.predict(frames[:5]), before)
    assert learner.metrics["reward_model/train_cpu_s"] > 0
    learner.close()


def test_bounded_gradient_steps_per_update():
    frames, rewards = rollout_frames("vlmrw/CartPoleAngle-v0", 100)
    teacher, model = OracleLabeler(), RewardModel("frame", (64, 64, 3), seed=0)
    from vlm_reward_wrappers import PreferenceDataset, Query

    dataset = PreferenceDataset()
    for i, j in np.random.default_rng(0).integers(100, size=(300, 2)):
        dataset.add(frames[i], frames[j], teacher.label([Query(frames[i], frames[j], rewards[i], rewards[j])], GOAL)[0].preference)
    trainer = BradleyTerryTrainer(model, batch_size=32, gradient_steps=7, early_stop_accuracy=1.0, seed=0)
    steps = []
    original = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (steps.append(1), original(*a, **k))[1]
    trainer.train(dataset)
    assert len(steps) == 7  # not len(dataset) / 32 x epochs


def test_a_frozen_wrapper_scores_with_the_shared_model_and_sends_nothing(cartpole):
    trained = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler(), seed=0, seed_steps=10, query_every=10,
                               pairs_per_query=5, asynchronous=False)
    trained.reset(seed=0)
    for _ in range(30):
        trained.step(trained.action_space.sample())
    assert trained.learner.reward_model.version >= 1
    frozen = VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=None,
                              reward_model=trained.learner.reward_model, training=False)
    frozen.reset(seed=1)
    for _ in range(30):
        _, reward, _, _, info = frozen.step(frozen.action_space.sample())
        assert reward == pytest.approx(float(trained.learner.reward_model.predict(info["vlm_reward_input"][None])[0]))
    metrics = frozen.learner.metrics
    assert metrics["queries_issued"] == metrics["queries_sent"] == 0 and frozen.learner.buffer is None
    with pytest.raises(ValueError, match="without a labeler"):
        frozen.training = True
    # A training wrapper can be frozen and thawed, like VecNormalize.
    trained.training = False
    issued = trained.learner.queries_issued
    for _ in range(30):
        trained.step(trained.action_space.sample())
    assert trained.learner.queries_issued == issued and trained.learner.num_timesteps == 30
    trained.training = True
    for _ in range(30):
        trained.step(trained.action_space.sample())
    assert trained.learner.queries_issued > issued
    trained.close()
    frozen.close()


def test_save_and_load_resume_the_schedule_and_send_no_stored_query(tmp_path):
    store_path, saved = tmp_path / "labels.sqlite", tmp_path / "learner.pt"
    settings = dict(seed_steps=20, query_every=30, pairs_per_query=6, feedback_budget=60, asynchronous=False)
    env = VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL,
                           labeler=OracleLabeler(), seed=0, label_store=LabelStore(store_path), **settings)
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(70):  # queries at steps 20 and 50
        env.step(env.action_space.sample())
    env.save(saved)
    before = env.learner.metrics
    frames = np.stack([env.learner.buffer.frames[i] for i in range(5)])
    scores = env.learner.reward_model.predict(frames)
    env.close()
    assert before["queries_issued"] == 12 and before["reward_model/updates"] == 2

    recording = FakeLabeler()  # the oracle, recording the queries it answers
    resumed = VLMRewardWrapper.load(saved, gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), recording,
                                    asynchronous=False)
    learner = resumed.learner
    np.testing.assert_allclose(learner.reward_model.predict(frames), scores, atol=1e-6)  # the same model
    assert learner.num_timesteps == 70 and learner.queries_issued == 12 and learner.config.query_every == 30
    assert learner.metrics["labels_used"] == before["labels_used"] and learner.reward_model.version == 2
    stored = {frozenset((r.hash_a, r.hash_b)) for r in learner.store.records()}
    resumed.reset(seed=5)
    for _ in range(9):  # the next query is due at step 80, ten steps in: the schedule goes on, not over
        resumed.step(resumed.action_space.sample())
    assert learner.queries_issued == 12 and not recording.answered
    for _ in range(11):
        resumed.step(resumed.action_space.sample())
    assert 12 < learner.queries_issued <= 18 and len(recording.answered) == learner.queries_issued - 12
    assert not set(recording.answered_pairs()) & stored  # nothing answered before is asked again
    resumed.close()


def test_saving_an_in_memory_store_would_lose_labels_and_says_so(tmp_path, cartpole):
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=OracleLabeler())
    with pytest.raises(ValueError, match="in-memory store"):
        env.save(tmp_path / "learner.pt")
    with pytest.raises(FileNotFoundError, match="no saved learner"):
        PreferenceLearner.load(tmp_path / "nothing.pt", OracleLabeler())
    env.close()


def test_infos_carry_the_true_episode_return_and_success():
    env = VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array", max_episode_steps=5),
                           goal=GOAL, labeler=OracleLabeler(), seed=0)
    env.reset(seed=0)
    total = 0.0
    for t in range(5):
        _, _, terminated, truncated, info = env.step(env.action_space.sample())
        total += info["gt_reward"]
        assert ("gt_episode" in info) == (t == 4)
    assert info["gt_episode"] == {"r": pytest.approx(total), "l": 5} and truncated
    env.close()

    class Succeeds(gym.Wrapper):
        def step(self, action):
            obs, reward, terminated, truncated, info = self.env.step(action)
            return obs, reward, terminated, truncated, {**info, "success": 1.0}

    env = VLMRewardWrapper(Succeeds(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array")), goal=GOAL,
                           labeler=OracleLabeler())
    env.reset(seed=0)
    assert env.step(env.action_space.sample())[-1]["is_success"] is True  # what SB3's EvalCallback reads
    env.close()


def test_settings_come_from_one_typed_config_with_the_papers_presets():
    assert PRESETS["metaworld"] == LearnerConfig()
    cartpole = PRESETS["cartpole"]
    assert (cartpole.query_every, cartpole.pairs_per_query, cartpole.feedback_budget, cartpole.epochs_per_update) == (
        5000, 50, 10_000, 50)
    env = VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL,
                           labeler=OracleLabeler(), config="cartpole", feedback_budget=100)
    assert env.learner.config == cartpole.replace(feedback_budget=100)
    env.close()
    with pytest.raises(TypeError, match="unknown learner settings \\['query_evry'\\]"):
        LearnerConfig().replace(query_evry=5)
    with pytest.raises(ValueError, match="unknown preset 'mujoco'"):
        VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL,
                         labeler=OracleLabeler(), config="mujoco")
    with pytest.raises(ValueError, match="sampler must be one of"):
        LearnerConfig(sampler="random")


def test_a_vecenv_run_saved_goes_on_when_loaded_and_an_env_it_does_not_fit_is_named(tmp_path):
    from stable_baselines3.common.env_util import make_vec_env

    from vlm_reward_wrappers import VLMRewardVecEnvWrapper

    def vec(env_id):
        return make_vec_env(env_id, n_envs=2, env_kwargs=dict(render_mode="rgb_array"), seed=0)

    settings = dict(seed_steps=20, query_every=30, pairs_per_query=6, asynchronous=False, reward_input="observation")
    with pytest.warns(UserWarning, match="FrameInfoWrapper"):
        env = VLMRewardVecEnvWrapper(vec("vlmrw/CartPoleAngle-v0"), GOAL, OracleLabeler(), seed=0,
                                     label_store=LabelStore(tmp_path / "labels.sqlite"), **settings)
    env.reset()
    for _ in range(30):  # 60 env steps: queries at 20 and 50
        env.step(np.array([env.action_space.sample() for _ in range(2)]))
    env.save(tmp_path / "learner.pt")
    issued, version = env.learner.queries_issued, env.learner.reward_model.version
    env.close()
    with pytest.warns(UserWarning, match="FrameInfoWrapper"):
        resumed = VLMRewardVecEnvWrapper.load(tmp_path / "learner.pt", vec("vlmrw/CartPoleAngle-v0"), OracleLabeler(),
                                              asynchronous=False)
    assert resumed.learner.num_timesteps == 60 and resumed.learner.queries_issued == issued == 12
    assert resumed.learner.reward_model.version == version >= 1
    resumed.close()
    with pytest.raises(ValueError, match=r"reads observations of shape \(4,\), but this env's are \(3,\)"):
        VLMRewardVecEnvWrapper.load(tmp_path / "learner.pt", vec("Pendulum-v1"), OracleLabeler())
