"""Frames: resizing rendered images and the ring buffer the learner samples query pairs from."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from PIL import Image


def resize_frame(frame: np.ndarray, image_size: int) -> np.ndarray:
    """Resize one rendered rgb frame to a square reward-model input.

    :param frame: (H, W, 3) uint8 image as returned by ``env.render()``.
    :param image_size: side of the output in pixels.
    :return: (image_size, image_size, 3) uint8 image.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) rgb frame, got shape {frame.shape}")
    if frame.shape[:2] == (image_size, image_size):
        return np.ascontiguousarray(frame, dtype=np.uint8)
    image = Image.fromarray(frame.astype(np.uint8, copy=False))
    # BOX averages every source pixel, so thin objects (a pole, a rope) survive large downscales;
    # reducing_gap first shrinks by an integer factor, which is faster and looks the same.
    return np.array(image.resize((image_size, image_size), Image.Resampling.BOX, reducing_gap=1.5))


class FrameBuffer:
    """Bounded ring buffer of the frames seen during training, with their ids.

    Each entry holds the frame (uint8, reward-model resolution), optionally the state observation
    the reward model reads instead, the episode and step ids, and the true reward (used only for
    the oracle teacher and for accuracy metrics, never for learning).

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
        self.episode_ids = np.zeros(capacity, dtype=np.int64)
        self.step_ids = np.zeros(capacity, dtype=np.int64)
        self.pos = 0
        self.full = False

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(
        self,
        frames: np.ndarray,
        gt_rewards: np.ndarray,
        episode_ids: np.ndarray,
        step_ids: np.ndarray,
        observations: Optional[np.ndarray] = None,
    ) -> np.ndarray:
        """Append a batch of entries (one per env) and return the indices they were written to."""
        n = len(frames)
        idx = (self.pos + np.arange(n)) % self.capacity
        self.frames[idx] = frames
        self.gt_rewards[idx] = gt_rewards
        self.episode_ids[idx] = episode_ids
        self.step_ids[idx] = step_ids
        if self.observations is not None:
            if observations is None:
                raise ValueError("this FrameBuffer stores observations: pass them to add()")
            self.observations[idx] = observations
        self.full = self.full or self.pos + n >= self.capacity
        self.pos = (self.pos + n) % self.capacity
        return idx

    def inputs(self, idx: np.ndarray, kind: str) -> np.ndarray:
        """Reward-model inputs at ``idx``: frames (kind "frame") or observations (kind "observation")."""
        if kind == "frame":
            return self.frames[idx]
        if self.observations is None:
            raise ValueError("this FrameBuffer stores no observations")
        return self.observations[idx]
