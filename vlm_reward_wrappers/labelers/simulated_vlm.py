"""A simulated VLM teacher whose mistakes look like a real VLM's, for benchmarks no real VLM can run.

Real VLM judges are not uniformly noisy. They are right when two frames differ clearly and guess when
they look alike; when they guess, they favour one image position; and they sometimes decline to answer.
General-purpose VLM judges agree with ground truth 65-80% of the time on pairwise image comparisons,
and RL-VLM-F drops its VLM's -1 ("no difference") answers. This teacher models that:

- For a pair with true rewards r_a, r_b, the gap relative to the rewards it has seen is
  g = |r_a - r_b| / spread (spread: the standard deviation of the true rewards of every frame it was shown).
- It is *unsure* with probability exp(-g / scale): likely for close pairs, rare for distant ones. Being
  unsure is a property of the two frames, not of their order: the same pair asked both ways round is
  unsure both times or neither (each ask then guesses on its own).
- Sure, it answers correctly. Unsure, it abstains (-1) with probability ``abstain_rate``, and otherwise
  answers "image 1" with probability ``position_bias`` (0.5: no bias), "image 2" otherwise.
- ``scale`` is calibrated, on the pairs it has been shown so far, so that its accuracy over the pairs it
  answers (-1 excluded, as :attr:`label accuracy <vlm_reward_wrappers.learner.PreferenceLearner.metrics>`
  counts it) equals ``target_accuracy``.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND, frame_hash


class SimulatedVLMLabeler(Labeler):
    """A teacher with a real VLM's failure modes, calibrated to a target label accuracy (see the module).

    :param target_accuracy: agreement with the true preference over answered pairs, in (0.5, 1].
    :param position_bias: probability of answering "image 1" when unsure (0.5: none).
    :param abstain_rate: probability of answering -1 when unsure.
    :param seed: seed of its randomness.
    """

    batch_size = 64

    def __init__(self, target_accuracy: float = 0.75, position_bias: float = 0.6, abstain_rate: float = 0.1,
                 seed: int = 0) -> None:
        if not 0.5 < target_accuracy <= 1.0:
            raise ValueError(f"target_accuracy must be in (0.5, 1], got {target_accuracy}")
        if not 0.0 <= position_bias <= 1.0 or not 0.0 <= abstain_rate < 1.0:
            raise ValueError("position_bias must be in [0, 1] and abstain_rate in [0, 1)")
        self.target_accuracy, self.position_bias, self.abstain_rate = target_accuracy, position_bias, abstain_rate
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._rewards: List[float] = []  # true rewards of the frames shown: the spread
        self._gaps: List[float] = []  # absolute true-reward gaps of the pairs shown: the calibration
        #: The calibrated scale of the unsure probability, in units of the reward spread.
        self.scale = 1.0

    @property
    def labeler_id(self) -> str:
        return (f"SimulatedVLMLabeler(target_accuracy={self.target_accuracy}, position_bias={self.position_bias}, "
                f"abstain_rate={self.abstain_rate}, seed={self.seed})")

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        gt = np.array([(q.gt_reward_a, q.gt_reward_b) for q in queries], dtype=np.float64)
        if np.isnan(gt).any():
            raise ValueError("SimulatedVLMLabeler needs the true reward of both frames of every query")
        self._rewards += gt.ravel().tolist()
        self._gaps += np.abs(gt[:, 1] - gt[:, 0]).tolist()
        spread = float(np.std(self._rewards)) or 1.0
        self.scale = self._calibrate(np.array(self._gaps) / spread)
        draws = np.array([self._pair_draw(q) for q in queries])
        unsure = draws < np.exp(-np.abs(gt[:, 1] - gt[:, 0]) / spread / self.scale)
        answers = []
        for (r_a, r_b), guess in zip(gt, unsure):
            if r_a == r_b:
                answers.append(Answer(NO_PREFERENCE, raw="no difference"))
            elif not guess:
                answers.append(Answer(SECOND if r_b > r_a else FIRST, raw="sure"))
            elif self.rng.random() < self.abstain_rate:
                answers.append(Answer(NO_PREFERENCE, raw="unsure: no answer"))
            else:
                answers.append(Answer(FIRST if self.rng.random() < self.position_bias else SECOND, raw="unsure: guess"))
        return answers

    def _pair_draw(self, query: Query) -> float:
        """A uniform draw fixed by the pair's two frames, whichever order they come in."""
        low, high = sorted((frame_hash(query.frame_a), frame_hash(query.frame_b)))
        return float(np.random.default_rng([self.seed, int(low[:12], 16), int(high[:12], 16)]).random())

    def expected_accuracy(self, relative_gaps: np.ndarray, scale: float) -> float:
        """Accuracy over answered pairs of this teacher at ``scale`` on pairs of these relative gaps.

        A guess is right half the time on average: which image is the better one is independent of its
        position.
        """
        unsure = np.exp(-relative_gaps / scale)
        answered = (1 - unsure) + unsure * (1 - self.abstain_rate)
        correct = (1 - unsure) + unsure * (1 - self.abstain_rate) * 0.5
        return float(correct.sum() / answered.sum())

    def _calibrate(self, relative_gaps: np.ndarray) -> float:
        """The scale whose expected accuracy on ``relative_gaps`` is the target (bisection on log scale)."""
        gaps = relative_gaps[relative_gaps > 0]
        if not len(gaps) or self.target_accuracy == 1.0:
            return 1e-9
        low, high = 1e-6, 1e6  # accuracy falls as the scale grows
        for _ in range(60):
            mid = float(np.sqrt(low * high))
            if self.expected_accuracy(gaps, mid) > self.target_accuracy:
                low = mid
            else:
                high = mid
        return float(np.sqrt(low * high))
