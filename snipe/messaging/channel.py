"""Reliable, ordered, exactly-once delivery between two endpoints, as a core with no I/O.

`Outbound` (one per destination) numbers messages, keeps them until acknowledged, retransmits
on timeout and reports a delivery failure once a message outlives its deadline. `Inbound` (one
per source) delivers in sequence order exactly once, holds early arrivals, drops duplicates,
and acknowledges cumulatively. Both speak `msg/1`:

  data  {s: session, b: base, q: first seq, t: [tags]}  frames: one payload per message
        {s, b, q, t, z: [payload sizes]}  frames: one, the payloads concatenated ("packed")
  ack   {s: session, c: highest seq delivered in order}
        {s, c, w: 0}  the same, and "busy": the receiver's application is behind and its shell
                      has stopped reading; do not resend for BUSY_HOLD s (it says so again
                      while busy, and acknowledges normally once it reads again)

The cores speak in one frame per payload; a shell may pack a batch of small payloads into one
frame on the wire (`pack_frames`, what the endpoint does when every payload is at most
`PACK_MAX` bytes: one ZeroMQ part and one CurveZMQ box per batch instead of one per message) and
must accept both forms (`unpack_frames`, before `parse_data`).

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
- Retention (for receivers that can be restarted from a checkpoint, `retain` > 0): an
  acknowledged message is kept, up to `retain` messages / `retain_bytes` bytes, until the
  receiver says it checkpointed it (`on_checkpointed`); a restored receiver says where its
  checkpoint stands (`on_resume`) and gets what was retained after that again, and a delivery
  failure for each message that fell out of retention (never silence). A restored Inbound is
  `pinned`: it does not skip ahead to a sender's base until the sender's data says it heard the
  resume (sent for the rest of the session after `on_resume`): "r": 1, as before restores had
  ids, and "ri": the id of the restore it answers, which a RESUME names in "n" (so the answer to
  one restore does not unpin the next one). A receiver unpins on a matching "ri", or on "r": 1
  without "ri" (a sender that predates restore ids, or one answering a RESUME that named none).
  The pin is kept per session: switching to another session and back keeps it, and the sessions
  a checkpoint had left come back pinned too (their RESUMEs: snapshot.py).
- A restored receiver's checkpoint knows nothing of a session that began after it. An Inbound
  of a restored receiver (`restore` set) that meets a session it never heard of with a base
  above 1 (the messages below were acknowledged, by an incarnation that was lost) pins it at
  seq 1 and wants the sender to resume it after 0 (`take_resume_wanted`: the shell sends the
  RESUME; a newer ask replaces one not taken yet, and `ResumeAsks` keeps at most one RESUME
  per source outstanding). A sender that holds retained messages tells a new incarnation of it
  where it stands with a `probe` (data without messages), which brings that answer; the probe is
  owed (`probes`, sent again on each look at the receiver's entry) until an acknowledgement of
  the session comes.
- Memory is bounded: at most `window` messages (and about `window_bytes` bytes) in flight and
  `hwm` messages held per channel; `Outbound.room()` tells the shell when to block a sender
  (back-pressure). A batch holds at most `max_batch` messages and, unless it is one message,
  `max_batch_bytes` bytes, so big messages are acknowledged (and timed) one by one.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from snipe.effects import Send
from snipe.errors import CodecError
from snipe.wire import Envelope, field_of

PROTOCOL = "msg"
VERSION = 1

INITIAL_RTO = 0.2
MIN_RTO = 0.02
MAX_RTO = 5.0
BUSY_HOLD = 1.0               # after a busy ack: no retransmission for this long
PACK_MAX = 16 * 1024          # payloads up to this size may travel packed, a batch in one frame
REMEMBERED_SESSIONS = 16     # per Inbound: where each recently left session stopped
INF = float("inf")
# Data that answers a resume says "r": 1 (the meaning it had before restores had ids) and names the
# restore it answers in "ri" (ids are >= 2). As Inbound.on_data's `resumed`, RESUMED_ANY stands for
# "r": 1 without "ri": it answers a resume, not saying which.
RESUMED_ANY = 1


@dataclass(slots=True)          # not frozen: a frozen dataclass costs 3-4x as much to make, once a message
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


@dataclass(frozen=True, slots=True)
class ResumeWanted:
    """A restored receiver asks `source` to resume `session` after `cum` (which it holds): the
    shell sends it a RESUME (snapshot.py), answered by `Outbound.on_resume`."""
    source: str
    session: int
    cum: int


class ResumeAsks:
    """The RESUMEs a restored receiver sends its sources for `ResumeWanted` (the shell's own:
    snapshot.py). Invariant: at most one per source is outstanding, i.e. sent on our channel to
    it and neither acknowledged nor failed (that channel, `out`, is still in the session it went
    out in and holds its seq unacknowledged). A newer ask waits meanwhile, in the place of any
    that waited, and goes once the outstanding one settles (`due`). So a source that sends data
    in ever new sessions brings one RESUME per round trip at most (one per its deadline if it
    never acknowledges), not one per session."""

    def __init__(self) -> None:
        self.outstanding: dict[str, tuple[int, int]] = {}   # source -> (our session, seq) of its ask
        self.owed: dict[str, ResumeWanted] = {}             # source -> the ask waiting for that one

    def want(self, w: ResumeWanted, out: Outbound) -> bool:
        """Whether to send `w` now, on `out` (then say `sent`); else it waits."""
        if self._pending(w.source, out):
            self.owed[w.source] = w
            return False
        self.owed.pop(w.source, None)
        return True

    def sent(self, source: str, out: Outbound, seq: int) -> None:
        """The ask to `source` went out as message `seq` of `out`'s session."""
        self.outstanding[source] = (out.session, seq)

    def due(self, source: str, out: Outbound) -> ResumeWanted | None:
        """The ask that waited for `source`, once the outstanding one settled (send it now)."""
        if source not in self.owed or self._pending(source, out):
            return None
        return self.owed.pop(source)

    def _pending(self, source: str, out: Outbound) -> bool:
        at = self.outstanding.get(source)
        if at is None:
            return False
        session, seq = at
        low = out.flight[0].seq if out.flight else out.queue[0].seq if out.queue else out.next_seq
        if session == out.session and seq >= low:
            return True
        del self.outstanding[source]
        return False


