"""Replication (rcds/replication.py): push and anti-entropy between Replicator cores.

Single steps are transcripts (events in, effects out, asserted whole); runs of several replicas
go through tests/unit/fakenet.py, a seeded fake network with a manual clock.
"""

from __future__ import annotations

import msgpack
import pytest
from fakenet import T0_MS, FakeNet
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rcds import replication
from rcds.replica import Accepted, Replica
from rcds.replication import (
    AE_TIMER,
    FLUSH_TIMER,
    MAX_DEFERRALS,
    MAX_PUSH_RECORDS,
    PROTOCOL,
    VERSION,
    Replicator,
)
from rcds.storage import EXPIRE, ZERO, MemoryStorage, leaf_of, record_key
from snipe import hlc
from snipe.assertion import Assertion, make_assertion, merge
from snipe.catalog.protocol import pack_records
from snipe.effects import Send, StartTimer
from snipe.errors import CodecError, TooLarge
from snipe.identity import Identity
from snipe.wire import Envelope

ADMIN, ALICE, BOB = (Identity.from_seed(bytes([i]) * 32) for i in (31, 32, 33))
NOW = T0_MS


def put(who: Identity, urn: str, name: str, value: object, ts: int, ttl_ms: int = 0) -> Assertion:
    return make_assertion(who, urn, name, value, ts, ttl_ms)


def tomb(who: Identity, urn: str, name: str, ts: int) -> Assertion:
    return make_assertion(who, urn, name, None, ts, deleted=True)


def env(kind: str, sender: str, **body: object) -> Envelope:
    return Envelope(PROTOCOL, VERSION, kind, 0, {"from": sender, **body})


def replicator(me: str, peers: list[str]) -> Replicator:
    s = MemoryStorage()
    return Replicator(me, Replica(s, ADMIN.public_key), s, peers)


def snapshot(r: Replicator) -> tuple:
    s = r.storage
    return (list(s.scan_prefix("")), s.top_digests(), s.last_rev(), r.stats(), dict(s.admitted))


# --- push ------------------------------------------------------------------------------------------
def test_local_writes_are_pushed_to_every_peer_once():
    a = replicator("A", ["A", "B", "C"])
    r1 = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    r2 = put(ADMIN, "urn:snipe:group:g", "m", 2, hlc.pack(NOW))
    results = a.replica.ingest([r1, r1, r2], NOW)
    a.on_local_writes([r for r in results if isinstance(r, Accepted)])
    frames = (pack_records([r1.encode(), r2.encode()]),)  # the identical retry is not pushed twice
    assert a.flush() == [Send("B", env("push", "A"), frames), Send("C", env("push", "A"), frames)]
    assert a.flush() == []
    assert a.stats().pushed == 2


def test_a_write_is_not_pushed_to_the_peers_its_client_sent_it_to():
    a = replicator("A", ["A", "B", "C", "D"])
    r1 = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    r2 = put(ADMIN, "urn:snipe:group:g", "m", 2, hlc.pack(NOW))
    a.on_local_writes(a.replica.ingest([r1], NOW), sent_to={"B"})
    a.on_local_writes(a.replica.ingest([r2], NOW), sent_to={"B", "C"})
    both, first = (pack_records([r1.encode(), r2.encode()]),), (pack_records([r1.encode()]),)
    assert a.flush() == [Send("C", env("push", "A"), first), Send("D", env("push", "A"), both)]
    assert a.stats().pushed == 2


def test_a_write_is_pushed_as_its_client_sent_it():
    a = replicator("A", ["A", "B"])
    r = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    as_sent = b"the bytes the client sent"       # not re-encoded: peers compare bytes (recently_held)
    a.on_local_writes(a.replica.ingest([r], NOW), raw=[as_sent])
    assert a.flush() == [Send("B", env("push", "A"), (pack_records([as_sent]),))]


def test_a_write_every_peer_got_from_its_client_is_not_pushed():
    a = replicator("A", ["A", "B"])
    a.on_local_writes(a.replica.ingest([put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))], NOW),
                      sent_to={"A", "B"})
    assert a.flush() == []
    assert a.stats().pushed == 0


def test_large_pushes_are_chunked():
    a = replicator("A", ["A", "B"])
    r = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    a.on_local_writes([Accepted(r, i, True) for i in range(MAX_PUSH_RECORDS + 1)])
    effects = a.flush()
    assert [(e.to, len(e.frames), len(msgpack.unpackb(e.frames[0]))) for e in effects] == [
        ("B", 1, MAX_PUSH_RECORDS), ("B", 1, 1)]


