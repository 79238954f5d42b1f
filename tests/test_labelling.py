"""The labelling service: store first, one retry policy with a deadline, fan-out, nothing raised."""

import logging
import threading

import gymnasium as gym
import numpy as np
import pytest

from conftest import GOAL
from fakes import FakeLabeler
from vlm_reward_wrappers import OracleLabeler, VLMRewardWrapper
from vlm_reward_wrappers.labelers import Answer, LabelerRefusedError, Labeler, Query
from vlm_reward_wrappers.labelling_service import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.label_store import LabelStore


def _jobs(n, seed=0):
    rng = np.random.default_rng(seed)
    return [PreferenceJob(Query(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8),
                                rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 0.0, 1.0)) for _ in range(n)]


def test_every_answer_is_committed_before_it_is_handed_back_and_a_stored_one_is_not_asked_again():
    store = LabelStore()
    service = LabellingService(OracleLabeler(), GOAL, store, asynchronous=False)
    jobs = _jobs(3)
    service.submit(jobs)
    delivered = service.poll()
    assert [job for job, _ in delivered] == jobs and len(store) == 3
    for job, record in delivered:
        assert store.lookup(job.hash_a, job.hash_b, GOAL, record.labeler_id, record.prompt_version) == record
    # The fake answers as the oracle, under its labeler_id: the same labeler as far as the store can tell.
    again = LabellingService(FakeLabeler(errors=[AssertionError("must not be called")]), GOAL, store,
                             asynchronous=False)
    again.submit(jobs)
    assert again.counts["cached"] == 3 and again.labeler.calls == 0 and len(again.poll()) == 3


def test_a_labeler_that_hangs_forever_is_abandoned_at_its_deadline_counted_and_training_goes_on():
    labeler = FakeLabeler(blocked=True, batch_size=1)  # one query a call: each call hangs until released
    env = VLMRewardWrapper(gym.make("vlmrw/CartPoleAngle-v0", render_mode="rgb_array"), goal=GOAL, labeler=labeler,
                           seed=0, seed_steps=5, query_every=5, pairs_per_query=2, max_pending=4,
                           retry=RetryPolicy(max_retries=3, backoff_s=0.0, deadline_s=1.0))
    env.reset(seed=0)
    env.action_space.seed(0)
    for _ in range(6):
        env.step(env.action_space.sample())
    # The steps above returned while the labeler hangs: the env loop never waits on it.
    assert labeler.entered.wait(timeout=30) and env.learner.service.pending >= 1
    assert env.learner.service.wait(timeout=30)  # abandoned at its 1 s deadline, not waited on for ever
    for _ in range(10):  # the env loop carries on; later batches meet the same fate
        env.step(env.action_space.sample())
    assert env.learner.service.wait(timeout=30)
    metrics = env.learner.metrics
    assert metrics["labeler_timeouts"] >= 2 and metrics["queries_dropped"] == metrics["queries_issued"] >= 4
    assert labeler.calls == metrics["labeler_timeouts"] and metrics["labeler_failures"] == 0  # abandoned, not retried
    assert metrics["labels_used"] == 0
    labeler.release.set()
    env.close()


def test_a_failing_call_is_retried_with_backoff_then_dropped_and_counted():
    service = LabellingService(FakeLabeler(errors=[ConnectionError("down")] * 3), GOAL, LabelStore(),
                               RetryPolicy(max_retries=2, backoff_s=0.0), asynchronous=False)
    service.submit(_jobs(2))
    assert service.counts["failed_calls"] == 3 and service.counts["dropped"] == 2 and service.poll() == []
    recovering = LabellingService(FakeLabeler(errors=[ConnectionError("blip")]), GOAL, LabelStore(),
                                  RetryPolicy(max_retries=2, backoff_s=0.0), asynchronous=False)
    recovering.submit(_jobs(2))
    assert recovering.counts["failed_calls"] == 1 and len(recovering.poll()) == 2
    assert recovering.counts["sent"] == 4  # both attempts counted


def test_a_refusal_is_not_retried():
    labeler = FakeLabeler(errors=[LabelerRefusedError("HTTP 401")])
    service = LabellingService(labeler, GOAL, LabelStore(), RetryPolicy(max_retries=5, backoff_s=0.0),
                               asynchronous=False)
    service.submit(_jobs(1))
    assert labeler.calls == 1 and service.counts["dropped"] == 1


@pytest.mark.parametrize("bad", [
    lambda queries: [Answer(1)] * (len(queries) + 1),  # one answer too many
    lambda queries: [1 for _ in queries],  # not Answers
    lambda queries: [Answer(7) for _ in queries],  # out of range: raised inside the labeler
])
def test_invalid_answers_are_a_labeler_bug_reported_once_dropped_and_never_retried(bad, caplog):
    labeler = FakeLabeler(answers=bad, batch_size=64)  # all requests of a submit in one call
    service = LabellingService(labeler, GOAL, LabelStore(), RetryPolicy(max_retries=5, backoff_s=0.0),
                               asynchronous=False)
    with caplog.at_level(logging.ERROR, logger="vlm_reward_wrappers.labelling"):
        service.submit(_jobs(2))
        service.submit(_jobs(2, seed=1))
    assert labeler.calls == 2 and service.counts["invalid_answers"] == 2 and service.counts["dropped"] == 4
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "returned invalid answers" in errors[0].getMessage()


def test_calls_fan_out_up_to_the_labelers_concurrency():
    class Concurrent(Labeler):  # kept: a barrier that opens only once three calls run at once
        batch_size, max_concurrency = 1, 3

        def __init__(self):
            self.running, self.peak, self.lock, self.gate = 0, 0, threading.Lock(), threading.Barrier(3, timeout=10)

        def compare(self, queries, goal):
            with self.lock:
                self.running += 1
                self.peak = max(self.peak, self.running)
            self.gate.wait()  # passes only when three calls run at once
            with self.lock:
                self.running -= 1
            return [Answer(0) for _ in queries]

    labeler = Concurrent()
    service = LabellingService(labeler, GOAL, LabelStore(), asynchronous=False)
    jobs = _jobs(6)
    service.submit(jobs)
    assert labeler.peak == 3 and [job for job, _ in service.poll()] == jobs  # in submission order


def test_a_retry_policy_says_what_is_wrong():
    with pytest.raises(ValueError, match="deadline_s must be positive"):
        RetryPolicy(deadline_s=0)
    with pytest.raises(ValueError, match="max_retries"):
        RetryPolicy(max_retries=-1)
