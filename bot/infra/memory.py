"""Giving freed memory back to the system (glibc), for a smaller resident set."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable

#: glibc's mallopt parameter for the size from which allocations get their own mapping.
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 128 * 1024


@functools.cache
def _glibc(name: str) -> Callable[..., int] | None:
    """The C library's function `name`, or None where it has none (not glibc)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return getattr(libc, name)
    except (OSError, AttributeError):
        return None


def return_freed_memory() -> bool:
    """Have glibc give large freed blocks back to the system in the serving process.

    glibc serves allocations of 128 KB and more from their own mappings, returned to the
    system when freed, but it raises that threshold (up to 32 MB) each time such a block is
    freed, after which the model's batch tensors (a few MB each, every batch) come from the
    heap, which keeps what they freed. Fixing the threshold at 128 KB, measured with the
    runtime benchmark at 100 conversations: resident 548-553 -> 462-463 MB when ready,
    597-616 -> 479-484 MB at the peak, for 8-9 % more CPU per message (each batch's tensors
    are mapped and unmapped): off by default (`server.return_freed_memory`, issue 19).
    False where the C library has no `mallopt` (not glibc).
    """
    mallopt = _glibc("mallopt")
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) if mallopt is not None else False


def trim_heap() -> bool:
    """Return the free pages of every malloc arena to the system (`malloc_trim(0)`).

    The model's batch tensors (a few MB each) come from the heap, and glibc keeps what a
    batch freed for the next one: tens of MB resident that no live object uses, growing with
    the mix of batch sizes. Measured on the sample models in one process: 502-525 -> 464-473
    MB after a trim, which took 5-7 ms (issue 19). False where the C library has no
    `malloc_trim` (not glibc) or nothing was returned.
    """
    trim = _glibc("malloc_trim")
    return bool(trim(0)) if trim is not None else False
