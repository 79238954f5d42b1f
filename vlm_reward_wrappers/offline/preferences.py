"""RL-VLM-F on a fixed dataset: preferences between its frames, a reward model, new rewards."""

from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from vlm_reward_wrappers.config import LearnerConfig
from vlm_reward_wrappers.frames import resize_frame
from vlm_reward_wrappers.labelers.base import Labeler, check_goal, check_labeler
from vlm_reward_wrappers.labelling_service import RetryPolicy
from vlm_reward_wrappers.label_store import LabelStore
from vlm_reward_wrappers.learner import PreferenceLearner
from vlm_reward_wrappers.offline.datasets import OfflineDataset
from vlm_reward_wrappers.reward_model import RewardModel


class PreferenceRelabeler:
    """RL-VLM-F on a fixed dataset, run by the same :class:`~vlm_reward_wrappers.learner.PreferenceLearner`
    that learns online.

    The frame each transition ends in is resized to the reward model's input (what the wrappers
    reward online) and handed to the learner as one batch of steps, with the frame itself as the query
    frame for a labeler that asks for them (a VLM; the simulated teachers are shown the small inputs); it draws ``n_queries`` pairs with
    ``sampler`` (seeded: a rerun draws the same pairs and finds their answers in the label store),
    labels them through the labelling service (answers committed first; failed calls retried, then
    dropped and counted), trains the :class:`RewardModel` ensemble on all of them with the
    Bradley-Terry loss, and every transition's reward is its normalised reward.

    Defaults are RL-VLM-F's CartPole settings (50 epochs, ensemble of 3, 64 pairs a batch).

    :param labeler: answers preference queries (a VLM, CLIP or the simulated teacher).
    :param goal: text description of the task.
    :param label_store: where answers are committed; an in-memory store (no resume) by default.
    :param n_queries: the feedback budget: pairs to draw.
    :param reward_image_size: side of the reward model's input frames (and of the frames shown), in pixels.
    :param sampler: pair selection, "uniform" (RL-VLM-F), "disagreement" or "entropy".
    :param ensemble_size: reward-model members.
    :param epochs: training epochs over all labels (stops early at ``early_stop_accuracy``).
    :param lr: Adam learning rate.
    :param batch_size: pairs per gradient step.
    :param early_stop_accuracy: stop training once train accuracy reaches this.
    :param retry: retries, backoff and deadline of each labeler call.
    :param seed: seed of pair sampling, weights and shuffles.
    """

    def __init__(
        self,
        labeler: Labeler,
        goal: str,
        label_store: Optional[LabelStore] = None,
        n_queries: int = 2000,
        reward_image_size: int = 64,
        sampler: str = "uniform",
        ensemble_size: int = 3,
        epochs: int = 50,
        lr: float = 3e-4,
        batch_size: int = 64,
        early_stop_accuracy: float = 0.97,
        retry: Optional[RetryPolicy] = None,
        seed: int = 0,
    ) -> None:
        self.labeler, self.goal = check_labeler(labeler), check_goal(goal)
        if n_queries < 1:
            raise ValueError(f"n_queries must be at least 1, got {n_queries}")
        self.store = LabelStore() if label_store is None else label_store
        self.n_queries, self.reward_image_size = n_queries, reward_image_size
        self.sampler, self.ensemble_size, self.epochs = sampler, ensemble_size, epochs
        self.lr, self.batch_size, self.early_stop_accuracy = lr, batch_size, early_stop_accuracy
        self.retry, self.seed = retry, seed
        #: The learner of the last :meth:`relabel` (its reward model, label dataset and figures).
        self.learner: Optional[PreferenceLearner] = None

    @property
    def reward_model(self) -> Optional[RewardModel]:
        """The reward model trained by the last :meth:`relabel`."""
        return None if self.learner is None else self.learner.reward_model

    def relabel(self, dataset: OfflineDataset) -> List[np.ndarray]:
        """Label, train, and return each transition's reward: one (N_i,) float32 array per episode."""
        size = self.reward_image_size
        frames = np.concatenate([
            np.stack([resize_frame(frame, size) for frame in episode.frames[1:]]) for episode in dataset.episodes
        ])
        config = LearnerConfig(
            reward_image_size=size, ensemble_size=self.ensemble_size, seed_steps=0, query_every=len(frames),
            pairs_per_query=self.n_queries, feedback_budget=self.n_queries, sampler=self.sampler,
            buffer_capacity=max(2, len(frames)), epochs_per_update=self.epochs, reward_lr=self.lr,
            reward_batch_size=self.batch_size, early_stop_accuracy=self.early_stop_accuracy,
            # A labeler that asks for query frames is shown the dataset's own frames: every one is a candidate.
            query_frame_every=1, query_frame_capacity=max(2, len(frames)), query_frame_max_bytes=2**62,
        )
        self.learner = learner = PreferenceLearner(self.goal, self.labeler, config, label_store=self.store,
                                                   asynchronous=False, retry=self.retry, seed=self.seed)
        learner.resume()  # the labels a previous labelling of this dataset paid for
        query = [frame for episode in dataset.episodes for frame in episode.frames[1:]]
        learner.observe(frames, dataset.gt_rewards, query_frames=query)
        learner.flush()
        metrics = learner.metrics
        if metrics["labels_used"] == 0:
            raise ValueError(
                f"none of {learner.queries_issued} queries gave a usable preference ({metrics['queries_dropped']} "
                f"dropped after failures, {metrics['no_preference']} answered -1): no reward model can be trained"
            )
        rewards = learner.reward_model.fit_normalization(frames)  # over exactly the dataset's frames
        return list(np.split(rewards, np.cumsum([len(episode) for episode in dataset.episodes])[:-1]))

    @property
    def metrics(self) -> Dict[str, float]:
        """The learner's figures: queries sent and answered from the store, labels used, label accuracy, ..."""
        return {} if self.learner is None else self.learner.metrics

    def close(self) -> None:
        """Close the labeler (and nothing else: the label store is the caller's)."""
        self.labeler.close()
