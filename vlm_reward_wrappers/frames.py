"""Frames: reward-model inputs and query frames from rendered images, the ring buffer query pairs are
drawn from, and the store of the frames a labeler is shown."""

from __future__ import annotations

import io
import logging
import mmap
import os
import select
import subprocess
import sys
import tempfile
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
from PIL import Image

from vlm_reward_wrappers import lifecycle
from vlm_reward_wrappers.frame_prep import worker as frame_prep_worker
from vlm_reward_wrappers.frame_prep.worker import shared_size, shared_slots, shrink
from vlm_reward_wrappers.label_store import check_frame

logger = logging.getLogger(__name__)


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
    return shrink(frame, (reward_image_size, reward_image_size))


class PreparedFrame:
    """A reward-model input a :class:`FramePreparer` is preparing; :meth:`result` waits for it."""

    __slots__ = ("_preparer", "_value")

    def __init__(self, preparer: "FramePreparer", value: Optional[np.ndarray] = None) -> None:
        self._preparer, self._value = preparer, value

    def result(self) -> np.ndarray:
        """The (1, S, S, 3) uint8 input (a batch of one, as the learner takes it)."""
        if self._value is None:
            self._preparer.collect(wait_for=self)
        return self._value


#: Preparers whose worker is running, so that a forked child lets go of their pipes at once (below).
_running: "weakref.WeakSet[FramePreparer]" = weakref.WeakSet()


def _let_go_in_child() -> None:
    # A forked child (SubprocVecEnv's "fork", a DataLoader worker) holds copies of the pipes: closed here,
    # the worker still sees its stdin close when the parent ends, and the child never reads its answers.
    for preparer in list(_running):
        preparer._release(forked=True)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_let_go_in_child)


