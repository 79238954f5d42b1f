import numpy as np
import pytest

from conftest import GOAL, rollout_frames
from fakes import FakeLabeler
from vlm_reward_wrappers import (
    Answer,
    DisagreementSampler,
    EntropySampler,
    FrameBuffer,
    LabelStore,
    OracleLabeler,
    PreferenceLearner,
    Query,
    RewardModel,
    UniformSampler,
    VLMRewardWrapper,
)
from vlm_reward_wrappers.labelling_service import RetryPolicy
from vlm_reward_wrappers.label_store import frame_hash


def _learner(labeler, **kwargs):
    settings = dict(seed_steps=20, query_every=20, pairs_per_query=8, retry=RetryPolicy(backoff_s=0.0), seed=0)
    settings.update(kwargs)
    return PreferenceLearner(GOAL, labeler, reward_model=RewardModel("frame", (64, 64, 3), seed=0), **settings)


def _feed(learner, frames, rewards):
    for t in range(len(frames)):
        learner.observe(frames[t : t + 1], rewards[t : t + 1])


@pytest.fixture(scope="module")
def frames():
    return rollout_frames("vlmrw/CartPoleAngle-v0", 120)


def test_slow_labeler_never_blocks_a_step(frames):
    labeler = FakeLabeler(blocked=True, batch_size=1)  # answers as the oracle once released, one query a call
    learner = PreferenceLearner(GOAL, labeler, reward_model=RewardModel("frame", (64, 64, 3), seed=0), seed_steps=20,
                                query_every=10, pairs_per_query=8, seed=0)
    frames_, rewards = frames
    for t in range(len(frames_)):
        learner.observe(frames_[t : t + 1], rewards[t : t + 1])
        if t == 29:  # the first batch went out at step 20: the labeler is now stuck inside its call...
            assert labeler.entered.wait(timeout=30)
    # ...and all 120 steps completed while it was, with every query still pending.
    assert learner.num_timesteps == len(frames_) and len(labeler.answered) == 0
    m = learner.metrics
    assert m["queue_length"] == m["queries_issued"] > 0 and m["queries_answered"] == 0
    assert m["labels_used"] == 0 and learner.reward_model.version == 0
    labeler.release.set()
    assert learner.flush(timeout=30)
    m = learner.metrics
    assert len(labeler.answered) == m["queries_answered"] > 0 and m["queue_length"] == m["queries_dropped"] == 0
    assert m["queries_answered"] + m["queries_cached"] == m["queries_issued"]
    assert m["labels_used"] > 0 and learner.reward_model.version >= 1
    learner.close()


def test_failing_labeler_is_retried_then_dropped_and_counted(frames):
    labeler = FakeLabeler(errors=ConnectionError("VLM server is down"), batch_size=1)  # always down, one query a call
    learner = _learner(labeler, retry=RetryPolicy(max_retries=2, backoff_s=0.0))
    _feed(learner, *frames)
    learner.flush(timeout=30)
    m = learner.metrics
    assert m["queries_dropped"] == m["queries_issued"] > 0
    assert m["labeler_failures"] == labeler.calls == 3 * m["queries_issued"]  # one query a call, 3 tries
    assert m["labels_used"] == 0 and learner.reward_model.version == 0
    learner.close()


def test_labeler_that_recovers_gets_its_labels_used(frames):
    labeler = FakeLabeler(errors=[ConnectionError("VLM server is down")], batch_size=1)  # fails once, then answers
    learner = _learner(labeler, retry=RetryPolicy(max_retries=1, backoff_s=0.0))
    _feed(learner, *frames)
    learner.flush(timeout=30)
    m = learner.metrics
    assert m["labeler_failures"] == 1 and m["queries_dropped"] == 0
    assert m["labels_used"] > 0 and m["label_accuracy"] == 1.0
    learner.close()


def test_failing_labeler_does_not_stop_sb3_training(cartpole):
    from stable_baselines3 import PPO

    labeler = FakeLabeler(errors=ConnectionError("VLM server is down"), batch_size=1)
    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=labeler, seed=0, seed_steps=32, query_every=32,
                           pairs_per_query=4, retry=RetryPolicy(backoff_s=0.0))
    PPO("MlpPolicy", env, n_steps=64, batch_size=64, n_epochs=1, seed=0).learn(256)
    env.learner.flush(timeout=10)
    assert env.learner.metrics["labeler_failures"] > 0
    env.close()


def test_feedback_budget_caps_queries(frames):
    learner = _learner(OracleLabeler(), feedback_budget=20, asynchronous=False)
    _feed(learner, *frames)
    assert learner.metrics["queries_issued"] == 20
    learner.close()


def test_labels_are_committed_before_use(frames):
    store = LabelStore()
    labeler = OracleLabeler()
    seen_in_store = []

    class CheckingDataset:
        def __init__(self, inner):
            self.inner = inner

        def add(self, a, b, preference, soft=None):
            record = store.lookup(frame_hash(a), frame_hash(b), GOAL, labeler.labeler_id, labeler.prompt_version)
            seen_in_store.append(record is not None and record.preference == preference)
            return self.inner.add(a, b, preference, soft)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def __len__(self):
            return len(self.inner)

    learner = _learner(labeler, label_store=store)
    learner.dataset = CheckingDataset(learner.dataset)
    _feed(learner, *frames)
    learner.flush(timeout=30)
    assert seen_in_store and all(seen_in_store)
    assert len(store) == learner.metrics["queries_answered"]
    learner.close()


