"""Which pairs go to the labeler, and when: RL-VLM-F's query schedule and pair selection, with the budget."""

from __future__ import annotations

import logging
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

import numpy as np

from vlm_reward_wrappers.config import LearnerConfig
from vlm_reward_wrappers.frames import FrameBuffer, QueryFrameStore
from vlm_reward_wrappers.labelers.base import Query
from vlm_reward_wrappers.labelling_service import PreferenceJob
from vlm_reward_wrappers.reward_model import RewardModel
from vlm_reward_wrappers.sampling import PairSampler

logger = logging.getLogger(__name__)

#: Rounds of drawing again when a drawn pair was labelled or drawn before.
DRAW_ROUNDS = 3


class QueryScheduler:
    """Sends ``pairs_per_query`` pairs every ``query_every`` env steps after ``first_query_step``, until
    ``feedback_budget`` queries are spent, and never a pair twice.

    A pair is known twice over, because what a query shows is known at two moments: by its two steps when
    it is drawn (large query frames are decoded and hashed later, on a labelling thread), and by the
    hashes of its two frames once answered (the label store's key, which also covers the labels a resumed
    run read back). Both are checked before a pair is sent.

    :param config: the schedule, budget and ``max_pending``.
    :param sampler: picks the pairs among the buffer's entries.
    :param rng: the generator pairs are drawn with.
    """

    def __init__(self, config: LearnerConfig, sampler: PairSampler, rng: np.random.Generator) -> None:
        self.config, self.sampler, self.rng = config, sampler, rng
        #: The env step at which the next batch is due.
        self.next_query_step = config.first_query_step
        #: Queries sent, all batches together (the budget spent; a resumed run counts its stored labels).
        self.queries_issued = 0
        #: Batches skipped because the labeler was behind (``max_pending`` queries waiting).
        self.skipped_batches = 0
        self._drawn_steps: Set[FrozenSet[int]] = set()
        self._labelled: Set[FrozenSet[str]] = set()

    def due(self, num_timesteps: int, buffer: Optional[FrameBuffer]) -> bool:
        """Whether a batch is due at ``num_timesteps``; if so, the next one is scheduled."""
        if num_timesteps < self.next_query_step or buffer is None or len(buffer) < 2:
            return False
        self.next_query_step = num_timesteps + self.config.query_every
        return True

    def labelled(self, hash_a: str, hash_b: str) -> bool:
        """Record that the pair of these frames is answered; False if it was already."""
        pair = frozenset((hash_a, hash_b))
        if pair in self._labelled:
            return False
        self._labelled.add(pair)
        return True

    def draw(self, buffer: FrameBuffer, reward_model: RewardModel, query_frames: Optional[QueryFrameStore],
             pending: int) -> List[PreferenceJob]:
        """The next batch's queries: new pairs of buffer entries, within the budget; none if the labeler has
        ``pending_limit`` queries waiting already (the batch is skipped and counted)."""
        n = min(self.config.pairs_per_query, self.config.feedback_budget - self.queries_issued)
        if n <= 0:
            return []
        if pending + n > self.config.pending_limit:
            self.skipped_batches += 1
            logger.warning("labeler is behind (%d queries pending): skipping this query batch", pending)
            return []
        candidates, step_of = None, None
        if query_frames is not None:  # pairs are drawn among the steps whose query frame was kept
            query_frames.flush()  # the last few frames handed over: milliseconds, once a batch
            steps = query_frames.steps(oldest=buffer.added - len(buffer))
            if len(steps) < 2:
                return []
            candidates = steps % buffer.capacity
            step_of = dict(zip(candidates.tolist(), steps.tolist()))
        jobs: List[PreferenceJob] = []
        drawn: Set[FrozenSet] = set()
        # A pair labelled before, or drawn twice, would cost a budget slot for nothing: draw again, a few
        # rounds at most (a buffer of near-identical frames may not hold n new pairs).
        for _ in range(DRAW_ROUNDS):
            a, b = self.sampler.select(buffer, reward_model, n - len(jobs), self.rng, candidates)
            for i, j in zip(a, b):
                job, key = _job(buffer, reward_model, query_frames, i, j, step_of)
                if key not in drawn and key not in self._labelled and key not in self._drawn_steps:
                    drawn.add(key)
                    jobs.append(job)
            if len(jobs) == n:
                break
        if step_of is not None:
            self._drawn_steps |= drawn
        self.queries_issued += len(jobs)
        return jobs

    def state_dict(self) -> Dict[str, Any]:
        """Where the schedule stands: the next batch's step, the budget spent, the batches skipped."""
        return {"next_query_step": self.next_query_step, "queries_issued": self.queries_issued,
                "skipped_batches": self.skipped_batches}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`."""
        self.next_query_step, self.queries_issued = state["next_query_step"], state["queries_issued"]
        self.skipped_batches = state.get("skipped_batches", 0)


def _job(buffer: FrameBuffer, reward_model: RewardModel, query_frames: Optional[QueryFrameStore], i: int, j: int,
         step_of: Optional[Dict[int, int]]) -> Tuple[PreferenceJob, FrozenSet]:
    """The query of buffer entries i and j, and the key that tells a pair drawn before."""
    gt_a, gt_b = float(buffer.gt_rewards[i]), float(buffer.gt_rewards[j])
    # Copies: the ring buffer overwrites its slots while the query waits.
    inputs = buffer.inputs(np.array([i, j]), reward_model.reward_input).copy()
    if step_of is None:  # the labeler is shown the reward-model frames
        job = PreferenceJob(Query(buffer.frames[i].copy(), buffer.frames[j].copy(), gt_a, gt_b))
        if buffer.observations is not None:
            job.input_a, job.input_b = inputs
        return job, frozenset((job.hash_a, job.hash_b))
    step_a, step_b = step_of[i], step_of[j]
    # Decoded (and hashed) on a labelling thread, not here.
    job = PreferenceJob(lambda: Query(query_frames.get(step_a), query_frames.get(step_b), gt_a, gt_b), inputs[0],
                        inputs[1])
    return job, frozenset((step_a, step_b))