@dataclass(slots=True)
class _Held:
    seq: int
    tag: int
    payload: bytes
    deadline: float
    size: int = 0
    sent_at: float = -1.0
    attempts: int = 0


class Outbound:
    def __init__(self, me: str, to: str, *, window: int = 4096, hwm: int = 65536, max_batch: int = 256,
                 window_bytes: int = 8 << 20, max_batch_bytes: int = 1 << 20, min_rto: float = MIN_RTO,
                 rng: random.Random | None = None) -> None:
        self.me, self.to = me, to
        self.window, self.hwm, self.max_batch = window, hwm, max_batch
        self.window_bytes, self.max_batch_bytes = window_bytes, max_batch_bytes
        self.rng = rng or random.Random()
        self.session = self.rng.getrandbits(63)
        self.next_seq = 1
        self.flight: deque[_Held] = deque()      # sent, not yet acknowledged, in seq order
        self.queue: deque[_Held] = deque()       # accepted, not yet sent (window full)
        self.flight_bytes = 0
        # (deadline, seq) of held messages with finite deadlines, deadlines increasing: the first
        # is the earliest deadline of all held messages (a sliding-window minimum, O(1) a message).
        # An entry [deadline, seq] stands for the held messages up to seq with that deadline (the
        # shell gives a burst of messages one deadline, so a burst costs one entry).
        self.deadlines: deque[list[Any]] = deque()
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rto = min_rto
        self.rto = max(INITIAL_RTO, min_rto)
        self.progress_at = 0.0                   # when an ack last acknowledged something new
        self.timeouts = 0                        # retransmission timeouts since then (the backoff)
        self.busy_until = 0.0                    # the receiver said it is busy: no retransmission before
        self.sent = self.retransmitted = self.acked = 0
        self.sent_bytes = 0                      # payload bytes of `sent` (first transmissions)
        self.retain = 0                          # acknowledged messages kept for a restartable receiver
        self.retain_bytes = 16 << 20
        self.retained: deque[_Held] = deque()    # acknowledged, not yet checkpointed by the receiver
        self.retained_size = 0
        self.acked_upto = 0                      # highest seq acknowledged in this session
        # This session was resumed for a restored receiver (data says "r": 1): that restore's id
        # (data says "ri"), RESUMED_ANY if its RESUME named none, 0 if none.
        self.resumed = 0
        self.probe_owed: str | None = None       # the receiver's incarnation owed a probe (`probes`)
        self.strict = False                      # retained messages are unsettled until checkpointed

    def room(self) -> int:
        return self.hwm - len(self.flight) - len(self.queue) - self.retained_unsettled()

    def retained_unsettled(self) -> int:
        """Retained messages that still count against the hwm: all of them for a `strict` receiver
        (a replicated task in standby mode: a message is settled only once a checkpoint holds it,
        so none is ever dropped from retention), none otherwise. Past `retain_bytes` a strict
        receiver's retention counts as the whole hwm: the sender waits for the next checkpoint
        rather than hold an unbounded number of bytes (or drop what it promised to keep)."""
        if not self.strict:
            return 0
        if self.retained_size >= self.retain_bytes:
            return max(len(self.retained), self.hwm)
        return len(self.retained)

    def held(self) -> int:
        return len(self.flight) + len(self.queue)

    def submit(self, tag: int, payload: bytes, now: float, deadline: float) -> None:
        """Accept a message (call `room()` first: the shell blocks the sender when it is 0)."""
        seq = self.next_seq
        self.queue.append(_Held(seq, tag, payload, deadline, len(payload)))
        self.next_seq = seq + 1
        if deadline < INF:
            self._note_deadline(seq, deadline)

    def submit_many(self, messages: Sequence[tuple[int, bytes]], now: float, deadline: float) -> None:
        """`submit` each (tag, payload) of a burst with one deadline, in order: what a shell
        takes from its queue at once (one deadline entry for the burst, a message costs its
        `_Held` and little else)."""
        seq = self.next_seq
        self.queue.extend([_Held(q, tag, payload, deadline, len(payload))
                           for q, (tag, payload) in enumerate(messages, seq)])
        self.next_seq = seq + len(messages)
        if deadline < INF and messages:
            self._note_deadline(self.next_seq - 1, deadline)

    def _note_deadline(self, seq: int, deadline: float) -> None:
        d = self.deadlines
        if d and d[-1][0] == deadline:
            d[-1][1] = seq
        else:
            while d and d[-1][0] > deadline:
                d.pop()
            d.append([deadline, seq])

    def send_one(self, tag: int, payload: bytes, now: float, deadline: float) -> dict[str, Any] | None:
        """`submit` then `flush` for the usual lone message, in one step: when nothing waits in
        the queue and the window has room, the message goes straight into flight and the body of
        its data envelope is returned (what `flush` would send for it alone); otherwise it is
        queued as `submit` does (the window is full: nothing to send now) and None is returned."""
        flight = self.flight
        if self.queue or len(flight) >= self.window or (flight and self.flight_bytes >= self.window_bytes):
            self.submit(tag, payload, now, deadline)
            return None
        seq = self.next_seq
        self.next_seq = seq + 1
        size = len(payload)
        flight.append(_Held(seq, tag, payload, deadline, size, now, 1))
        if deadline < INF:
            d = self.deadlines
            if d and d[-1][0] >= deadline:
                self._note_deadline(seq, deadline)
            else:                                # (the usual: later than every held one, _note_deadline's append)
                d.append([deadline, seq])
        self.flight_bytes += size
        self.sent_bytes += size
        self.sent += 1
        body = {"s": self.session, "b": flight[0].seq, "q": seq, "t": [tag]}
        if self.resumed:
            self._mark_resumed(body)
        return body

    def flush(self, now: float) -> list[Send]:
        """Send what the window allows, batched."""
        out: list[Send] = []
        queue, flight = self.queue, self.flight
        while queue and len(flight) < self.window and (not flight or self.flight_bytes < self.window_bytes):
            n = min(self.max_batch, self.window - len(flight), len(queue))
            batch: list[_Held] = []
            size = 0
            popleft, append, limit = queue.popleft, batch.append, self.max_batch_bytes
            for _ in range(n):
                h = queue[0]
                if batch and size + h.size > limit:
                    break
                popleft()
                h.sent_at = now
                h.attempts = 1
                size += h.size
                append(h)
            flight.extend(batch)
            self.flight_bytes += size
            self.sent_bytes += size
            self.sent += len(batch)
            out.append(self._data(batch))
        return out

    def _data(self, batch: Sequence[_Held]) -> Send:
        base = self.flight[0].seq if self.flight else batch[0].seq
        body = {"s": self.session, "b": base, "q": batch[0].seq, "t": [h.tag for h in batch]}
        if self.resumed:
            self._mark_resumed(body)
        env = Envelope(PROTOCOL, VERSION, "data", 0, body)
        return Send(self.to, env, tuple([h.payload for h in batch]))

    def probe(self) -> Send:
        """Data with no message in it: this session and its base, for a receiver that may have been
        restored since it acknowledged what we retain. One that never heard of the session answers
        with a RESUME (Inbound, `restore`); any other acknowledges and delivers nothing."""
        base = self.flight[0].seq if self.flight else self.queue[0].seq if self.queue else self.next_seq
        body: dict[str, Any] = {"s": self.session, "b": base, "q": base, "t": []}
        if self.resumed:
            self._mark_resumed(body)
        return Send(self.to, Envelope(PROTOCOL, VERSION, "data", 0, body), ())

    def _mark_resumed(self, body: dict[str, Any]) -> None:
        body["r"] = 1
        if self.resumed != RESUMED_ANY:
            body["ri"] = self.resumed

    def instance_changed(self, instance: str) -> None:
        """The receiver's catalog entry names another incarnation of it, `instance`: while we
        retain messages for it, a probe is owed to it (it may have been restored from a checkpoint
        that does not know this session, and we may have nothing else to send it)."""
        if self.retained:
            self.probe_owed = instance

    def probes(self) -> list[Send]:
        """The probe owed, if any (the shell calls this on each look at the receiver's entry):
        owed until an acknowledgement of this session comes (a lost probe goes again), or we
        retain nothing any more."""
        if self.probe_owed is None:
            return []
        if not self.retained:
            self.probe_owed = None
            return []
        return [self.probe()]

    def on_ack(self, session: int, cum: int, now: float, busy: bool = False) -> list[Send]:
        if session != self.session:
            return []                                   # an ack for a session we abandoned
        if self.probe_owed is not None:                 # it heard from us since its instance changed
            self.probe_owed = None
        if busy:                                        # alive, but not reading: waiting is not loss
            self.busy_until = now + BUSY_HOLD
        flight = self.flight
        if not flight or flight[0].seq > cum:
            return self.flush(now)
        popleft, keep = flight.popleft, self._keep if self.retain else None
        freed = count = 0
        while flight and flight[0].seq <= cum:
            newest = popleft()
            freed += newest.size
            count += 1
            if keep is not None:
                keep(newest)
        self.flight_bytes -= freed
        self.acked += count
        self.acked_upto = newest.seq
        self.progress_at = now                           # restart the retransmission timer (RFC 6298, 5.3)
        low = flight[0].seq if flight else self.queue[0].seq if self.queue else self.next_seq
        d = self.deadlines
        while d and d[0][1] < low:
            d.popleft()
        if newest.attempts == 1:                         # Karn: time only unambiguous samples
            self._sample(now - newest.sent_at)
            self.timeouts = 0
        # else the backed-off timer stays until such a sample (Karn, RFC 6298 5.5-5.7): reset on
        # every ack, an RTO taken from one early sample stayed too short, and each message under
        # jitter was sent again about four times (a property test found it: 13 resends for 8).
        return self.flush(now)

    def _sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = min(MAX_RTO, max(self.min_rto, self.srtt + 4 * self.rttvar))

    def on_timer(self, now: float) -> tuple[list[Send], list[DeliveryFailed]]:
        """Retransmit what timed out (go-back from the oldest unacknowledged); fail what is
        past its deadline, with everything behind it."""
        if self.deadlines and self.deadlines[0][0] <= now:
            return [], self.fail_all(f"not acknowledged by {self.to} before its deadline")
        retry = self._retry_at()
        if retry is None or retry > now:
            return [], []
        out = self._resend_flight(now)
        self.retransmitted += len(self.flight)
        self.timeouts += 1
        return out, []

    def next_deadline(self) -> float | None:
        """When on_timer next has something to do."""
        retry = self._retry_at()
        if not self.deadlines:
            return retry
        first = self.deadlines[0][0]
        return first if retry is None else min(retry, first)

    def _retry_at(self) -> float | None:
        """When the oldest unacknowledged message is retransmitted: an RTO after it was sent, or
        after the last ack that made progress, whichever is later (a long queue drained at the
        receiver's pace is not a loss); doubled per timeout since that progress, up to MAX_RTO (a
        receiver that paused for seconds inflates the RTO; unbounded doubling on top of that
        would wait past a message's deadline for a retransmission that was needed)."""
        if not self.flight:
            return None
        backoff = self.rto * (2 ** self.timeouts) if self.timeouts < 16 else MAX_RTO
        retry = max(self.flight[0].sent_at, self.progress_at) + max(self.rto, min(MAX_RTO, backoff))
        return max(retry, self.busy_until)

    def fail_all(self, reason: str) -> list[DeliveryFailed]:
        failed = [DeliveryFailed(self.to, h.seq, h.tag, reason) for h in (*self.flight, *self.queue)]
        self.flight.clear()
        self.queue.clear()
        self.deadlines.clear()
        self.flight_bytes = self.timeouts = 0
        self.busy_until = 0.0
        self.retained.clear()
        self.retained_size = self.acked_upto = 0
        self.resumed = 0
        self.probe_owed = None
        self.session = self.rng.getrandbits(63)
        self.next_seq = 1
        return failed

    def _keep(self, h: _Held) -> None:
        self.retained.append(h)
        self.retained_size += h.size
        if self.strict:
            return          # nothing leaves before a checkpoint holds it: retained_unsettled holds the sender back
        while len(self.retained) > self.retain or (self.retained_size > self.retain_bytes and len(self.retained) > 1):
            old = self.retained.popleft()
            self.retained_size -= old.size

    def on_checkpointed(self, session: int, cum: int) -> None:
        """The receiver's checkpoint holds everything up to `cum`: forget what was retained for it."""
        if session != self.session:
            return
        while self.retained and self.retained[0].seq <= cum:
            self.retained_size -= self.retained.popleft().size

    def on_resume(self, session: int, cum: int, now: float, restore: int = 0
                  ) -> tuple[list[Send], list[DeliveryFailed]]:
        """A receiver restored from a checkpoint (its restore's id: `restore`, the RESUME's "n";
        0 when it names none, as a receiver from before restore ids) holds everything up to
        `cum` of `session`.

        Returns (sends, failed): the retained messages after `cum` go out again (at the head of
        the flight, marked "r": 1 and "ri": `restore`, so the pinned receiver may skip to their
        base), and each acknowledged message after `cum` no longer retained is a delivery failure.
        Nothing for a session we no longer speak, nor a second time for one named restore (a
        RESUME that names none is answered each time: an old receiver restored twice within one
        session sends two that look alike)."""
        if session != self.session or cum >= self.next_seq or (restore > RESUMED_ANY and restore == self.resumed):
            return [], []
        again = [h for h in self.retained if h.seq > cum]
        first_again = again[0].seq if again else self.acked_upto + 1
        failed = [DeliveryFailed(self.to, q, 0, f"acknowledged by an incarnation of {self.to} that was lost before "
                                 "it checkpointed this message; it restarted from an earlier checkpoint")
                  for q in range(cum + 1, min(first_again, self.acked_upto + 1))]
        self.retained.clear()
        self.retained_size = 0
        self.resumed = restore if restore > RESUMED_ANY else RESUMED_ANY
        self.acked -= len(again)                 # unacknowledged again: counted when acknowledged again
        for h in reversed(again):
            h.attempts = 0
            self.flight.appendleft(h)
            self.flight_bytes += h.size
        if not self.flight:
            return [], failed
        return self._resend_flight(now), failed

    def _resend_flight(self, now: float) -> list[Send]:
        out: list[Send] = []
        batch: list[_Held] = []
        size = 0
        for h in self.flight:
            if batch and (len(batch) == self.max_batch or size + h.size > self.max_batch_bytes):
                out.append(self._data(batch))
                batch, size = [], 0
            h.sent_at = now
            h.attempts += 1
            batch.append(h)
            size += h.size
        if batch:
            out.append(self._data(batch))
        return out

    def take_unacknowledged(self) -> list[tuple[int, bytes]]:
        """(tag, payload) of everything not yet acknowledged, in order (for migration)."""
        return [(h.tag, h.payload) for h in (*self.flight, *self.queue)]

    # --- migration (snipe/migration): the channel moves to another process, same session ---------
    def export_state(self, now: float) -> dict[str, Any]:
        """What a clone needs to continue this channel where it stands: the session, the next
        seq, and every unacknowledged message with its seq, tag and time left to its deadline
        (payloads are returned separately by `held_payloads`, in the same order)."""
        held = [*self.flight, *self.queue]
        return {"session": self.session, "next_seq": self.next_seq, "retain": self.retain,
                "held": [[h.seq, h.tag, None if h.deadline == INF else max(0.0, h.deadline - now)] for h in held]}

    def held_payloads(self) -> list[bytes]:
        return [h.payload for h in (*self.flight, *self.queue)]

    def restore_state(self, state: dict[str, Any], payloads: Sequence[bytes], now: float) -> None:
        """Continue a channel exported by `export_state` (a fresh Outbound only). Everything
        held goes out again with its own seq in the same session: the receiver delivers what it
        had not yet and drops the rest as duplicates, so nothing is lost, doubled or reordered."""
        if self.flight or self.queue or self.next_seq != 1:
            raise ValueError("restore_state needs a fresh channel")
        held = state["held"]
        if len(held) != len(payloads):
            raise CodecError(f"a migrated channel holds {len(held)} messages but {len(payloads)} payloads came")
        self.session, self.next_seq = int(state["session"]), int(state["next_seq"])
        self.retain = int(state.get("retain", 0))
        self.acked_upto = int(held[0][0]) - 1 if held else self.next_seq - 1
        for (seq, tag, left), payload in zip(held, payloads, strict=True):
            deadline = INF if left is None else now + float(left)
            self.queue.append(_Held(int(seq), int(tag), payload, deadline, len(payload)))
            if deadline < INF:
                d = self.deadlines
                while d and d[-1][0] > deadline:
                    d.pop()
                d.append([deadline, int(seq)])

    def resend_all(self, now: float) -> list[Send]:
        """Send everything unacknowledged again at once (the receiver moved: a redirect)."""
        self.busy_until = 0.0
        self.timeouts = 0
        self.progress_at = now
        self.retransmitted += len(self.flight)
        return self._resend_flight(now) + self.flush(now)


