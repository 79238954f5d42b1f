"""One lifecycle for everything the library runs beside the env loop.

Each object that starts a thread, a process or a server (the background trainer, the labelling service,
the query-frame store, the frame preparer, the relabelling replay buffer, the web pages) is tracked here
from the moment it starts one. Its ``close()`` stops and joins what it started within a bound its
docstring states, and may be called any number of times.

What a script leaves open is closed when the interpreter exits: after the main thread has finished
(normally, by an exception, or by Ctrl-C) and before Python joins its own worker threads and tears
itself down. Torch aborts the whole process (``terminate called without an active exception``, exit
status 134) when one of its threads is still computing while the interpreter tears down, and sqlite
raises on a store closed under a late answer; closing here, first, is what keeps both from happening.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Protocol

logger = logging.getLogger(__name__)


class Closeable(Protocol):
    def close(self) -> None: ...


_live: "weakref.WeakValueDictionary[int, Closeable]" = weakref.WeakValueDictionary()  # by id, oldest first
_lock = threading.Lock()
_hooked = False


def track(owner: Closeable) -> None:
    """Close ``owner`` at interpreter exit unless it is closed (or collected) before; tracking an owner
    again changes nothing."""
    global _hooked
    with _lock:
        _live.setdefault(id(owner), owner)
        if not _hooked:
            _hooked = True
            # threading's exit hooks run before Python joins the worker threads of thread pools (whose
            # own hook would otherwise wait on a labeler's call for up to its deadline) and before any
            # atexit hook; the latest registered runs first. atexit is the fallback for Pythons without it.
            register = getattr(threading, "_register_atexit", atexit.register)
            register(close_all)


def untrack(owner: Closeable) -> None:
    """Forget ``owner`` (its ``close()`` has run)."""
    with _lock:
        if _live.get(id(owner)) is owner:
            del _live[id(owner)]


def is_tracked(owner: Closeable) -> bool:
    """Whether ``owner`` would be closed at exit."""
    with _lock:
        return _live.get(id(owner)) is owner


def close_all() -> None:
    """Close every tracked owner, newest first (as atexit runs its hooks)."""
    with _lock:
        owners = list(_live.values())[::-1]
    for owner in owners:
        try:
            owner.close()
        except Exception:  # one owner failing to close must not keep the others open
            logger.exception("closing %s at exit failed", type(owner).__name__)
