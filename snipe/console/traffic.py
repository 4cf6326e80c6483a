"""Message traffic over time, per host, from the counters tasks publish (no I/O).

Each task publishes its messaging counters on its own URN (`msg_stats`: per peer, messages sent
and received, a lease renewed while they change). `TrafficHistory` takes a sample of every
task's totals now and then and turns consecutive samples into messages per second per host: a
task seen for the first time counts from that sample on (no spike for what it sent before the
console looked), and one whose counters went down (it restarted) or disappeared (it ended, its
lease ran out) adds nothing to that interval rather than a negative rate.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_SAMPLES = 360          # at the web page's 5 s, half an hour


@dataclass(frozen=True)
class TaskCounters:
    """One task's message totals at one sample."""

    host: str
    sent: int
    received: int


def task_counters(msg_stats: Any, host: Any) -> TaskCounters | None:
    """A task's totals from its published `msg_stats` (peer -> counters); None if it is not that
    shape (the record is the task's own, so it is read defensively)."""
    if not isinstance(msg_stats, Mapping) or not isinstance(host, str):
        return None
    sent = received = 0
    for counters in msg_stats.values():
        if isinstance(counters, Mapping):
            s, r = counters.get("sent"), counters.get("received")
            sent += s if type(s) is int and s > 0 else 0
            received += r if type(r) is int and r > 0 else 0
    return TaskCounters(host, sent, received)


class TrafficHistory:
    """Samples of every task's counters, reduced to per-host rates between consecutive samples."""

    def __init__(self, max_samples: int = DEFAULT_SAMPLES) -> None:
        if max_samples < 2:
            raise ValueError("a traffic history needs at least two samples to give a rate")
        self.points: deque[tuple[float, dict[str, float]]] = deque(maxlen=max_samples - 1)
        self._last: tuple[float, dict[str, TaskCounters]] | None = None

    def add(self, at: float, tasks: Mapping[str, TaskCounters]) -> None:
        """Record the counters of `tasks` (task URN -> counters) taken at time `at` (seconds)."""
        if self._last is not None:
            before_at, before = self._last
            dt = at - before_at
            if dt <= 0:
                return                              # a clock step or a repeated sample: no interval
            rates: dict[str, float] = {}
            for urn, now in tasks.items():
                rates.setdefault(now.host, 0.0)
                prev = before.get(urn)
                if prev is None:
                    continue
                moved = max(0, now.sent - prev.sent) + max(0, now.received - prev.received)
                rates[now.host] += moved / dt
            self.points.append((at, rates))
        self._last = (at, dict(tasks))

    def series(self) -> dict[str, Any]:
        """{"t": [sample times], "hosts": {host: [messages/s, one per time]}}: every host seen in
        the window, 0 where it had no task counted in an interval."""
        hosts = sorted({h for _, rates in self.points for h in rates})
        return {"t": [round(t, 3) for t, _ in self.points],
                "hosts": {h: [round(rates.get(h, 0.0), 1) for _, rates in self.points] for h in hosts}}
