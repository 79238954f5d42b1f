"""The rewards written to an offline dataset, and how far they follow the true reward."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from vlm_reward_wrappers.metrics import pearson
from vlm_reward_wrappers.offline.datasets import OfflineDataset


def mix_rewards(
    dataset: OfflineDataset, vlm_rewards: Sequence[np.ndarray], weight: float = 1.0, add_dataset_reward: bool = False
) -> List[np.ndarray]:
    """The rewards to write: ``weight * vlm_reward``, or ``dataset_reward + weight * vlm_reward``.

    :param vlm_rewards: one (N_i,) array per episode (scores or reward-model rewards), without NaN.
    :param weight: scale of the VLM reward.
    :param add_dataset_reward: add the dataset's own (usually sparse) reward, as RG-VLM's auxiliary use.
    :return: one (N_i,) float64 array per episode.
    """
    return [
        (episode.rewards if add_dataset_reward else 0.0) + weight * np.asarray(vlm, dtype=np.float64)
        for episode, vlm in zip(dataset.episodes, vlm_rewards)
    ]


def true_reward_correlation(dataset: OfflineDataset, rewards: Sequence[np.ndarray]) -> float:
    """Pearson correlation of per-transition rewards with the true reward (NaN if either is constant)."""
    return pearson(np.concatenate(rewards), dataset.gt_rewards)