def test_pushes_of_big_records_are_chunked_by_size(monkeypatch):
    monkeypatch.setattr(replication, "MAX_PUSH_BYTES", 1200)
    a = replicator("A", ["A", "B"])
    big = [put(ADMIN, "urn:snipe:group:g", f"n{i}", b"x" * 400, hlc.pack(NOW)) for i in range(5)]
    a.on_local_writes([Accepted(r, i, True) for i, r in enumerate(big)])
    assert [len(msgpack.unpackb(e.frames[0])) for e in a.flush()] == [2, 2, 1]


def test_without_peers_nothing_is_pushed_and_nothing_is_kept():
    a = replicator("A", ["A"])
    r = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    a.on_local_writes([Accepted(r, 1, True)])
    assert a.flush() == []
    a.set_peers(["B", "A"])
    assert a.peers == ["B"]
    assert a.flush() == []                               # the old write was dropped, not held back


def test_a_push_is_ingested_by_the_receiver():
    b = replicator("B", ["A", "B"])
    r = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    assert b.on_message(env("push", "A"), [pack_records([r.encode(), r.encode()])], NOW) == []
    assert list(b.storage.scan_prefix("")) == [r]
    assert b.stats().received == 1


# --- confirmed pushes (a relayed put waits for them) ---------------------------------------------------
def test_a_confirmed_flush_goes_to_every_peer_and_each_peer_confirms_it_after_all_its_parts(monkeypatch):
    monkeypatch.setattr(replication, "MAX_PUSH_RECORDS", 2)
    a = replicator("A", ["A", "B", "C"])
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(3)]
    first = a.on_local_writes(a.replica.ingest(recs[:1], NOW), sent_to={"B"})      # a plain put: not B
    seq = a.on_local_writes(a.replica.ingest(recs[1:], NOW), sent_to={"B", "C"}, confirm=2)
    assert first == seq == 0
    effects = a.flush()
    # the relayed records go to every peer (the client sent them here alone); C's push is in two parts
    assert [(e.to, e.envelope.body.get("ack"), len(msgpack.unpackb(e.frames[0]))) for e in effects] == [
        ("B", 0, 2), ("C", 0, 2), ("C", 0, 1)]
    assert a.on_local_writes([], confirm=1) == 1                        # the next flush has the next number
    assert a.on_message(env("push-ack", "C", ack=0, ok=True), [], NOW) == []
    assert a.on_message(env("push-ack", "B", ack=0, ok=True), [], NOW) == [replication.Confirmed("B", 0)]
    assert a.on_message(env("push-ack", "B", ack=0, ok=True), [], NOW) == []           # once only
    assert a.on_message(env("push-ack", "C", ack=0, ok=False), [], NOW) == []          # refused a part
    assert a.on_message(env("push-ack", "C", ack=0, ok=True), [], NOW) == []


def sends(effects: list) -> list[tuple[str, object, list[bytes]]]:
    """(peer, ack asked, records) of each push among `effects`."""
    return [(e.to, e.envelope.body.get("ack"), msgpack.unpackb(e.frames[0])) for e in effects if isinstance(e, Send)]


def test_writes_wait_for_the_last_confirmed_flush_s_acks_and_then_go_in_one_push():
    """Busy replicas: while the last flush that asked for acks awaits them (at most HOLD_S after
    it went), new writes wait, and go together once the acks come or the time is up. Without
    a clock (`flush()`) nothing waits."""
    a = replicator("A", ["A", "B", "C"])
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(4)]
    raw = [r.encode() for r in recs]

    def write(i: int) -> int:
        return a.on_local_writes(a.replica.ingest([recs[i]], NOW), confirm=1)

    assert write(0) == 0
    assert sends(a.flush(10.0)) == [("B", 0, raw[:1])]          # C's share waits for C's turn
    assert write(1) == 1
    assert a.flush(10.001) == [StartTimer(FLUSH_TIMER, 10.0 + replication.HOLD_S)]   # held
    assert write(2) == 1                                       # in the same flush as the one held
    assert a.flush(10.002) == []                               # still held, its timer set
    # B's ack: the put that waited on flush 0 is confirmed, and what waited is due at once
    assert a.on_message(env("push-ack", "B", ack=0, ok=True), [], NOW) == [
        replication.Confirmed("B", 0), StartTimer(FLUSH_TIMER, 0.0)]
    assert a.on_timer(FLUSH_TIMER, 10.003) == [
        Send("C", env("push", "A", ack=1), (pack_records(raw[:3]),)),     # C asked: all it is owed
        StartTimer(replication.LATER_TIMER, 10.003 + replication.LATER_S)]    # B's share waits
    # no ack within HOLD_S (a slow or dead peer): the next write waits only until then
    write(3)
    assert a.flush(10.003 + replication.HOLD_S / 2) == [StartTimer(FLUSH_TIMER, 10.003 + replication.HOLD_S)]
    assert sends(a.on_timer(FLUSH_TIMER, 10.003 + replication.HOLD_S)) == [("B", 2, raw[1:4])]
    assert a.flush(10.003 + replication.HOLD_S) == []          # nothing left
    # writes that come after the time is up are not held, nor any flushed without a clock, and
    # without a clock every peer gets everything it is owed
    write(0)
    assert [to for to, _, _ in sends(a.flush(10.003 + 3 * replication.HOLD_S))] == ["C"]
    write(1)
    assert sends(a.flush()) == [("B", 4, [raw[0], raw[1]]), ("C", None, raw[1:2])]


