"""The labelling service: the one road from a request to a stored answer, online and offline alike.

Every request (a pair of frames for a :class:`~vlm_reward_wrappers.labelers.Labeler`, a window of
frames for a :class:`~vlm_reward_wrappers.labelers.scores.ScoreLabeler`) is looked up in the
:class:`~vlm_reward_wrappers.label_store.LabelStore` first; what is not there is sent to the labeler,
``labeler.batch_size`` requests a call, ``labeler.max_concurrency`` calls at once; every answer is
committed to the store before it is handed back. One :class:`RetryPolicy` governs every call: retries
with exponential backoff inside a total deadline. A call past its deadline is abandoned (its thread
is left to finish on its own), a labeler that keeps failing has its requests dropped, and a labeler
that returns invalid answers is reported once and dropped: all counted, none raised, so training
goes on. :meth:`LabellingService.close` gives the calls in flight a few seconds to answer, commits
what they answer, and abandons the rest: a run stops in seconds, not at a labeler's deadline.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.labelers.base import (
    BaseLabeler,
    InvalidAnswerError,
    LabelerRefusedError,
    Query,
    check_goal,
)
from vlm_reward_wrappers.label_store import LabelRecord, LabelStore, ScoreRecord, frame_hash, window_hash

logger = logging.getLogger(__name__)


class LabelerTimeoutError(TimeoutError):
    """A labeler call ran past the retry policy's deadline and was abandoned."""


@dataclass(frozen=True)
class RetryPolicy:
    """How the labelling service calls a labeler.

    :param max_retries: retries of a failed call before its requests are dropped.
    :param backoff_s: delay before the first retry; it doubles on each retry.
    :param deadline_s: the most seconds one call may take, attempts and backoff together; a call still
        running then is abandoned and its requests dropped. A two-stage query to a CPU VLM takes
        seconds to minutes (docs/labelers.md): keep the deadline above that.
    """

    max_retries: int = 2
    backoff_s: float = 1.0
    deadline_s: float = 600.0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {self.max_retries}")
        if self.backoff_s < 0:
            raise ValueError(f"backoff_s must be 0 or more, got {self.backoff_s}")
        if not self.deadline_s > 0:
            raise ValueError(f"deadline_s must be positive, got {self.deadline_s}")


class LabelJob(abc.ABC):
    """One request to a labeler, with what the service needs to find its answer in the store and to
    commit it."""

    @property
    @abc.abstractmethod
    def request(self) -> Any:
        """What the labeler is asked: a :class:`Query` or a :class:`~vlm_reward_wrappers.labelers.scores.Window`."""

    @abc.abstractmethod
    def lookup(self, store: LabelStore, goal: str, labeler: BaseLabeler) -> Optional[Any]:
        """The stored record answering this request, or None."""

    @abc.abstractmethod
    def commit(self, store: LabelStore, goal: str, labeler: BaseLabeler, answer: Any, latency_s: float) -> Any:
        """Commit the labeler's answer and return the stored record."""


@dataclass
class PreferenceJob(LabelJob):
    """A pair of frames to compare, and the reward-model inputs to train on once it is answered.

    :param source: the two frames as the labeler sees them and their true rewards: a :class:`Query`, or
        a function returning one, called on a labelling thread (decoding and hashing large query frames
        are kept off the env loop).
    :param input_a: reward-model input of the first frame; None when it is the frame itself.
    :param input_b: the same for the second frame.
    """

    source: Union[Query, Callable[[], Query]]
    input_a: Optional[np.ndarray] = None
    input_b: Optional[np.ndarray] = None

    @cached_property
    def query(self) -> Query:
        """The two frames and their true rewards."""
        return self.source if isinstance(self.source, Query) else self.source()

    @cached_property
    def hash_a(self) -> str:
        return frame_hash(self.query.frame_a)

    @cached_property
    def hash_b(self) -> str:
        return frame_hash(self.query.frame_b)

    @property
    def request(self) -> Query:
        return self.query

    @property
    def inputs(self) -> Tuple[np.ndarray, np.ndarray]:
        """The reward-model inputs of both frames."""
        return (self.query.frame_a if self.input_a is None else self.input_a,
                self.query.frame_b if self.input_b is None else self.input_b)

    def lookup(self, store, goal, labeler):
        return store.lookup(self.hash_a, self.hash_b, goal, labeler.labeler_id, labeler.prompt_version)

    def commit(self, store, goal, labeler, answer, latency_s):
        query = self.query
        record = LabelRecord(self.hash_a, self.hash_b, goal, labeler.labeler_id, labeler.prompt_version,
                             answer.preference, answer.soft, answer.raw, latency_s,
                             gt_reward_a=query.gt_reward_a, gt_reward_b=query.gt_reward_b)
        store.add(record, query.frame_a, query.frame_b, self.input_a, self.input_b)
        return record


