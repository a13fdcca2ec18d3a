"""Giving memory back to the system once a burst of calls has ended.

Each open call (a waiting acquire, a session stream) costs the gRPC core
some heap. When a thousand waiting calls end, the C allocator keeps the
freed pages for later use instead of returning them, so the broker's
resident memory stays at its peak. glibc's `malloc_trim` returns them; the
broker calls it every `TRIM_INTERVAL`, off the event loop. Elsewhere
(another C library) this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_INTERVAL = 30.0  # seconds


def _malloc_trim() -> Callable[[], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


_TRIM = _malloc_trim()


def available() -> bool:
    """Whether this process can return freed heap to the system."""
    return _TRIM is not None


def trim() -> bool:
    """Returns the heap's free pages to the system; True if any were."""
    if _TRIM is None:
        return False
    return bool(_TRIM())
