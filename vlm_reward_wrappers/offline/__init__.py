"""Offline reward labelling: VLM rewards for fixed datasets, written as new Minari datasets.

Two methods, both on the frames recorded with a dataset:

- RG-VLM (arXiv 2504.08772): :class:`WindowScorer` shows a score labeler windows of consecutive
  frames and the actions taken between them, and gets a 0-10 score per transition.
- RL-VLM-F offline: :class:`PreferenceRelabeler` asks a preference labeler to compare pairs of the
  dataset's frames, trains a reward model on the answers, and rewards every transition with the
  model's reward of the frame it ends in.

Both label through the same :class:`~vlm_reward_wrappers.labelling_service.LabellingService` as online
training: every answer is committed to a :class:`~vlm_reward_wrappers.label_store.LabelStore` before it is
used and looked up there before it is sent, so an interrupted run resumes where it stopped. The
reward written is ``weight * vlm_reward``, or ``dataset_reward + weight * vlm_reward``
(:func:`mix_rewards`): RG-VLM uses its scores alone or as an auxiliary to the sparse reward.
"""

from vlm_reward_wrappers.offline.datasets import FRAME_INFO_KEYS, GT_REWARD_KEY, Episode, OfflineDataset, record_episodes
from vlm_reward_wrappers.offline.preferences import PreferenceRelabeler
from vlm_reward_wrappers.offline.rewards import mix_rewards, true_reward_correlation
from vlm_reward_wrappers.offline.scoring import WindowScorer, fill_unscored

__all__ = [
    "FRAME_INFO_KEYS", "GT_REWARD_KEY", "Episode", "OfflineDataset", "PreferenceRelabeler", "WindowScorer",
    "fill_unscored", "mix_rewards", "record_episodes", "true_reward_correlation",
]