def test_a_busy_flush_leaves_the_peers_it_does_not_ask_their_records_for_a_later_push():
    """A flush that asks one peer for acks pushes to that peer alone; another gets what it is
    owed with the next flush that asks it, or in a plain push LATER_S after it was left out,
    whichever comes first. Nothing is left out of a flush that asks every peer, or none."""
    a = replicator("A", ["A", "B", "C"])
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(5)]
    raw = [r.encode() for r in recs]
    a.on_local_writes(a.replica.ingest(recs[:1], NOW), confirm=1)
    assert a.flush(10.0) == [Send("B", env("push", "A", ack=0), (pack_records(raw[:1]),)),
                             StartTimer(replication.LATER_TIMER, 10.0 + replication.LATER_S)]
    a.on_message(env("push-ack", "B", ack=0, ok=True), [], NOW)
    a.on_local_writes(a.replica.ingest(recs[1:2], NOW), confirm=1)
    assert a.flush(10.01) == [Send("C", env("push", "A", ack=1), (pack_records(raw[:2]),)),  # C's turn: all it is owed
                              StartTimer(replication.LATER_TIMER, 10.01 + replication.LATER_S)]   # B's, now
    a.on_message(env("push-ack", "C", ack=1, ok=True), [], NOW)
    # the time is up for what a flush left B: it goes in a plain push, and only once
    assert a.on_timer(replication.LATER_TIMER, 10.01 + replication.LATER_S) == [
        Send("B", env("push", "A"), (pack_records(raw[1:2]),))]
    assert a.on_timer(replication.LATER_TIMER, 10.01 + replication.LATER_S) == []
    a.on_local_writes(a.replica.ingest(recs[2:3], NOW), confirm=2)           # W=3: both asked, at once
    assert sends(a.flush(10.05)) == [("B", 2, raw[2:3]), ("C", 2, raw[2:3])]
    a.on_local_writes(a.replica.ingest(recs[3:4], NOW))                     # no acks asked: every peer now
    assert sends(a.flush(10.06)) == [("B", None, raw[3:4]), ("C", None, raw[3:4])]


def test_a_peer_owed_a_full_push_gets_it_rather_than_wait_longer():
    """C never answers, so B (no acks outstanding) is asked each time and C is left out: once
    C is owed a full push, it gets what it is owed."""
    a = replicator("A", ["A", "B", "C"])
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(MAX_PUSH_RECORDS + 3)]
    to_c: dict[int, int] = {}
    for i, r in enumerate(recs):
        a.on_local_writes(a.replica.ingest([r], NOW), confirm=1)
        for to, ack, records in sends(a.flush(10.0, hold=False)):
            if to == "B":
                a.on_message(env("push-ack", "B", ack=ack, ok=True), [], NOW)
            else:
                to_c[i] = to_c.get(i, 0) + len(records)
    assert to_c == {1: 2, MAX_PUSH_RECORDS + 2: MAX_PUSH_RECORDS + 1}, to_c