@dataclass
class WindowJob(LabelJob):
    """A window of consecutive frames whose transitions are to be scored (RG-VLM).

    :param window: the frames, actions and true rewards.
    :param actions: the actions as shown to the labeler (part of the window's identity in the store).
    :param tag: where the scores go, for the caller (e.g. (episode, first step)).
    """

    window: Any
    actions: str
    tag: Any = None

    def __post_init__(self) -> None:
        self.frame_hashes = tuple(frame_hash(frame) for frame in self.window.frames)
        self.key = window_hash(self.frame_hashes, self.actions)

    @property
    def request(self) -> Any:
        return self.window

    def lookup(self, store, goal, labeler):
        return store.lookup_scores(self.key, goal, labeler.labeler_id, labeler.prompt_version)

    def commit(self, store, goal, labeler, answer, latency_s):
        scores = np.asarray(answer.scores, dtype=np.float64)
        if scores.shape != (len(self.window),):
            scores = np.full(len(self.window), np.nan)  # a malformed answer scores nothing, like garbage text
        record = ScoreRecord(self.key, self.frame_hashes, self.actions, goal, labeler.labeler_id,
                             labeler.prompt_version, tuple(scores), answer.raw, latency_s)
        store.add_scores(record)
        return record


class LabellingService:
    """Answers :class:`LabelJob` s through a labeler: store first, one retry policy, fan-out, counted.

    Jobs are submitted in batches and their (job, record) pairs collected with :meth:`poll`, which
    never waits. With ``asynchronous`` (the default) calls run on background threads and
    :meth:`submit` returns at once; otherwise :meth:`submit` returns once every job of the batch is
    answered or dropped, and answers arrive in submission order (deterministic, for tests and offline
    labelling).

    :param labeler: answers the requests.
    :param goal: the task in words.
    :param store: where answers are looked up first and committed before use.
    :param retry: retries, backoff and the deadline of each call.
    :param asynchronous: label on background threads (True) or before :meth:`submit` returns.
    """

    def __init__(
        self,
        labeler: BaseLabeler,
        goal: str,
        store: LabelStore,
        retry: Optional[RetryPolicy] = None,
        asynchronous: bool = True,
    ) -> None:
        self.labeler, self.goal, self.store = labeler, check_goal(goal), store
        self.retry = retry or RetryPolicy()
        self.asynchronous = asynchronous
        #: sent: requests handed to the labeler, retries included; answered: committed answers;
        #: cached: answered from the store; failed_calls: calls that raised; timeouts: calls abandoned
        #: at the deadline; invalid_answers: calls that returned invalid answers; dropped: requests
        #: given up on; abandoned_at_close: requests in flight or queued when the service closed (also
        #: counted as dropped).
        self.counts: Dict[str, int] = {
            "sent": 0, "answered": 0, "cached": 0, "failed_calls": 0, "timeouts": 0, "invalid_answers": 0,
            "dropped": 0, "abandoned_at_close": 0,
        }
        self.latency_s_total = 0.0
        self._outbox: "queue.Queue[Tuple[LabelJob, Any]]" = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max(1, labeler.max_concurrency), thread_name_prefix="vlm-label")
        self._reported_invalid = False
        self._calls: List[Tuple[Future, int]] = []  # (call, its requests) submitted and maybe not done
        #: Set by close(): no retry starts. _abandon: calls still running are left to themselves.
        self._closing, self._abandon = threading.Event(), threading.Event()
        lifecycle.track(self)
        longest = labeler.longest_call_s
        needed = None if longest is None else (
            longest * (self.retry.max_retries + 1) + self.retry.backoff_s * (2**self.retry.max_retries - 1))
        if needed is not None and needed > self.retry.deadline_s:
            logger.warning(
                "%s may take %g s a call: with %d retries its calls need %g s, but the retry policy gives up after "
                "%g s and an answer arriving later is lost; pass retry=RetryPolicy(deadline_s=%g) (or fewer retries)",
                labeler.labeler_id, longest, self.retry.max_retries, needed, self.retry.deadline_s, needed + 10)

    @property
    def pending(self) -> int:
        """Jobs submitted and neither answered nor dropped yet."""
        with self._lock:
            return self._pending

    def submit(self, jobs: Sequence[LabelJob]) -> None:
        """Hand jobs to the labeler (in calls of ``labeler.batch_size``)."""
        jobs = list(jobs)
        if not jobs:
            return
        with self._lock:
            self._pending += len(jobs)
        size = max(1, self.labeler.batch_size)
        chunks = [jobs[start : start + size] for start in range(0, len(jobs), size)]
        if self.asynchronous:
            self._calls = [(call, n) for call, n in self._calls if not call.done()]
            for chunk in chunks:
                self._calls.append((self._pool.submit(lambda chunk=chunk: self._deliver(self._run(chunk))), len(chunk)))
            return
        for results in self._pool.map(self._run, chunks):
            self._deliver(results)

    def poll(self) -> List[Tuple[LabelJob, Any]]:
        """(job, stored record) pairs that arrived since the last poll; never waits."""
        out = []
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is pending; False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop labelling and close the labeler; returns within about ``timeout_s`` seconds.

        Queued calls are cancelled; calls in flight get ``timeout_s`` to answer, and what they answer is
        committed to the store; then the labeler is closed (which ends a person's or a model's wait) and
        whatever is still running is abandoned: its answer, should it come, is neither committed nor
        used. Abandoned requests are counted (``abandoned_at_close``). Later calls do nothing.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        self._pool.shutdown(wait=False, cancel_futures=True)
        cancelled = sum(n for call, n in self._calls if call.cancelled())
        with self._lock:
            self._pending -= cancelled
        self._count("dropped", cancelled)
        self._count("abandoned_at_close", cancelled)
        if not self.wait(timeout_s):
            self._abandon.set()
        self.labeler.close()
        self._pool.shutdown(wait=True)  # once abandoned, a worker returns within a poll interval
        if self.counts["abandoned_at_close"]:
            logger.warning("labelling closed with %d requests unanswered: abandoned", self.counts["abandoned_at_close"])
        lifecycle.untrack(self)

    # ------------------------------------------------------------------------------------ internals
    def _count(self, name: str, n: int) -> None:
        with self._lock:  # calls run on several threads
            self.counts[name] += n

    def _deliver(self, results: List[Tuple[LabelJob, Any]]) -> None:
        for result in results:
            self._outbox.put(result)

    def _run(self, jobs: List[LabelJob]) -> List[Tuple[LabelJob, Any]]:
        """Answer one chunk: from the store where it can, else from the labeler. Never raises."""
        results, fresh = [], []
        try:
            for job in jobs:
                record = job.lookup(self.store, self.goal, self.labeler)
                if record is None:
                    fresh.append(job)
                else:
                    self._count("cached", 1)
                    results.append((job, record))
            if fresh:
                results += self._label(fresh)
        except Exception:  # the store failed (disk full, closed): nothing may stop training
            logger.exception("labelling %d requests failed outside the labeler", len(jobs))
        self._count("dropped", len(jobs) - len(results))
        with self._lock:
            self._pending -= len(jobs)
        return results

    def _label(self, jobs: List[LabelJob]) -> List[Tuple[LabelJob, Any]]:
        labeler, n = self.labeler, len(jobs)
        requests = [job.request for job in jobs]
        deadline = time.monotonic() + self.retry.deadline_s
        for attempt in range(self.retry.max_retries + 1):
            remaining = deadline - time.monotonic()
            self._count("sent", n)
            started = time.perf_counter()
            try:
                answers = _call_with_deadline(lambda: labeler.answer(requests, self.goal), remaining, self._abandon)
            except CallAbandoned:
                self._count("abandoned_at_close", n)
                return []
            except LabelerTimeoutError:
                self._count("timeouts", 1)
                logger.warning("labeler %s did not answer %d requests within the %g s deadline: dropped",
                               labeler.labeler_id, n, self.retry.deadline_s)
                return []
            except InvalidAnswerError as error:
                self._count("invalid_answers", 1)
                if not self._reported_invalid:  # a bug in the labeler: say so once, then count
                    self._reported_invalid = True
                    logger.error("labeler %s returned invalid answers; its requests are dropped (%s)",
                                 labeler.labeler_id, error)
                return []
            except Exception as error:
                self._count("failed_calls", 1)
                retry = (not isinstance(error, LabelerRefusedError) and attempt < self.retry.max_retries
                         and not self._closing.is_set())
                logger.warning("labeler %s failed on %d requests (attempt %d of %d%s): %r", labeler.labeler_id, n,
                               attempt + 1, self.retry.max_retries + 1, "" if retry else ", dropped", error)
                if not retry:
                    return []
                left = deadline - time.monotonic()
                if left <= 0:
                    self._count("timeouts", 1)
                    return []
                if self._closing.wait(min(self.retry.backoff_s * 2**attempt, left)):
                    return []  # closed while backing off: no retry
                continue
            latency_s = (time.perf_counter() - started) / n
            results = []
            for job, answer in zip(jobs, answers):
                results.append((job, job.commit(self.store, self.goal, labeler, answer, latency_s)))
                self._count("answered", 1)
            with self._lock:
                self.latency_s_total += latency_s * len(results)
            return results
        return []


class CallAbandoned(Exception):
    """A labeler call was left running because the service closed."""


#: Seconds between checks, while a call runs, for the service closing.
_POLL_S = 0.05


def _call_with_deadline(call, timeout_s: float, abandon: threading.Event) -> Any:
    """``call()`` on its own daemon thread; LabelerTimeoutError if it has not returned in ``timeout_s``,
    CallAbandoned as soon as ``abandon`` is set.

    Python cannot stop a thread: a call past its deadline is abandoned, not killed, and its result
    is discarded whenever it comes.
    """
    if timeout_s <= 0:
        raise LabelerTimeoutError("no time left before the deadline")
    outcome: Dict[str, Any] = {}
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the caller's thread
            outcome["error"] = error
        finally:
            done.set()

    thread = threading.Thread(target=target, name="vlm-labeler-call", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not done.wait(min(_POLL_S, max(0.0, deadline - time.monotonic()))):
        if abandon.is_set():
            raise CallAbandoned("the labelling service closed")
        if time.monotonic() >= deadline:
            raise LabelerTimeoutError(f"no answer within {timeout_s:.1f} s")
    thread.join(1.0)  # it has answered and is ending: gone before its answer is used, so close() leaves none
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
