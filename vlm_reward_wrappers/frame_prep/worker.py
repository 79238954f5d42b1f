"""The one resizer, and the frame-preparation worker's loop.

:class:`~vlm_reward_wrappers.frames.FramePreparer` runs this file by path (``python .../worker.py FD SLOTS
HEIGHT WIDTH SIDE``): it then imports numpy and PIL only, and its folder, put first on ``sys.path``, holds
nothing that could shadow theirs. The worker maps the shared memory at file descriptor FD: SLOTS rendered
(HEIGHT, WIDTH, 3) frames followed by SLOTS (SIDE, SIDE, 3) inputs. It reads slot numbers (one byte each)
from stdin, resizes the frame in each slot into the same input slot, and writes the slot number to stdout
when it is done. It ends when stdin closes (the env loop's process closed it, or ended); it runs in a
session of its own, so a terminal's Ctrl-C reaches only the run.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Tuple

import numpy as np
from PIL import Image


def shrink(frame: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 frame resized to ``size`` = (width, height), (height, width, 3) uint8.

    BOX averages every source pixel, so thin objects (a pole, a rope) survive large downscales;
    reducing_gap first shrinks by an integer factor, which is faster and looks the same.
    """
    return np.array(Image.fromarray(frame).resize(size, Image.Resampling.BOX, reducing_gap=1.5))


def shared_slots(memory: mmap.mmap, slots: int, frame_shape: Tuple[int, ...], side: int) -> Tuple[np.ndarray, np.ndarray]:
    """The (slots, H, W, 3) frames and (slots, side, side, 3) inputs laid out in ``memory``, as views."""
    array = np.frombuffer(memory, dtype=np.uint8)
    split = slots * int(np.prod(frame_shape))
    return array[:split].reshape(slots, *frame_shape), array[split:].reshape(slots, side, side, 3)


def shared_size(slots: int, frame_shape: Tuple[int, ...], side: int) -> int:
    """Bytes of shared memory :func:`shared_slots` lays out."""
    return slots * (int(np.prod(frame_shape)) + side * side * 3)


def serve(fd: int, slots: int, frame_shape: Tuple[int, int, int], side: int) -> None:
    """Answer slot numbers from stdin until it closes (the layout is :func:`shared_slots`'s)."""
    frames, inputs = shared_slots(mmap.mmap(fd, shared_size(slots, frame_shape, side)), slots, frame_shape, side)
    try:
        while True:
            requests = os.read(0, 256)
            if not requests:
                return
            for slot in requests:
                inputs[slot] = shrink(frames[slot], (side, side))
                os.write(1, bytes((slot,)))
    except BrokenPipeError:  # the env loop's process has gone: nothing is left to answer
        return


if __name__ == "__main__":
    fd, slots, height, width, side = map(int, sys.argv[1:])
    serve(fd, slots, (height, width, 3), side)
