"""Message traffic over time, per host, from the counters tasks publish (no I/O).

Each task publishes its messaging counters on its own URN (`msg_stats`: per peer, messages sent
and received), every few seconds while they change (snipe/messaging/endpoint.py STATS_EVERY_S).
A task's rate is the change between two of its publications over the time between them, by the
records' own timestamps: sampling the counters at the page's rhythm instead would alias the two
rhythms into spikes and zeros. `TrafficHistory` takes a sample of every task's latest
publication now and then, and records per host the sum of its tasks' current rates:
- a task seen for the first time has no rate yet (what it sent before is not this moment's);
- one whose counters went down (it restarted) starts again from that publication;
- one with no new publication for `quiet_s` by the console's own clock (it went idle, so it
  stopped publishing; the writer's clock may be skewed) counts 0, and one that is gone (it
  ended, its lease ran out) is forgotten.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

DEFAULT_SAMPLES = 360          # at the web page's 5 s, half an hour
DEFAULT_QUIET_S = 12.0         # a task publishing every 5 s while busy has gone idle after this


@dataclass(frozen=True)
class TaskCounters:
    """One task's message totals as of one publication (`at_ms`, wall-clock milliseconds)."""

    host: str
    sent: int
    received: int
    at_ms: int


def task_counters(msg_stats: Any, host: Any, at_ms: int) -> TaskCounters | None:
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
    return TaskCounters(host, sent, received, at_ms)


@dataclass
class _Task:
    last: TaskCounters
    seen_at: float                      # when (the sampler's clock) `last` was first seen
    rate: float | None = None           # messages/s between its last two publications


class TrafficHistory:
    """Per-host message rates at each sample, over a bounded window."""

    def __init__(self, max_samples: int = DEFAULT_SAMPLES, quiet_s: float = DEFAULT_QUIET_S) -> None:
        if max_samples < 1:
            raise ValueError("a traffic history keeps at least one sample")
        self.points: deque[tuple[float, dict[str, float]]] = deque(maxlen=max_samples)
        self.quiet_s = quiet_s
        self._tasks: dict[str, _Task] = {}

    def add(self, at: float, tasks: Mapping[str, TaskCounters]) -> None:
        """A sample at `at` (wall-clock seconds) of every task's latest publication, by task URN."""
        for urn in [u for u in self._tasks if u not in tasks]:
            del self._tasks[urn]
        rates: dict[str, float] = {}
        for urn, now in tasks.items():
            known = self._tasks.get(urn)
            if known is None:
                known = self._tasks[urn] = _Task(now, at)
            elif now.at_ms > known.last.at_ms:
                prev = known.last
                went_down = now.sent < prev.sent or now.received < prev.received
                moved = (now.sent - prev.sent) + (now.received - prev.received)
                known.rate = None if went_down else moved * 1000.0 / (now.at_ms - prev.at_ms)
                known.last, known.seen_at = now, at
            quiet = at - known.seen_at > self.quiet_s
            rates[now.host] = rates.get(now.host, 0.0) + (0.0 if quiet else known.rate or 0.0)
        self.points.append((at, rates))

    def series(self) -> dict[str, Any]:
        """{"t": [sample times], "hosts": {host: [messages/s, one per time]}}: every host seen in
        the window, 0 where it had no task counted at a sample."""
        hosts = sorted({h for _, rates in self.points for h in rates})
        return {"t": [round(t, 3) for t, _ in self.points],
                "hosts": {h: [round(rates.get(h, 0.0), 1) for _, rates in self.points] for h in hosts}}