def test_the_first_peer_to_answer_the_flush_releases_what_waits_even_a_refusal():
    """W=3 asks both peers; one dead must not hold every later write for the whole HOLD_S: the
    first peer to answer all of the flush (or refuse a part) releases what waits."""
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(2)]
    for ok in (True, False):
        a = replicator("A", ["A", "B", "C"])
        a.on_local_writes(a.replica.ingest(recs[:1], NOW), confirm=2)
        assert [e.envelope.body.get("ack") for e in a.flush(10.0)] == [0, 0]      # both asked
        a.on_local_writes(a.replica.ingest(recs[1:], NOW), confirm=2)
        assert a.flush(10.001) == [StartTimer(FLUSH_TIMER, 10.0 + replication.HOLD_S)]
        got = a.on_message(env("push-ack", "B", ack=0, ok=ok), [], NOW)          # C never answers
        assert got == [*([replication.Confirmed("B", 0)] if ok else []), StartTimer(FLUSH_TIMER, 0.0)]
        assert [e.to for e in a.on_timer(FLUSH_TIMER, 10.002)] == ["B", "C"]
        assert a.on_message(env("push-ack", "C", ack=0, ok=True), [], NOW) == [replication.Confirmed("C", 0)]


def test_writes_held_when_the_peer_asked_leaves_the_set_go_at_the_next_flush():
    a = replicator("A", ["A", "B", "C"])
    recs = [put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(2)]
    a.on_local_writes(a.replica.ingest(recs[:1], NOW), confirm=1)
    assert [(e.to, e.envelope.body.get("ack")) for e in a.flush(10.0) if isinstance(e, Send)] == [("B", 0)]
    a.on_local_writes(a.replica.ingest(recs[1:], NOW), confirm=1)
    assert a.flush(10.001) == [StartTimer(FLUSH_TIMER, 10.0 + replication.HOLD_S)]
    a.set_peers(["C"])                                     # B, the peer asked, was removed
    assert sends(a.flush(10.002)) == [("C", 1, [r.encode() for r in recs])]   # nothing awaited of the peers left


def test_acks_are_asked_of_the_peers_with_fewest_outstanding_taking_turns():
    a = replicator("A", ["A", "B", "C"])

    def flush_asks(i: int) -> list[str]:
        r = put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW))
        a.on_local_writes(a.replica.ingest([r], NOW), confirm=1)
        effects = a.flush()
        assert sorted(e.to for e in effects) == ["B", "C"]           # both get the records
        return [e.to for e in effects if "ack" in e.envelope.body]

    assert flush_asks(0) == ["B"]
    a.on_message(env("push-ack", "B", ack=0, ok=True), [], NOW)
    assert flush_asks(1) == ["C"]                                   # equals take turns
    a.on_message(env("push-ack", "C", ack=1, ok=True), [], NOW)
    assert flush_asks(2) == ["B"]                                   # B never answers this one ...
    assert flush_asks(3) == ["C"]
    a.on_message(env("push-ack", "C", ack=3, ok=True), [], NOW)
    assert flush_asks(4) == ["C"]                                   # ... so C is asked, until it has as many


def test_a_peer_acknowledges_a_confirmed_push_saying_whether_it_holds_every_record():
    b = replicator("B", ["A", "B"])
    good = put(ADMIN, "urn:snipe:group:g", "n", 1, hlc.pack(NOW))
    forged = Assertion(good.urn, "m", 2, good.ts, 0, False, ALICE.public_key, good.signature)
    assert b.on_message(env("push", "A", ack=7), [pack_records([good.encode()])], NOW) == [
        Send("A", env("push-ack", "B", ack=7, ok=True))]
    assert b.on_message(env("push", "A", ack=8), [pack_records([good.encode()])], NOW) == [
        Send("A", env("push-ack", "B", ack=8, ok=True))]                  # already held: still ok
    assert b.on_message(env("push", "A", ack=9), [pack_records([good.encode(), forged.encode()])], NOW) == [
        Send("A", env("push-ack", "B", ack=9, ok=False))]
    with pytest.raises(CodecError, match="ack"):
        b.on_message(env("push", "A", ack="x"), [pack_records([good.encode()])], NOW)
    with pytest.raises(CodecError, match="ok"):
        b.on_message(env("push-ack", "A", ack=1), [], NOW)


