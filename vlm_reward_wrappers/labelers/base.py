"""The labeler protocols and their errors. A labeler compares frames against a goal and knows nothing of RL.

Two protocols share one base, :class:`BaseLabeler`: :class:`Labeler` answers which of two frames is
closer to the goal (RL-VLM-F), :class:`~vlm_reward_wrappers.labelers.scores.ScoreLabeler` scores the
transitions of a window of frames (RG-VLM). The labelling service
(:mod:`vlm_reward_wrappers.labelling`) calls either through :meth:`BaseLabeler.answer`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND, check_frame


class LabelerError(RuntimeError):
    """A labeler could not answer."""


class LabelerUnavailableError(LabelerError, ConnectionError):
    """The labeler's backend could not be reached, timed out or was overloaded: worth retrying."""


class LabelerRefusedError(LabelerError):
    """The backend refused the request (a wrong model name, a bad key): retrying cannot help."""


class InvalidAnswerError(LabelerError, ValueError):
    """A labeler returned something that is not a valid answer: a bug in the labeler, never retried."""


def check_goal(goal: str) -> str:
    """The goal, or a ValueError saying what a goal is."""
    if not isinstance(goal, str) or not goal.strip():
        raise ValueError(f"goal must describe the task in words, e.g. 'the pole is upright on the cart'; got {goal!r}")
    return goal


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

    @classmethod
    def coerce(cls, item: Any) -> "Query":
        """A :class:`Query` from a Query or a pair ``(frame_a, frame_b)`` of frames, checked."""
        if isinstance(item, Query):
            query = item
        elif isinstance(item, (tuple, list)) and len(item) == 2:
            query = cls(*item)
        else:
            raise TypeError(
                f"a query is a Query(frame_a, frame_b) or a pair (frame_a, frame_b) of (H, W, 3) uint8 frames; "
                f"got {type(item).__name__}"
            )
        check_frame(query.frame_a, "frame_a")
        check_frame(query.frame_b, "frame_b")
        return query


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
        if self.preference not in (FIRST, SECOND, NO_PREFERENCE) or isinstance(self.preference, bool):
            raise InvalidAnswerError(f"preference must be 0, 1 or -1, got {self.preference!r}")
        if self.soft is not None and not 0.0 <= self.soft <= 1.0:
            raise InvalidAnswerError(f"soft must be a probability in [0, 1], got {self.soft!r}")


def check_answers(answers: Any, expected: int, answer_type: type, labeler_id: str) -> List[Any]:
    """``answers`` if it is a list of ``expected`` ``answer_type`` objects, else an InvalidAnswerError."""
    if not isinstance(answers, (list, tuple)) or len(answers) != expected:
        got = f"{len(answers)} answers" if isinstance(answers, (list, tuple)) else type(answers).__name__
        raise InvalidAnswerError(f"{labeler_id} returned {got} for {expected} requests: a bug in the labeler")
    wrong = [type(answer).__name__ for answer in answers if not isinstance(answer, answer_type)]
    if wrong:
        raise InvalidAnswerError(
            f"{labeler_id} returned {wrong[0]} where a {answer_type.__name__} was due: a bug in the labeler"
        )
    return list(answers)


class BaseLabeler(abc.ABC):
    """What the labelling service needs of any labeler, whatever its protocol.

    A labeler may raise: :class:`LabelerUnavailableError` (and any other error) is retried by the
    labelling service; :class:`LabelerRefusedError` and :class:`InvalidAnswerError` are not. Either
    way the requests are dropped and counted after that, and training goes on.
    """

    #: Requests handed to one call. Labelers that answer many at once (the oracle, CLIP) take more.
    batch_size: int = 1
    #: Calls the labelling service may run at once (a server's parallel slots; 1 for an in-process model).
    max_concurrency: int = 1
    #: Changes whenever the prompt changes, so stored answers to an older prompt are not reused.
    prompt_version: str = "none"
    #: Longer side in pixels of the frames this labeler should be shown (rendered frames are shrunk to
    #: it, never enlarged); None: it needs nothing beyond the reward model's small inputs.
    query_image_size: Optional[int] = None
    #: The longest one call may take by design (people answering: :class:`HumanLabeler`'s wait), or
    #: None; the labelling service warns when its retry policy would give up on such a call sooner.
    longest_call_s: Optional[float] = None

    @property
    def labeler_id(self) -> str:
        """Identifies this labeler and its settings in the label store."""
        return type(self).__name__

    @abc.abstractmethod
    def answer(self, requests: Sequence[Any], goal: str) -> List[Any]:
        """One answer per request, in order (the protocol's own method under a common name)."""

    def close(self) -> None:
        """Release models, sessions or processes held by the labeler."""


class Labeler(BaseLabeler):
    """Answers which of two frames is closer to a goal (RL-VLM-F's pairwise preference).

    Subclasses implement :meth:`compare`; callers use :meth:`label`, which checks the queries and the
    answers.
    """

    def label(self, queries: Sequence[Any], goal: str) -> List[Answer]:
        """One :class:`Answer` per query, in order.

        :param queries: :class:`Query` objects, or pairs ``(frame_a, frame_b)`` of (H, W, 3) uint8 frames.
        :param goal: the task in words.
        """
        queries = [Query.coerce(item) for item in queries]
        return check_answers(self.compare(queries, check_goal(goal)), len(queries), Answer, self.labeler_id)

    def answer(self, requests: Sequence[Any], goal: str) -> List[Answer]:
        return self.label(requests, goal)

    @abc.abstractmethod
    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        """Return one :class:`Answer` per query, in order."""


def check_labeler(labeler: Any, protocol: type = Labeler) -> BaseLabeler:
    """``labeler`` if it implements ``protocol``, else a TypeError saying what to pass."""
    if not isinstance(labeler, protocol):
        hint = (
            " (a model name is not a labeler: for a served model pass "
            f"OpenAICompatibleLabeler(base_url, {labeler!r}))" if isinstance(labeler, str) else ""
        )
        raise TypeError(
            f"labeler must be a {protocol.__name__}, e.g. OracleLabeler(), LlamaCppLabeler(model_path, "
            f"mmproj_path) or OpenAICompatibleLabeler(base_url, model); got {type(labeler).__name__}{hint}"
        )
    return labeler
