"""Keep large receive buffers in the heap instead of handing them back to the kernel each time.

ZeroMQ allocates every received message with malloc and frees it when the last Python frame
over it goes. glibc serves an allocation over its mmap threshold (128 KiB at first) with a fresh
mmap and trims free memory at the heap's top once it exceeds its trim threshold; both adjust
themselves only while at most one such buffer is alive at a time. An endpoint holds several (a
window of large messages in flight, an inbox the application reads), so each MiB received
faulted tens of fresh pages in: 40 minor faults per 1 MiB message over ipc, where raw pyzmq
reading one message at a time took 1.6, and a third more CPU per message.

`keep_freed_buffers` fixes both thresholds: buffers up to MMAP_THRESHOLD come from the heap, and
the heap keeps up to TRIM_THRESHOLD of free memory for the next ones. The price is that much
memory held after a burst of large messages, per process, which is what the window bounds in
flight anyway. Linux with glibc only; elsewhere (or with SNIPE_MALLOC_TUNING=0) nothing changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1        # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20    # glibc's largest allowed value on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 64 << 20

_done: bool | None = None


def keep_freed_buffers() -> bool:
    """Set glibc's thresholds once per process; True if they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("SNIPE_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):     # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not _done:
        log.info("glibc refused the malloc thresholds: large messages may cost page faults")
    return _done
