"""Client puts that a replica answers only once enough peers hold their records too. No I/O.

A client may send a W>1 put to one replica alone, asking it to relay ("relay": W-1 in the put).
That replica stores the records, pushes them to every peer in its next flush with an ack asked
for (rcds/replication.py), and holds the answer here until W-1 peers confirmed that flush, or
until the client's `wait` runs out: then it answers with what it has, and the client writes to
the others itself. Either way the answer names every replica that holds the records.

One message each way for the client instead of W, and the peers' share arrives batched with
other clients' writes: on a small machine the cost of a put is mostly the cost of its messages.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from snipe.effects import StartTimer
from snipe.wire import Envelope

TIMER = "put-wait"


@dataclass(slots=True)
class WaitingPut:
    reply_to: bytes
    request: Envelope
    results: list[list[Any]]      # this replica's own results, one per record, as the put's reply carries them
    needed: int                   # peers that must confirm
    deadline: float
    turn: int = 1                 # how many client puts the replica stored in the turn of this one
    confirmed_by: list[str] = field(default_factory=list)


class PutWaits:
    """Invariant: a waiting put is answered exactly once, by `on_confirmed` when its `needed`-th
    peer confirms or by `on_timer` once its deadline has passed, whichever comes first."""

    def __init__(self) -> None:
        self._by_flush: dict[int, list[WaitingPut]] = {}
        self._timer_at: float | None = None

    def __len__(self) -> int:
        return sum(len(w) for w in self._by_flush.values())

    def wait(self, flush: int, put: WaitingPut) -> list[StartTimer]:
        self._by_flush.setdefault(flush, []).append(put)
        if self._timer_at is None or put.deadline < self._timer_at:
            self._timer_at = put.deadline
            return [StartTimer(TIMER, put.deadline)]
        return []

    def on_confirmed(self, peer: str, flush: int) -> list[WaitingPut]:
        """`peer` holds every record of `flush`: the puts it completes, to be answered now."""
        waiting = self._by_flush.get(flush)
        if not waiting:
            return []
        done: list[WaitingPut] = []
        for put in waiting:
            if peer not in put.confirmed_by:
                put.confirmed_by.append(peer)
            if len(put.confirmed_by) >= put.needed:
                done.append(put)
        if done:
            keep = [p for p in waiting if len(p.confirmed_by) < p.needed]
            if keep:
                self._by_flush[flush] = keep
            else:
                del self._by_flush[flush]
        return done

    def on_timer(self, now: float) -> tuple[list[WaitingPut], list[StartTimer]]:
        """The puts whose wait ran out (to be answered with the confirmations they have), and
        the timer for the next deadline."""
        expired: list[WaitingPut] = []
        soonest: float | None = None
        for flush in list(self._by_flush):
            keep = []
            for put in self._by_flush[flush]:
                if put.deadline <= now:
                    expired.append(put)
                else:
                    keep.append(put)
                    soonest = put.deadline if soonest is None else min(soonest, put.deadline)
            if keep:
                self._by_flush[flush] = keep
            else:
                del self._by_flush[flush]
        self._timer_at = soonest
        return expired, ([StartTimer(TIMER, soonest)] if soonest is not None else [])
