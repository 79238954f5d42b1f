"""The simulated teacher: preferences from the true reward, with BPref's controllable mistakes."""

from __future__ import annotations

import time
from typing import List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.base import FIRST, NO_PREFERENCE, SECOND, Answer, Labeler, Query


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

    def label(self, queries: Sequence[Query], goal: str) -> List[Answer]:
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
