"""Reliable, ordered, exactly-once delivery between two endpoints, as a core with no I/O.

`Outbound` (one per destination) numbers messages, keeps them until acknowledged, retransmits
on timeout and reports a delivery failure once a message outlives its deadline. `Inbound` (one
per source) delivers in sequence order exactly once, holds early arrivals, drops duplicates,
and acknowledges cumulatively. Both speak `msg/1`:

  data  {s: session, b: base, q: first seq, t: [tags]}  frames: one payload per message
  ack   {s: session, c: highest seq delivered in order}

A session is one incarnation of a sender's channel (a random 64-bit id). `base`, the lowest seq
the sender still holds, lets a receiver that has never heard of a session (it restarted, or the
sender reset after a failure) start at the right place instead of waiting for seq 1 forever.

Invariants:
- Inbound delivers seq n of a session only after n-1 (or at the sender's base, below which
  everything was acknowledged), and each seq at most once, also when late packets of a session
  it left arrive (it remembers where the last `REMEMBERED_SESSIONS` sessions stopped).
- Outbound never forgets a message before it is acknowledged or reported failed; after a
  failure it fails everything queued behind it (FIFO cannot skip a message) and starts a new
  session, so later sends are not held hostage.
- Memory is bounded: at most `window` messages in flight and `hwm` messages held per channel;
  `Outbound.room()` tells the shell when to block a sender (back-pressure).
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from snipe.effects import Send
from snipe.errors import CodecError
from snipe.wire import Envelope, field_of

PROTOCOL = "msg"
VERSION = 1

INITIAL_RTO = 0.2
MIN_RTO = 0.02
MAX_RTO = 5.0
REMEMBERED_SESSIONS = 16      # per Inbound: where each recently left session stopped


@dataclass(frozen=True, slots=True)
class Deliver:
    source: str
    tag: int
    payload: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class DeliveryFailed:
    to: str
    seq: int
    tag: int
    reason: str


@dataclass(slots=True)
class _Held:
    seq: int
    tag: int
    payload: bytes
    deadline: float
    sent_at: float = -1.0
    attempts: int = 0


class Outbound:
    def __init__(self, me: str, to: str, *, window: int = 4096, hwm: int = 65536, max_batch: int = 256,
                 rng: random.Random | None = None) -> None:
        self.me, self.to = me, to
        self.window, self.hwm, self.max_batch = window, hwm, max_batch
        self.rng = rng or random.Random()
        self.session = self.rng.getrandbits(63)
        self.next_seq = 1
        self.flight: deque[_Held] = deque()      # sent, not yet acknowledged, in seq order
        self.queue: deque[_Held] = deque()       # accepted, not yet sent (window full)
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = INITIAL_RTO
        self.sent = self.retransmitted = self.acked = 0

    def room(self) -> int:
        return self.hwm - len(self.flight) - len(self.queue)

    def held(self) -> int:
        return len(self.flight) + len(self.queue)

    def submit(self, tag: int, payload: bytes, now: float, deadline: float) -> None:
        """Accept a message (call `room()` first: the shell blocks the sender when it is 0)."""
        self.queue.append(_Held(self.next_seq, tag, payload, deadline))
        self.next_seq += 1

    def flush(self, now: float) -> list[Send]:
        """Send what the window allows, batched."""
        out: list[Send] = []
        while self.queue and len(self.flight) < self.window:
            n = min(self.max_batch, self.window - len(self.flight), len(self.queue))
            batch = [self.queue.popleft() for _ in range(n)]
            for h in batch:
                h.sent_at, h.attempts = now, 1
            self.flight.extend(batch)
            self.sent += n
            out.append(self._data(batch))
        return out

    def _data(self, batch: Sequence[_Held]) -> Send:
        base = self.flight[0].seq if self.flight else batch[0].seq
        env = Envelope(PROTOCOL, VERSION, "data", 0,
                       {"s": self.session, "b": base, "q": batch[0].seq, "t": [h.tag for h in batch]})
        return Send(self.to, env, tuple(h.payload for h in batch))

    def on_ack(self, session: int, cum: int, now: float) -> list[Send]:
        if session != self.session:
            return []                                   # an ack for a session we abandoned
        newest: _Held | None = None
        while self.flight and self.flight[0].seq <= cum:
            newest = self.flight.popleft()
            self.acked += 1
        if newest is not None and newest.attempts == 1:  # Karn: time only unambiguous samples
            self._sample(now - newest.sent_at)
        return self.flush(now)

    def _sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(MIN_RTO, self.srtt + 4 * self.rttvar))

    def on_timer(self, now: float) -> tuple[list[Send], list[DeliveryFailed]]:
        """Retransmit what timed out (go-back from the oldest unacknowledged); fail what is
        past its deadline, with everything behind it."""
        expired = next((h for h in (*self.flight, *self.queue) if h.deadline <= now), None)
        if expired is not None:
            return [], self.fail_all(f"not acknowledged by {self.to} before its deadline")
        if not self.flight or self.flight[0].sent_at + self.rto * (2 ** (self.flight[0].attempts - 1)) > now:
            return [], []
        out: list[Send] = []
        batch: list[_Held] = []
        for h in self.flight:
            h.sent_at = now
            h.attempts += 1
            batch.append(h)
            if len(batch) == self.max_batch:
                out.append(self._data(batch))
                batch = []
        if batch:
            out.append(self._data(batch))
        self.retransmitted += len(self.flight)
        return out, []

    def next_deadline(self) -> float | None:
        """When on_timer next has something to do."""
        times = []
        if self.flight:
            h = self.flight[0]
            times.append(h.sent_at + self.rto * (2 ** (h.attempts - 1)))
        times.extend(h.deadline for h in (*self.flight, *self.queue) if h.deadline != float("inf"))
        return min(times) if times else None

    def fail_all(self, reason: str) -> list[DeliveryFailed]:
        failed = [DeliveryFailed(self.to, h.seq, h.tag, reason) for h in (*self.flight, *self.queue)]
        self.flight.clear()
        self.queue.clear()
        self.session = self.rng.getrandbits(63)
        self.next_seq = 1
        return failed

    def take_unacknowledged(self) -> list[tuple[int, bytes]]:
        """(tag, payload) of everything not yet acknowledged, in order (for migration)."""
        return [(h.tag, h.payload) for h in (*self.flight, *self.queue)]


class Inbound:
    def __init__(self, me: str, source: str, *, window: int = 4096) -> None:
        self.me, self.source = me, source
        self.window = window
        self.session: int | None = None
        self.expected = 1
        self.early: dict[int, tuple[int, bytes]] = {}
        self.left: dict[int, int] = {}           # sessions switched away from -> their next seq, oldest first
        self.delivered = self.duplicates = 0

    def on_data(self, session: int, base: int, first: int, tags: Sequence[int], payloads: Sequence[bytes]
                ) -> tuple[list[Deliver], Send]:
        if session != self.session:
            # Another session: the sender restarted its channel, or this is a late packet of one
            # we left. Resume a session we left where we stopped (never deliver a seq twice); start
            # a new one where the sender says it still holds messages.
            if self.session is not None:
                self.left[self.session] = self.expected
                while len(self.left) > REMEMBERED_SESSIONS:
                    del self.left[next(iter(self.left))]
            self.session, self.expected, self.early = session, self.left.pop(session, base), {}
        if base > self.expected:
            # The sender holds nothing below base: it was acknowledged (to an earlier incarnation
            # of this receiver whose first packet carried a stale base); waiting for it would stall.
            self.expected = base
            self.early = {q: m for q, m in self.early.items() if q >= base}
        out: list[Deliver] = []
        for i, (tag, payload) in enumerate(zip(tags, payloads, strict=True)):
            seq = first + i
            if seq < self.expected or seq in self.early:
                self.duplicates += 1
            elif seq == self.expected:
                out.append(Deliver(self.source, tag, payload, seq))
                self.expected += 1
            elif seq < self.expected + self.window:
                self.early[seq] = (tag, payload)
        while self.expected in self.early:
            tag, payload = self.early.pop(self.expected)
            out.append(Deliver(self.source, tag, payload, self.expected))
            self.expected += 1
        self.delivered += len(out)
        ack = Send(self.source, Envelope(PROTOCOL, VERSION, "ack", 0, {"s": session, "c": self.expected - 1}))
        return out, ack


def parse_data(env: Envelope, frames: Sequence[bytes]) -> tuple[int, int, int, list[int]]:
    """(session, base, first seq, tags) of a data message; CodecError if malformed."""
    session, base, first = field_of(env, "s", int), field_of(env, "b", int), field_of(env, "q", int)
    tags = field_of(env, "t", list)
    if len(tags) != len(frames) or not all(type(t) is int for t in tags):
        raise CodecError(f"msg/1 data carries {len(frames)} payloads but {len(tags)} tags")
    if not (0 <= session < 2**63 and 1 <= base <= first < 2**62):
        raise CodecError("msg/1 data: session, base and seq out of range (need 1 <= base <= seq)")
    return session, base, first, tags


def parse_ack(env: Envelope) -> tuple[int, int]:
    session, cum = field_of(env, "s", int), field_of(env, "c", int)
    if not (0 <= session < 2**63 and 0 <= cum < 2**62):
        raise CodecError("msg/1 ack: session or cumulative seq out of range")
    return session, cum
