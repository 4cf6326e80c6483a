"""The simulated network: latency distributions, loss, duplication, partitions and counters.

`Network` decides the fate of one message: lost, cut off by a partition, or delivered after one
or more delays (a duplicated message travels twice, each copy with its own delay, so copies and
neighbours overtake one another: variable latency is what reorders). It knows nothing of what a
message means; a sender may give a `label` (say "msg/1 data") to count traffic by kind.

Every random draw comes from the `random.Random` the simulator hands in, so a run is a function
of its seed.

Partitions: `partition(groups)` puts each listed node in a numbered group; a message between two
nodes in different groups is dropped, and so is one in flight when the cut happens (the check is
made when it is sent and again when it arrives). Nodes in no group keep all their links.
`cut(a, b)` severs one link (both directions); `heal()` ends every partition and cut.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol


class Latency(Protocol):
    """A one-way delay distribution, in seconds."""

    def sample(self, rng: random.Random) -> float: ...


@dataclass(frozen=True, slots=True)
class Fixed:
    """Every message takes exactly `seconds`."""

    seconds: float

    def sample(self, rng: random.Random) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Uniform:
    """Uniform between `low` and `high` seconds."""

    low: float
    high: float

    def sample(self, rng: random.Random) -> float:
        return self.low + (self.high - self.low) * rng.random()


@dataclass(frozen=True, slots=True)
class LogNormal:
    """Log-normal with the given `median` and shape `sigma`, never below `floor`: the long right
    tail of real networks (most messages near the median, a few much later)."""

    median: float
    sigma: float
    floor: float = 0.0

    def sample(self, rng: random.Random) -> float:
        return max(self.floor, self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0)))


@dataclass(frozen=True, slots=True)
class ShiftedExponential:
    """`minimum` plus an exponential with mean `mean_extra` (propagation plus queueing)."""

    minimum: float
    mean_extra: float

    def sample(self, rng: random.Random) -> float:
        return self.minimum + rng.expovariate(1.0 / self.mean_extra) if self.mean_extra > 0 else self.minimum


@dataclass(slots=True)
class TrafficStats:
    """What crossed the network. A duplicate counts once in `sent` and once in `duplicated`;
    every copy that arrives counts in `delivered`."""

    sent: int = 0
    bytes_sent: int = 0
    delivered: int = 0
    bytes_delivered: int = 0
    lost: int = 0                  # dropped by the loss rate
    duplicated: int = 0
    cut: int = 0                   # dropped by a partition or cut link (at send or on arrival)
    to_down_node: int = 0          # arrived at a crashed node
    inbox_full: int = 0            # arrived at a full inbox
    by_label: dict[str, list[int]] = field(default_factory=dict)     # label -> [messages, bytes]

    def as_dict(self) -> dict[str, object]:
        return {
            "sent": self.sent, "bytes_sent": self.bytes_sent,
            "delivered": self.delivered, "bytes_delivered": self.bytes_delivered,
            "lost": self.lost, "duplicated": self.duplicated, "cut": self.cut,
            "to_down_node": self.to_down_node, "inbox_full": self.inbox_full,
            "by_label": {k: {"messages": v[0], "bytes": v[1]} for k, v in sorted(self.by_label.items())},
        }


class Network:
    """Latency, loss, duplication and partitions between named nodes.

    Invariant: `transit` draws the same random numbers for the same calls in the same order, so
    the simulator's event trace depends only on its seed.
    """

    def __init__(self, latency: Latency | None = None, *, loss: float = 0.0, duplicate: float = 0.0,
                 bandwidth: float | None = None) -> None:
        if not (0.0 <= loss <= 1.0 and 0.0 <= duplicate <= 1.0):
            raise ValueError("loss and duplicate are probabilities between 0 and 1")
        if bandwidth is not None and bandwidth <= 0:
            raise ValueError("bandwidth is in bytes per second and must be positive (or None: unlimited)")
        self.latency: Latency = latency or Fixed(0.001)
        self.loss = loss
        self.duplicate = duplicate
        self.bandwidth = bandwidth
        self.stats = TrafficStats()
        self._group: dict[str, int] = {}
        self._cut: set[tuple[str, str]] = set()

    # --- faults --------------------------------------------------------------------------------
    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut every link between nodes of different groups (replaces any earlier partition)."""
        self._group = {}
        for i, g in enumerate(groups):
            for node in g:
                self._group[node] = i

    def cut(self, a: str, b: str) -> None:
        """Sever the link between `a` and `b`, both directions."""
        self._cut.add((a, b) if a <= b else (b, a))

    def restore(self, a: str, b: str) -> None:
        self._cut.discard((a, b) if a <= b else (b, a))

    def heal(self) -> None:
        """End every partition and cut link."""
        self._group = {}
        self._cut.clear()

    def blocked(self, src: str, dst: str) -> bool:
        """True when a partition or a cut link separates `src` from `dst`."""
        if self._group:
            g1 = self._group.get(src)
            if g1 is not None:
                g2 = self._group.get(dst)
                if g2 is not None and g1 != g2:
                    return True
        return bool(self._cut) and ((src, dst) if src <= dst else (dst, src)) in self._cut

    def latency_for(self, src: str, dst: str) -> Latency:
        """The delay distribution of one link; override for per-link latency (say, by site)."""
        return self.latency

    # --- one message -------------------------------------------------------------------------------
    def transit(self, src: str, dst: str, size: int, label: str, rng: random.Random) -> list[float]:
        """Count the message and return the delay of each copy that will arrive ([] if none)."""
        st = self.stats
        st.sent += 1
        st.bytes_sent += size
        if label:
            c = st.by_label.get(label)
            if c is None:
                st.by_label[label] = [1, size]
            else:
                c[0] += 1
                c[1] += size
        if self.blocked(src, dst):
            st.cut += 1
            return []
        if self.loss and rng.random() < self.loss:
            st.lost += 1
            return []
        lat = self.latency_for(src, dst)
        extra = size / self.bandwidth if self.bandwidth else 0.0
        delays = [lat.sample(rng) + extra]
        if self.duplicate and rng.random() < self.duplicate:
            st.duplicated += 1
            delays.append(lat.sample(rng) + extra)
        return delays