# --- one anti-entropy round, as a transcript ----------------------------------------------------------
def test_one_anti_entropy_round_repairs_both_sides():
    a, b = replicator("A", ["A", "B"]), replicator("B", ["A", "B"])
    only_a = put(ADMIN, "urn:snipe:group:a", "n", 1, hlc.pack(NOW))
    only_b = put(ADMIN, "urn:snipe:group:b", "n", 2, hlc.pack(NOW))
    a.replica.ingest([only_a], NOW)                      # writes whose pushes were lost
    b.replica.ingest([only_b], NOW)
    leaves = sorted({leaf_of(only_a.urn), leaf_of(only_b.urn)})
    tops = sorted({leaf >> 8 for leaf in leaves})
    assert a.start(10.0) == [StartTimer(AE_TIMER, 11.0)]
    assert a.on_timer(FLUSH_TIMER, 11.0) == []

    # A -> B: A's top digests
    [timer, top] = a.on_timer(AE_TIMER, 11.0)
    assert timer == StartTimer(AE_TIMER, 12.0)
    assert top == Send("B", env("ae-top", "A"), (b"".join(a.storage.top_digests()),))

    # B -> A: B's leaf digests for the tops that differ
    [leaf_digests] = b.on_message(top.envelope, top.frames, NOW)
    assert leaf_digests == Send("A", env("ae-leaves", "B", tops=tops),
                                tuple(b"".join(b.storage.leaf_digests(t)) for t in tops))

    # A -> B: A's summaries of the leaves that differ
    [summaries] = a.on_message(leaf_digests.envelope, leaf_digests.frames, NOW)
    packed = {leaf_of(only_a.urn): [[record_key(only_a), only_a.ts, only_a.signature[:8]]],
              leaf_of(only_b.urn): []}
    assert summaries == Send("B", env("ae-summaries", "A", leaves=leaves),
                             tuple(msgpack.packb(packed[leaf], use_bin_type=True) for leaf in leaves))

    # B -> A: what B has that A lacks, and what B wants
    assert b.on_message(summaries.envelope, summaries.frames, NOW) == [
        Send("A", env("push", "B", repair=True), (pack_records([only_b.encode()]),)),
        Send("A", env("ae-want", "B"), (pack_records([record_key(only_a)]),)),
    ]
    push_b, want = b.on_message(summaries.envelope, summaries.frames, NOW)

    # A takes B's record and answers the want with a push
    assert a.on_message(push_b.envelope, push_b.frames, NOW) == []
    [push_a] = a.on_message(want.envelope, want.frames, NOW)
    assert push_a == Send("B", env("push", "A", repair=True), (pack_records([only_a.encode()]),))
    assert b.on_message(push_a.envelope, push_a.frames, NOW) == []

    assert list(a.storage.scan_prefix("")) == list(b.storage.scan_prefix("")) == [only_a, only_b]
    assert a.storage.top_digests() == b.storage.top_digests()
    # a second round finds nothing to do after the first message
    [_, top2] = a.on_timer(AE_TIMER, 12.0)
    assert b.on_message(top2.envelope, top2.frames, NOW) == []


def test_newer_beats_older_in_both_directions():
    a, b = replicator("A", ["A", "B"]), replicator("B", ["A", "B"])
    old = put(ADMIN, "urn:snipe:group:g", "n", "old", hlc.pack(NOW))
    new = put(ADMIN, "urn:snipe:group:g", "n", "new", hlc.pack(NOW + 1))
    a.replica.ingest([old], NOW)
    b.replica.ingest([new], NOW)
    net = FakeNet({"A": a, "B": b})
    net.apply("A", a.start(NOW / 1000))
    net.apply("B", b.start(NOW / 1000))
    net.rounds(1)
    assert net.records("A") == net.records("B") == [new]


def test_rounds_rotate_through_the_peers():
    a = replicator("A", ["A", "B", "C", "D"])
    sends = [a.on_timer(AE_TIMER, float(t))[1].to for t in range(6)]
    assert sends == ["B", "C", "D", "B", "C", "D"]
    assert a.stats().rounds == 6
    assert replicator("A", ["A"]).on_timer(AE_TIMER, 5.0) == [StartTimer(AE_TIMER, 6.0)]


def test_a_round_is_put_off_while_the_peers_pushes_arrive_but_not_for_ever():
    a = replicator("A", ["A", "B"])
    writes = iter(put(ADMIN, "urn:snipe:group:g", f"n{i}", i, hlc.pack(NOW)) for i in range(100))

    def turn(t: int, live_push: bool = True, repair: bool = False) -> bool:
        """One anti-entropy turn after B pushed (or not); True if a round with B started."""
        if live_push or repair:
            body = {"repair": True} if repair else {}
            a.on_message(env("push", "B", **body), [pack_records([next(writes).encode()])], NOW)
        return len(a.on_timer(AE_TIMER, float(t))) == 2

    assert [turn(t) for t in range(10)] == [False] * MAX_DEFERRALS + [True] + [False] * MAX_DEFERRALS + [True]
    assert turn(10, live_push=False) and not turn(11) and turn(12, live_push=False)
    assert turn(13, live_push=False, repair=True)            # answers to a round do not put the next one off
    assert a.stats().deferred == 2 * MAX_DEFERRALS + 1 and a.stats().rounds == 5


