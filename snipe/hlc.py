"""Hybrid logical clock (Kulkarni et al. 2014) packed into one 64-bit integer.

A timestamp is `(physical_ms << 16) | logical`: it orders like the pair, fits a msgpack uint64,
and stays within one logical step of wall time. The clock never reads time itself: the caller
passes `wall_ms`, so the same code runs under a simulator's clock.
Invariants: successive `now()` results strictly increase; `update()` returns a value greater
than both the local clock and the received timestamp.
"""

from __future__ import annotations

LOGICAL_BITS = 16
LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


def pack(physical_ms: int, logical: int = 0) -> int:
    return (physical_ms << LOGICAL_BITS) | logical


def physical_ms(ts: int) -> int:
    return ts >> LOGICAL_BITS


def logical(ts: int) -> int:
    return ts & LOGICAL_MASK


class HybridClock:
    def __init__(self, last: int = 0) -> None:
        self.last = last

    def now(self, wall_ms: int) -> int:
        candidate = pack(wall_ms)
        self.last = candidate if candidate > self.last else self.last + 1
        return self.last

    def update(self, received: int, wall_ms: int) -> int:
        """Advance past a timestamp seen from a peer (message receipt in the HLC paper)."""
        self.last = max(pack(wall_ms), self.last + 1, received + 1)
        return self.last
