"""PreferenceDataset: labelled pairs of reward-model inputs, ready for Bradley-Terry training."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

from vlm_reward_wrappers.label_store import NO_PREFERENCE
from vlm_reward_wrappers.memory import refuse_unless_it_fits


class PreferenceDataset:
    """Labelled pairs of reward-model inputs, ready for Bradley-Terry training.

    Pairs answered -1 and pairs of identical inputs are dropped, as in RL-VLM-F.
    The target of a pair is the probability that its second input is better: the preference itself
    for hard labels, the labeler's soft label where it gave one and ``use_soft_labels`` is set.

    :param use_soft_labels: train on soft labels where given.
    :param max_pairs: the most pairs it may hold (a learner's: its feedback budget), or None for no bound.
        Its memory never exceeds what that many pairs take, and the first pair added checks that they fit
        in the memory available (a MemoryError saying what to change, instead of failing hours later).
    """

    def __init__(self, use_soft_labels: bool = False, max_pairs: Optional[int] = None) -> None:
        if max_pairs is not None and max_pairs < 1:
            raise ValueError(f"max_pairs must be at least 1 or None, got {max_pairs}")
        self.use_soft_labels = use_soft_labels
        self.max_pairs = max_pairs
        # Append-only arrays grown by doubling: rows below len(self) never change, so a snapshot is a view.
        self._a: Optional[np.ndarray] = None
        self._b: Optional[np.ndarray] = None
        self._targets = np.empty(0, dtype=np.float32)
        self._n = 0

    def __len__(self) -> int:
        return self._n

    def add(self, input_a: np.ndarray, input_b: np.ndarray, preference: int, soft: Optional[float] = None) -> bool:
        """Add a labelled pair; return whether it was kept."""
        if preference == NO_PREFERENCE or np.array_equal(input_a, input_b):
            return False
        if self._n == self.max_pairs:
            raise ValueError(f"the dataset holds its max_pairs={self.max_pairs} pairs already: raise max_pairs "
                             "(a learner's feedback_budget) to train on more")
        if self._a is None:
            self._check_memory(np.asarray(input_a))
        if self._a is None or self._n == len(self._a):
            self._grow(np.asarray(input_a))
        self._a[self._n], self._b[self._n] = input_a, input_b
        self._targets[self._n] = float(soft) if (self.use_soft_labels and soft is not None) else float(preference)
        self._n += 1
        return True

    def _check_memory(self, like: np.ndarray) -> None:
        if self.max_pairs is not None:
            refuse_unless_it_fits(
                self.max_pairs, 2 * like.nbytes, f"{self.max_pairs:,} labelled pairs of reward-model inputs of shape {like.shape}",
                lambda fits: f"lower feedback_budget to {fits // 2:,} or less, or reward_image_size, or use "
                             "reward_input='observation'")

    def _grow(self, like: np.ndarray) -> None:
        capacity = max(64, 2 * self._n)
        if self.max_pairs is not None:
            capacity = min(capacity, self.max_pairs)
        grown = [np.empty((capacity, *like.shape), dtype=like.dtype) for _ in range(2)]
        targets = np.empty(capacity, dtype=np.float32)
        if self._a is not None:
            grown[0][: self._n], grown[1][: self._n], targets[: self._n] = self.arrays()
        self._a, self._b, self._targets = grown[0], grown[1], targets

    def arrays(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(inputs_a (N, ...), inputs_b (N, ...), targets (N,) float32), views of the stored pairs."""
        if self._a is None:
            raise ValueError("the dataset holds no labelled pair yet")
        n = self._n
        return self._a[:n], self._b[:n], self._targets[:n]

    def snapshot(self) -> "PreferenceDataset":
        """The dataset as it is now, without copying: pairs added later are not in it."""
        frozen = PreferenceDataset(self.use_soft_labels, self.max_pairs)
        frozen._a, frozen._b, frozen._targets, frozen._n = self._a, self._b, self._targets, self._n
        return frozen
