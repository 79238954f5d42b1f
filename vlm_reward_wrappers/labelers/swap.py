"""Swap-consistency (as RL-SaLLM-F): ask each pair in both orders and keep only answers that agree.

A VLM that guesses favours one image position; asked both ways round, a guess shows as the same
position chosen twice. The two orders of a pair are one query in the label store (its raw text holds
both answers), and a later ask of the pair in either order is answered from there.
"""

from __future__ import annotations

import threading
from typing import Dict, List, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.base import Answer, Labeler, Query, check_labeler
from vlm_reward_wrappers.label_store import FIRST, NO_PREFERENCE, SECOND


def _in_original_order(preference: int) -> int:
    """A preference stated about the swapped pair, as a preference about the original pair."""
    return preference if preference == NO_PREFERENCE else 1 - preference


class SwapConsistentLabeler(Labeler):
    """Asks ``inner`` about each pair in both orders; an answer stands only if both orders agree,
    otherwise the pair is answered -1 (no preference, not trained on).

    :attr:`metrics` counts the pairs asked both ways, the inconsistent ones, and estimates the
    position bias: the probability of answering "image 1" when guessing. Under the model that a
    guess picks image 1 with probability b in each order independently, pairs answered "image 1"
    twice and "image 2" twice occur in the ratio b^2 : (1 - b)^2, so b = sqrt(n11) / (sqrt(n11) + sqrt(n22)).

    :param inner: the labeler asked (a VLM labeler or a simulated teacher).
    """

    def __init__(self, inner: Labeler) -> None:
        self.inner = check_labeler(inner)
        self.batch_size = max(1, inner.batch_size // 2) if inner.batch_size > 1 else 1
        self.max_concurrency, self.query_image_size = inner.max_concurrency, inner.query_image_size
        self.prompt_version = f"{inner.prompt_version}+swap"
        self._lock = threading.Lock()
        self.counts: Dict[str, int] = {"pairs": 0, "both_answered": 0, "inconsistent": 0, "first_twice": 0,
                                       "second_twice": 0}

    @property
    def labeler_id(self) -> str:
        return f"SwapConsistentLabeler({self.inner.labeler_id})"

    def compare(self, queries: Sequence[Query], goal: str) -> List[Answer]:
        swapped = [Query(q.frame_b, q.frame_a, q.gt_reward_b, q.gt_reward_a) for q in queries]
        answers = self.inner.label(list(queries) + swapped, goal)
        forward, backward = answers[: len(queries)], answers[len(queries) :]
        out = []
        for ahead, behind in zip(forward, backward):
            back = _in_original_order(behind.preference)
            agreed = ahead.preference if ahead.preference == back else NO_PREFERENCE
            soft = None
            if ahead.soft is not None and behind.soft is not None:
                soft = 0.5 * (ahead.soft + 1.0 - behind.soft)  # both orders' probability that b is better
            out.append(Answer(agreed, soft=soft if agreed != NO_PREFERENCE else None,
                              raw=f"{ahead.raw}\n[swapped order] {behind.raw}"))
            self._count(ahead.preference, behind.preference)
        return out

    def _count(self, ahead: int, behind: int) -> None:
        with self._lock:
            self.counts["pairs"] += 1
            if NO_PREFERENCE in (ahead, behind):
                return
            self.counts["both_answered"] += 1
            self.counts["inconsistent"] += int(ahead == behind)  # the same position twice: the orders disagree
            self.counts["first_twice"] += int(ahead == behind == FIRST)
            self.counts["second_twice"] += int(ahead == behind == SECOND)

    @property
    def metrics(self) -> Dict[str, float]:
        """``inconsistency_rate`` (over pairs answered in both orders) and ``position_bias`` (see the class)."""
        c = self.counts
        first, second = np.sqrt(c["first_twice"]), np.sqrt(c["second_twice"])
        return {
            "swap_pairs": c["pairs"],
            "swap_inconsistency_rate": c["inconsistent"] / c["both_answered"] if c["both_answered"] else float("nan"),
            "position_bias": float(first / (first + second)) if first + second else float("nan"),
        }

    def close(self) -> None:
        self.inner.close()
