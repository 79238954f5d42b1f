"""Pair selection: which frames of the buffer to send to the labeler (BPref's strategies)."""

from __future__ import annotations

import abc
from typing import Dict, Optional, Tuple, Union

import numpy as np

from vlm_reward_wrappers.config import SAMPLER_NAMES
from vlm_reward_wrappers.frames import FrameBuffer
from vlm_reward_wrappers.reward_model import RewardModel


def _distinct_pairs(
    buffer: FrameBuffer, n: int, rng: np.random.Generator, candidates: Optional[np.ndarray] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` random index pairs of the buffer (of ``candidates`` if given), none of two identical frames
    (RL-VLM-F drops those)."""
    pool = np.arange(len(buffer)) if candidates is None else np.asarray(candidates)
    a, b = pool[rng.integers(len(pool), size=n)], pool[rng.integers(len(pool), size=n)]
    keep = np.array([not np.array_equal(buffer.frames[i], buffer.frames[j]) for i, j in zip(a, b)], dtype=bool)
    return a[keep], b[keep]


class PairSampler(abc.ABC):
    """Chooses query pairs from a :class:`FrameBuffer`."""

    @abc.abstractmethod
    def select(
        self, buffer: FrameBuffer, model: RewardModel, n_pairs: int, rng: np.random.Generator,
        candidates: Optional[np.ndarray] = None,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Return index arrays (a, b) into the buffer, at most ``n_pairs`` long, drawn from ``candidates``
        (buffer indices: those with a query frame) where given."""


class UniformSampler(PairSampler):
    """Pairs drawn uniformly from the buffer (RL-VLM-F's choice)."""

    def select(self, buffer, model, n_pairs, rng, candidates=None):
        return _distinct_pairs(buffer, n_pairs, rng, candidates)


class _ScoredSampler(PairSampler):
    """Draws ``oversample`` times more candidate pairs and keeps the highest-scoring ones."""

    def __init__(self, oversample: int = 10) -> None:
        self.oversample = oversample

    def select(self, buffer, model, n_pairs, rng, candidates=None):
        a, b = _distinct_pairs(buffer, n_pairs * self.oversample, rng, candidates)
        r_a = model.member_rewards(buffer.inputs(a, model.reward_input))
        r_b = model.member_rewards(buffer.inputs(b, model.reward_input))
        p_second = 1.0 / (1.0 + np.exp(-(r_b - r_a)))  # (E, n): each member's Bradley-Terry preference
        top = np.argsort(-self.score(p_second), kind="stable")[:n_pairs]
        return a[top], b[top]

    @abc.abstractmethod
    def score(self, p_second: np.ndarray) -> np.ndarray:
        """Score candidates from the members' preference probabilities (E, n) -> (n,)."""


class DisagreementSampler(_ScoredSampler):
    """Pairs on which the ensemble members disagree most (std of their preference probability)."""

    def score(self, p_second):
        return p_second.std(axis=0)


class EntropySampler(_ScoredSampler):
    """Pairs whose ensemble-mean preference is most uncertain (highest binary entropy)."""

    def score(self, p_second):
        p = np.clip(p_second.mean(axis=0), 1e-6, 1 - 1e-6)
        return -(p * np.log(p) + (1 - p) * np.log(1 - p))


#: Each of the config's sampler names with its class.
SAMPLERS: Dict[str, type] = dict(zip(SAMPLER_NAMES, (UniformSampler, DisagreementSampler, EntropySampler)))


def make_sampler(sampler: Union[str, PairSampler]) -> PairSampler:
    """A sampler from its name ("uniform", "disagreement", "entropy") or the sampler itself."""
    if isinstance(sampler, PairSampler):
        return sampler
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}: choose one of {sorted(SAMPLERS)} or pass a PairSampler")
    return SAMPLERS[sampler]()