def test_restart_with_the_same_store_resumes_labels_and_repeats_no_query(frames, tmp_path):
    path = tmp_path / "labels.sqlite"
    first = _learner(OracleLabeler(), label_store=LabelStore(path), asynchronous=False)
    _feed(first, *frames)
    first.flush()
    used = first.metrics["labels_used"]
    first.close()

    answered = {frozenset((r.hash_a, r.hash_b)) for r in LabelStore(path).records()}

    counting = FakeLabeler()  # the oracle, recording the queries it answers
    second = _learner(counting, label_store=LabelStore(path), asynchronous=False, feedback_budget=80)
    assert second.reward_model.version == 0 and second.resume() == len(answered)  # explicit, not in the constructor
    m = second.metrics
    assert m["labels_used"] == used > 0 and m["labels_resumed"] == len(answered) == m["queries_issued"]
    assert second.reward_model.version == 1  # trained on the resumed labels at start
    _feed(second, *frames)  # the same frames: the rest of the budget goes to pairs not answered yet
    assert counting.answered and not set(counting.answered_pairs()) & answered
    assert second.metrics["queries_issued"] == 80
    second.close()


@pytest.mark.parametrize("sampler", [UniformSampler(), DisagreementSampler(), EntropySampler()])
def test_samplers_return_distinct_pairs(frames, sampler):
    frames_, rewards = frames
    buffer = FrameBuffer(200, (64, 64, 3))
    buffer.add(frames_, rewards)
    model = RewardModel("frame", (64, 64, 3), seed=0)
    a, b = sampler.select(buffer, model, 10, np.random.default_rng(0))
    assert 0 < len(a) == len(b) <= 10
    assert not any(np.array_equal(buffer.frames[i], buffer.frames[j]) for i, j in zip(a, b))


def test_disagreement_sampler_picks_the_most_disputed_pairs(frames):
    frames_, rewards = frames
    buffer = FrameBuffer(200, (64, 64, 3))
    buffer.add(frames_, rewards)
    model = RewardModel("frame", (64, 64, 3), seed=0)
    rng = np.random.default_rng(0)
    a, b = DisagreementSampler(oversample=10).select(buffer, model, 5, rng)
    ua, ub = UniformSampler().select(buffer, model, 50, np.random.default_rng(1))

    def disagreement(i, j):
        r_a, r_b = model.member_rewards(buffer.frames[i]), model.member_rewards(buffer.frames[j])
        return (1 / (1 + np.exp(-(r_b - r_a)))).std(axis=0)

    assert disagreement(a, b).mean() > disagreement(ua, ub).mean()


def test_frame_buffer_is_a_bounded_ring():
    buffer = FrameBuffer(5, (2, 2, 3))
    for t in range(7):
        buffer.add(np.full((1, 2, 2, 3), t, np.uint8), np.array([t]))
    assert len(buffer) == 5 and buffer.frames.shape[0] == 5
    assert sorted(buffer.gt_rewards.tolist()) == [2, 3, 4, 5, 6]


def test_oracle_teacher_variants():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(2000, 2))
    frame = np.zeros((2, 2, 3), np.uint8)
    queries = [Query(frame, frame, a, b) for a, b in rewards]
    truth = (rewards[:, 1] > rewards[:, 0]).astype(int)
    noisy = np.array([a.preference for a in OracleLabeler(mistake_rate=0.2, seed=0).label(queries, GOAL)])
    assert 0.75 < np.mean(noisy == truth) < 0.85
    assert all(a.preference == t for a, t in zip(OracleLabeler().label(queries, GOAL), truth))
    equal = OracleLabeler(equal_threshold=10.0).label(queries[:5], GOAL)
    assert all(a.preference == -1 for a in equal)
    boltzmann = np.array([a.preference for a in OracleLabeler(beta=1.0, seed=0).label(queries, GOAL)])
    assert 0.55 < np.mean(boltzmann == truth) < 0.95
    with pytest.raises(ValueError, match="true reward"):
        OracleLabeler().label([Query(frame, frame)], GOAL)
    with pytest.raises(ValueError, match="preference"):
        Answer(2)


@pytest.mark.parametrize("normalize_on", ["recent", "buffer"])
def test_normalising_over_the_buffer_keeps_converged_states_spread_small(normalize_on):
    # 2,500 steps all over the state space, then 2,000 of a policy that has converged to one state.
    rng = np.random.default_rng(0)
    explored = rng.uniform(-1, 1, size=(2500, 2))
    converged = 0.5 + 0.01 * rng.normal(size=(2000, 2))
    observations = np.concatenate([explored, converged]).astype(np.float32)
    learner = PreferenceLearner(GOAL, OracleLabeler(), reward_model=RewardModel("observation", (2,), seed=0),
                                reward_input="observation", seed_steps=len(observations) - 1, query_every=10**6,
                                pairs_per_query=100, normalize_on=normalize_on, asynchronous=False, seed=0)
    frames = rng.integers(0, 256, size=(len(observations), 1, 64, 64, 3), dtype=np.uint8)  # distinct query frames
    for frame, obs in zip(frames, observations):
        learner.observe(frame, np.array([-abs(obs[0])]), obs[None])
    learner.flush()
    assert learner.metrics["reward_model/updates"] == 1
    spread = learner.reward_model.predict(converged.astype(np.float32)).std()
    # Over recent frames the converged states' tiny differences are stretched to unit variance; over the
    # buffer they stay small beside the differences between explored and converged states.
    if normalize_on == "recent":
        assert spread == pytest.approx(1.0, abs=0.05)
    else:
        assert spread < 0.3
        assert learner.reward_model.predict(explored.astype(np.float32)).std() > 0.5
    learner.close()
