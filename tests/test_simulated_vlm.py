"""The realistic simulated VLM teacher and swap-consistency."""

import numpy as np
import pytest

from conftest import GOAL, rollout_frames
from fakes import FakeLabeler
from vlm_reward_wrappers.labelers import Answer, OracleLabeler, Query
from vlm_reward_wrappers.labelers.simulated_vlm import SimulatedVLMLabeler
from vlm_reward_wrappers.labelers.swap import SwapConsistentLabeler


@pytest.fixture(scope="module")
def cartpole_pairs():
    """3000 random pairs of RL-VLM-F CartPole frames and their true rewards (-|angle|)."""
    frames, rewards = rollout_frames("vlmrw/CartPoleAngle-v0", 600, image_size=16, seed=0)
    i, j = np.random.default_rng(0).integers(len(frames), size=(2, 3000))
    return [Query(frames[a], frames[b], rewards[a], rewards[b]) for a, b in zip(i, j)]


def _ask(labeler, queries):
    return np.array([a.preference for k in range(0, len(queries), 64) for a in labeler.label(queries[k : k + 64], GOAL)])


def test_the_realistic_teacher_meets_its_target_accuracy_with_errors_on_close_pairs(cartpole_pairs):
    teacher = SimulatedVLMLabeler(target_accuracy=0.75, position_bias=0.7, abstain_rate=0.2, seed=0)
    answers = _ask(teacher, cartpole_pairs)
    gt = np.array([(q.gt_reward_a, q.gt_reward_b) for q in cartpole_pairs])
    truth, gap = (gt[:, 1] > gt[:, 0]).astype(int), np.abs(gt[:, 1] - gt[:, 0])
    answered = (answers != -1) & (gap > 0)
    accuracy = np.mean(answers[answered] == truth[answered])
    assert abs(accuracy - 0.75) <= 0.03, accuracy
    # Errors sit on close pairs: the closest quarter is near a guess, the farthest is nearly always right.
    quartiles = np.quantile(gap[answered], [0.25, 0.75])
    close, far = answered & (gap <= quartiles[0]), answered & (gap >= quartiles[1])
    assert np.mean(answers[close] == truth[close]) < 0.62 and np.mean(answers[far] == truth[far]) > 0.9
    # It abstains only when unsure, and a guess favours image 1.
    assert 0.03 < np.mean(answers == -1) < 0.2
    guesses = answered & (answers != truth)
    assert np.mean(answers[guesses] == 0) > 0.55


def test_swap_consistency_measures_a_known_position_bias(cartpole_pairs):
    teacher = SimulatedVLMLabeler(target_accuracy=0.75, position_bias=0.8, abstain_rate=0.0, seed=1)
    swapped = SwapConsistentLabeler(teacher)
    answers = _ask(swapped, cartpole_pairs)
    metrics = swapped.metrics
    assert metrics["swap_pairs"] == 3000
    assert abs(metrics["position_bias"] - 0.8) <= 0.05, metrics
    assert 0.1 < metrics["swap_inconsistency_rate"] < 0.6
    # What survives is more accurate than the teacher alone: inconsistent guesses became -1.
    gt = np.array([(q.gt_reward_a, q.gt_reward_b) for q in cartpole_pairs])
    kept = (answers != -1) & (gt[:, 0] != gt[:, 1])
    assert np.mean(answers[kept] == (gt[kept, 1] > gt[kept, 0])) > 0.8


def test_swap_consistency_asks_both_orders_and_keeps_agreeing_answers():
    first_always = FakeLabeler(answers=lambda queries: [Answer(0, raw="one") for _ in queries])  # pure position bias
    frame_a, frame_b = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8)
    biased = SwapConsistentLabeler(first_always)
    [answer] = biased.label([(frame_a, frame_b)], GOAL)
    assert len(first_always.answered) == 2 and answer.preference == -1 and "[swapped order] one" in answer.raw
    assert biased.metrics["position_bias"] == 1.0 and biased.metrics["swap_inconsistency_rate"] == 1.0
    honest = SwapConsistentLabeler(OracleLabeler())
    [answer] = honest.label([Query(frame_a, frame_b, 0.0, 1.0)], GOAL)
    assert answer.preference == 1 and honest.metrics["swap_inconsistency_rate"] == 0.0
    assert honest.labeler_id == f"SwapConsistentLabeler({OracleLabeler().labeler_id})"
    assert honest.prompt_version.endswith("+swap")


def test_the_realistic_teacher_says_what_it_needs():
    with pytest.raises(ValueError, match="target_accuracy"):
        SimulatedVLMLabeler(target_accuracy=0.4)
    frame = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="true reward"):
        SimulatedVLMLabeler().label([(frame, frame)], GOAL)
