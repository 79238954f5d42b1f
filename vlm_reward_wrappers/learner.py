"""PreferenceLearner: RL-VLM-F's continual loop of querying, labelling and reward-model training."""

from __future__ import annotations

import logging
from typing import Dict, FrozenSet, List, Optional, Set, Union

import numpy as np

from vlm_reward_wrappers.frames import FrameBuffer
from vlm_reward_wrappers.labelers.base import Labeler, Query, check_goal, check_labeler
from vlm_reward_wrappers.labelling import LabellingService, PreferenceJob, RetryPolicy
from vlm_reward_wrappers.labels import NO_PREFERENCE, LabelRecord, LabelStore, PreferenceDataset
from vlm_reward_wrappers.metrics import gt_preference, pearson
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel
from vlm_reward_wrappers.sampling import PairSampler, make_sampler

logger = logging.getLogger(__name__)


class PreferenceLearner:
    """The continual loop of RL-VLM-F, driven one env step at a time by the wrappers.

    Every step the wrappers hand in frames; the learner keeps them in a :class:`FrameBuffer`, returns
    the reward model's reward and, on schedule, sends pairs to the labeler in the background. Labels
    are applied when they arrive; once a batch has arrived the reward model is retrained on all labels
    and its version goes up (off-policy replay buffers are then relabelled by
    :class:`~vlm_reward_wrappers.callbacks.RelabelReplayBufferCallback`).

    Defaults are RL-VLM-F's MetaWorld settings.

    :param goal: text description of the task.
    :param labeler: answers queries (a VLM, CLIP or the simulated teacher).
    :param reward_model: the model to train; its ``reward_input`` decides whether frames or
        observations are its input.
    :param label_store: where answers are committed before use; an in-memory store by default.
        Labels already in the store for this goal and labeler are loaded and trained on at start.
    :param sampler: pair selection, "uniform" (RL-VLM-F), "disagreement" or "entropy".
    :param seed_steps: env steps before the first query.
    :param query_every: env steps between queries (4000).
    :param pairs_per_query: pairs sent per query batch (40).
    :param feedback_budget: the most queries the run may send (20000).
    :param epochs_per_update: reward-model epochs per update (10).
    :param buffer_capacity: frames kept to sample pairs from.
    :param max_pending: the most queries waiting on the labeler; a due batch is skipped (and counted)
        instead of growing the queue without bound. Defaults to twice ``pairs_per_query``.
    :param asynchronous: label in a background thread (True) or inline, deterministically (False).
    :param retry: retries, backoff and the deadline of each labeler call (:class:`RetryPolicy`'s defaults).
    :param use_soft_labels: train on the labeler's soft labels where it gives them.
    :param reward_lr: Adam learning rate of the reward model.
    :param reward_batch_size: pairs per reward-model gradient step.
    :param early_stop_accuracy: end an update once train accuracy reaches this.
    :param seed: seed of pair sampling and training shuffles.
    """

    def __init__(
        self,
        goal: str,
        labeler: Labeler,
        reward_model: RewardModel,
        label_store: Optional[LabelStore] = None,
        sampler: Union[str, PairSampler] = "uniform",
        seed_steps: int = 1000,
        query_every: int = 4000,
        pairs_per_query: int = 40,
        feedback_budget: int = 20000,
        epochs_per_update: int = 10,
        buffer_capacity: int = 20000,
        max_pending: Optional[int] = None,
        asynchronous: bool = True,
        retry: Optional[RetryPolicy] = None,
        use_soft_labels: bool = False,
        reward_lr: float = 3e-4,
        reward_batch_size: int = 64,
        early_stop_accuracy: float = 0.97,
        seed: Optional[int] = None,
    ) -> None:
        self.goal = check_goal(goal)
        self.labeler = check_labeler(labeler)
        if not isinstance(reward_model, RewardModel):
            raise TypeError(f"reward_model must be a RewardModel (e.g. RewardModel.load(path)), got {type(reward_model).__name__}")
        _check_counts(seed_steps=(seed_steps, 0), query_every=(query_every, 1), pairs_per_query=(pairs_per_query, 1),
                      feedback_budget=(feedback_budget, 0), epochs_per_update=(epochs_per_update, 1),
                      buffer_capacity=(buffer_capacity, 2), reward_batch_size=(reward_batch_size, 1))
        if max_pending is not None and max_pending < pairs_per_query:
            raise ValueError(f"max_pending ({max_pending}) must be at least pairs_per_query ({pairs_per_query}), "
                             "or no batch could ever be sent")
        self.reward_model = reward_model
        self.sampler = make_sampler(sampler)
        self.seed_steps, self.query_every = seed_steps, query_every
        self.pairs_per_query, self.feedback_budget = pairs_per_query, feedback_budget
        self.max_pending = 2 * pairs_per_query if max_pending is None else max_pending
        self.buffer_capacity = buffer_capacity
        self.rng = np.random.default_rng(seed)
        self.trainer = BradleyTerryTrainer(
            reward_model, lr=reward_lr, batch_size=reward_batch_size, epochs=epochs_per_update,
            early_stop_accuracy=early_stop_accuracy, seed=seed,
        )
        self._owns_store = label_store is None
        self.store = LabelStore() if label_store is None else label_store
        self.service = LabellingService(labeler, goal, self.store, retry, asynchronous)
        self.dataset = PreferenceDataset(use_soft_labels)
        self.buffer: Optional[FrameBuffer] = None
        #: Reward-model inputs of the latest :meth:`observe` call, (n_envs, ...).
        self.last_inputs: Optional[np.ndarray] = None
        self.num_timesteps = 0
        self.queries_issued = 0
        self._next_query_step = seed_steps
        self._new_labels = 0
        self._labelled_pairs: Set[FrozenSet[str]] = set()
        self._stats = {
            "no_preference": 0, "labels_resumed": 0, "labels_compared": 0, "labels_correct": 0, "skipped_batches": 0,
            "updates": 0, "loss": float("nan"), "accuracy": float("nan"), "gt_correlation": float("nan"),
        }
        self._resume_from_store()

    # ----------------------------------------------------------------------------------------- steps
    def observe(
        self, frames: np.ndarray, gt_rewards: np.ndarray, observations: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Record one env step of each env and return its learned reward.

        :param frames: (n_envs, S, S, 3) uint8 frames at the reward model's resolution.
        :param gt_rewards: (n_envs,) the env's own rewards (oracle teacher and metrics only).
        :param observations: (n_envs, D) state observations; needed when the model reads them.
        :return: (n_envs,) float32 rewards from the reward model.
        """
        reward_input = self.reward_model.reward_input
        if self.buffer is None:
            if reward_input == "frame" and frames.shape[1:] != self.reward_model.input_shape:
                raise ValueError(
                    f"frames of shape {frames.shape[1:]} for a reward model reading {self.reward_model.input_shape}: "
                    "the wrapper's reward_image_size must match the reward model's"
                )
            obs_shape = None if reward_input == "frame" else self.reward_model.input_shape
            self.buffer = FrameBuffer(self.buffer_capacity, frames.shape[1:], obs_shape)
        self.buffer.add(frames, gt_rewards, observations)
        self.num_timesteps += len(frames)
        self.last_inputs = frames if reward_input == "frame" else np.asarray(observations, dtype=np.float32)
        self.tick()
        return self.reward_model.predict(self.last_inputs)

    def tick(self) -> None:
        """Apply arrived labels, train when a batch is in, and send the next batch when it is due."""
        self._apply_labels()
        if self._new_labels and (self._new_labels >= self.pairs_per_query or self.service.pending == 0):
            self.update_reward_model()
        if self.num_timesteps >= self._next_query_step and self.buffer is not None and len(self.buffer) >= 2:
            self._next_query_step = self.num_timesteps + self.query_every
            self._send_queries()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait for pending labels (at most ``timeout`` s), apply them and train; True if none is left."""
        done = self.service.wait(timeout)
        self._apply_labels()
        if self._new_labels:
            self.update_reward_model()
        return done

    def update_reward_model(self) -> None:
        """Retrain the reward model on every label so far and refit its normalisation."""
        stats = self.trainer.train(self.dataset)
        self._new_labels = 0
        self._stats.update(updates=self._stats["updates"] + 1, loss=stats.loss, accuracy=stats.accuracy)
        if self.buffer is not None and len(self.buffer) >= 2:
            # The most recent frames: the policy's current state distribution, and no draw on self.rng,
            # so the pairs a run samples do not depend on when its updates happened.
            idx = self.buffer.recent(2000)
            predicted = self.reward_model.fit_normalization(self.buffer.inputs(idx, self.reward_model.reward_input))
            self._stats["gt_correlation"] = pearson(predicted, self.buffer.gt_rewards[idx])
        logger.info("reward model v%d: %d labels, loss %.4f, accuracy %.3f",
                    self.reward_model.version, len(self.dataset), stats.loss, stats.accuracy)

    # ----------------------------------------------------------------------------------------- labels
    def _send_queries(self) -> None:
        n = min(self.pairs_per_query, self.feedback_budget - self.queries_issued)
        if n <= 0:
            return
        if self.service.pending + n > self.max_pending:
            self._stats["skipped_batches"] += 1
            logger.warning("labeler is behind (%d queries pending): skipping this query batch", self.service.pending)
            return
        buffer = self.buffer
        jobs: List[PreferenceJob] = []
        drawn: Set[FrozenSet[str]] = set()
        # A pair labelled before, or drawn twice (by content), would cost a budget slot for nothing: draw
        # again, a few rounds at most (a buffer of near-identical frames may not hold n new pairs).
        for _ in range(3):
            a, b = self.sampler.select(buffer, self.reward_model, n - len(jobs), self.rng)
            for i, j in zip(a, b):
                # Copies: the ring buffer overwrites its slots while the query waits.
                query = Query(buffer.frames[i].copy(), buffer.frames[j].copy(), float(buffer.gt_rewards[i]),
                              float(buffer.gt_rewards[j]))
                job = PreferenceJob(query)
                if buffer.observations is not None:
                    job.input_a, job.input_b = buffer.observations[i].copy(), buffer.observations[j].copy()
                pair = frozenset((job.hash_a, job.hash_b))
                if pair not in drawn and pair not in self._labelled_pairs:
                    drawn.add(pair)
                    jobs.append(job)
            if len(jobs) == n:
                break
        self.queries_issued += len(jobs)
        self.service.submit(jobs)

    def _apply_labels(self) -> None:
        for job, record in self.service.poll():
            self._use_label(*job.inputs, record, job.query.gt_reward_a, job.query.gt_reward_b)

    def _use_label(self, input_a, input_b, record: LabelRecord, gt_a: float, gt_b: float) -> None:
        pair = frozenset((record.hash_a, record.hash_b))
        if pair in self._labelled_pairs:
            return  # a pair drawn again and answered from the store: it is in the dataset already
        self._labelled_pairs.add(pair)
        if record.preference == NO_PREFERENCE:
            self._stats["no_preference"] += 1
            return
        if self.dataset.add(input_a, input_b, record.preference, record.soft):
            self._new_labels += 1
        truth = gt_preference(gt_a, gt_b)
        if truth != NO_PREFERENCE:
            self._stats["labels_compared"] += 1
            self._stats["labels_correct"] += int(record.preference == truth)

    def _resume_from_store(self) -> None:
        """Load the labels a previous run with the same store, goal and labeler already paid for."""
        labeler = self.labeler
        records = self.store.records(self.goal, labeler.labeler_id, labeler.prompt_version)
        for record in records:
            frame_a, stored_a = self.store.frame(record.hash_a)
            frame_b, stored_b = self.store.frame(record.hash_b)
            input_a = frame_a if stored_a is None else stored_a
            input_b = frame_b if stored_b is None else stored_b
            if input_a.shape != self.reward_model.input_shape:
                logger.warning("label store holds inputs of shape %s, the reward model reads %s: not resuming",
                               input_a.shape, self.reward_model.input_shape)
                return
            self._use_label(input_a, input_b, record, float("nan"), float("nan"))
        self.queries_issued = len(records)
        self._stats["labels_resumed"] = len(records)
        if records:
            logger.info("resumed %d labels from %s", len(records), self.store.path)
        if self._new_labels:
            self.update_reward_model()

    # ----------------------------------------------------------------------------------------- state
    @property
    def metrics(self) -> Dict[str, float]:
        """Counters and figures of the run, under the names used in SB3's logger (``vlm/<name>``)."""
        counts, s = self.service.counts, self._stats
        answered = counts["answered"]
        return {
            "labels_used": len(self.dataset),
            "labels_resumed": s["labels_resumed"],
            "label_accuracy": s["labels_correct"] / s["labels_compared"] if s["labels_compared"] else float("nan"),
            "queries_issued": self.queries_issued,
            "queries_sent": counts["sent"],
            "queries_answered": answered,
            "queries_cached": counts["cached"],
            "queries_dropped": counts["dropped"],
            "labeler_failures": counts["failed_calls"],
            "labeler_timeouts": counts["timeouts"],
            "labeler_invalid_answers": counts["invalid_answers"],
            "no_preference": s["no_preference"],
            "skipped_batches": s["skipped_batches"],
            "queue_length": self.service.pending,
            "labeler_latency_s": self.service.latency_s_total / answered if answered else float("nan"),
            "reward_model/version": self.reward_model.version,
            "reward_model/updates": s["updates"],
            "reward_model/loss": s["loss"],
            "reward_model/accuracy": s["accuracy"],
            "reward_model/gt_correlation": s["gt_correlation"],
        }

    def close(self) -> None:
        """Stop the labelling thread and release the labeler (and the store, if the learner made it)."""
        self.service.close()
        if self._owns_store:
            self.store.close()


def _check_counts(**settings) -> None:
    """Raise a ValueError naming each setting (value, least allowed) below its least allowed value."""
    for name, (value, least) in settings.items():
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise ValueError(f"{name} must be a whole number of at least {least}, got {value!r}")