class Inbound:
    def __init__(self, me: str, source: str, *, window: int = 4096, restore: int = 0) -> None:
        self.me, self.source = me, source
        self.window = window
        self.session: int | None = None
        self.expected = 1
        self.early: dict[int, tuple[int, bytes]] = {}
        self.left: dict[int, int] = {}           # sessions switched away from -> their next seq, oldest first
        self.delivered = self.duplicates = 0
        self.pinned = False     # restored from a checkpoint: no skipping to a base until the sender answers
        self.left_pinned: set[int] = set()      # the sessions in `left` that were pinned when left (or restored)
        # The id of the restore (from a checkpoint) this receiver came from, 0 if none: a session it
        # never heard of may have had messages acknowledged by the incarnation that was lost.
        self.restore = restore
        self.wanted: list[ResumeWanted] = []     # the resume to ask for (take_resume_wanted): at most one

    @classmethod
    def restored(cls, me: str, source: str, session: int, expected: int, *, window: int = 4096,
                 restore: int = 1, left: dict[int, int] | None = None) -> Inbound:
        """An Inbound as a checkpoint left it (`left`: the sessions it had switched away from and
        where each stopped), each of its sessions pinned until the sender's data shows it heard
        our resume (the shell sends one for each: snapshot.py)."""
        inbound = cls(me, source, window=window, restore=restore)
        inbound.session, inbound.expected, inbound.pinned = session, expected, True
        inbound.left = {s: n for s, n in (left or {}).items() if s != session}
        inbound.left_pinned = set(inbound.left)
        return inbound

    def take_resume_wanted(self) -> list[ResumeWanted]:
        """The resume this Inbound wants asked for since the last call, if any (the shell sends
        it): the latest; one not taken yet is replaced by a newer one."""
        wanted, self.wanted = self.wanted, []
        return wanted

    def on_data(self, session: int, base: int, first: int, tags: Sequence[int], payloads: Sequence[bytes],
                resumed: int = 0) -> tuple[list[Deliver], Send]:
        """`resumed`: which restore the data answers (`resumed_of`: its "ri", RESUMED_ANY for
        "r": 1 without "ri", 0 for neither). Returns what is delivered and the acknowledgement
        (`accept`, then `ack`)."""
        return self.accept(session, base, first, tags, payloads, resumed), self.ack()

    def ack(self) -> Send:
        """The acknowledgement of where this receiver stands: its session, and the highest seq
        delivered in order. A shell that delays acknowledgements asks for it when it sends one
        (it covers everything accepted before)."""
        return Send(self.source, Envelope(PROTOCOL, VERSION, "ack", 0, {"s": self.session, "c": self.expected - 1}))

    def accept_next(self, session: int, first: int) -> bool:
        """The usual data, in one step: one message, the next in order of the current session,
        nothing held early, answering no resume: counted delivered (the caller delivers it, with
        no `Deliver` made) and True. False, having changed nothing, for anything else (`accept`
        then). As `accept` would: its base is at most `first`, so no skip."""
        if session != self.session or first != self.expected or self.early:
            return False
        self.expected = first + 1
        self.delivered += 1
        return True

    def accept(self, session: int, base: int, first: int, tags: Sequence[int], payloads: Sequence[bytes],
               resumed: int = 0) -> list[Deliver]:
        """`on_data` without making the acknowledgement (`ack` makes it: after this call, for
        `session`)."""
        if session != self.session:
            # Another session: the sender restarted its channel, or this is a late packet of one
            # we left. Resume a session we left where we stopped (never deliver a seq twice), pinned
            # if it was; start a new one where the sender says it still holds messages.
            if self.session is not None:
                self.left[self.session] = self.expected
                if self.pinned:
                    self.left_pinned.add(self.session)
                while len(self.left) > REMEMBERED_SESSIONS:
                    gone = next(iter(self.left))
                    del self.left[gone]
                    self.left_pinned.discard(gone)
            known = session in self.left
            self.session, self.expected, self.early = session, self.left.pop(session, base), {}
            self.pinned = session in self.left_pinned
            if self.pinned:
                self.left_pinned.discard(session)
            if self.restore and not known and base > 1:
                # Restored from a checkpoint that predates this session: what the sender holds
                # below base was acknowledged by the incarnation that was lost. Hold everything
                # from 1 and ask the sender to resume (it sends again what it retained, and reports
                # what it no longer holds).
                self.expected, self.pinned = 1, True
                self.wanted = [ResumeWanted(self.source, session, 0)]
        if resumed and self.pinned and (resumed == self.restore or resumed == RESUMED_ANY):
            self.pinned = False
        if base > self.expected and not self.pinned:
            # The sender holds nothing below base: it was acknowledged (to an earlier incarnation
            # of this receiver whose first packet carried a stale base); waiting for it would stall.
            self.expected = base
            self.early = {q: m for q, m in self.early.items() if q >= base}
        out: list[Deliver]
        if first == self.expected and not self.early and len(tags) == 1 == len(payloads):   # the usual case
            out = [Deliver(self.source, tags[0], payloads[0], first)]
            self.expected = first + 1
        elif first == self.expected and not self.early:        # in order, nothing held early
            src = self.source
            out = [Deliver(src, tag, payload, seq)
                   for seq, tag, payload in zip(range(first, first + len(tags)), tags, payloads, strict=True)]
            self.expected = first + len(out)
        else:
            out = []
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
        return out


    def export_state(self) -> dict[str, Any]:
        """Where this receiver stands (migration): early arrivals are left out (they were not
        acknowledged, so their sender still holds them)."""
        return {"session": self.session, "expected": self.expected, "pinned": self.pinned,
                "restore": self.restore, "left": [[s, n] for s, n in self.left.items()],
                "left_pinned": sorted(self.left_pinned)}

    def restore_state(self, state: dict[str, Any]) -> None:
        self.session, self.expected = state["session"], int(state["expected"])
        self.left = {int(s): int(n) for s, n in state["left"]}
        self.left_pinned = {int(s) for s in state.get("left_pinned", [])} & set(self.left)
        self.pinned = bool(state.get("pinned", False))
        self.restore = int(state.get("restore", 1 if self.pinned else 0))
        self.early = {}


