"""PreferenceLearner: RL-VLM-F's continual loop of querying, labelling and reward-model training."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import numpy as np
import torch

from vlm_reward_wrappers.config import LearnerConfig, make_config
from vlm_reward_wrappers.cost import CostMeter
from vlm_reward_wrappers.exploration import StateEntropyReward
from vlm_reward_wrappers.frames import FrameBuffer, QueryFrameStore, resize_longer_side
from vlm_reward_wrappers.labelers.base import Labeler, check_goal, check_labeler
from vlm_reward_wrappers.labelling_service import LabellingService, RetryPolicy
from vlm_reward_wrappers.label_store import NO_PREFERENCE, LabelRecord, LabelStore
from vlm_reward_wrappers.preference_dataset import PreferenceDataset
from vlm_reward_wrappers.metrics import gt_preference, pearson
from vlm_reward_wrappers.queries import QueryScheduler
from vlm_reward_wrappers.reward_model import RewardModel, model_for_config
from vlm_reward_wrappers.sampling import PairSampler, make_sampler
from vlm_reward_wrappers.training import BackgroundTrainer

logger = logging.getLogger(__name__)

#: Frames the reward normalisation (and the correlation with the true reward) is fitted on.
NORMALIZATION_FRAMES = 2000
#: Answered queries kept for display.
RECENT_ANSWERS = 8


class PreferenceLearner:
    """The continual loop of RL-VLM-F, driven one env step at a time by the wrappers.

    Every step the wrappers hand in frames; the learner keeps them in a :class:`FrameBuffer` and returns
    the reward model's reward. The env loop only ever runs that inference: on schedule, pairs go to the
    :class:`LabellingService` (background threads), answers are applied when they arrive, and once a
    batch is in, a :class:`BackgroundTrainer` trains a copy of the reward model beside the loop; its
    weights are swapped in at a later step and the model's version goes up (off-policy replay buffers
    then relabel, see :class:`~vlm_reward_wrappers.replay.RelabelingReplayBuffer`).

    Components are injected, and built from ``config`` where not given (as imitation's
    PreferenceComparisons does).

    :param goal: text description of the task.
    :param labeler: answers queries (a VLM, CLIP or the simulated teacher); None for a learner that
        only scores (``training=False``).
    :param config: a :class:`LearnerConfig` or a preset name (:data:`~vlm_reward_wrappers.config.PRESETS`);
        RL-VLM-F's MetaWorld settings by default.
    :param reward_model: the model to train and score with; built from ``config`` by default (frames; for
        ``reward_input="observation"`` pass ``RewardModel("observation", (D,))``). Its input and ensemble
        size must agree with ``config``.
    :param label_store: where answers are committed before use; an in-memory store by default. Labels
        already in it for this goal and labeler are loaded and trained on at start.
    :param sampler: pair selection; ``config.sampler`` by default.
    :param trainer: trains a copy of the reward model off the env loop; built from ``config`` by default.
    :param retry: retries, backoff and deadline of each labeler call.
    :param asynchronous: label and train on background threads (True), or inline, deterministically.
    :param training: query and learn (True), or only score with the current reward model (False):
        for evaluation envs.
    :param seed: seed of pair sampling, weights and training shuffles.
    :param overrides: changes to ``config`` by name, e.g. ``query_every=1000``.
    """

    def __init__(
        self,
        goal: str,
        labeler: Optional[Labeler],
        config: Union[None, str, LearnerConfig] = None,
        reward_model: Optional[RewardModel] = None,
        label_store: Optional[LabelStore] = None,
        sampler: Optional[PairSampler] = None,
        trainer: Optional[BackgroundTrainer] = None,
        retry: Optional[RetryPolicy] = None,
        asynchronous: bool = True,
        training: bool = True,
        seed: Optional[int] = None,
        **overrides: Any,
    ) -> None:
        self.goal = check_goal(goal)
        self.config = config = make_config(config, **overrides)
        if labeler is None and training:
            raise ValueError("a learner that trains needs a labeler; pass training=False for one that only scores")
        self.labeler = None if labeler is None else check_labeler(labeler)
        self.reward_model = model_for_config(config, reward_model, seed)
        self.training = training
        #: When queries go out and which pairs (:class:`~vlm_reward_wrappers.queries.QueryScheduler`).
        self.queries = QueryScheduler(config, make_sampler(sampler or config.sampler), np.random.default_rng(seed))
        # Its own generator: normalising over the buffer leaves the pairs drawn as they would be otherwise.
        self._normalization_rng = np.random.default_rng(seed)
        self.trainer = trainer or BackgroundTrainer.for_model(
            self.reward_model, asynchronous, lr=config.reward_lr, batch_size=config.reward_batch_size,
            epochs=config.epochs_per_update, gradient_steps=config.gradient_steps_per_update,
            early_stop_accuracy=config.early_stop_accuracy, augment_shift=config.augment_shift, seed=seed,
        )
        if self.trainer.model is not self.reward_model:
            raise ValueError("the trainer given updates another reward model than the learner's")
        self._owns_store = label_store is None
        self.store = LabelStore() if label_store is None else label_store
        self.service = None if labeler is None else LabellingService(labeler, goal, self.store, retry, asynchronous)
        self.dataset = PreferenceDataset(config.use_soft_labels, max_pairs=config.feedback_budget or None)
        self.buffer: Optional[FrameBuffer] = None
        #: Longer side of the frames the labeler is shown; None: it is shown the reward-model inputs.
        self.query_image_size = config.query_image_size or (None if labeler is None else labeler.query_image_size)
        #: The query frames of recent steps (None when the labeler is shown the reward-model inputs).
        self.query_frames = None if self.query_image_size is None or labeler is None else QueryFrameStore(
            config.query_frame_capacity, config.query_frame_max_bytes)
        self.num_timesteps = 0
        #: PEBBLE's exploration reward, paid until the first reward model is in (None without exploration).
        self.exploration = StateEntropyReward(config.first_query_step) if (
            config.exploration_steps and training) else None
        self._new_labels = 0
        self._normalization_gt: Optional[np.ndarray] = None
        #: The last answered queries as (query, record), newest last, for display (TensorBoard images).
        self.recent_answers: deque = deque(maxlen=RECENT_ANSWERS)
        #: Answers received from the labelling service so far (the store's cached answers included).
        self.answers_received = 0
        #: Seconds per part of the work (:data:`~vlm_reward_wrappers.cost.PARTS`); the wrappers add theirs.
        self.cost = CostMeter()
        self._stats: Dict[str, float] = {
            "no_preference": 0, "labels_resumed": 0, "labels_compared": 0, "labels_correct": 0,
            "updates": 0, "loss": float("nan"), "accuracy": float("nan"),
            "gt_correlation": float("nan"),
        }

    @property
    def queries_issued(self) -> int:
        """Queries sent so far, all batches together: the feedback budget spent."""
        return self.queries.queries_issued

    def resume(self) -> int:
        """Read back the labels a previous run with the same label store, goal and labeler already paid
        for, and train the reward model on them, so the first step is scored by it and none of them is
        asked again; return how many. The wrappers call it when they make a learner that trains."""
        resumed = self._read_back_labels()
        if self._new_labels:
            self._start_update()
            self._finish_update(self.trainer.wait())
        return resumed

    # ----------------------------------------------------------------------------------------- steps
    def observe(
        self,
        frames: np.ndarray,
        gt_rewards: np.ndarray,
        observations: Optional[np.ndarray] = None,
        query_frames: Optional[Sequence[Optional[np.ndarray]]] = None,
        score: bool = True,
    ) -> np.ndarray:
        """Record one env step of each env and return its learned reward.

        :param frames: (n_envs, S, S, 3) uint8 frames at the reward model's resolution.
        :param gt_rewards: (n_envs,) the env's own rewards (oracle teacher and metrics only).
        :param observations: (n_envs, D) state observations; needed where :attr:`wants_observations`.
        :param query_frames: per env, the rendered frame to keep for the labeler, or None; shrunk to
            :attr:`query_image_size` (never enlarged). Pass them where :meth:`query_frame_due` says so.
        :param score: score the step with the reward model (True), or leave it to the algorithm's buffer
            and return zeros (False; see :mod:`~vlm_reward_wrappers.rollout`).
        :return: (n_envs,) float32 rewards from the reward model (zeros when not ``score``), or while
            :attr:`exploring`, the exploration reward.
        """
        inputs = self.reward_inputs(frames, observations)
        exploring = self.exploring
        if exploring and observations is None:
            raise ValueError("the exploration reward scores the env's observations: pass them to observe()")
        if self.training:
            if self.buffer is None:
                obs_shape = None if self.reward_model.reward_input == "frame" else self.reward_model.input_shape
                self.buffer = FrameBuffer(self.config.buffer_capacity, frames.shape[1:], obs_shape)
            if self.query_frames is not None and query_frames is not None:
                with self.cost.timing("frame_prep"):
                    for i, frame in enumerate(query_frames):  # filed under their buffer entries
                        if frame is not None:
                            self.query_frames.add(self.buffer.added + i, resize_longer_side(frame, self.query_image_size))
            self.buffer.add(frames, gt_rewards, observations)
            self.num_timesteps += len(frames)
            self.tick()
        if exploring:
            return self.exploration(observations)
        if not score:
            return np.zeros(len(frames), dtype=np.float32)
        with self.cost.timing("scoring"):
            return self.reward_model.predict(inputs)

    @property
    def exploring(self) -> bool:
        """Whether steps are paid the exploration reward: ``exploration_steps`` are set and the first reward
        model is not in yet (after the exploration steps, the wait for the first labels goes on exploring
        rather than paying an untrained model's noise)."""
        return self.exploration is not None and self.training and self.reward_model.version == 0

    @property
    def wants_observations(self) -> bool:
        """Whether :meth:`observe` needs the env's observations this step."""
        return self.reward_model.reward_input == "observation" or self.exploring

    def query_frame_due(self, env_step: int) -> bool:
        """Whether the rendered frame of an env's step ``env_step`` (counted per env) should be kept."""
        return self.training and self.query_frames is not None and env_step % self.config.query_frame_every == 0

    def reward_inputs(self, frames: np.ndarray, observations: Optional[np.ndarray] = None) -> np.ndarray:
        """What the reward model reads of a step: the frames, or the observations as float32."""
        if self.reward_model.reward_input == "frame":
            if frames.shape[1:] != self.reward_model.input_shape:
                raise ValueError(
                    f"frames of shape {frames.shape[1:]} for a reward model reading {self.reward_model.input_shape}: "
                    "the wrapper's reward_image_size must match the reward model's"
                )
            return frames
        if observations is None:
            raise ValueError("this reward model reads observations: pass them to observe()")
        return np.asarray(observations, dtype=np.float32)

    def tick(self) -> None:
        """Apply arrived labels, swap in a finished update, start the next one when a batch is in, and
        send the next query batch when it is due. Never waits, but for the first update."""
        started, waited = time.perf_counter(), 0.0
        self._apply_labels()
        enough = self._new_labels >= self.config.pairs_per_query or self.service.pending == 0
        if self._new_labels and enough and not self.trainer.busy:
            self._start_update()
            if self.reward_model.version == 0:
                # Before the first model the reward is noise an agent would only learn from: that one
                # update is waited for (seconds at most, on a first batch of labels); later ones never are.
                waiting_since = time.perf_counter()
                result = self.trainer.wait()
                waited = time.perf_counter() - waiting_since
                self.cost.add("waiting", waited)
                self._finish_update(result)
        self._finish_update(self.trainer.poll())  # a synchronous update is swapped in at once
        if self.queries.due(self.num_timesteps, self.buffer):
            self.service.submit(self.queries.draw(self.buffer, self.reward_model, self.query_frames,
                                                  self.service.pending))
        self.cost.add("learner", time.perf_counter() - started - waited)

    def flush(self, timeout: Optional[float] = None) -> bool:
        """Wait for pending labels (at most ``timeout`` s), train on them and swap the model in; True if
        no label was left pending."""
        if self.service is None:
            return True
        with self.cost.timing("waiting"):
            return self._flush(timeout)

    def _flush(self, timeout: Optional[float]) -> bool:
        done = self.service.wait(timeout)
        self._apply_labels()
        self._finish_update(self.trainer.wait(timeout))
        if self._new_labels:
            self._start_update()
            self._finish_update(self.trainer.wait(timeout))
        return done

    def _start_update(self) -> None:
        frames = None
        if self.buffer is not None and len(self.buffer) >= 2:
            idx = self._normalization_indices()
            frames, self._normalization_gt = self.buffer.inputs(idx, self.reward_model.reward_input), self.buffer.gt_rewards[idx]
        self._new_labels = 0
        self.trainer.start(self.dataset, frames)

    def _normalization_indices(self) -> np.ndarray:
        if self.config.normalize_on == "recent":
            return self.buffer.recent(NORMALIZATION_FRAMES)
        held = len(self.buffer)  # slots 0 .. held - 1 hold frames, full or not
        return np.sort(self._normalization_rng.choice(held, min(held, NORMALIZATION_FRAMES), replace=False))

    def _finish_update(self, result) -> None:
        if result is None:
            return
        stats, predicted = result
        self._stats.update(updates=self._stats["updates"] + 1, loss=stats.loss, accuracy=stats.accuracy)
        if predicted is not None:
            self._stats["gt_correlation"] = pearson(predicted, self._normalization_gt)
        logger.info("reward model v%d: %d labels, loss %.4f, accuracy %.3f",
                    self.reward_model.version, len(self.dataset), stats.loss, stats.accuracy)

    # ----------------------------------------------------------------------------------------- labels
    def _apply_labels(self) -> None:
        for job, record in self.service.poll():
            self._use_label(*job.inputs, record, job.query.gt_reward_a, job.query.gt_reward_b)
            self.recent_answers.append((job.query, record))
            self.answers_received += 1

    def _use_label(self, input_a, input_b, record: LabelRecord, gt_a: float, gt_b: float) -> None:
        if not self.queries.labelled(record.hash_a, record.hash_b):
            return  # a pair drawn again and answered from the store: it is in the dataset already
        if record.preference == NO_PREFERENCE:
            self._stats["no_preference"] += 1
            return
        if self.dataset.add(input_a, input_b, record.preference, record.soft):
            self._new_labels += 1
        truth = gt_preference(gt_a, gt_b)
        if truth != NO_PREFERENCE:
            self._stats["labels_compared"] += 1
            self._stats["labels_correct"] += int(record.preference == truth)

    def _read_back_labels(self) -> int:
        """Put the labels the store holds for this goal and labeler in the dataset; return how many."""
        if self.service is None:
            return 0
        labeler = self.labeler
        records = self.store.records(self.goal, labeler.labeler_id, labeler.prompt_version)
        if self.dataset.max_pairs is not None:  # a store kept from a longer run holds more than this budget
            self.dataset.max_pairs = max(self.dataset.max_pairs, len(records))
        for record in records:
            frame_a, stored_a = self.store.frame(record.hash_a)
            frame_b, stored_b = self.store.frame(record.hash_b)
            input_a = frame_a if stored_a is None else stored_a
            input_b = frame_b if stored_b is None else stored_b
            if input_a.shape != self.reward_model.input_shape:
                logger.warning("label store holds inputs of shape %s, the reward model reads %s: not resuming",
                               input_a.shape, self.reward_model.input_shape)
                return 0
            self._use_label(input_a, input_b, record, float("nan"), float("nan"))
        self.queries.queries_issued = len(records)
        self._stats["labels_resumed"] = len(records)
        if records:
            logger.info("resumed %d labels from %s", len(records), self.store.path)
        return len(records)

    # ----------------------------------------------------------------------------------------- state
    @property
    def metrics(self) -> Dict[str, float]:
        """Counters and figures of the run, under the names used in SB3's logger (``vlm/<name>``)."""
        s = self._stats
        counts = self.service.counts if self.service is not None else dict.fromkeys(
            ("sent", "answered", "cached", "dropped", "failed_calls", "timeouts", "invalid_answers",
             "abandoned_at_close"), 0)
        answered = counts["answered"]
        # Figures a labeler keeps of its own (SwapConsistentLabeler's position bias, ...).
        own = getattr(self.labeler, "metrics", None) or {}
        return {
            **{f"labeler/{name}": value for name, value in own.items()},
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
            "queries_abandoned_at_close": counts["abandoned_at_close"],
            "no_preference": s["no_preference"],
            "skipped_batches": self.queries.skipped_batches,
            "exploring": float(self.exploring),
            "queue_length": 0 if self.service is None else self.service.pending,
            "labeler_latency_s": (self.service.latency_s_total / answered) if answered else float("nan"),
            "reward_model/version": self.reward_model.version,
            "reward_model/updates": s["updates"],
            "reward_model/failed_updates": self.trainer.failures,
            "reward_model/loss": s["loss"],
            "reward_model/accuracy": s["accuracy"],
            "reward_model/gt_correlation": s["gt_correlation"],
            "reward_model/train_cpu_s": self.trainer.train_cpu_s,
            **{f"cost/{part}_s": seconds for part, seconds in self.cost.seconds.items()},
            "cost/training_s": self.trainer.train_s,
        }

    def state_dict(self) -> Dict[str, Any]:
        """What a stopped run needs to go on: settings, goal, where the label store is, the reward model
        and its training copy (with its optimiser), schedule position, budget spent and counters.

        The labels themselves stay in the label store; the frame buffer is not kept and refills as the
        resumed run steps.
        """
        return {
            "config": dataclasses.asdict(self.config), "goal": self.goal, "label_store": self.store.path,
            "reward_model": self.reward_model.state(), **self.trainer.state_dict(),
            "num_timesteps": self.num_timesteps, **self.queries.state_dict(), "stats": dict(self._stats),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`: the training copy, the schedule and the counters (the scoring
        model and settings are given to the constructor, as :meth:`load` does)."""
        self.trainer.load_state_dict(state)
        self.num_timesteps = state["num_timesteps"]
        self.queries.load_state_dict({**state, "skipped_batches": state["stats"].get("skipped_batches", 0)})
        self._stats.update({k: v for k, v in state["stats"].items() if k in self._stats})

    def save(self, path: Union[str, Path]) -> None:
        """Flush pending labels and write :meth:`state_dict` to ``path``; the labels stay in the label
        store (give the learner a file store to resume one)."""
        if self.store.path == ":memory:":
            raise ValueError("this learner's labels live in an in-memory store and would be lost: "
                             "pass label_store=LabelStore('labels.sqlite') to a learner meant to be saved")
        self.flush()
        torch.save(self.state_dict(), path)

    @classmethod
    def load(
        cls,
        path: Union[str, Path],
        labeler: Optional[Labeler],
        label_store: Optional[LabelStore] = None,
        **kwargs: Any,
    ) -> "PreferenceLearner":
        """A learner that goes on where :meth:`save` left it: the same reward model, schedule and budget,
        its labels read back from the label store (``label_store``, or the file it was saved with),
        nothing asked again.

        :param labeler: the labeler to go on with (None for a learner that only scores).
        :param kwargs: further :class:`PreferenceLearner` arguments (``asynchronous``, ``retry``, ``training``).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no saved learner at {path}: write one with learner.save(path)")
        state = torch.load(path, weights_only=True)
        store = label_store if label_store is not None else LabelStore(state["label_store"])
        model = RewardModel.from_state(state["reward_model"])
        learner = cls(state["goal"], labeler, LearnerConfig(**state["config"]), reward_model=model,
                      label_store=store, **kwargs)
        learner._owns_store = label_store is None
        learner._read_back_labels()
        learner._new_labels = 0  # the saved model was trained on all of them (save flushes)
        learner.load_state_dict(state)
        return learner

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop everything the learner runs beside the env loop, in about ``2 * timeout_s`` at most: the
        labelling service (calls in flight get ``timeout_s`` to answer; what they answer is committed,
        the rest abandoned and counted), the update in flight (abandoned, not swapped in), the
        query-frame thread; then release the labeler and close the store if the learner made it. Later
        calls do nothing. Call :meth:`flush` first to wait for every pending label instead."""
        if self.service is not None:
            self.service.close(timeout_s)
        self.trainer.close(timeout_s)
        if self.query_frames is not None:
            self.query_frames.close()
        if self._owns_store:
            self.store.close()
