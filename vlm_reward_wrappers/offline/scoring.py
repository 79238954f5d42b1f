"""RG-VLM on a fixed dataset: every transition scored 0-10 by a score labeler, in windows of frames."""

from __future__ import annotations

import logging
from typing import Dict, List, Optional, Sequence

import numpy as np

from vlm_reward_wrappers.labelers.base import LabelerUnavailableError, check_goal, check_labeler
from vlm_reward_wrappers.labelers.prompts import describe_actions
from vlm_reward_wrappers.labelers.scores import ScoreLabeler
from vlm_reward_wrappers.labelling_service import LabellingService, RetryPolicy, WindowJob
from vlm_reward_wrappers.label_store import LabelStore
from vlm_reward_wrappers.offline.datasets import OfflineDataset

logger = logging.getLogger(__name__)


class WindowScorer:
    """RG-VLM on a fixed dataset: every transition scored 0-10 by a :class:`ScoreLabeler`, in windows.

    Windows tile each episode without overlap (its last may be shorter). They go through the
    :class:`~vlm_reward_wrappers.labelling_service.LabellingService`: each answer is committed to the label
    store before it is used, and a window found there (same frames, actions, goal, labeler and prompt)
    is not sent, so an interrupted run resumes where it stopped and sends no answered query again. A
    labeler that still fails after the retry policy's retries stops the run with
    :class:`~vlm_reward_wrappers.labelers.LabelerUnavailableError`: nothing answered is lost, and
    running again resumes.

    :param labeler: scores the windows.
    :param goal: text description of the task.
    :param label_store: where answers are committed; an in-memory store (no resume) by default.
    :param window_size: transitions per window; W + 1 frames are shown (4: five frames, which a small
        VLM's context still takes).
    :param retry: retries, backoff and deadline of each labeler call.
    """

    def __init__(
        self,
        labeler: ScoreLabeler,
        goal: str,
        label_store: Optional[LabelStore] = None,
        window_size: int = 4,
        retry: Optional[RetryPolicy] = None,
    ) -> None:
        if window_size < 1:
            raise ValueError(f"window_size must be at least 1, got {window_size}")
        self.labeler, self.goal = check_labeler(labeler, ScoreLabeler), check_goal(goal)
        self.store = LabelStore() if label_store is None else label_store
        self.window_size = window_size
        self.service = LabellingService(labeler, goal, self.store, retry, asynchronous=False)
        self._figures = {"windows": 0, "transitions": 0, "unscored": 0}

    def score(self, dataset: OfflineDataset) -> List[np.ndarray]:
        """Score every transition: one (N_i,) float64 array per episode, in [0, 10] or NaN (unscored)."""
        out = [np.full(len(episode), np.nan) for episode in dataset.episodes]
        jobs = []
        for index, episode in enumerate(dataset.episodes):
            for start in range(0, len(episode), self.window_size):
                window = episode.window(start, min(start + self.window_size, len(episode)))
                jobs.append(WindowJob(window, describe_actions(window.actions), tag=(index, start)))
        # In slices, to report progress through a slow labeler and stop at the first batch it drops.
        step = max(1, self.labeler.batch_size) * max(1, self.labeler.max_concurrency)
        for begin in range(0, len(jobs), step):
            dropped = self.service.counts["dropped"]
            self.service.submit(jobs[begin : begin + step])
            for job, record in self.service.poll():
                index, start = job.tag
                out[index][start : start + len(job.window)] = record.scores
            if self.service.counts["dropped"] > dropped:
                raise LabelerUnavailableError(
                    f"{self.labeler.labeler_id} failed after its retries: stopped after {begin} of {len(jobs)} "
                    f"windows; every answer so far is in the label store {self.store.path}: run again to resume"
                )
            logger.info("windows: %d of %d done, %d from the store", min(begin + step, len(jobs)), len(jobs),
                        self.service.counts["cached"])
        self._figures = {"windows": len(jobs), "transitions": dataset.total_steps,
                         "unscored": int(sum(np.isnan(scores).sum() for scores in out))}
        return out

    @property
    def metrics(self) -> Dict[str, float]:
        """Windows and transitions, unscored ones, and the labelling service's counts."""
        counts = self.service.counts
        return {**self._figures, "cached": counts["cached"], "sent": counts["sent"],
                "failed_calls": counts["failed_calls"], "timeouts": counts["timeouts"]}

    def close(self) -> None:
        """Close the labeler."""
        self.service.close()


def fill_unscored(scores: Sequence[np.ndarray], fill: Optional[float] = None) -> List[np.ndarray]:
    """Scores with every NaN (a transition whose answer could not be read) replaced.

    :param fill: the value to put in; None puts the mean of all scored transitions, which says
        neither "progress" nor "none" (0 where nothing was scored).
    """
    scored = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    if fill is None:
        fill = float(np.nanmean(scored)) if np.isfinite(scored).any() else 0.0
    return [np.where(np.isnan(s), fill, s) for s in scores]