# --- several replicas on the fake network -----------------------------------------------------------
def admit_everywhere(net: FakeNet) -> list[Assertion]:
    """The same authority records ingested directly at every replica (a shared starting point)."""
    setup = [put(ADMIN, "urn:snipe:user:alice", "_owner", ALICE.key_id, hlc.pack(NOW - 10)),
             put(ADMIN, "urn:snipe:user:bob", "_owner", BOB.key_id, hlc.pack(NOW - 10))]
    for i in range(3):
        urn = f"urn:snipe:proc:p{i}"
        setup += [put(ALICE, urn, "_owner", ALICE.key_id, hlc.pack(NOW - 9)),
                  put(ALICE, urn, "_delegate.*", [""], hlc.pack(NOW - 8))]
    for r in net.replicators.values():
        assert all(isinstance(x, Accepted) and x.new for x in r.replica.ingest(setup, net.now_ms))
    return setup


def test_a_write_is_pushed_to_all_replicas():
    names = [f"r{i}" for i in range(5)]
    net = FakeNet.of_replicas(names, ADMIN.public_key)
    setup = admit_everywhere(net)
    w = put(BOB, "urn:snipe:proc:p1", "state", "up", hlc.pack(NOW))
    assert [type(x) for x in net.write("r2", [w])] == [Accepted]
    assert net.run() == 4
    assert net.log == [("r2", p, "push") for p in ("r0", "r1", "r3", "r4")]
    expected = sorted(merge(setup, [w]).values(), key=lambda a: (a.urn, a.name, a.signer))
    assert all(net.records(n) == expected for n in names)
    # an anti-entropy period then finds nothing to repair: one ae-top each, no replies
    net.log.clear()
    net.rounds(1)
    assert sorted(net.log) == [("r0", "r1", "ae-top"), ("r1", "r0", "ae-top"), ("r2", "r0", "ae-top"),
                               ("r3", "r0", "ae-top"), ("r4", "r0", "ae-top")]


def test_a_replica_partitioned_during_1000_writes_converges_by_anti_entropy_alone():
    names = ["r0", "r1", "r2"]
    net = FakeNet.of_replicas(names, ADMIN.public_key, seed=1)
    net.partition(["r2"], ["r0", "r1"])
    writes = [put(ADMIN, f"urn:snipe:group:g{i:04d}", "n", i, hlc.pack(NOW, i)) for i in range(1000)]
    for batch in range(20):
        node = "r0" if batch % 2 == 0 else "r1"
        net.write(node, writes[batch * 50:(batch + 1) * 50])
        net.run()
        if batch % 5 == 4:
            net.rounds(1)                                # anti-entropy runs, but cannot reach r2
    assert net.replicators["r0"].storage.count() == net.replicators["r1"].storage.count() == 1000
    assert net.replicators["r2"].storage.count() == 0
    assert net.dropped > 0

    net.heal()
    net.log.clear()
    periods = net.rounds_until_converged(limit=6)
    assert 1 <= periods <= 6
    assert {kind for _, _, kind in net.log} == {"ae-top", "ae-leaves", "ae-summaries", "ae-want", "push"}
    assert net.digests("r0") == net.digests("r1") == net.digests("r2")
    assert net.records("r0") == net.records("r1") == net.records("r2") == writes


def test_tombstones_and_expiries_converge_and_gc_everywhere():
    names = ["r0", "r1", "r2", "r3"]
    grace = 20_000
    net = FakeNet.of_replicas(names, ADMIN.public_key, gc_grace_ms=grace, seed=2)
    setup = admit_everywhere(net)
    net.partition(["r3"], ["r0", "r1", "r2"])
    state = put(ALICE, "urn:snipe:proc:p0", "state", "up", hlc.pack(net.now_ms))
    lease = put(BOB, "urn:snipe:proc:p0", "alive", True, hlc.pack(net.now_ms), ttl_ms=2_000)
    net.write("r0", [state, lease])
    net.run()
    net.advance(1_000)
    gone = tomb(ALICE, "urn:snipe:proc:p0", "state", hlc.pack(net.now_ms))
    net.write("r1", [gone])
    net.in_flight, late = [m for m in net.in_flight if m.dst != "r2"], [m for m in net.in_flight if m.dst == "r2"]
    net.run()                                            # r1's push to r2 is held back, see below
    assert net.records("r3") == sorted(setup, key=lambda a: (a.urn, a.name, a.signer))

    net.heal()
    net.advance(1_500)                                   # past the lease's expiry
    net.rounds_until_converged(limit=8)
    net.advance(0)                                       # a tick for what arrived in the last period
    expected = sorted(merge(setup, [state, lease, gone]).values(), key=lambda a: (a.urn, a.name, a.signer))
    assert not lease.is_live(net.now_ms)
    for n in names:
        assert net.records(n) == expected
        changes = net.replicators[n].storage.changes_since(0, 100)[1]
        assert [c.event for c in changes if c.record == lease] == ["put", EXPIRE]

    # after the grace period every replica forgets the tombstone and the expired lease
    net.advance(grace + 1_000)
    assert net.converged()
    for n in names:
        assert net.records(n) == sorted(setup, key=lambda a: (a.urn, a.name, a.signer))
    # the push held back since the tombstone was written arrives now: a no-op, nothing resurrected
    net.in_flight.extend(late)
    net.run()
    assert net.converged()
    assert net.records("r2") == net.records("r0")
    assert net.replicators["r2"].storage.top_digests() != [ZERO] * 256


