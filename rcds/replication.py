"""Replication among replicas: immediate push plus anti-entropy. No I/O.

Push: what a client writes to this replica is sent at once (batched per flush) to every peer
the client did not send it to itself (a put names the replicas it was sent to, W of them
first, and only the first named pushes; rcds/server.py). A peer skips a pushed record it
already holds without decoding it (Replica.recently_held).
Pushed records are not pushed again; anything a push missed is repaired by anti-entropy.

Confirmed pushes: a client may send a W>1 put to one replica alone ("relay", rcds/server.py),
which answers once W-1 peers hold the records too. Its writes go to every peer in the next
flush, and the pushes to as many peers as the most demanding of those puts needs carry that
flush's number ("ack"): the peers with the fewest acknowledgements outstanding, taking turns
when they tie, so a dead or slow peer is soon asked no more and the others share the work.
A peer answers each such push, after committing it, with a push-ack saying whether it holds
every record ("ok"). Once a peer has acknowledged all of a flush's pushes to it, the core
reports `Confirmed(peer, seq)`. Flushes are numbered only when they ask for acks; acks that
have not come within MAX_ROUNDS_AWAITED such flushes are given up on. While the last such flush
awaits its acks (for at most HOLD_S), new writes wait and then go in one push: busy replicas
send fewer, larger pushes (at 16 clients, 2.33 messages into the replicas a put, not 2.85).
A flush that asks some peers for acks goes to those peers only: the others' share waits for
the next flush that asks them (the ackers take turns, so on a busy replica that is the next
flush or so), at most LATER_S, and then goes in a plain push. Each such flush so costs a
push and its ack, not a push to every peer: at 16 clients, about 1.9 messages into the
replicas a put, not 2.3. A peer the acknowledged put does not count on holds it a few ms
later; a W of every replica asks them all, so nothing waits.
A push carries its records in one frame (snipe/catalog/protocol.py's records frame), at most
`MAX_PUSH_RECORDS` of them and about `MAX_PUSH_BYTES`; an ae-want carries its keys the same way.

Anti-entropy, every `interval` with the next peer in turn (one round = four one-way messages):
  ae-top        A -> B  A's 256 top digests
  ae-leaves     B -> A  for tops that differ, B's 256 leaf digests each
  ae-summaries  A -> B  for leaves that differ (at most `max_leaves`), A's (key, ts, sig8) list
  push/ae-want  B -> A  the records B has newer or A lacks, and the keys B wants from A;
                A answers ae-want with a push.
Digests are XORs of record hashes (rcds/storage.py), so equal sets compare equal in one message,
and a round costs O(differences), not O(store). Every message names its sender; the shell has
already authenticated the sender's key against the replica set.

While a peer's pushes of new writes keep arriving, its digests differ from ours by what is in
flight, and a round would only resend that: the round with that peer is put off, but never
more than `MAX_DEFERRALS` times in a row, so every pair still compares at least every
(MAX_DEFERRALS + 1) rounds of turns. Pushes that answer a round carry `repair` and do not count.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from rcds.replica import Accepted, Replica
from rcds.storage import DIGEST_BYTES, Storage, Summary
from snipe.assertion import Assertion
from snipe.catalog.protocol import pack_records, unpack_records
from snipe.effects import Effect, Send, StartTimer
from snipe.errors import CodecError
from snipe.wire import Envelope, field_of

PROTOCOL = "rcds-peer"
VERSION = 1
AE_TIMER = "anti-entropy"
FLUSH_TIMER = "push-flush"
MAX_PUSH_RECORDS = 500
MAX_PUSH_BYTES = 16 * 1024 * 1024     # a push holds at least one record, then stops past this
MAX_DEFERRALS = 4
MAX_ROUNDS_AWAITED = 4096             # acked flushes whose acks are still awaited; older ones are given up
HOLD_S = 0.005                        # new writes wait at most this long for the last acked flush's acks
LATER_TIMER = "push-later"
LATER_S = 0.02                        # a peer a flush left out (it asked others for acks) gets them at most this late


@dataclass(frozen=True, slots=True)
class Confirmed:
    """`peer` committed every record of flush `seq` that was pushed to it."""
    peer: str
    seq: int


PeerEffect = Effect | Confirmed


@dataclass(frozen=True, slots=True)
class ReplicationStats:
    pushed: int
    received: int
    repaired: int
    rounds: int
    deferred: int = 0


class Replicator:
    """Invariants: after a round with peer P in which neither side took writes, both hold the
    same records for every leaf compared; records are only ever offered, never deleted, so a
    bad or slow peer can delay repair but never remove data."""

    def __init__(self, me: str, replica: Replica, storage: Storage, peers: Sequence[str] = (),
                 *, interval: float = 1.0, max_leaves: int = 512, first_flush: int = 0) -> None:
        self.me = me
        self.replica = replica
        self.storage = storage
        self.peers: list[str] = [p for p in peers if p != me]
        self.interval = interval
        self.max_leaves = max_leaves
        self._turn = 0
        self._outbox: list[tuple[bytes, frozenset[str]]] = []     # (record, peers that need no push of it)
        self._live_pushes: dict[str, int] = {}    # pushes of new writes from each peer since its last turn
        self._deferrals: dict[str, int] = {}      # rounds with each peer put off in a row
        # The number of the next flush. The shell starts it somewhere new at every start, so an
        # ack a peer sends late for a flush of this replica's past life confirms nothing now.
        self._seq = first_flush
        self._confirm = 0              # how many peers the next flush's pushes ask to acknowledge them
        self._awaited: dict[tuple[int, str], int] = {}   # (flush, peer) -> pushes not yet acknowledged, oldest first
        self._outstanding: dict[str, int] = {}           # peer -> its flushes in _awaited
        self._asked: tuple[int, float] | None = None     # (number, time) of the last flush that asked for acks
        self._holding = False          # writes wait in the outbox for that flush's acks (its timer is set)
        self._later: dict[str, list[bytes]] = {}   # records owed to peers a flush that asked others left out
        self._later_since: dict[str, float] = {}   # ... since when each peer is owed them
        self._later_due: float | None = None       # when LATER_TIMER is set for
        self.pushed = self.received = self.repaired = self.rounds = self.deferred = 0

    def stats(self) -> ReplicationStats:
        return ReplicationStats(self.pushed, self.received, self.repaired, self.rounds, self.deferred)

    def set_peers(self, peers: Sequence[str]) -> None:
        self.peers = sorted({p for p in peers if p != self.me})
        for gone in set(self._later) - set(self.peers):
            del self._later[gone]
            self._later_since.pop(gone, None)

    def _env(self, kind: str, **body: object) -> Envelope:
        return Envelope(PROTOCOL, VERSION, kind, 0, {"from": self.me, **body})

    # --- events -----------------------------------------------------------------------------
    def start(self, now: float) -> list[Effect]:
        return [StartTimer(AE_TIMER, now + self.interval)]

    def on_local_writes(self, accepted: Sequence[Accepted], *, raw: Sequence[bytes] | None = None,
                        sent_to: Collection[str] = (), confirm: int = 0) -> int:
        """Queue what a client wrote for the next flush: the new records, for every peer except
        those in `sent_to` (the client sent them there itself; if one of those copies is lost,
        anti-entropy repairs it). `raw`, when given, holds the records as the client sent them,
        one per result, and is pushed as it is rather than encoded again. With `confirm` (a
        number of peers), every record goes to every peer, held ones too (a peer may lack them),
        and that many peers are asked to acknowledge the flush. Returns the number of the flush
        they leave in, which `Confirmed` will name."""
        skip = frozenset() if confirm else frozenset(sent_to)
        self._confirm = max(self._confirm, confirm)
        if raw is None:
            self._outbox.extend((a.record.encode(), skip) for a in accepted if a.new or confirm)
        else:
            self._outbox.extend((r, skip) for a, r in zip(accepted, raw, strict=True) if a.new or confirm)
        return self._seq

    def flush(self, now: float | None = None, *, hold: bool = True) -> list[Effect]:
        """Push the outbox to the peers. Given `now` (the shell's clock), while the last flush that
        asked for acks still awaits them and went less than HOLD_S ago, the writes wait instead
        (one FLUSH_TIMER): they go in one push when a peer answers that flush (`on_message`
        makes the timer due) or the time is up. Busy replicas so push fewer, larger batches, and
        a relayed put waits at most about one push's round trip more; an idle one holds nothing.
        (A put whose client gave it less than HOLD_S may then run out of time here; its client
        writes to the other replicas itself, as when a relay is slow.)"""
        if hold and now is not None and self._outbox and self._asked is not None \
                and now < self._asked[1] + HOLD_S and self._asked_awaited():
            if self._holding:
                return []
            self._holding = True
            return [StartTimer(FLUSH_TIMER, self._asked[1] + HOLD_S)]
        self._holding = False
        seq, confirm = self._seq, self._confirm
        if confirm:
            self._seq += 1
            self._confirm = 0
        if not self.peers:
            self._outbox.clear()
            self._later.clear()
            self._later_since.clear()
            return []
        if not self._outbox:
            return self._push_later(None) if now is None else []     # (closing: what waits goes now)
        while self._awaited:
            oldest = next(iter(self._awaited))
            if oldest[0] > seq - MAX_ROUNDS_AWAITED:
                break
            self._forget(oldest)
        ackers = set(self._ackers(seq, confirm))
        # A flush that asks for acks is a busy replica's: the peers it leaves out are asked by
        # one of the next flushes, and take what they are owed then (at most LATER_S later).
        defer = bool(ackers) and now is not None
        effects: list[Effect] = []
        owed: dict[frozenset[str], list[bytes]] = {}      # the records of a set of skips, shared by the peers it suits
        frames: dict[frozenset[str], list[bytes]] = {}    # ... and their frames, for peers owed nothing older
        for p in self.peers:
            skips = frozenset(skip for _, skip in self._outbox if p in skip)
            if skips not in owed:
                owed[skips] = [r for r, skip in self._outbox if skip not in skips]
            later = self._later.get(p)
            if defer and p not in ackers and len(later or ()) < MAX_PUSH_RECORDS:
                if owed[skips]:
                    self._later.setdefault(p, []).extend(owed[skips])
                    self._later_since.setdefault(p, now)
                continue
            if later:
                del self._later[p]
                del self._later_since[p]
                p_frames = _packed(later + owed[skips])
            else:
                if skips not in frames:
                    frames[skips] = _packed(owed[skips])
                p_frames = frames[skips]
            effects.extend(self._push(p, p_frames, seq if p in ackers else None, now))
        effects.extend(self._later_timer())
        self.pushed += sum(1 for _, skip in self._outbox if not skip.issuperset(self.peers))
        self._outbox.clear()
        return effects

    def _push(self, peer: str, frames: list[bytes], ack: int | None, now: float | None) -> list[Effect]:
        """The pushes of `frames` to `peer`, asking it to acknowledge them as flush `ack` if given."""
        if ack is None:
            return [Send(peer, self._env("push"), (f,)) for f in frames]
        if frames:
            self._awaited[(ack, peer)] = len(frames)
            self._outstanding[peer] = self._outstanding.get(peer, 0) + 1
            if now is not None:
                self._asked = (ack, now)
        return [Send(peer, self._env("push", ack=ack), (f,)) for f in frames]

    def _push_later(self, now: float | None) -> list[Effect]:
        """Push each peer what earlier flushes left it owed, if it has waited LATER_S by `now`
        (all of them without a clock), and set the timer for the rest."""
        due = [p for p, since in self._later_since.items() if now is None or since + LATER_S <= now]
        effects: list[Effect] = []
        for p in due:
            del self._later_since[p]
            effects.extend(self._push(p, _packed(self._later.pop(p)), None, None))
        return effects + self._later_timer()

    def _later_timer(self) -> list[Effect]:
        """LATER_TIMER, set for when the peer owed records longest has waited LATER_S, if that changed."""
        due = min(self._later_since.values()) + LATER_S if self._later_since else None
        if due is None or due == self._later_due:
            self._later_due = due
            return []
        self._later_due = due
        return [StartTimer(LATER_TIMER, due)]

    def _asked_awaited(self) -> bool:
        """Whether any peer's acks for the last flush that asked for them are still awaited."""
        return self._asked is not None and any((self._asked[0], p) in self._awaited for p in self.peers)

    def _ackers(self, seq: int, count: int) -> list[str]:
        """The `count` peers to ask for acks of flush `seq`: those with the fewest outstanding,
        taking turns (by `seq`) among equals."""
        if not count:
            return []
        n = len(self.peers)
        order = sorted(range(n), key=lambda i: (self._outstanding.get(self.peers[i], 0), (i - seq) % n))
        return [self.peers[i] for i in order[:count]]

    def _forget(self, key: tuple[int, str]) -> None:
        del self._awaited[key]
        left = self._outstanding.get(key[1], 0) - 1
        if left > 0:
            self._outstanding[key[1]] = left
        else:
            self._outstanding.pop(key[1], None)

    def on_timer(self, key: str, now: float) -> list[Effect]:
        if key == FLUSH_TIMER:
            return self.flush(now, hold=False)
        if key == LATER_TIMER:
            self._later_due = None
            return self._push_later(now)
        if key != AE_TIMER:
            return []
        effects: list[Effect] = [StartTimer(AE_TIMER, now + self.interval)]
        if self.peers:
            peer = self.peers[self._turn % len(self.peers)]
            self._turn += 1
            in_flight = self._live_pushes.pop(peer, 0) > 0
            if in_flight and self._deferrals.get(peer, 0) < MAX_DEFERRALS:
                self._deferrals[peer] = self._deferrals.get(peer, 0) + 1
                self.deferred += 1
            else:
                self._deferrals[peer] = 0
                self.rounds += 1
                effects.append(Send(peer, self._env("ae-top"), (b"".join(self.storage.top_digests()),)))
        return effects

    def on_message(self, env: Envelope, frames: Sequence[bytes], now_ms: int) -> list[PeerEffect]:
        """Handle one peer message; raise CodecError if it is malformed (the shell reports it).
        The push-ack a push asks for is among the effects: send it only once the push's
        records are committed."""
        sender = field_of(env, "from", str)
        match env.kind:
            case "push":
                ack = field_of(env, "ack", int) if "ack" in env.body else None
                records = unpack_records(frames, MAX_PUSH_RECORDS, f"{PROTOCOL} push")
                # Bytes this replica committed moments ago (a client wrote to every replica) need no second look.
                fresh: list[bytes | Assertion] = [r for r in records if not self.replica.recently_held(r)]
                results = self.replica.ingest(fresh, now_ms, from_peer=True) if fresh else []
                got = sum(1 for r in results if isinstance(r, Accepted) and r.new)
                self.received += got
                if not env.body.get("repair"):
                    self._live_pushes[sender] = self._live_pushes.get(sender, 0) + 1
                if ack is None:
                    return []
                ok = all(isinstance(r, Accepted) for r in results)
                return [Send(sender, self._env("push-ack", ack=ack, ok=ok))]
            case "push-ack":
                key, ok = (field_of(env, "ack", int), sender), field_of(env, "ok", bool)
                left = self._awaited.get(key)
                if left is None:
                    return []              # forgotten, or a peer that already refused part of it
                if ok and left > 1:
                    self._awaited[key] = left - 1
                    return []
                self._forget(key)
                effects: list[PeerEffect] = [Confirmed(sender, key[0])] if ok else []
                if self._holding and self._asked is not None and key[0] == self._asked[0]:
                    # a peer answered the flush the writes wait on (all of it, or refused a part):
                    # a round trip has passed, so push what waited now, not when the slowest answers
                    effects.append(StartTimer(FLUSH_TIMER, 0.0))
                return effects
            case "ae-top":
                return self._on_top(sender, frames)
            case "ae-leaves":
                return self._on_leaves(sender, env, frames)
            case "ae-summaries":
                return self._on_summaries(sender, env, frames)
            case "ae-want":
                return self._push_keys(sender, unpack_records(frames, MAX_PUSH_RECORDS, f"{PROTOCOL} ae-want"))
            case _:
                raise CodecError(f"unknown {PROTOCOL} message kind {env.kind!r}")

    # --- anti-entropy steps -------------------------------------------------------------------
    def _on_top(self, sender: str, frames: Sequence[bytes]) -> list[Effect]:
        theirs = _split_digests(frames, 256)
        mine = self.storage.top_digests()
        differing = [i for i in range(256) if theirs[i] != mine[i]]
        if not differing:
            return []
        blobs = [b"".join(self.storage.leaf_digests(t)) for t in differing]
        return [Send(sender, self._env("ae-leaves", tops=differing), tuple(blobs))]

    def _on_leaves(self, sender: str, env: Envelope, frames: Sequence[bytes]) -> list[Effect]:
        tops = field_of(env, "tops", list)
        if len(tops) != len(frames) or not all(isinstance(t, int) and 0 <= t < 256 for t in tops):
            raise CodecError("ae-leaves: tops must be integers 0-255, one frame of leaf digests each")
        leaves: list[int] = []
        for top, blob in zip(tops, frames, strict=True):
            theirs = _split_digests([blob], 256)
            mine = self.storage.leaf_digests(top)
            leaves.extend(top * 256 + i for i in range(256) if theirs[i] != mine[i])
        leaves = leaves[: self.max_leaves]
        if not leaves:
            return []
        summaries = [_pack_summaries(self.storage.leaf_summaries(leaf)) for leaf in leaves]
        return [Send(sender, self._env("ae-summaries", leaves=leaves), tuple(summaries))]

    def _on_summaries(self, sender: str, env: Envelope, frames: Sequence[bytes]) -> list[Effect]:
        leaves = field_of(env, "leaves", list)
        if len(leaves) != len(frames) or not all(isinstance(x, int) and 0 <= x < 65536 for x in leaves):
            raise CodecError("ae-summaries: leaves must be integers 0-65535, one frame each")
        offer: list[bytes] = []
        want: list[bytes] = []
        for leaf, blob in zip(leaves, frames, strict=True):
            theirs = {s.key: s for s in _unpack_summaries(blob)}
            mine = {s.key: s for s in self.storage.leaf_summaries(leaf)}
            for key, s in mine.items():
                t = theirs.get(key)
                if t is None or (s.ts, s.sig8) > (t.ts, t.sig8):
                    offer.append(key)
            for key, t in theirs.items():
                s = mine.get(key)
                if s is None or (t.ts, t.sig8) > (s.ts, s.sig8):
                    want.append(key)
        effects = self._push_keys(sender, offer)
        effects.extend(Send(sender, self._env("ae-want"), (pack_records(want[i:i + MAX_PUSH_RECORDS]),))
                       for i in range(0, len(want), MAX_PUSH_RECORDS))
        return effects

    def _push_keys(self, peer: str, keys: list[bytes]) -> list[Effect]:
        records: list[Assertion] = self.storage.records_by_keys(keys)
        self.repaired += len(records)
        return [Send(peer, self._env("push", repair=True), (pack_records(chunk),))
                for chunk in _chunks([a.encode() for a in records])]


def _packed(records: list[bytes]) -> list[bytes]:
    """The records frames of the pushes that carry `records`."""
    return [pack_records(chunk) for chunk in _chunks(records)]


def _chunks(records: list[bytes]) -> list[list[bytes]]:
    """Records split into pushes of at most MAX_PUSH_RECORDS, each about MAX_PUSH_BYTES at most."""
    out: list[list[bytes]] = []
    size = 0
    for r in records:
        if not out or len(out[-1]) >= MAX_PUSH_RECORDS or size + len(r) > MAX_PUSH_BYTES:
            out.append([])
            size = 0
        out[-1].append(r)
        size += len(r)
    return out


def _split_digests(frames: Sequence[bytes], count: int) -> list[bytes]:
    if len(frames) != 1 or len(frames[0]) != count * DIGEST_BYTES:
        raise CodecError(f"expected one frame of {count} digests of {DIGEST_BYTES} bytes")
    blob = frames[0]
    return [blob[i * DIGEST_BYTES:(i + 1) * DIGEST_BYTES] for i in range(count)]


def _pack_summaries(items: list[Summary]) -> bytes:
    import msgpack
    return msgpack.packb([[s.key, s.ts, s.sig8] for s in items], use_bin_type=True)


def _unpack_summaries(blob: bytes) -> list[Summary]:
    import msgpack
    try:
        raw = msgpack.unpackb(blob, raw=False)
    except Exception:
        raise CodecError("ae-summaries frame is not valid msgpack") from None
    if not isinstance(raw, list):
        raise CodecError("ae-summaries frame must be a list")
    out = []
    for item in raw:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], bytes)
                or type(item[1]) is not int or not isinstance(item[2], bytes)):
            raise CodecError("ae-summaries entries must be [key bytes, ts int, sig8 bytes]")
        out.append(Summary(item[0], item[1], item[2]))
    return out
