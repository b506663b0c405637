"""The process's memory allocator, tuned for the model's large temporaries (one of the CPU speed-ups).

An image encoding on the CPU allocates and frees about 1.2 GB of activations, in blocks of
tens of MB. glibc's malloc serves blocks that large with ``mmap`` and gives them back with
``munmap`` on free, so every encoding faults its pages in afresh (about 300,000 minor page
faults for SAM2.1-tiny at 1024x1024); and each thread gets its own arena, so the inference
thread never reuses what another thread freed. :func:`tune_allocator` keeps that memory in
the process instead: one arena, no ``mmap`` for large blocks, and free memory at the top of
the heap returned to the system only beyond :data:`TRIM_THRESHOLD`. On the 2-core
development machine ``set_image`` on a non-main thread went from 1486-1591 ms to
1305-1382 ms (three interleaved process pairs) and the page faults from ~300,000 to
almost none, for about 90 MB more resident memory after the encoding (1.76 GB against
1.67 GB; docs/benchmarks.md).

Linux with glibc only (``mallopt``); elsewhere (macOS, musl) nothing is changed and
:func:`tune_allocator` says so. It must run before the process starts threads that
allocate: the arena limit applies to arenas created after it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
import sys

#: glibc ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8

#: Free memory at the top of the heap beyond this many bytes goes back to the system
#: (glibc's default is 128 KiB, adjusted upward as mmapped blocks are freed).
TRIM_THRESHOLD = 1 << 30


def _glibc() -> ctypes.CDLL | None:
    """The C library, if it is glibc on Linux; else None."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def tune_allocator(mode: str) -> str:
    """Apply ``--allocator``.

    Args:
        mode: ``tuned`` (one arena, no mmap for large blocks, trim beyond
            :data:`TRIM_THRESHOLD`) or ``system`` (leave malloc as it is).

    Returns:
        What was done, for the start-up log: ``tuned``, ``system``, or
        ``system (tuning needs glibc on Linux)``.
    """
    if mode != "tuned":
        return "system"
    libc = _glibc()
    if libc is None:
        return "system (tuning needs glibc on Linux)"
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)))
    return "tuned" if ok else "system (mallopt refused a setting)"
