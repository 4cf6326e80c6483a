"""The daemon's pending `wait` requests: who waits on which task, until when, within bounds.

A `wait` is answered when its task ends or its deadline passes, whichever is first. What a
client may make the daemon hold is bounded: a timeout of at most MAX_WAIT_S (a longer one is
refused, naming the cap: snipe's Process.wait asks again for what is left), at most
MAX_WAITS_PER_CLIENT pending waits per client connection and MAX_WAITS in all; a wait past a
bound is refused with QuotaExceeded and what was pending stays. A client found gone (a reply to
it could not be routed) loses its other waits at once; a ROUTER says nothing of a peer that
left quietly, so those waits end at their deadlines.

Invariants: every waiter is in `by_client` under its client exactly once; `len(self)` is their
number; nothing here reads a clock (the daemon passes `now`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from snipe.daemonclient import MAX_WAIT_S
from snipe.errors import CodecError, QuotaExceeded
from snipe.wire import Envelope

MAX_WAITS_PER_CLIENT = 64        # pending waits one client connection (a ROUTER identity) may hold
MAX_WAITS = 4096                 # pending waits this daemon holds in all


@dataclass
class Waiter:
    client: bytes
    env: Envelope
    urn: str
    deadline: float


class Waits:
    def __init__(self, per_client: int = MAX_WAITS_PER_CLIENT, total: int = MAX_WAITS) -> None:
        self.per_client, self.total = per_client, total
        self.by_client: dict[bytes, list[Waiter]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, client: bytes, env: Envelope, urn: str, timeout: float, now: float) -> Waiter:
        """Hold a wait on `urn` for `timeout` s (already checked finite and >= 0 by the caller)."""
        if not timeout <= MAX_WAIT_S:       # (NaN too)
            raise CodecError(f"wait: timeout {timeout:g} s is over the cap of {MAX_WAIT_S:g} s; wait at most that "
                             "long and ask again if the task still runs (snipe's Process.wait does)")
        mine = self.by_client.get(client, [])
        if len(mine) >= self.per_client:
            raise QuotaExceeded(f"wait on {urn}: this connection already has {len(mine)} waits pending, the most "
                                f"one connection may ({self.per_client}); wait on fewer tasks at once, or poll status")
        if self.count >= self.total:
            raise QuotaExceeded(f"wait on {urn}: this daemon already holds {self.count} pending waits, the most it "
                                f"takes ({self.total}); try again later, or poll status")
        w = Waiter(client, env, urn, now + timeout)
        self.by_client.setdefault(client, []).append(w)
        self.count += 1
        return w

    def due(self, now: float, ended: Callable[[str], bool]) -> list[Waiter]:
        """Take out and return the waiters to answer now: their task `ended`, or their deadline passed."""
        out: list[Waiter] = []
        for client, waiters in list(self.by_client.items()):
            keep: list[Waiter] = []
            for w in waiters:
                (out if now >= w.deadline or ended(w.urn) else keep).append(w)
            if len(keep) != len(waiters):
                if keep:
                    self.by_client[client] = keep
                else:
                    del self.by_client[client]
        self.count -= len(out)
        return out

    def drop_client(self, client: bytes) -> int:
        """Forget a gone client's waits; how many there were."""
        gone = self.by_client.pop(client, [])
        self.count -= len(gone)
        return len(gone)
