"""PreferenceLearner: RL-VLM-F's continual loop of querying, labelling and reward-model training."""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Dict, FrozenSet, List, Optional, Set, Tuple, Union

import numpy as np

from vlm_reward_wrappers.frames import FrameBuffer
from vlm_reward_wrappers.labelers.base import NO_PREFERENCE, Labeler, Query, call_with_retries, check_goal
from vlm_reward_wrappers.labels import LabelRecord, LabelStore, PreferenceDataset, frame_hash
from vlm_reward_wrappers.reward_model import BradleyTerryTrainer, RewardModel
from vlm_reward_wrappers.sampling import PairSampler, make_sampler

logger = logging.getLogger(__name__)


@dataclass
class PendingQuery:
    """A query on its way to the labeler, with what the learner needs once it is answered.

    ``obs_a``/``obs_b`` are the reward-model inputs when the model reads observations, else None.
    """

    query: Query
    hash_a: str
    hash_b: str
    obs_a: Optional[np.ndarray] = None
    obs_b: Optional[np.ndarray] = None

    @property
    def input_a(self) -> np.ndarray:
        return self.query.frame_a if self.obs_a is None else self.obs_a

    @property
    def input_b(self) -> np.ndarray:
        return self.query.frame_b if self.obs_b is None else self.obs_b


