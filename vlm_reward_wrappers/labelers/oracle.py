"""Simulated teachers: preferences (BPref's teachers) and window scores (RG-VLM) from the true reward."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query
from vlm_reward_wrappers.labelers.prompts import MAX_SCORE
from vlm_reward_wrappers.labelers.scores import ScoreLabeler, Window, WindowScores
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND, frame_hash


class OracleLabeler(Labeler):
    """Prefers the frame with the higher true reward (``info["gt_reward"]`` of its step).

    Without arguments it is BPref's "oracle" teacher; the arguments give its other teachers:

    :param mistake_rate: probability of flipping a preference ("mistake": 0.1 in BPref).
    :param beta: Boltzmann rationality; None answers rationally, a finite beta samples the second
        frame with probability ``sigmoid(beta * (r_b - r_a))`` ("noisy").
    :param equal_threshold: a pair whose true rewards differ by at most this is answered -1
        ("equal"); the default 0 answers exact ties -1, as a VLM cannot tell them apart either.
    :param skip_threshold: a pair whose true rewards are both below this is answered -1 ("skip").
    :param delay_s: seconds each query takes, to simulate a slow VLM.
    :param seed: seed of the teacher's own randomness.
    """

    batch_size = 64

    def __init__(
        self,
        mistake_rate: float = 0.0,
        beta: Optional[float] = None,
        equal_threshold: float = 0.0,
        skip_threshold: Optional[float] = None,
        delay_s: float = 0.0,
        seed: Optional[int] = None,
    ) -> None:
        if not 0.0 <= mistake_rate <= 1.0:
            raise ValueError(f"mistake_rate must be in [0, 1], got {mistake_rate}")
        self.mistake_rate = mistake_rate
        self.beta = beta
        self.equal_threshold = equal_threshold
        self.skip_threshold = skip_threshold
        self.delay_s = delay_s
        self.rng = np.random.default_rng(seed)

    @property
    def labeler_id(self) -> str:
        return (
            f"OracleLabeler(mistake_rate={self.mistake_rate}, beta={self.beta}, "
            f"equal_threshold={self.equal_threshold}, skip_threshold={self.skip_threshold})"
        )

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        return [self._answer(q) for q in queries]

    def _answer(self, query: Query) -> Answer:
        if self.delay_s:
            time.sleep(self.delay_s)
        r_a, r_b = query.gt_reward_a, query.gt_reward_b
        if np.isnan(r_a) or np.isnan(r_b):
            raise ValueError(
                "OracleLabeler needs the true reward of both frames; the wrappers pass the env's "
                "reward, so use it only on envs whose reward measures the goal"
            )
        if self.skip_threshold is not None and max(r_a, r_b) < self.skip_threshold:
            return Answer(NO_PREFERENCE, raw="skip")
        if abs(r_a - r_b) <= self.equal_threshold:
            return Answer(NO_PREFERENCE, raw="equal")
        if self.beta is None:
            preference = SECOND if r_b > r_a else FIRST
        else:
            p_second = 1.0 / (1.0 + np.exp(-self.beta * (r_b - r_a)))
            preference = SECOND if self.rng.random() < p_second else FIRST
        if self.rng.random() < self.mistake_rate:
            preference = 1 - preference
        # No soft label: a real teacher does not report the true preference probability.
        return Answer(preference, raw=str(preference))


class OracleScoreLabeler(ScoreLabeler):
    """Scores transitions from their true reward: the simulated teacher of RG-VLM's window scores.

    score = 10 (r - low) / (high - low), clipped to [0, 10], plus Gaussian noise, clipped again. Each
    window's randomness is seeded by its content, so a resumed run scores as an uninterrupted one.

    :param reward_range: (low, high) true reward mapped to scores 0 and 10
        (:attr:`~vlm_reward_wrappers.offline.OfflineDataset.gt_reward_range` gives a dataset's).
    :param noise_std: standard deviation of the noise, in score points.
    :param unreadable_rate: probability that a window's answer cannot be read (all its scores NaN), as
        happens with small VLMs.
    :param seed: seed of the teacher's randomness.
    """

    batch_size = 64

    def __init__(
        self,
        reward_range: Tuple[float, float],
        noise_std: float = 0.0,
        unreadable_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        low, high = map(float, reward_range)
        if not high > low:
            raise ValueError(f"reward_range must be (low, high) with high > low, got {reward_range}")
        self.reward_range = (low, high)
        self.noise_std = noise_std
        self.unreadable_rate = unreadable_rate
        self.seed = seed

    @property
    def labeler_id(self) -> str:
        return (
            f"OracleScoreLabeler(reward_range={self.reward_range}, noise_std={self.noise_std}, "
            f"unreadable_rate={self.unreadable_rate}, seed={self.seed})"
        )

    def score_windows(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        return [self._score(window) for window in windows]

    def _score(self, window: Window) -> WindowScores:
        gt = np.asarray(window.gt_rewards, dtype=np.float64)
        if np.isnan(gt).any():
            raise ValueError("OracleScoreLabeler needs the true reward of every transition")
        rng = np.random.default_rng([self.seed, int(frame_hash(window.frames)[:12], 16)])
        if rng.random() < self.unreadable_rate:
            return WindowScores(np.full(len(gt), np.nan), raw="unreadable")
        low, high = self.reward_range
        scores = np.clip(MAX_SCORE * (gt - low) / (high - low), 0, MAX_SCORE)
        if self.noise_std:
            scores = np.clip(scores + rng.normal(0.0, self.noise_std, len(gt)), 0, MAX_SCORE)
        return WindowScores(scores, raw="\n".join(f"Action {k}: {s:.2f}" for k, s in enumerate(scores, start=1)))
