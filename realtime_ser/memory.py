"""Giving freed heap memory back to the operating system.

A server that runs for hours allocates and frees audio buffers, events and
WebSocket compressors from many threads. glibc's allocator keeps what is freed
in per-thread arenas for reuse; with many threads and varied sizes that free
memory fragments, and the resident size creeps up although the live data stays
flat (measured in the soak: see RELIABILITY.md). ``malloc_trim(0)`` hands the
free pages of every arena back. :func:`release_free_memory` calls it where the
C library has it (glibc) and does nothing elsewhere.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
from typing import Any

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows): nothing to do
        log.debug("malloc_trim is not available; freed memory stays with the allocator")
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def available() -> bool:
    """Whether this C library can give freed memory back (glibc)."""
    return _malloc_trim() is not None


def release_free_memory() -> bool:
    """Return the allocator's free pages to the system; False where that is not possible."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
