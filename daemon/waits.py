"""The daemon's pending `wait` requests: who waits on which task, until when, within bounds.

A `wait` is answered when its task ends or its deadline passes, whichever is first, and, if it
asked for renew (it will ask again: snipe's Process.wait does), else when its hold ends
(`hold_s`, WAIT_HOLD_S by default): then with renew. A wait that did not ask (an older client,
which takes any answer before its task ends as its timeout) is held to its deadline.

What a client may make the daemon hold is bounded: a timeout of at most MAX_WAIT_S (a longer
one is refused, naming the cap), at most MAX_WAITS_PER_CLIENT pending waits per client
connection and MAX_WAITS in all; a wait past a bound is refused with QuotaExceeded and what was
pending stays.

A client that left quietly (killed, its host gone, its call interrupted) must not keep its slots
until their deadlines (up to an hour). A ROUTER says nothing of a peer that left: it can only
be learnt by sending to it, and a client still connected may have stopped waiting anyway. So
the hold is a lease the client renews by asking again: one request per hold per waiting client,
and a gone client's renewable waits go within a hold, however it left (an older client's stay to
their timeouts). A client found gone (a reply to it could not be routed) loses its other waits
at once.

Invariants: every waiter is in `by_client` under its client exactly once; `len(self)` is their
number; a waiter's `hold_ends` is at most its `deadline`, and at most `hold_s` after it was
added if it asked for renew; nothing here reads a clock (the daemon passes `now`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from snipe.daemonclient import MAX_WAIT_S, WAIT_HOLD_S
from snipe.errors import CodecError, QuotaExceeded
from snipe.wire import Envelope

MAX_WAITS_PER_CLIENT = 64        # pending waits one client connection (a ROUTER identity) may hold
MAX_WAITS = 4096                 # pending waits this daemon holds in all


@dataclass
class Waiter:
    client: bytes
    env: Envelope
    urn: str
    deadline: float           # its timeout: answered then at the latest
    hold_ends: float          # answered then (with renew, if before the deadline) unless its task ended

    def renew(self, now: float) -> bool:
        """Whether an answer now is the hold's end, not the timeout: the client asks again."""
        return now < self.deadline


class Waits:
    def __init__(self, per_client: int = MAX_WAITS_PER_CLIENT, total: int = MAX_WAITS,
                 hold_s: float = WAIT_HOLD_S) -> None:
        self.per_client, self.total, self.hold_s = per_client, total, hold_s
        self.by_client: dict[bytes, list[Waiter]] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, client: bytes, env: Envelope, urn: str, timeout: float, now: float, *, renew: bool = False) -> Waiter:
        """Hold a wait on `urn` for `timeout` s (already checked finite and >= 0 by the caller);
        with `renew` (the client asks again), `hold_s` at most."""
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
        w = Waiter(client, env, urn, now + timeout, now + (min(timeout, self.hold_s) if renew else timeout))
        self.by_client.setdefault(client, []).append(w)
        self.count += 1
        return w

    def due(self, now: float, ended: Callable[[str], bool]) -> list[Waiter]:
        """Take out and return the waiters to answer now: their task `ended`, or their hold (and
        so perhaps their deadline) passed."""
        out: list[Waiter] = []
        for client, waiters in list(self.by_client.items()):
            keep: list[Waiter] = []
            for w in waiters:
                (out if now >= w.hold_ends or ended(w.urn) else keep).append(w)
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