def parse_data(env: Envelope, frames: Sequence[bytes]) -> tuple[int, int, int, list[int]]:
    """(session, base, first seq, tags) of a data message; CodecError if malformed."""
    body = env.body
    session, base, first, tags = body.get("s"), body.get("b"), body.get("q"), body.get("t")
    if type(session) is not int or type(base) is not int or type(first) is not int or type(tags) is not list:
        # the exact types, checked at once for the usual message; field_of names what is wrong
        session, base, first = field_of(env, "s", int), field_of(env, "b", int), field_of(env, "q", int)
        tags = field_of(env, "t", list)
    if len(tags) != len(frames) or not ((len(tags) == 1 and type(tags[0]) is int) or all(type(t) is int for t in tags)):
        raise CodecError(f"msg/1 data carries {len(frames)} payloads but {len(tags)} tags")
    if not (0 <= session < 2**63 and 1 <= base <= first < 2**62):
        raise CodecError("msg/1 data: session, base and seq out of range (need 1 <= base <= seq)")
    return session, base, first, tags


def resumed_of(body: dict[str, Any]) -> int:
    """Which restore a data message answers, for Inbound.on_data's `resumed`: its "ri" (a
    restore's id) alongside "r": 1, RESUMED_ANY for "r": 1 without "ri", 0 for none. An "ri" that
    is no restore's id (not an int in [2, 2**62)) counts as absent: `ri_malformed` tells the shell
    to say so."""
    if body.get("r") != 1:
        return 0
    ri = body.get("ri")
    if type(ri) is int and RESUMED_ANY < ri < 2**62:
        return ri
    return RESUMED_ANY


