"""Fake labelers shared by the tests: a labeler that fails, hangs, is slow, records what it is asked, or
answers from a script, by arguments rather than by a hand-written class in each test file.

:class:`FakeLabeler` answers which of two frames is better (the :class:`~vlm_reward_wrappers.labelers.Labeler`
protocol); :class:`FakeScoreLabeler` scores windows (the
:class:`~vlm_reward_wrappers.labelers.scores.ScoreLabeler` protocol). Both answer as the labeler they wrap,
or from a function of the requests, and take the same arguments for what should go wrong. Each call, in
order: it is counted, sets :attr:`~_Fake.entered`, waits for :attr:`~_Fake.release` (when blocked), sleeps
``delay_s``, raises its next error if it has one, answers, and records the requests it answered.

Import them as the other test helpers are imported (pytest puts ``tests/`` on ``sys.path``)::

    from fakes import FakeLabeler
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Iterable, List, Optional, Sequence, Union

from vlm_reward_wrappers.labelers import Answer, Labeler, OracleLabeler, Query
from vlm_reward_wrappers.labelers.base import BaseLabeler
from vlm_reward_wrappers.labelers.scores import ScoreLabeler, Window, WindowScores
from vlm_reward_wrappers.label_store import frame_hash

#: One exception, raised on every call; or the error for each call in turn (None: that call answers),
#: calls past the end answering: ``[e] * 3`` fails the first three calls, ``[None, None, e]`` the third,
#: ``itertools.cycle([e, None])`` every other one.
Errors = Union[BaseException, Iterable[Optional[BaseException]], None]


class _Fake(BaseLabeler):
    """What both fakes do, whatever their protocol; :class:`FakeLabeler` and :class:`FakeScoreLabeler`
    route their protocol's method to :meth:`_respond`.

    :param inner: the labeler whose answers it gives; its identity (``labeler_id``, ``prompt_version``)
        and settings are the fake's too, so the label store takes the fake's answers for the inner's.
    :param answers: instead of ``inner``, a function from the list of requests of a call to its answers;
        whatever it returns goes to the protocol's checks, so it can return wrong answers on purpose.
    :param errors: what to raise, see :data:`Errors`.
    :param delay_s: seconds each call sleeps before answering or raising.
    :param blocked: each call waits inside until :attr:`release` is set.
    :param block_timeout_s: longest a blocked call waits: after it the fake releases itself, so a test
        that never gets its release fails on its assertions instead of hanging.
    :param labeler_id: the identity in the label store, if not the inner's (or the class name).
    :param batch_size: requests a call, if not the inner's (1 when answering from a function).
    :param max_concurrency: calls at once, if not the inner's (1).
    :param query_image_size: the frame size it asks for, if not the inner's.
    """

    def __init__(
        self,
        inner: Optional[BaseLabeler] = None,
        *,
        answers: Optional[Callable[[List[Any]], Any]] = None,
        errors: Errors = None,
        delay_s: float = 0.0,
        blocked: bool = False,
        block_timeout_s: float = 60.0,
        labeler_id: Optional[str] = None,
        batch_size: Optional[int] = None,
        max_concurrency: Optional[int] = None,
        query_image_size: Optional[int] = None,
    ) -> None:
        if (inner is None) == (answers is None):
            raise ValueError("a fake answers as an inner labeler or from an answers function: give one of them")
        self.inner, self.answers = inner, answers
        self._labeler_id = labeler_id
        settings = inner if inner is not None else BaseLabeler
        self.batch_size = batch_size or settings.batch_size
        self.max_concurrency = max_concurrency or settings.max_concurrency
        self.query_image_size = query_image_size or settings.query_image_size
        self.prompt_version, self.longest_call_s = settings.prompt_version, settings.longest_call_s
        self._errors = errors if isinstance(errors, BaseException) else iter(errors or ())
        self.delay_s, self.block_timeout_s = delay_s, block_timeout_s
        #: Set when a call starts.
        self.entered = threading.Event()
        #: Lets blocked calls go on; set from the start unless ``blocked``.
        self.release = threading.Event()
        if not blocked:
            self.release.set()
        #: Calls made, those that raised included.
        self.calls = 0
        #: The requests answered (queries or windows), in the order answered.
        self.answered: List[Any] = []
        # The labelling service calls from several threads at once (max_concurrency).
        self._lock = threading.Lock()

    @property
    def labeler_id(self) -> str:
        if self._labeler_id is not None:
            return self._labeler_id
        return self.inner.labeler_id if self.inner is not None else type(self).__name__

    def _respond(self, requests: Sequence[Any], goal: str) -> Any:
        with self._lock:
            self.calls += 1
        self.entered.set()
        if not self.release.wait(timeout=self.block_timeout_s):
            self.release.set()
        if self.delay_s:
            time.sleep(self.delay_s)
        with self._lock:
            error = self._errors if isinstance(self._errors, BaseException) else next(self._errors, None)
        if error is not None:
            # A fresh traceback each time: re-raising one instance would grow its traceback call by call.
            raise error.with_traceback(None)
        requests = list(requests)
        answers = self.answers(requests) if self.answers is not None else self.inner.answer(requests, goal)
        with self._lock:
            self.answered += requests
        return answers

    def close(self) -> None:
        if self.inner is not None:
            self.inner.close()


class FakeLabeler(_Fake, Labeler):
    """A pairwise labeler for tests; without ``inner`` or ``answers`` it answers as :class:`OracleLabeler`.

    ``FakeLabeler()`` answers as the oracle and records the queries; ``FakeLabeler(errors=ConnectionError())``
    is a server that is always down; ``FakeLabeler(blocked=True)`` hangs until ``release.set()``;
    ``FakeLabeler(answers=lambda queries: [Answer(0) for _ in queries])`` always prefers the first frame.
    See :class:`_Fake` for the arguments.
    """

    def __init__(self, inner: Optional[Labeler] = None, **kwargs: Any) -> None:
        if inner is None and kwargs.get("answers") is None:
            inner = OracleLabeler()
        super().__init__(inner, **kwargs)

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        return self._respond(queries, goal)

    def answered_pairs(self) -> List[frozenset]:
        """The frame hashes of each query answered, as an unordered pair: what the label store keys on."""
        return [frozenset((frame_hash(q.frame_a), frame_hash(q.frame_b))) for q in self.answered]


class FakeScoreLabeler(_Fake, ScoreLabeler):
    """A window-scoring labeler for tests, e.g. ``FakeScoreLabeler(OracleScoreLabeler(reward_range),
    errors=[None, ConnectionError()])``, whose second call fails. See :class:`_Fake` for the arguments."""

    def score_windows(self, windows: Sequence[Window], goal: str) -> List[WindowScores]:
        return self._respond(windows, goal)

    def answered_windows(self) -> List[str]:
        """The frame hash of each window answered."""
        return [frame_hash(window.frames) for window in self.answered]
