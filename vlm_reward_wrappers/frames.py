"""Frames: reward-model inputs and query frames from rendered images, the ring buffer query pairs are
drawn from, and the store of the frames a labeler is shown."""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.label_store import check_frame


def png_bytes(frame: Union[np.ndarray, Image.Image], compress_level: int = 6) -> bytes:
    """A frame ((H, W, 3) uint8, or a PIL image) as lossless PNG bytes; ``compress_level`` 0-9 trades
    size for time (6 is PIL's default)."""
    image = frame if isinstance(frame, Image.Image) else Image.fromarray(np.ascontiguousarray(frame, dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=compress_level)
    return out.getvalue()


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


class FramePreparer:
    """Prepares reward-model inputs on one worker thread, so the env loop steps and renders meanwhile.

    PIL releases the GIL while it resizes, so on two cores a step's input is ready by the time the next
    step has rendered.

    :param reward_image_size: side of the square inputs in pixels.
    """

    def __init__(self, reward_image_size: int) -> None:
        self.reward_image_size = reward_image_size
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlm-frame-prep")
        lifecycle.track(self)

    def submit(self, frame: np.ndarray) -> "Future[np.ndarray]":
        """Start resizing one rendered (H, W, 3) uint8 frame, which must not change until it is done (an env
        may render into the same array every step: hand over a copy); the future's result is a
        (1, S, S, 3) uint8 batch of one, as the learner takes it."""
        return self._pool.submit(self._prepare, frame)

    def _prepare(self, frame: np.ndarray) -> np.ndarray:
        return resize_frame(frame, self.reward_image_size)[None]

    def close(self) -> None:
        """Stop the worker once the frames handed over are prepared (a millisecond or less each)."""
        self._pool.shutdown(wait=True)
        lifecycle.untrack(self)


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
        # Uninitialised (only written entries are read): numpy asks the kernel for huge pages, so writing a
        # new entry does not fault its pages one by one as np.zeros's do (1 against 8-35 us a 64 px frame).
        self.frames = np.empty((capacity, *frame_shape), dtype=np.uint8)
        self.observations = (
            np.empty((capacity, *observation_shape), dtype=np.float32) if observation_shape is not None else None
        )
        self.gt_rewards = np.full(capacity, np.nan, dtype=np.float64)
        self.pos = 0
        self.full = False
        #: Entries added so far: entry k (0-based) is in slot k % capacity while k >= added - len(self).
        self.added = 0

    def __len__(self) -> int:
        return self.capacity if self.full else self.pos

    def add(self, frames: np.ndarray, gt_rewards: np.ndarray, observations: Optional[np.ndarray] = None) -> np.ndarray:
        """Append a batch of entries (one per env) and return the indices they were written to."""
        n = len(frames)
        end = self.pos + n
        idx = np.arange(self.pos, end) % self.capacity
        where = slice(self.pos, end) if end <= self.capacity else idx  # a slice writes several times faster
        self.frames[where] = frames
        self.gt_rewards[where] = gt_rewards
        if self.observations is not None:
            if observations is None:
                raise ValueError("this FrameBuffer stores observations: pass them to add()")
            self.observations[where] = observations
        self.full = self.full or end >= self.capacity
        self.pos = end % self.capacity
        self.added += n
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


def resize_longer_side(frame: np.ndarray, size: Optional[int]) -> np.ndarray:
    """A frame shrunk (aspect kept) so its longer side is at most ``size`` pixels; never enlarged.

    :param frame: (H, W, 3) uint8 rgb frame.
    :param size: the longest side allowed; None keeps the frame as it is.
    """
    frame = check_frame(frame)
    height, width = frame.shape[:2]
    if size is None or max(height, width) <= size:
        return np.ascontiguousarray(frame)
    scale = size / max(height, width)
    shape = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.array(Image.fromarray(np.ascontiguousarray(frame)).resize(shape, Image.Resampling.BOX, reducing_gap=1.5))


class QueryFrameStore:
    """The frames a labeler may be shown, kept apart from the reward model's small inputs.

    Frames are PNG-compressed (lossless) on a background thread, so the env loop only hands over the
    array. Each is filed under the index of its env step in the learner's :class:`FrameBuffer`; the
    oldest are dropped once ``capacity`` frames or ``max_bytes`` of compressed data are kept, and a
    frame whose buffer entry was overwritten is never returned.

    :param capacity: the most frames kept.
    :param max_bytes: the most compressed bytes kept (the store's memory bound, less a few frames in flight).
    :param compress_level: PNG compression (1: fastest; all levels are lossless).
    """

    def __init__(self, capacity: int = 2000, max_bytes: int = 256 * 2**20, compress_level: int = 1) -> None:
        if capacity < 2 or max_bytes < 1:
            raise ValueError("a query-frame store needs room for at least 2 frames")
        self.capacity, self.max_bytes, self.compress_level = capacity, max_bytes, compress_level
        self._frames: "OrderedDict[int, bytes]" = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="vlm-query-frames")
        self._in_flight: List[Future] = []
        lifecycle.track(self)

    def add(self, step: int, frame: np.ndarray) -> None:
        """Keep ``frame`` (copied) as the query frame of buffer entry ``step``."""
        self._in_flight = [f for f in self._in_flight if not f.done()]
        self._in_flight.append(self._pool.submit(self._encode, step, np.array(frame, dtype=np.uint8)))

    def _encode(self, step: int, frame: np.ndarray) -> None:
        data = png_bytes(frame, self.compress_level)
        with self._lock:
            self._frames[step] = data
            self.nbytes += len(data)
            while len(self._frames) > self.capacity or self.nbytes > self.max_bytes:
                self.nbytes -= len(self._frames.popitem(last=False)[1])

    def steps(self, oldest: int) -> np.ndarray:
        """Steps with a query frame, from ``oldest`` on (older buffer entries were overwritten)."""
        with self._lock:
            return np.array([step for step in self._frames if step >= oldest], dtype=np.int64)

    def get(self, step: int) -> np.ndarray:
        """The query frame of ``step``, (H, W, 3) uint8."""
        with self._lock:
            data = self._frames[step]
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))

    def __len__(self) -> int:
        return len(self._frames)

    def flush(self) -> None:
        """Wait until every frame handed over is stored."""
        for future in self._in_flight:
            future.result()
        self._in_flight = []

    def close(self) -> None:
        """Stop the compression thread: frames not compressed yet are dropped (milliseconds)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._in_flight = []
        lifecycle.untrack(self)