class LabelWorker:
    """Runs a labeler on submitted queries, in a background thread unless ``asynchronous`` is False.

    Every answer is committed to the :class:`LabelStore` before it is handed back; a query already in
    the store is answered from it without calling the labeler. A labeler call that raises is retried
    ``max_retries`` times with exponential backoff, then its queries are dropped; both are counted and
    logged, never raised.
    """

    def __init__(
        self,
        labeler: Labeler,
        goal: str,
        store: LabelStore,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        asynchronous: bool = True,
    ) -> None:
        self.labeler, self.goal, self.store = labeler, goal, store
        self.max_retries, self.retry_backoff_s = max_retries, retry_backoff_s
        self.counts = {"sent": 0, "answered": 0, "cached": 0, "failed_calls": 0, "dropped": 0}
        self.latency_s_total = 0.0
        self._inbox: "queue.Queue[Optional[List[PendingQuery]]]" = queue.Queue()
        self._outbox: "queue.Queue[Tuple[PendingQuery, LabelRecord]]" = queue.Queue()
        self._pending = 0
        self._lock = threading.Lock()
        self._thread: Optional[threading.Thread] = None
        if asynchronous:
            self._thread = threading.Thread(target=self._run, name="vlm-label-worker", daemon=True)
            self._thread.start()

    @property
    def pending(self) -> int:
        """Queries submitted and neither answered nor dropped yet."""
        with self._lock:
            return self._pending

    def submit(self, items: List[PendingQuery]) -> None:
        with self._lock:
            self._pending += len(items)
        if self._thread is None:
            self._process(items)
        else:
            self._inbox.put(items)

    def poll(self) -> List[Tuple[PendingQuery, LabelRecord]]:
        """Answers that arrived since the last poll; never waits."""
        out = []
        while True:
            try:
                out.append(self._outbox.get_nowait())
            except queue.Empty:
                return out

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Wait until nothing is pending; return False if ``timeout`` seconds passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 5.0) -> None:
        if self._thread is not None and self._thread.is_alive():
            self._inbox.put(None)
            self._thread.join(timeout)
        self.labeler.close()

    def _run(self) -> None:
        while True:
            items = self._inbox.get()
            if items is None:
                return
            self._process(items)

    def _process(self, items: List[PendingQuery]) -> None:
        labeler = self.labeler
        fresh = []
        for item in items:
            record = self.store.lookup(item.hash_a, item.hash_b, self.goal, labeler.labeler_id, labeler.prompt_version)
            if record is None:
                fresh.append(item)
            else:
                self.counts["cached"] += 1
                self._deliver(item, record)
        for start in range(0, len(fresh), max(1, labeler.batch_size)):
            self._label_chunk(fresh[start : start + max(1, labeler.batch_size)])

    def _label_chunk(self, chunk: List[PendingQuery]) -> None:
        labeler = self.labeler
        try:
            answers, seconds = call_with_retries(
                lambda: labeler.label([item.query for item in chunk], self.goal), len(chunk),
                labeler.labeler_id, self.max_retries, self.retry_backoff_s, self.counts,
            )
        except Exception:  # a failing labeler must never stop training: drop its queries, counted
            self.counts["dropped"] += len(chunk)
            with self._lock:
                self._pending -= len(chunk)
            return
        latency = seconds / len(chunk)
        for item, answer in zip(chunk, answers):
            record = LabelRecord(
                item.hash_a, item.hash_b, self.goal, labeler.labeler_id, labeler.prompt_version,
                answer.preference, answer.soft, answer.raw, latency,
            )
            self.store.add(record, item.query.frame_a, item.query.frame_b, item.obs_a, item.obs_b)
            self.counts["answered"] += 1
            self.latency_s_total += latency
            self._deliver(item, record)

    def _deliver(self, item: PendingQuery, record: LabelRecord) -> None:
        self._outbox.put((item, record))
        with self._lock:
            self._pending -= 1


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
    :param reward_model: the model to train; its ``input_kind`` decides whether frames or
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
    :param max_retries: retries of a failed labeler call before its queries are dropped.
    :param retry_backoff_s: first retry delay; it doubles on each retry.
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
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
        use_soft_labels: bool = False,
        reward_lr: float = 3e-4,
        reward_batch_size: int = 64,
        early_stop_accuracy: float = 0.97,
        seed: Optional[int] = None,
    ) -> None:
        self.goal = check_goal(goal)
        self.labeler = labeler
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
        self.worker = LabelWorker(labeler, goal, self.store, max_retries, retry_backoff_s, asynchronous)
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
            "no_preference": 0, "labels_compared": 0, "labels_correct": 0, "skipped_batches": 0,
            "updates": 0, "loss": float("nan"), "accuracy": float("nan"), "gt_correlation": float("nan"),
        }
        self._resume_from_store()

    # ----------------------------------------------------------------------------------------- steps
    def observe(
        self,
        frames: np.ndarray,
        gt_rewards: np.ndarray,
        episode_ids: np.ndarray,
        step_ids: np.ndarray,
        observations: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """Record one env step of each env and return its learned reward.

        :param frames: (n_envs, S, S, 3) uint8 frames at the reward model's resolution.
        :param gt_rewards: (n_envs,) the env's own rewards (oracle teacher and metrics only).
        :param episode_ids: (n_envs,) episode counter of each env.
        :param step_ids: (n_envs,) step within the episode.
        :param observations: (n_envs, D) state observations; needed when the model reads them.
        :return: (n_envs,) float32 rewards from the reward model.
        """
        kind = self.reward_model.input_kind
        if self.buffer is None:
            obs_shape = None if kind == "frame" else self.reward_model.input_shape
            self.buffer = FrameBuffer(self.buffer_capacity, frames.shape[1:], obs_shape)
        self.buffer.add(frames, gt_rewards, episode_ids, step_ids, observations)
        self.num_timesteps += len(frames)
        self.last_inputs = frames if kind == "frame" else np.asarray(observations, dtype=np.float32)
        self.tick()
        return self.reward_model.predict(self.last_inputs)

    def tick(self) -> None:
        """Apply arrived labels, train when a batch is in, and send the next batch when it is due."""
        self._apply_labels()
        if self._new_labels and (self._new_labels >= self.pairs_per_query or self.worker.pending == 0):
            self.update_reward_model()
        if self.num_timesteps >= self._next_query_step and self.buffer is not None and len(self.buffer) >= 2:
            self._next_query_step = self.num_timesteps + self.query_every
            self._send_queries()

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait for pending labels (at most ``timeout`` s), apply them and train; True if none is left."""
        done = self.worker.wait(timeout)
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
            idx = (self.buffer.pos - 1 - np.arange(min(len(self.buffer), 2000))) % self.buffer.capacity
            predicted = self.reward_model.fit_normalization(self.buffer.inputs(idx, self.reward_model.input_kind))
            gt = self.buffer.gt_rewards[idx]
            valid = np.isfinite(gt)
            if valid.sum() > 2 and gt[valid].std() > 0 and predicted[valid].std() > 0:
                self._stats["gt_correlation"] = float(np.corrcoef(gt[valid], predicted[valid])[0, 1])
        logger.info("reward model v%d: %d labels, loss %.4f, accuracy %.3f",
                    self.reward_model.version, len(self.dataset), stats.loss, stats.accuracy)

    # ----------------------------------------------------------------------------------------- labels
    def _send_queries(self) -> None:
        n = min(self.pairs_per_query, self.feedback_budget - self.queries_issued)
        if n <= 0:
            return
        if self.worker.pending + n > self.max_pending:
            self._stats["skipped_batches"] += 1
            logger.warning("labeler is behind (%d queries pending): skipping this query batch", self.worker.pending)
            return
        buffer, kind = self.buffer, self.reward_model.input_kind
        a, b = self.sampler.select(buffer, self.reward_model, n, self.rng)
        items, drawn = [], set()
        for i, j in zip(a, b):
            # Copies: the ring buffer overwrites its slots while the query waits.
            frame_a, frame_b = buffer.frames[i].copy(), buffer.frames[j].copy()
            hash_a, hash_b = frame_hash(frame_a), frame_hash(frame_b)
            pair = frozenset((hash_a, hash_b))
            if pair in drawn:
                continue  # the same two frames (by content) twice in one batch: a labeler call for nothing
            drawn.add(pair)
            query = Query(frame_a, frame_b, float(buffer.gt_rewards[i]), float(buffer.gt_rewards[j]))
            item = PendingQuery(query, hash_a, hash_b)
            if kind == "observation":
                item.obs_a, item.obs_b = buffer.observations[i].copy(), buffer.observations[j].copy()
            items.append(item)
        self.queries_issued += len(items)
        self.worker.submit(items)

    def _apply_labels(self) -> None:
        for item, record in self.worker.poll():
            self._use_label(item.input_a, item.input_b, record, item.query.gt_reward_a, item.query.gt_reward_b)

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
        if np.isfinite(gt_a) and np.isfinite(gt_b) and gt_a != gt_b:
            self._stats["labels_compared"] += 1
            self._stats["labels_correct"] += int(record.preference == int(gt_b > gt_a))

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
        if records:
            logger.info("resumed %d labels from %s", len(records), self.store.path)
        if self._new_labels:
            self.update_reward_model()

    # ----------------------------------------------------------------------------------------- state
    @property
    def metrics(self) -> Dict[str, float]:
        """Counters and figures of the run, under the names used in SB3's logger (``vlm/<name>``)."""
        counts, s = self.worker.counts, self._stats
        answered = counts["answered"]
        return {
            "labels_used": len(self.dataset),
            "label_accuracy": s["labels_correct"] / s["labels_compared"] if s["labels_compared"] else float("nan"),
            "queries_issued": self.queries_issued,
            "queries_sent": counts["sent"],
            "queries_answered": answered,
            "queries_cached": counts["cached"],
            "queries_dropped": counts["dropped"],
            "labeler_failures": counts["failed_calls"],
            "no_preference": s["no_preference"],
            "skipped_batches": s["skipped_batches"],
            "queue_length": self.worker.pending,
            "labeler_latency_s": self.worker.latency_s_total / answered if answered else float("nan"),
            "reward_model/version": self.reward_model.version,
            "reward_model/updates": s["updates"],
            "reward_model/loss": s["loss"],
            "reward_model/accuracy": s["accuracy"],
            "reward_model/gt_correlation": s["gt_correlation"],
        }

    def close(self) -> None:
        """Stop the labelling thread and release the labeler (and the store, if the learner made it)."""
        self.worker.close()
        if self._owns_store:
            self.store.close()
