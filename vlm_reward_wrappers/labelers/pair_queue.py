"""The pairs waiting for people to label them: shared by :class:`~vlm_reward_wrappers.labelers.HumanLabeler`,
which puts them in and waits for their answers, and the labelling page, which hands them out."""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

import numpy as np

from vlm_reward_wrappers.frames import png_bytes
from vlm_reward_wrappers.labelers.base import Answer
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND

#: What people click, and the preference it means.
CHOICES = {"left": FIRST, "right": SECOND, "tie": NO_PREFERENCE}


@dataclass
class PendingPair:
    """A pair waiting for a person: its frames as PNG, and who holds it until when."""

    pair_id: str
    goal: str
    png_a: bytes
    png_b: bytes
    holder: Optional[str] = None
    lease_until: float = 0.0
    answer: Optional[Answer] = None
    done: threading.Event = field(default_factory=threading.Event)


class PairQueue:
    """Pairs waiting for people, handed out first come first served, one at a time per person.

    :param lease_s: seconds a person holds a pair unless their page renews it; then it goes back to the
        queue (the page is closed, or its person gone).
    :param clock: seconds from a monotonic clock (``time.monotonic``; tests pass one they move by hand).
    """

    def __init__(self, lease_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if not lease_s > 0:
            raise ValueError(f"lease_s must be positive, got {lease_s}")
        self.lease_s = lease_s
        self.clock = clock
        self._pairs: "OrderedDict[str, PendingPair]" = OrderedDict()
        self._lock = threading.Lock()
        #: answers taken, per person.
        self.answered_by: Dict[str, int] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._pairs)

    def put(self, goal: str, frame_a: np.ndarray, frame_b: np.ndarray) -> PendingPair:
        pair = PendingPair(uuid.uuid4().hex, goal, png_bytes(frame_a), png_bytes(frame_b))
        with self._lock:
            self._pairs[pair.pair_id] = pair
        return pair

    def next(self, person: str) -> Optional[PendingPair]:
        """The pair ``person`` holds (again, after a reload), else the oldest free pair, leased to them."""
        now = self.clock()
        with self._lock:
            free = None
            for pair in self._pairs.values():
                if pair.holder == person and pair.lease_until > now:
                    pair.lease_until = now + self.lease_s
                    return pair
                if free is None and (pair.holder is None or pair.lease_until <= now):
                    free = pair
            if free is not None:
                free.holder, free.lease_until = person, now + self.lease_s
            return free

    def get(self, pair_id: str) -> Optional[PendingPair]:
        with self._lock:
            return self._pairs.get(pair_id)

    def held(self, pair_id: str) -> bool:
        """Whether someone holds the pair (their lease has not run out)."""
        with self._lock:
            pair = self._pairs.get(pair_id)
            return pair is not None and pair.holder is not None and pair.lease_until > self.clock()

    def renew(self, pair_id: str, person: str) -> bool:
        """Extend ``person``'s lease of a pair they still hold (their page is open); False if they do not."""
        with self._lock:
            pair = self._pairs.get(pair_id)
            if pair is None or pair.holder != person:
                return False
            pair.lease_until = self.clock() + self.lease_s
            return True

    def answer(self, pair_id: str, person: str, choice: str, name: str = "") -> bool:
        """Take ``person``'s answer (a page's id; ``name`` the name they gave, kept in the answer's text);
        False if the pair is gone (answered or withdrawn). The first answer counts, whoever holds the
        pair: the lease only decides who is shown it, and a click is never thrown away."""
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {sorted(CHOICES)}, got {choice!r}")
        with self._lock:
            pair = self._pairs.pop(pair_id, None)
            if pair is None:
                return False
            who = name or person
            self.answered_by[who] = self.answered_by.get(who, 0) + 1
        pair.answer = Answer(CHOICES[choice], raw=f"{choice} (answered by {who})")
        pair.done.set()
        return True

    def release(self, pair_id: str, person: str) -> None:
        """``person`` gives the pair back (their page closed): the next person gets it."""
        with self._lock:
            pair = self._pairs.get(pair_id)
            if pair is not None and pair.holder == person:
                pair.holder, pair.lease_until = None, 0.0

    def withdraw(self, pair_id: str) -> bool:
        """Take an unanswered pair off the queue; False if it was answered meanwhile."""
        with self._lock:
            return self._pairs.pop(pair_id, None) is not None