# --- random fault schedules ---------------------------------------------------------------------------
SIGNERS = (ADMIN, ALICE, BOB)
write_op = st.tuples(st.just("write"), st.integers(0, 4), st.integers(0, 2), st.integers(0, 2),
                     st.sampled_from(("a", "b")), st.integers(0, 40), st.booleans(), st.integers(0, 3))
fault_op = st.one_of(
    st.tuples(st.just("deliver"), st.integers(1, 6)),
    st.tuples(st.just("partition"), st.sets(st.integers(0, 4), min_size=1, max_size=3)),
    st.tuples(st.just("heal")),
    st.tuples(st.just("period")),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(3, 5), seed=st.integers(0, 2**32 - 1), drop=st.sampled_from((0.0, 0.1, 0.3, 0.6)),
       duplicate=st.sampled_from((0.0, 0.2, 0.5)), reorder=st.booleans(),
       ops=st.lists(st.one_of(write_op, fault_op), min_size=1, max_size=40))
def test_any_fault_schedule_converges_to_the_merge_of_all_writes(n, seed, drop, duplicate, reorder, ops):
    names = [f"r{i}" for i in range(n)]
    net = FakeNet.of_replicas(names, ADMIN.public_key, seed=seed, drop=drop, duplicate=duplicate, reorder=reorder)
    setup = admit_everywhere(net)
    written: list[Assertion] = []
    for op in ops:
        match op:
            case ("write", node, signer, urn, name, ts, deleted, value):
                ts = hlc.pack(NOW + ts, signer)
                proc = f"urn:snipe:proc:p{urn}"
                a = (tomb(SIGNERS[signer], proc, name, ts) if deleted
                     else put(SIGNERS[signer], proc, name, value, ts))
                written.append(a)
                net.write(names[node % n], [a])
            case ("deliver", k):
                for _ in range(k):
                    net.step()
            case ("partition", group):
                net.partition({names[i % n] for i in group}, set(names) - {names[i % n] for i in group})
            case ("heal",):
                net.heal()
            case ("period",):
                net.advance(1_000, deliver=False)
    net.heal()
    net.drop = net.duplicate = 0.0
    net.run()
    net.rounds_until_converged(limit=2 * n + 2)
    expected = sorted(merge(setup, written).values(), key=lambda a: (a.urn, a.name, a.signer))
    for name in names:
        assert net.records(name) == expected


