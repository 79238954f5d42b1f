"""PEBBLE's unsupervised exploration reward, which RL-VLM-F uses before its first query."""

from __future__ import annotations

import numpy as np


class StateEntropyReward:
    """A state's distance to its ``k``-th nearest neighbour among the states visited before it (a particle
    estimate of state entropy, Lee et al. 2021), divided by the running standard deviation of those
    distances.

    An agent paid this moves to states it has not been in; with RL-VLM-F's MetaWorld frames (robot hidden)
    that is what makes the scene change at all before the first pairs are drawn. PEBBLE scores sampled
    batches against the whole replay buffer at update time; here each state is scored once, when it is
    visited, against the states before it, so the reward is known when the step returns, as SB3 needs.

    :param capacity: the most states kept (the first ones): the steps the exploration lasts, over all envs.
    :param k: the neighbour whose distance is the reward (PEBBLE's and RL-VLM-F's ``topK``: 5).
    """

    def __init__(self, capacity: int, k: int = 5) -> None:
        if k < 1 or capacity < 1:
            raise ValueError(f"capacity and k must be at least 1, got capacity {capacity} and k {k}")
        self.capacity, self.k = capacity, k
        self.states = np.empty((0, 0), dtype=np.float32)
        self.count = 0
        self._n, self._mean, self._m2 = 0, 0.0, 0.0

    def __call__(self, states: np.ndarray) -> np.ndarray:
        """Score states (n, ...) against the states before them, then keep them; -> (n,) float32 rewards
        (0 until ``k`` states have been seen)."""
        states = np.asarray(states, dtype=np.float32).reshape(len(states), -1)
        if not self.count:
            self.states = np.empty((0, states.shape[1]), dtype=np.float32)
        elif states.shape[1] != self.states.shape[1]:
            raise ValueError(f"states of {states.shape[1]} values after states of {self.states.shape[1]}")
        rewards = np.zeros(len(states), dtype=np.float32)
        if self.count >= self.k:
            seen = self.states[: self.count]
            # Squared distances as |a|^2 + |b|^2 - 2ab: one matrix product instead of an (n, N, D) array.
            sq = (states**2).sum(1)[:, None] + (seen**2).sum(1)[None] - 2.0 * states @ seen.T
            knn = np.sqrt(np.maximum(np.partition(sq, self.k - 1, axis=1)[:, self.k - 1], 0.0))
            for d in knn:  # Welford's running variance, as PEBBLE's running std of the entropy
                self._n += 1
                delta = d - self._mean
                self._mean += delta / self._n
                self._m2 += delta * (d - self._mean)
            std = np.sqrt(self._m2 / self._n) if self._n > 1 else 0.0
            rewards = (knn / std if std > 0 else knn).astype(np.float32)
        kept = states[: self.capacity - self.count]
        if self.count + len(kept) > len(self.states):  # grown as states come, never beyond the capacity
            grown = np.empty((min(self.capacity, max(1024, 2 * (self.count + len(kept)))), states.shape[1]), np.float32)
            grown[: self.count] = self.states[: self.count]
            self.states = grown
        self.states[self.count : self.count + len(kept)] = kept
        self.count += len(kept)
        return rewards
