import threading
import time

import gymnasium as gym
import numpy as np
import pytest

from conftest import GOAL, rollout_frames
from vlm_reward_wrappers import (
    Answer,
    DisagreementSampler,
    EntropySampler,
    FrameBuffer,
    Labeler,
    LabelStore,
    OracleLabeler,
    PreferenceLearner,
    Query,
    RewardModel,
    UniformSampler,
    VLMRewardWrapper,
)
from vlm_reward_wrappers.labels import frame_hash


class FailingLabeler(Labeler):
    """Raises on its first ``failures`` calls, then answers like the oracle."""

    def __init__(self, failures=10**9):
        self.failures, self.calls = failures, 0
        self.oracle = OracleLabeler()

    def label(self, queries, goal):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("VLM server is down")
        return self.oracle.label(queries, goal)


def _learner(labeler, **kwargs):
    settings = dict(seed_steps=20, query_every=20, pairs_per_query=8, retry_backoff_s=0.0, seed=0)
    settings.update(kwargs)
    return PreferenceLearner(GOAL, labeler, RewardModel("frame", (64, 64, 3), seed=0), **settings)


def _feed(learner, frames, rewards):
    for t in range(len(frames)):
        learner.observe(frames[t : t + 1], rewards[t : t + 1], np.array([0]), np.array([t]))


@pytest.fixture(scope="module")
def frames():
    return rollout_frames("vlmrw/CartPoleAngle-v0", 120)


def test_slow_labeler_never_blocks_a_step(frames):
    learner = _learner(OracleLabeler(delay_s=0.2), query_every=10)
    frames_, rewards = frames
    step_times = []
    for t in range(len(frames_)):
        started = time.perf_counter()
        learner.observe(frames_[t : t + 1], rewards[t : t + 1], np.array([0]), np.array([t]))
        step_times.append(time.perf_counter() - started)
    assert learner.metrics["queue_length"] > 0  # answers were still on their way...
    assert max(step_times) < 0.2  # ...and no step waited for one (a query takes 0.2 s)
    assert learner.flush(timeout=30)
    assert learner.metrics["labels_used"] > 0 and learner.reward_model.version >= 1
    learner.close()


def test_failing_labeler_is_retried_then_dropped_and_counted(frames):
    labeler = FailingLabeler()
    learner = _learner(labeler, max_retries=2)
    _feed(learner, *frames)
    learner.flush(timeout=30)
    m = learner.metrics
    assert m["queries_dropped"] == m["queries_issued"] > 0
    assert m["labeler_failures"] == labeler.calls == 3 * m["queries_issued"]  # one query a call, 3 tries
    assert m["labels_used"] == 0 and learner.reward_model.version == 0
    learner.close()


def test_labeler_that_recovers_gets_its_labels_used(frames):
    learner = _learner(FailingLabeler(failures=1), max_retries=1)
    _feed(learner, *frames)
    learner.flush(timeout=30)
    m = learner.metrics
    assert m["labeler_failures"] == 1 and m["queries_dropped"] == 0
    assert m["labels_used"] > 0 and m["label_accuracy"] == 1.0
    learner.close()


def test_failing_labeler_does_not_stop_sb3_training(cartpole):
    from stable_baselines3 import PPO

    env = VLMRewardWrapper(cartpole, goal=GOAL, labeler=FailingLabeler(), seed=0, seed_steps=32, query_every=32,
                           pairs_per_query=4, retry_backoff_s=0.0)
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

    class CountingOracle(OracleLabeler):
        sent = 0

        def label(self, queries, goal):
            CountingOracle.sent += len(queries)
            return super().label(queries, goal)

    second = _learner(CountingOracle(), label_store=LabelStore(path), asynchronous=False)
    assert second.metrics["labels_used"] == used > 0
    assert second.reward_model.version == 1  # trained on the resumed labels at start
    _feed(second, *frames)  # the same frames: every query is answered from the store
    assert CountingOracle.sent == 0 and second.metrics["queries_cached"] > 0
    second.close()


@pytest.mark.parametrize("sampler", [UniformSampler(), DisagreementSampler(), EntropySampler()])
def test_samplers_return_distinct_pairs(frames, sampler):
    frames_, rewards = frames
    buffer = FrameBuffer(200, (64, 64, 3))
    buffer.add(frames_, rewards, np.zeros(len(rewards)), np.arange(len(rewards)))
    model = RewardModel("frame", (64, 64, 3), seed=0)
    a, b = sampler.select(buffer, model, 10, np.random.default_rng(0))
    assert 0 < len(a) == len(b) <= 10
    assert not any(np.array_equal(buffer.frames[i], buffer.frames[j]) for i, j in zip(a, b))


def test_disagreement_sampler_picks_the_most_disputed_pairs(frames):
    frames_, rewards = frames
    buffer = FrameBuffer(200, (64, 64, 3))
    buffer.add(frames_, rewards, np.zeros(len(rewards)), np.arange(len(rewards)))
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
        buffer.add(np.full((1, 2, 2, 3), t, np.uint8), np.array([t]), np.array([0]), np.array([t]))
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