def ri_malformed(body: dict[str, Any]) -> bool:
    """Whether data carries an "ri" that `resumed_of` ignored as malformed."""
    ri = body.get("ri")
    return ri is not None and not (type(ri) is int and RESUMED_ANY < ri < 2**62)


def pack_frames(frames: Sequence[bytes]) -> tuple[list[int] | None, list[bytes]]:
    """A batch's payloads for the wire: (sizes, [one frame]) when there are several and each is at
    most PACK_MAX bytes, else (None, the frames as they are). Put sizes in the body as "z"."""
    if len(frames) > 1:
        sizes = [len(f) for f in frames]
        if max(sizes) <= PACK_MAX:
            return sizes, [b"".join(frames)]
    return None, list(frames)


def unpack_frames(env: Envelope, frames: Sequence[bytes]) -> list[bytes]:
    """The payloads of a data message, packed ("z") or one per frame; CodecError if malformed."""
    sizes = env.body.get("z")
    if sizes is None:
        return list(frames)
    if not isinstance(sizes, list) or not isinstance(env.body.get("t"), list) or len(sizes) != len(env.body["t"]) \
            or not all(type(n) is int and n >= 0 for n in sizes):
        raise CodecError("msg/1 data: z must be a list of payload sizes, one per tag")
    if len(frames) != 1 or sum(sizes) != len(frames[0]):
        raise CodecError(f"msg/1 data: packed payloads of {sum(sizes)} bytes need one frame of that size, "
                         f"not {len(frames)} frame(s)")
    blob = frames[0]
    if not isinstance(blob, bytes):
        blob = bytes(blob)
    out: list[bytes] = []
    at = 0
    for n in sizes:
        out.append(blob[at:at + n])
        at += n
    return out


def busy_ack(session: int, cum: int) -> Envelope:
    """An ack that also says the receiver is busy (see the module docstring)."""
    return Envelope(PROTOCOL, VERSION, "ack", 0, {"s": session, "c": cum, "w": 0})


def ack_is_busy(env: Envelope) -> bool:
    """Whether an ack says the receiver is busy ("w": 0); anything else in "w" means not."""
    w = env.body.get("w")
    return type(w) is int and w == 0


def parse_ack(env: Envelope) -> tuple[int, int]:
    session, cum = field_of(env, "s", int), field_of(env, "c", int)
    if not (0 <= session < 2**63 and 0 <= cum < 2**62):
        raise CodecError("msg/1 ack: session or cumulative seq out of range")
    return session, cum
