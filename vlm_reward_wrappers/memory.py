"""Refusing, up front, what would not fit in memory, instead of failing hours into a run."""

from __future__ import annotations

from typing import Callable

import psutil


def refuse_unless_it_fits(count: int, item_bytes: int, what: str, fix: Callable[[int], str]) -> None:
    """A MemoryError unless ``count`` items of ``item_bytes`` each fit in the memory available now.

    :param what: the items, as the message names them before "need N GB and M GB are available".
    :param fix: what to change, given how many items would fit.
    """
    needed, available = count * item_bytes, psutil.virtual_memory().available
    if needed > available:
        raise MemoryError(f"{what} need {needed / 2**30:.1f} GB and {available / 2**30:.1f} GB are available: "
                          f"{fix(int(available // item_bytes))}")
