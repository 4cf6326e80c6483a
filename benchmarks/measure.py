"""What every benchmark measures the same way."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import psutil


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU seconds so far of the processes `pids`, all their threads (one gone counts 0)."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total
