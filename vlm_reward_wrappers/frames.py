"""Frames: turning rendered images into reward-model inputs, and the ring buffer query pairs are drawn from."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image

from vlm_reward_wrappers.labels import check_frame


def resize_frame(frame: np.ndarray, reward_image_size: int) -> np.ndarray:
    """Resize one rendered rgb frame to a square reward-model input.

    :param frame: (H, W, 3) uint8 image as returned by ``env.render()``.
    :param reward_image_size: side of the output in pixels.
    :return: (reward_image_size, reward_image_size, 3) uint8 image.
    """
    frame = check_frame(frame, "the rendered frame")
    if frame.shape[:2] == (reward_image_size, reward_image_size):
        return np.ascontiguousarray(frame)
    # BOX averages every source pixel, so thin objects (a pole, a rope) survive large downscales;
    # reducing_gap first shrinks by an integer factor, which is faster and looks the same.
    image = Image.fromarray(frame)
    return np.array(image.resize((reward_image_size, reward_image_size), Image.Resampling.BOX, reducing_gap=1.5))


class FrameBuffer:
    """Bounded ring buffer of the frames seen during training.

    Each entry holds the frame (uint8, reward-model resolution), optionally the state observation
    the reward model reads instead, and the true reward (used only for the oracle teacher and for
    accuracy metrics, never for learning).

    :param capacity: the most entries kept; the oldest are overwritten first.
    :param frame_shape: (H, W, 3) of stored frames.
    :param observation_shape: shape of stored observations, or None to store none.
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: Tuple[int, ...],
        observation_shape: Optional[Tuple[int, ...]] = None,
    ) -> None:
        if capacity < 2:
            raise ValueError(f"capacity must be at least 2 to form a pair, got {capacity}")
        self.capacity = capacity
        self.frames = np.zeros((capacity, *frame_shape), dtype=np.uint8)
        self.observations = (
            np.zeros((capacity, *observation_shape), dtype=np.float32) if observation_shape is not None else None
        )
        self.gt_rewards = np.full(capacity, np.nan, dtype=np.float64)
        self.pos = 0
        self.full = False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, frames: np.ndarray, gt_rewards: np.ndarray, observations: Optional[np.ndarray] = None) -> np.ndarray:
        """Append a batch of entries (one per env) and return the indices they were written to."""
        n = len(frames)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.frames[idx] = frames
        self.gt_rewards[idx] = gt_rewards
        if self.observations is not None:
            if observations is None:
                raise ValueError("this FrameBuffer stores observations: pass them to add()")
            self.observations[idx] = observations
        self.full = self.full or self.pos + n >= self.capacity
        self.pos = (self.pos + n) % self.capacity
        return idx

    def inputs(self, idx: np.ndarray, reward_input: str) -> np.ndarray:
        """Reward-model inputs at ``idx``: frames (``reward_input`` "frame") or observations ("observation")."""
        if reward_input == "frame":
            return self.frames[idx]
        if self.observations is None:
            raise ValueError("this FrameBuffer stores no observations")
        return self.observations[idx]

    def recent(self, n: int) -> np.ndarray:
        """Indices of the ``n`` newest entries (fewer if the buffer holds fewer), newest first."""
        return (self.pos - 1 - np.arange(min(len(self), n))) % self.capacity