def _stop_process(process: subprocess.Popen, timeout: float) -> None:
    """Close the worker's pipes (it ends when its stdin closes) and reap it, killing it after ``timeout``."""
    process.stdin.close()
    process.stdout.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class FramePreparer:
    """Prepares reward-model inputs in a worker process, so the env loop steps and renders meanwhile.

    Not a thread: PIL takes the GIL back a few times a frame, and each time the env loop's thread waits on
    the hand-over (a worker thread slowed CartPole's render by 0.15-0.2 ms a step, about half of what it took
    off). Frames reach the worker through shared memory (the one copy a frame handed over needs anyway) and
    their slot numbers through a pipe; the worker imports numpy and PIL only (0.1 s to start) and runs in
    its own session, so a terminal's Ctrl-C reaches the run and not it. Where it cannot help (not POSIX, a
    frozen app, a frame of another shape, every slot in flight, the worker gone), a frame is prepared at once
    in the loop, by the same resizer: the inputs are the same either way, and nothing waits on a worker that
    is behind. A worker that dies, answers for a slot it was not given, or sends nothing back for
    ``timeout`` seconds is stopped with a warning, and its frames are prepared in the loop from their slots.

    :param reward_image_size: side of the square inputs in pixels.
    :param frame_shape: (H, W, 3) of the rendered frames.
    :param max_bytes: the most shared memory for frames in flight (2 to 255 frames' worth).
    :param timeout: seconds without an answer, while one is awaited, before the worker is taken for stuck.
    """

    def __init__(self, reward_image_size: int, frame_shape: Tuple[int, ...], max_bytes: int = 16 * 2**20,
                 timeout: float = 30.0) -> None:
        self.reward_image_size = reward_image_size
        self.frame_shape = tuple(frame_shape)
        self.timeout = timeout
        self.slots = int(np.clip(max_bytes // shared_size(1, self.frame_shape, reward_image_size), 2, 255))
        self._process: Optional[subprocess.Popen] = None
        self._in_flight: Dict[int, PreparedFrame] = {}  # by slot, in the order handed over
        #: Frames prepared in the env loop: the worker was behind (every slot in flight), gone or not started.
        self.in_loop = 0
        startable = os.name == "posix" and sys.executable and not getattr(sys, "frozen", False)
        if startable and self.frame_shape[:2] != (reward_image_size, reward_image_size):
            try:
                self._start()
            except OSError as error:
                logger.warning("frames are prepared in the env loop: the frame-preparation worker did not start (%s)",
                               error)
        lifecycle.track(self)

    def _start(self) -> None:
        size = shared_size(self.slots, self.frame_shape, self.reward_image_size)
        fd = _anonymous_file()
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size)
            height, width = self.frame_shape[:2]
            self._process = subprocess.Popen(
                [sys.executable, frame_prep_worker.__file__, *map(str, (fd, self.slots, height, width,
                                                                      self.reward_image_size))],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, pass_fds=(fd,), start_new_session=True)
        finally:
            os.close(fd)  # the map and the worker hold their own
        # Pipes closed and the worker reaped even if the wrapper is dropped unclosed.
        self._reap = weakref.finalize(self, _stop_process, self._process, self.timeout)
        self._frames, self._inputs = shared_slots(memory, self.slots, self.frame_shape, self.reward_image_size)
        self._free = list(range(self.slots))
        self._answers = select.poll()  # not select.select: it fails on descriptors numbered 1024 or more
        self._answers.register(self._process.stdout.fileno(), select.POLLIN)
        os.set_blocking(self._process.stdout.fileno(), False)
        _running.add(self)

    def submit(self, frame: np.ndarray) -> PreparedFrame:
        """Start preparing one rendered (H, W, 3) uint8 frame; it is copied, so the env may render the next
        step into the same array."""
        frame = check_frame(frame, "the rendered frame")
        if self._process is not None and frame.shape == self.frame_shape:
            if not self._free:
                self.collect()
            if self._process is not None and self._free:
                slot = self._free.pop()
                self._frames[slot] = frame
                try:
                    os.write(self._process.stdin.fileno(), bytes((slot,)))
                except BrokenPipeError:
                    self._stop_worker("it exited")
                else:
                    prepared = self._in_flight[slot] = PreparedFrame(self)
                    return prepared
        self.in_loop += 1
        # A copy: a frame already of the input's size comes back as it is, and the env may render into it.
        return PreparedFrame(self, np.array(resize_frame(frame, self.reward_image_size))[None])

    def collect(self, wait_for: Optional[PreparedFrame] = None) -> None:
        """Take in the inputs the worker has finished; with ``wait_for``, wait until that one is done."""
        while self._in_flight and self._process is not None:
            try:
                done = os.read(self._process.stdout.fileno(), 256)
            except BlockingIOError:
                if wait_for is None or wait_for._value is not None:
                    return
                if not self._answers.poll(1000 * self.timeout):
                    self._stop_worker(f"no input came back in {self.timeout:g} s")
                continue
            if not done:
                self._stop_worker("it exited")
                return
            for slot in done:
                prepared = self._in_flight.get(slot)
                if prepared is None:
                    self._stop_worker(f"it answered for slot {slot}, which it was not given")
                    return
                prepared._value = self._inputs[slot][None].copy()
                del self._in_flight[slot]
                self._free.append(slot)

    def _stop_worker(self, why: str) -> None:
        """Prepare the frames in flight here, from their slots, and every frame after them."""
        self._process.kill()
        logger.warning("the frame-preparation worker stopped (%s, status %s): frames are prepared in the env loop "
                       "from now on", why, self._process.wait())
        for slot, prepared in self._in_flight.items():
            prepared._value = resize_frame(self._frames[slot], self.reward_image_size)[None]
        self.in_loop += len(self._in_flight)
        self._in_flight.clear()
        self._release()

    def _release(self, forked: bool = False) -> None:
        """Stop the worker (a forked child only closes its copies of the pipes) and let the shared memory go."""
        if self._process is None:
            return
        if forked:
            self._reap.detach()
            self._process.stdin.close()
            self._process.stdout.close()
        else:
            self._reap()
        _running.discard(self)
        self._process = self._frames = self._inputs = self._answers = None

    def close(self) -> None:
        """Finish the frames in flight and stop the worker: milliseconds, or ``timeout`` at most without an
        answer, and as long again for the worker to end."""
        if self._process is not None and self._in_flight:
            self.collect(wait_for=next(reversed(self._in_flight.values())))
        self._release()
        lifecycle.untrack(self)


def _anonymous_file() -> int:
    """A file descriptor of memory with no name: nothing is left behind, however the run ends."""
    try:
        return os.memfd_create("vlm-frames")
    except (AttributeError, OSError):  # not Linux, or a kernel or sandbox without memfd
        fd, path = tempfile.mkstemp(prefix="vlm-frames-")
        os.unlink(path)
        return fd


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
    return shrink(frame, (max(1, round(width * scale)), max(1, round(height * scale))))


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