# --- malformed peer messages ------------------------------------------------------------------------
GOOD_TOPS = bytes(32 * 256)
MALFORMED = [
    ("unknown kind", Envelope(PROTOCOL, VERSION, "ae-bogus", 0, {"from": "B"}), []),
    ("no sender", Envelope(PROTOCOL, VERSION, "push", 0, {}), [pack_records([])]),
    ("push without its records frame", env("push", "B"), []),
    ("push of one frame per record", env("push", "B"), [pack_records([]), pack_records([])]),
    ("push frame not an array", env("push", "B"), [msgpack.packb({"a": 1})]),
    ("push frame not msgpack", env("push", "B"), [b"\x92\xc4"]),
    ("push of strings", env("push", "B"), [msgpack.packb(["record"])]),
    ("ae-want frame not an array", env("ae-want", "B"), [b"key"]),
    ("sender not a string", Envelope(PROTOCOL, VERSION, "ae-top", 0, {"from": 7}), [GOOD_TOPS]),
    ("ae-top without digests", env("ae-top", "B"), []),
    ("ae-top short", env("ae-top", "B"), [GOOD_TOPS[:-1]]),
    ("ae-top two frames", env("ae-top", "B"), [GOOD_TOPS, GOOD_TOPS]),
    ("ae-leaves without tops", env("ae-leaves", "B"), [bytes(32 * 256)]),
    ("ae-leaves tops not a list", env("ae-leaves", "B", tops="0"), [bytes(32 * 256)]),
    ("ae-leaves top out of range", env("ae-leaves", "B", tops=[256]), [bytes(32 * 256)]),
    ("ae-leaves negative top", env("ae-leaves", "B", tops=[-1]), [bytes(32 * 256)]),
    ("ae-leaves top not an int", env("ae-leaves", "B", tops=["0"]), [bytes(32 * 256)]),
    ("ae-leaves frames missing", env("ae-leaves", "B", tops=[0, 1]), [bytes(32 * 256)]),
    ("ae-leaves frame short", env("ae-leaves", "B", tops=[0]), [bytes(32 * 255)]),
    ("ae-summaries without leaves", env("ae-summaries", "B"), [msgpack.packb([])]),
    ("ae-summaries leaf out of range", env("ae-summaries", "B", leaves=[65536]), [msgpack.packb([])]),
    ("ae-summaries frames missing", env("ae-summaries", "B", leaves=[1, 2]), [msgpack.packb([])]),
    ("ae-summaries not msgpack", env("ae-summaries", "B", leaves=[1]), [b"\xc1"]),
    ("ae-summaries not a list", env("ae-summaries", "B", leaves=[1]), [msgpack.packb({"a": 1})]),
    ("ae-summaries short entry", env("ae-summaries", "B", leaves=[1]), [msgpack.packb([[b"k", 1]])]),
    ("ae-summaries bad ts", env("ae-summaries", "B", leaves=[1]),
     [msgpack.packb([[b"k", "1", b"s" * 8]], use_bin_type=True)]),
    ("ae-summaries key not bytes", env("ae-summaries", "B", leaves=[1]),
     [msgpack.packb([["k", 1, b"s" * 8]], use_bin_type=True)]),
]


@pytest.fixture
def holder() -> Replicator:
    a = replicator("A", ["A", "B"])
    a.replica.ingest([put(ADMIN, f"urn:snipe:group:g{i}", "n", i, hlc.pack(NOW)) for i in range(20)], NOW)
    return a


@pytest.mark.parametrize(("what", "envelope", "frames"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_peer_messages_raise_codec_error_and_change_nothing(holder, what, envelope, frames):
    before = snapshot(holder)
    with pytest.raises(CodecError):
        holder.on_message(envelope, frames, NOW)
    assert snapshot(holder) == before


def test_a_push_of_garbage_is_refused_record_by_record(holder):
    before = snapshot(holder)
    forged = put(ADMIN, "urn:snipe:group:x", "n", 1, hlc.pack(NOW))
    forged = Assertion(forged.urn, forged.name, 2, forged.ts, 0, False, forged.signer, forged.signature)
    unadmitted = put(BOB, "urn:snipe:proc:x", "_owner", BOB.key_id, hlc.pack(NOW))
    assert holder.on_message(env("push", "B"), [pack_records([b"", b"\xc1", forged.encode(), unadmitted.encode()])],
                             NOW) == []
    assert snapshot(holder) == before


def test_a_push_over_the_limit_is_refused_whole(holder):
    before = snapshot(holder)
    r = put(ADMIN, "urn:snipe:group:x", "n", 1, hlc.pack(NOW))
    with pytest.raises(TooLarge, match="at most 500 records"):
        holder.on_message(env("push", "B"), [pack_records([r.encode()] * (MAX_PUSH_RECORDS + 1))], NOW)
    assert snapshot(holder) == before


def test_wants_for_unknown_keys_push_nothing(holder):
    assert holder.on_message(env("ae-want", "B"), [pack_records([b"", b"\0\0nothing", b"x" * 100])], NOW) == []


# --- a known gap: claim races leave record sets different for good ---------------------------------------
def test_racing_claims_converge():
    net = FakeNet.of_replicas(["r0", "r1"], ADMIN.public_key)
    admit_everywhere(net)
    net.partition(["r0"], ["r1"])
    net.write("r0", [put(ALICE, "urn:snipe:proc:race", "_owner", ALICE.key_id, hlc.pack(NOW, 1))])
    net.write("r1", [put(BOB, "urn:snipe:proc:race", "_owner", BOB.key_id, hlc.pack(NOW, 2))])
    net.run()
    net.heal()
    net.rounds_until_converged(limit=6)
