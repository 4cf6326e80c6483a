"""A budget for the pages of LMDB's memory map that a replica keeps mapped.

LMDB reads and writes through a shared mapping of its data file (MDB_WRITEMAP, rcds/store.py).
Every page a read or a write touches stays mapped into the replica, and the kernel maps cached
neighbours with it (fault-around), until the process exits: a replica that served reads
across a large store shows much of the file in its USS although none of it is heap.

`MapBudget.check` reads how much of the mapping is resident (its entry in /proc/self/smaps) at
most every `interval` seconds and, past `budget` bytes, drops the mapping's page-table entries
with madvise(MADV_DONTNEED). Nothing is lost: the mapping is shared, so dropping a page that a
write dirtied marks its page-cache page dirty (it is written back as ever), and every page
stays in the page cache and comes back on its next access as a minor fault.
Where there is no /proc or no madvise (not Linux), it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("rcds.mapbudget")

MADV_DONTNEED = 4        # Linux


class MapBudget:
    def __init__(self, data_file: Path, budget: int, interval: float = 0.5) -> None:
        self.data_file = os.path.realpath(data_file)      # as the kernel names the mapping
        self.budget = budget
        self.interval = interval
        self.next_check = 0.0
        self.resident = 0          # bytes of the mapping resident at the last check
        self.trims = 0
        self.released = 0          # bytes dropped in all
        self._madvise = _libc_madvise()

    def check(self, now: float) -> int:
        """If due, measure the mapping and trim it when over budget; returns the bytes dropped."""
        if self._madvise is None or now < self.next_check:
            return 0
        self.next_check = now + self.interval
        found = self._mapping()
        if found is None:
            return 0
        start, end, self.resident = found
        if self.resident <= self.budget:
            return 0
        if self._madvise(start, end - start, MADV_DONTNEED) != 0:
            log.warning("madvise(MADV_DONTNEED) on the LMDB map failed (errno %d); no longer trimming it",
                        ctypes.get_errno())
            self._madvise = None
            return 0
        dropped, self.resident = self.resident, 0
        self.trims += 1
        self.released += dropped
        return dropped

    def _mapping(self) -> tuple[int, int, int] | None:
        """(start, end, resident bytes) of the data file's mapping, or None if it is not mapped."""
        try:
            with open("/proc/self/smaps") as f:
                span = None
                for line in f:
                    if span is None:
                        if line.endswith(self.data_file + "\n"):
                            lo, _, hi = line.split(" ", 1)[0].partition("-")
                            span = int(lo, 16), int(hi, 16)
                    elif line.startswith("Rss:"):
                        return span[0], span[1], int(line.split()[1]) * 1024
        except (OSError, ValueError):
            pass
        return None


def _libc_madvise() -> Callable[[int, int, int], int] | None:
    if not Path("/proc/self/smaps").exists():
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise
