"""The labeler interface: a labeler compares two frames against a goal and knows nothing of RL."""

from __future__ import annotations

import abc
import logging
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, TypeVar

import numpy as np

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Preference values. ``NO_PREFERENCE`` answers are stored but never trained on.
FIRST, SECOND, NO_PREFERENCE = 0, 1, -1


@dataclass(frozen=True)
class Query:
    """A pair of frames to compare.

    :param frame_a: first frame, (H, W, 3) uint8 ("image 1" in prompts).
    :param frame_b: second frame, (H, W, 3) uint8 ("image 2").
    :param gt_reward_a: true reward of the first frame; only simulated teachers read it.
    :param gt_reward_b: true reward of the second frame.
    """

    frame_a: np.ndarray
    frame_b: np.ndarray
    gt_reward_a: float = float("nan")
    gt_reward_b: float = float("nan")


@dataclass(frozen=True)
class Answer:
    """A labeler's answer to one query.

    :param preference: 0 (first frame closer to the goal), 1 (second), -1 (no preference).
    :param soft: probability in [0, 1] that the second frame is better, where the labeler gives one.
    :param raw: the labeler's raw output (the VLM's text), kept in the label store.
    """

    preference: int
    soft: Optional[float] = None
    raw: str = ""

    def __post_init__(self) -> None:
        if self.preference not in (FIRST, SECOND, NO_PREFERENCE):
            raise ValueError(f"preference must be 0, 1 or -1, got {self.preference!r}")


class Labeler(abc.ABC):
    """Answers which of two frames is closer to a goal.

    Subclasses implement :meth:`label`. It may raise: the learner retries the batch and, after its
    retries, drops it and counts the failure; training goes on either way.
    """

    #: Queries handed to one :meth:`label` call. Backends that parallelise take more.
    batch_size: int = 1
    #: Changes whenever the prompt changes, so stored answers to an older prompt are not reused.
    prompt_version: str = "none"

    @property
    def labeler_id(self) -> str:
        """Identifies this labeler and its settings in the label store."""
        return type(self).__name__

    @abc.abstractmethod
    def label(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        """Return one :class:`Answer` per query, in order."""

    def close(self) -> None:
        """Release models, sessions or processes held by the labeler."""


def check_goal(goal: str) -> str:
    """The goal, or a ValueError saying what a goal is."""
    if not goal or not goal.strip():
        raise ValueError("goal must describe the task in words, e.g. 'the pole is upright on the cart'")
    return goal


def call_with_retries(
    call: Callable[[], List[T]],
    expected: int,
    labeler_id: str,
    max_retries: int,
    retry_backoff_s: float,
    counts: Dict[str, int],
) -> Tuple[List[T], float]:
    """Call a labeler until it returns ``expected`` answers, retrying with exponential backoff.

    Every attempt adds ``expected`` to ``counts["sent"]`` and every failure 1 to
    ``counts["failed_calls"]``; after ``max_retries`` retries the last error is raised, for the caller
    to drop the work or stop.

    :return: the answers and the seconds the successful attempt took.
    """
    for attempt in range(max_retries + 1):
        counts["sent"] += expected
        started = time.perf_counter()
        try:
            answers = call()
            if len(answers) != expected:
                raise RuntimeError(f"{labeler_id} returned {len(answers)} answers for {expected} items")
            return answers, time.perf_counter() - started
        except Exception as error:
            counts["failed_calls"] += 1
            logger.warning("labeler %s failed on %d items (attempt %d of %d): %r",
                           labeler_id, expected, attempt + 1, max_retries + 1, error)
            if attempt == max_retries:
                raise
            time.sleep(retry_backoff_s * 2**attempt)
    raise AssertionError("unreachable")
