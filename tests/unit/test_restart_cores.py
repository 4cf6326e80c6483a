"""The I/O-free parts of checkpoint/restart: retention and resume in the channel core, the
takeover planner, sealed task secrets. Transcripts first, then a hypothesis property."""

from __future__ import annotations

import logging
import os
import random
import threading
from collections import deque
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snipe.effects import Send
from snipe.errors import ConfigError, IntegrityError
from snipe.identity import Identity
from snipe.messaging import snapshot
from snipe.messaging.channel import (
    RESUMED_ANY,
    Deliver,
    DeliveryFailed,
    Inbound,
    Outbound,
    ResumeAsks,
    ResumeWanted,
    parse_ack,
    parse_data,
    resumed_of,
    ri_malformed,
)
from snipe.messaging.endpoint import (
    RESOLVE_EVERY_S,
    RETAINED_RESOLVE_EVERY_S,
    RETAINED_RESOLVE_TIMEOUT_S,
    Endpoint,
    _Peer,
    resolve_due,
    retained_resolve_every_s,
)
from snipe.replication.sealed import seal, unseal
from snipe.replication.takeover import Claim, TakeoverPlanner, Watched, claim_urn, ranking
from snipe.wire import Envelope


def sent(n: int, retain: int = 100) -> Outbound:
    out = Outbound("a", "b", rng=random.Random(1))
    out.retain = retain
    for i in range(1, n + 1):
        out.submit(0, b"m%d" % i, 0.0, float("inf"))
    out.flush(0.0)
    return out


def seqs_of(sends: list) -> list[int]:
    return [s.envelope.body["q"] + i for s in sends for i in range(len(s.frames))]


def feed(inbound: Inbound, sends: list) -> list[Deliver]:
    got: list[Deliver] = []
    for s in sends:
        d, _ = inbound.on_data(*parse_data(s.envelope, s.frames), s.frames, resumed_of(s.envelope.body))
        got += d
    return got


def test_acknowledged_messages_are_retained_until_checkpointed_and_resent_on_resume() -> None:
    out = sent(5)
    out.on_ack(out.session, 5, 0.1)
    assert [h.seq for h in out.retained] == [1, 2, 3, 4, 5] and out.room() == out.hwm   # retained do not block
    out.on_checkpointed(out.session, 2)
    assert [h.seq for h in out.retained] == [3, 4, 5]
    sends, failed = out.on_resume(out.session, 2, 0.2)
    assert failed == [] and seqs_of(sends) == [3, 4, 5]
    assert sends[0].envelope.body["b"] == 3 and sends[0].envelope.body["r"] == 1
    assert list(sends[0].frames) == [b"m3", b"m4", b"m5"]
    assert out.retained == type(out.retained)()


def test_what_fell_out_of_retention_is_reported_failed_never_skipped_silently() -> None:
    out = sent(5, retain=2)
    out.on_ack(out.session, 5, 0.1)
    sends, failed = out.on_resume(out.session, 1, 0.2)
    assert [f.seq for f in failed] == [2, 3] and all(isinstance(f, DeliveryFailed) and "checkpoint" in f.reason
                                                     for f in failed)
    assert seqs_of(sends) == [4, 5] and sends[0].envelope.body["b"] == 4


def test_a_resume_for_another_session_changes_nothing() -> None:
    out = sent(3)
    out.on_ack(out.session, 3, 0.1)
    assert out.on_resume(out.session ^ 1, 0, 0.2) == ([], [])
    assert len(out.retained) == 3


def test_a_restored_inbound_waits_for_the_resent_messages_before_later_ones() -> None:
    out = sent(8)
    out.on_ack(out.session, 5, 0.1)                         # 1..5 reached the incarnation that died
    inbound = Inbound.restored("b", "a", out.session, 3)    # its checkpoint held 1..2
    stale, _ = out.on_timer(10.0)                           # 6..8 retransmitted before the resume arrives
    assert feed(inbound, stale) == []                       # pinned: base 6 does not skip 3..5
    sends, failed = out.on_resume(out.session, 2, 10.1)
    assert failed == []
    assert [d.seq for d in feed(inbound, sends)] == [3, 4, 5, 6, 7, 8]


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 40), data=st.data())
def test_every_message_after_the_checkpoint_is_delivered_once_in_order_or_reported(n: int, data: st.DataObject
                                                                                  ) -> None:
    acked = data.draw(st.integers(0, n), label="acknowledged before the crash")
    ckpt = data.draw(st.integers(0, acked), label="held by the checkpoint")
    retain = data.draw(st.integers(0, n), label="retention")
    early = data.draw(st.booleans(), label="retransmission arrives before the resume")
    out = sent(n, retain=retain)
    if acked:
        out.on_ack(out.session, acked, 0.1)
    inbound = Inbound.restored("b", "a", out.session, ckpt + 1)
    got: list[Deliver] = []
    if early:
        stale, _ = out.on_timer(10.0)
        got += feed(inbound, stale)
    sends, failed = out.on_resume(out.session, ckpt, 10.1)
    got += feed(inbound, sends)
    if not early:
        more, _ = out.on_timer(20.0)
        got += feed(inbound, more)
    delivered = [d.seq for d in got]
    lost = [f.seq for f in failed]
    assert delivered == sorted(set(delivered))                         # once each, in order
    assert sorted(delivered + lost) == list(range(ckpt + 1, n + 1))     # nothing silently missing
    assert all(q > ckpt for q in lost) and len(lost) == max(0, acked - ckpt - retain)


# --- sessions the checkpoint knows nothing of --------------------------------------------------------
# The receiver R checkpoints; then a sender's session to it begins (its first to R, or a new one
# after a failure); R acknowledges its messages, is lost, and is restored from that checkpoint.
# The shell gives a restored endpoint's channels its restore's id (R below: RESTORE), and sends a
# RESUME for each ResumeWanted, answered with on_resume(..., RESTORE).
RESTORE = 7


def test_a_session_that_began_after_the_checkpoint_is_resumed_from_its_first_message() -> None:
    out = Outbound("a", "b", rng=random.Random(1))
    out.retain = 100
    for i in range(1, 6):
        out.submit(0, b"m%d" % i, 0.0, float("inf"))
    assert [d.seq for d in feed(Inbound("b", "a"), out.flush(0.0))] == [1, 2, 3, 4, 5]
    out.on_ack(out.session, 5, 0.1)                          # the incarnation that was lost had them all
    restored = Inbound("b", "a", restore=RESTORE)           # what a restored endpoint makes for a new source
    out.submit(0, b"m6", 2.0, float("inf"))
    assert feed(restored, out.flush(2.0)) == []             # base 6: held, not skipped to
    assert restored.take_resume_wanted() == [ResumeWanted("a", out.session, 0)]
    assert restored.take_resume_wanted() == []              # asked once
    sends, failed = out.on_resume(out.session, 0, 2.1, RESTORE)
    assert failed == [] and seqs_of(sends) == [1, 2, 3, 4, 5, 6]
    assert sends[0].envelope.body["r"] == 1 and sends[0].envelope.body["ri"] == RESTORE
    assert [(d.seq, d.payload) for d in feed(restored, sends)] == [(q, b"m%d" % q) for q in range(1, 7)]
    assert out.on_resume(out.session, 0, 2.2, RESTORE) == ([], [])    # the same restore again: nothing


def test_an_idle_sender_probes_a_new_incarnation_and_gets_the_resume() -> None:
    out = sent(3)
    out.on_ack(out.session, 3, 0.1)                          # all acknowledged: nothing to send, 3 retained
    probe = out.probe()
    assert probe.frames == () and probe.envelope.body == {"s": out.session, "b": 4, "q": 4, "t": []}
    restored = Inbound("b", "a", restore=RESTORE)
    delivered, ack = restored.on_data(*parse_data(probe.envelope, probe.frames), probe.frames)
    assert delivered == [] and ack.envelope.body == {"s": out.session, "c": 0}
    assert restored.take_resume_wanted() == [ResumeWanted("a", out.session, 0)]
    sends, failed = out.on_resume(out.session, 0, 0.2, RESTORE)
    assert failed == [] and [d.seq for d in feed(restored, sends)] == [1, 2, 3]
    # an incarnation that knows the session (never lost, or restored knowing it) takes the probe as nothing
    for knows in (Inbound("b", "a"), Inbound.restored("b", "a", out.session, 4, restore=RESTORE)):
        knows.on_data(out.session, 1, 1, [0, 0, 0], [b"m1", b"m2", b"m3"])
        delivered, ack = knows.on_data(*parse_data(out.probe().envelope, ()), ())
        assert delivered == [] and knows.take_resume_wanted() == [] and ack.envelope.body["c"] == 3


def test_a_known_senders_session_that_began_after_the_checkpoint_is_resumed_too() -> None:
    out = sent(2)
    out.on_ack(out.session, 2, 0.1)
    old = out.session                                        # the checkpoint holds 1..2 of this session
    out.submit(0, b"lost", 0.2, 1.0)
    out.flush(0.2)
    assert [f.seq for f in out.on_timer(1.0)[1]] == [3]      # reported failed: a new session begins
    for i in range(3):
        out.submit(0, b"n%d" % i, 2.0, float("inf"))
    out.flush(2.0)
    out.on_ack(out.session, 3, 2.1)                          # acknowledged by the incarnation that was lost
    restored = Inbound.restored("b", "a", old, 3, restore=RESTORE)
    assert out.on_resume(old, 2, 3.0, RESTORE) == ([], [])   # its RESUME names a session the sender left
    out.submit(0, b"n3", 3.1, float("inf"))
    assert feed(restored, out.flush(3.1)) == []
    assert restored.take_resume_wanted() == [ResumeWanted("a", out.session, 0)]
    sends, failed = out.on_resume(out.session, 0, 3.2, RESTORE)
    assert failed == [] and [d.payload for d in feed(restored, sends)] == [b"n0", b"n1", b"n2", b"n3"]


def test_what_fell_out_of_retention_in_a_session_after_the_checkpoint_is_reported_failed() -> None:
    out = sent(5, retain=2)
    out.on_ack(out.session, 5, 0.1)
    restored = Inbound("b", "a", restore=RESTORE)
    assert feed(restored, [out.probe()]) == [] and len(restored.take_resume_wanted()) == 1
    sends, failed = out.on_resume(out.session, 0, 0.2, RESTORE)
    assert [f.seq for f in failed] == [1, 2, 3] and seqs_of(sends) == [4, 5]
    assert [d.seq for d in feed(restored, sends)] == [4, 5]          # skips to the base once answered


def test_a_restored_receiver_asks_nothing_of_sessions_it_knows_or_that_begin_at_one() -> None:
    """No resume wanted (from data) for a session that starts after the restore (base 1: nothing
    was acknowledged), nor for one the checkpoint had left: it knows where that stopped (a late
    packet of it is not delivered again), and the restore asked it already (snapshot.restore).
    Such a session is pinned like the checkpoint's current one (it used not to be, and data with
    a base above where it stopped skipped what it lacked: the next test)."""
    fresh = Inbound("b", "a", restore=RESTORE)
    assert [d.seq for d in fresh.on_data(11, 1, 1, [0, 0], [b"x", b"y"])[0]] == [1, 2]
    restored = Inbound.restored("b", "a", 12, 5, restore=RESTORE, left={11: 3})
    assert restored.on_data(11, 1, 1, [0, 0], [b"x", b"y"])[0] == []        # delivered before the checkpoint
    assert restored.on_data(11, 2, 2, [0], [b"y"])[0] == []
    assert restored.pinned and restored.expected == 3
    assert fresh.take_resume_wanted() == [] and restored.take_resume_wanted() == []


def test_a_session_the_checkpoint_had_left_is_pinned_and_resumed_where_it_stopped() -> None:
    """The checkpoint's current session was a late packet of an old one (777); the sender's own
    session was left, at 3. Data with base 6 must not skip 3..5: the restore asked the sender to
    resume after 2, and its answer brings them."""
    out = sent(5)
    out.on_ack(out.session, 5, 0.1)                          # the incarnation that was lost had 1..5
    restored = Inbound.restored("b", "a", 777, 10, restore=RESTORE, left={out.session: 3})
    out.submit(0, b"m6", 1.0, float("inf"))
    assert feed(restored, out.flush(1.0)) == [] and restored.expected == 3 and restored.pinned
    sends, failed = out.on_resume(out.session, 2, 1.1, RESTORE)
    assert failed == [] and [d.seq for d in feed(restored, sends)] == [3, 4, 5, 6] and not restored.pinned


def test_the_restore_sends_a_resume_for_each_session_the_checkpoint_had_left() -> None:
    submitted: list[tuple[str, int, dict]] = []
    ep = SimpleNamespace(me="b", window=4096, restore=0, inbound={}, inbox=deque(), cond=threading.Condition(),
                         submit=lambda dest, tag, payload, *_: submitted.append(
                             (dest, tag, msgpack.unpackb(payload, raw=False))))
    lib = {"state": {"in": [["a", {"session": 12, "expected": 5, "left": [[11, 3], [10, 1]]}]]}, "payloads": []}
    snapshot.restore(ep, lib)  # type: ignore[arg-type]
    n = ep.restore
    assert submitted == [("a", snapshot.TAG_RESUME, {"s": 12, "c": 4, "n": n}),
                         ("a", snapshot.TAG_RESUME, {"s": 11, "c": 2, "n": n}),
                         ("a", snapshot.TAG_RESUME, {"s": 10, "c": 0, "n": n})]
    ib = ep.inbound["a"]
    assert ib.pinned and ib.left == {11: 3, 10: 1} and ib.left_pinned == {11, 10}


def test_the_pin_survives_switching_to_another_session_and_back() -> None:
    """A late packet of another session between two of a pinned one's must not cost the pin:
    switching back used to deliver [6] and skip 1..5 silently."""
    out = sent(5)
    out.on_ack(out.session, 5, 0.1)
    restored = Inbound("b", "a", restore=RESTORE)
    assert feed(restored, [out.probe()]) == [] and len(restored.take_resume_wanted()) == 1 and restored.pinned
    assert [d.seq for d in restored.on_data(555, 1, 1, [0], [b"late"])[0]] == [1]      # another session
    out.submit(0, b"m6", 1.0, float("inf"))
    assert feed(restored, out.flush(1.0)) == [] and restored.pinned and restored.expected == 1
    assert restored.take_resume_wanted() == []               # it knows this one: asked already
    state = restored.export_state()                           # a migration keeps the pins too
    moved = Inbound("b", "a")
    moved.restore_state(state)
    assert moved.restore == RESTORE and moved.pinned
    sends, failed = out.on_resume(out.session, 0, 1.1, RESTORE)
    assert failed == [] and [d.seq for d in feed(restored, sends)] == [1, 2, 3, 4, 5, 6]


# --- wire compatibility: senders and receivers from before restore ids -------------------------------
def as_old_sender(s: Send) -> Send:
    """Data as a sender from before restore ids sends it: "r": 1 once resumed (it ignores "n")."""
    body = {k: v for k, v in s.envelope.body.items() if k != "ri"}
    return Send(s.to, Envelope(s.envelope.protocol, s.envelope.version, s.envelope.kind, 0, body), s.frames)


def test_an_old_senders_answer_to_a_resume_unpins_a_restored_receiver() -> None:
    """It answers with "r": 1 and no "ri": taken as the answer, as before restore ids (a receiver
    that waited for its restore's id stalled for ever once retention had dropped anything)."""
    out = sent(5, retain=2)
    out.on_ack(out.session, 5, 0.1)                          # retained: 4, 5 (3 fell out)
    restored = Inbound.restored("b", "a", out.session, 3, restore=RESTORE)     # its checkpoint held 1..2
    sends, failed = out.on_resume(out.session, 2, 0.2, RESTORE)
    assert [f.seq for f in failed] == [3]                    # reported at the sender
    old = [as_old_sender(s) for s in sends]
    assert old[0].envelope.body["r"] == 1 and resumed_of(old[0].envelope.body) == RESUMED_ANY
    assert [d.seq for d in feed(restored, old)] == [4, 5] and not restored.pinned
    out.submit(0, b"m6", 0.3, float("inf"))
    assert [d.seq for d in feed(restored, [as_old_sender(s) for s in out.flush(0.3)])] == [6]
    # a session the checkpoint never knew
    out = sent(5, retain=2)
    out.on_ack(out.session, 5, 0.1)
    unknown = Inbound("b", "a", restore=RESTORE)
    assert feed(unknown, [out.probe()]) == [] and len(unknown.take_resume_wanted()) == 1
    sends, failed = out.on_resume(out.session, 0, 0.2, RESTORE)
    assert [f.seq for f in failed] == [1, 2, 3]
    assert [d.seq for d in feed(unknown, [as_old_sender(s) for s in sends])] == [4, 5] and not unknown.pinned


def test_a_malformed_restore_id_is_ignored_and_said() -> None:
    assert resumed_of({"r": 1, "ri": RESTORE}) == RESTORE and resumed_of({}) == 0 and resumed_of({"ri": 9}) == 0
    for bad in ("7", 1, 0, -3, 2**62, True, 7.0, [7]):
        assert ri_malformed({"r": 1, "ri": bad}) and resumed_of({"r": 1, "ri": bad}) == RESUMED_ANY
    assert not ri_malformed({"r": 1}) and not ri_malformed({"r": 1, "ri": RESTORE})
    said: list[str] = []
    shell = SimpleNamespace(me="b", _may_say=lambda *_: True)
    handler = logging.Handler()
    handler.emit = lambda record: said.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("snipe.messaging").addHandler(handler)
    try:
        assert Endpoint._resumed(shell, "a", {"r": 1, "ri": "x"}) == RESUMED_ANY  # type: ignore[arg-type]
    finally:
        logging.getLogger("snipe.messaging").removeHandler(handler)
    assert len(said) == 1 and "'x'" in said[0]


def test_an_old_receiver_restored_twice_within_one_session_is_answered_each_time() -> None:
    """Its RESUME names no restore ("n"): each is answered (one that names one, only once)."""
    out = sent(3)
    out.on_ack(out.session, 3, 0.1)
    first, _ = out.on_resume(out.session, 1, 0.2)
    assert seqs_of(first) == [2, 3] and first[0].envelope.body["r"] == 1 and "ri" not in first[0].envelope.body
    out.on_ack(out.session, 3, 0.3)
    second, failed = out.on_resume(out.session, 1, 0.4)
    assert seqs_of(second) == [2, 3] and failed == []
    out.on_ack(out.session, 3, 0.5)
    assert seqs_of(out.on_resume(out.session, 1, 0.6, RESTORE)[0]) == [2, 3]
    out.on_ack(out.session, 3, 0.7)
    assert out.on_resume(out.session, 1, 0.8, RESTORE) == ([], [])
    old = Deliver("a", snapshot.TAG_RESUME, msgpack.packb({"s": 5, "c": 1}), 1)
    assert snapshot._position(old) == (5, 1, 0)


# --- what the shell does about it ----------------------------------------------------------------------
def test_a_probe_is_owed_until_the_new_incarnation_acknowledges_the_session() -> None:
    """A lost probe (no link yet, a full queue, a dropped packet) goes again on the next look at
    the receiver's entry, until an acknowledgement of the session shows it arrived."""
    out = sent(3)
    out.on_ack(out.session, 3, 0.1)
    assert out.probes() == []
    out.instance_changed("i2")
    assert out.probes() == [out.probe()]                      # lost
    assert out.probes() == [out.probe()]                      # the next look: again
    restored = Inbound("b", "a", restore=RESTORE)
    probe = out.probes()[0]
    _, ack = restored.on_data(*parse_data(probe.envelope, probe.frames), probe.frames)
    out.on_ack(*parse_ack(ack.envelope), 1.0)
    assert out.probes() == [] and out.probe_owed is None
    nothing = sent(2, retain=0)
    nothing.on_ack(nothing.session, 2, 0.1)
    nothing.instance_changed("i2")
    assert nothing.probes() == []                              # nothing retained: nothing to tell


def test_a_peer_we_only_retain_messages_for_is_re_read_seldom_with_a_short_timeout() -> None:
    """Simulated time, _timers' turns every 0.25 s: a peer with messages to deliver is re-read
    every RESOLVE_EVERY_S with the catalog client's own timeout; one we only retain messages for
    every RETAINED_RESOLVE_EVERY_S (its jitter: 0.75-1.25 times), never waiting long; one owed a
    probe every RESOLVE_EVERY_S, with the short timeout."""
    def reads(p: _Peer, until: float) -> list[float | None]:
        got = []
        for turn in range(int(until / 0.25)):
            now = turn * 0.25
            due = resolve_due(p, now)
            if due is not None:
                got.append(due)
                p.resolved_at = now
        return got

    retained = _Peer("urn:b", sent(3))
    retained.out.on_ack(retained.out.session, 3, 0.1)
    retained.resolved_at = 0.0
    got = reads(retained, 600.0)
    assert 600 / (1.25 * RETAINED_RESOLVE_EVERY_S) - 1 <= len(got) <= 600 / (0.75 * RETAINED_RESOLVE_EVERY_S)
    assert set(got) == {RETAINED_RESOLVE_TIMEOUT_S}
    held = _Peer("urn:b", sent(3))                           # 1..3 unacknowledged
    held.resolved_at = 0.0
    got = reads(held, 60.0)
    assert set(got) == {0.0} and 60 / RESOLVE_EVERY_S - 2 <= len(got) <= 60 / RESOLVE_EVERY_S
    retained.out.instance_changed("i2")
    retained.resolved_at = 0.0
    assert len(reads(retained, 60.0)) >= 60 / RESOLVE_EVERY_S - 2
    assert len({_Peer("urn:b", sent(1)).jitter for _ in range(8)}) > 1          # not all at once
    assert all(0.75 <= _Peer("urn:b", sent(1)).jitter <= 1.25 for _ in range(50))


def test_a_source_with_ever_new_sessions_gets_one_resume_at_a_time() -> None:
    """Data in a fresh session with a high base each time: one RESUME outstanding, the newest
    wanted waits for it (replacing any older), and goes once it is acknowledged, or has failed."""
    asks, to_evil = ResumeAsks(), Outbound("b", "evil", rng=random.Random(3))
    restored = Inbound("b", "evil", restore=RESTORE)
    rng = random.Random(5)
    sent_asks: list[ResumeWanted] = []

    def send(w: ResumeWanted, now: float) -> None:
        asks.sent(w.source, to_evil, to_evil.next_seq)
        to_evil.submit(snapshot.TAG_RESUME, b"resume", now, now + 30.0)
        to_evil.flush(now)
        sent_asks.append(w)

    last = 0
    for _ in range(1000):
        last = rng.getrandbits(63)
        restored.on_data(last, 1000, 1000, [], [])
        for w in restored.take_resume_wanted():
            if asks.want(w, to_evil):
                send(w, 0.0)
    assert len(sent_asks) == 1 and to_evil.held() == 1
    assert asks.due("evil", to_evil) is None                  # still outstanding
    to_evil.on_ack(to_evil.session, 1, 0.1)                   # acknowledged: the newest wanted goes
    w = asks.due("evil", to_evil)
    assert w == ResumeWanted("evil", last, 0) and asks.due("evil", to_evil) is None
    send(w, 0.2)
    restored.on_data(rng.getrandbits(63), 1000, 1000, [], [])
    assert not asks.want(restored.take_resume_wanted()[0], to_evil)
    assert to_evil.on_timer(31.0)[1] != []                    # never acknowledged: failed at its deadline
    assert asks.due("evil", to_evil) is not None and len(sent_asks) == 2


def test_a_line_about_what_a_peer_keeps_doing_is_logged_once_a_minute() -> None:
    shell = SimpleNamespace(_said={})
    say = [Endpoint._may_say(shell, "resume-ask", "evil", t) for t in (0.0, 1.0, 59.0, 61.0)]  # type: ignore[arg-type]
    assert say == [True, False, False, True]
    assert Endpoint._may_say(shell, "resume-ask", "other", 1.0)  # type: ignore[arg-type]


def test_the_answer_to_one_restore_does_not_unpin_the_next() -> None:
    """The receiver is restored twice within one session of the sender: data still marked with
    the first restore's id must not let the second incarnation skip what it lacks."""
    out = sent(3)
    out.on_ack(out.session, 3, 0.1)
    first = Inbound.restored("b", "a", out.session, 2, restore=RESTORE)     # its checkpoint held 1
    sends, _ = out.on_resume(out.session, 1, 0.2, RESTORE)
    assert [d.seq for d in feed(first, sends)] == [2, 3]
    out.on_ack(out.session, 3, 0.3)
    for i in range(4, 7):
        out.submit(0, b"m%d" % i, 0.4, float("inf"))
    assert [d.seq for d in feed(first, out.flush(0.4))] == [4, 5, 6]
    out.on_ack(out.session, 6, 0.5)
    out.on_checkpointed(out.session, 3)                      # its next checkpoint held 1..3; then it was lost
    second = Inbound.restored("b", "a", out.session, 4, restore=RESTORE + 1)
    out.submit(0, b"m7", 0.6, float("inf"))
    early = out.flush(0.6)
    assert early[0].envelope.body["ri"] == RESTORE and feed(second, early) == []    # still pinned at 4
    sends, failed = out.on_resume(out.session, 3, 0.7, RESTORE + 1)
    assert failed == [] and [d.seq for d in feed(second, sends)] == [4, 5, 6, 7]


def test_a_restored_senders_new_session_is_delivered_not_taken_for_old() -> None:
    """The mirror: R had sent to S after its checkpoint; restored, R knows nothing of that and
    sends again in a new session, from seq 1. S delivers those (what R re-executes it sends again:
    a new message to S), and nothing of the old session twice."""
    first_run = Outbound("r", "s", rng=random.Random(1))
    inbound = Inbound("s", "r")
    for i in range(1, 4):
        first_run.submit(0, b"old%d" % i, 0.0, float("inf"))
    assert [d.payload for d in feed(inbound, first_run.flush(0.0))] == [b"old1", b"old2", b"old3"]
    restored = Outbound("r", "s", rng=random.Random(2))     # a fresh channel, a session of its own
    assert restored.session != first_run.session
    restored.submit(0, b"again1", 1.0, float("inf"))
    assert [(d.seq, d.payload) for d in feed(inbound, restored.flush(1.0))] == [(1, b"again1")]
    assert feed(inbound, first_run.on_timer(10.0)[0]) == []            # a late packet of the first run


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(1, 30), more=st.integers(0, 4), data=st.data())
def test_a_session_unknown_to_the_checkpoint_loses_nothing_silently(n: int, more: int, data: st.DataObject) -> None:
    acked = data.draw(st.integers(0, n), label="acknowledged by the incarnation that was lost")
    retain = data.draw(st.integers(0, n), label="retention")
    out = sent(n, retain=retain)
    if acked:
        out.on_ack(out.session, acked, 0.1)
    restored = Inbound("b", "a", restore=RESTORE)
    for i in range(more):                                   # sent after the restart, or (none) a probe
        out.submit(0, b"late%d" % i, 1.0, float("inf"))
    got = feed(restored, out.flush(1.0) if more else [out.probe()])
    got += feed(restored, out.on_timer(5.0)[0])             # what the lost incarnation had not acknowledged
    failed: list[DeliveryFailed] = []
    for want in restored.take_resume_wanted():
        sends, lost = out.on_resume(want.session, want.cum, 6.0, RESTORE)
        failed += lost
        got += feed(restored, sends)
    got += feed(restored, out.on_timer(20.0)[0])
    delivered, lost = [d.seq for d in got], [f.seq for f in failed]
    assert delivered == sorted(set(delivered))                         # once each, in order
    assert sorted(delivered + lost) == list(range(1, n + more + 1))    # nothing silently missing
    assert len(lost) == max(0, acked - retain)


# --- who takes over --------------------------------------------------------------------------------
W = Watched("urn:snipe:proc:t", "urn:snipe:host:h2", 0,
            ("urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"))


def test_nothing_is_claimed_while_the_tasks_host_is_live() -> None:
    p = TakeoverPlanner("urn:snipe:host:h1")
    assert p.observe([W], {"urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"}, 0.0) == []


def test_the_first_ranked_survivor_claims_at_once_the_second_after_the_stagger_each_once() -> None:
    live = {"urn:snipe:host:h1", "urn:snipe:host:h3"}
    first, second = ranking(W, live)
    claim = Claim(W.urn, 1, claim_urn(W.urn, 1))
    a, b = TakeoverPlanner(first, stagger=1.0), TakeoverPlanner(second, stagger=1.0)
    assert a.observe([W], live, 5.0) == [claim] and b.observe([W], live, 5.0) == []
    assert a.observe([W], live, 9.0) == []                   # claimed once
    assert b.observe([W], live, 5.9) == [] and b.observe([W], live, 6.0) == [claim]


def test_a_host_that_is_not_a_candidate_never_claims_and_standbys_keep_their_order() -> None:
    live = {"urn:snipe:host:h1", "urn:snipe:host:h3", "urn:snipe:host:h4"}
    assert TakeoverPlanner("urn:snipe:host:h4").observe([W], live, 0.0) == []
    standby = Watched(W.urn, W.host, 2, ("urn:snipe:host:h3", "urn:snipe:host:h1"), ordered=True)
    assert ranking(standby, live) == ["urn:snipe:host:h3", "urn:snipe:host:h1"]
    assert TakeoverPlanner("urn:snipe:host:h3", stagger=1.0).observe([standby], live, 0.0) == [
        Claim(W.urn, 3, f"{W.urn}.takeover3")]


def test_a_host_that_comes_back_resets_the_wait() -> None:
    live = {"urn:snipe:host:h1", "urn:snipe:host:h3"}
    second = ranking(W, live)[1]
    p = TakeoverPlanner(second, stagger=1.0)
    assert p.observe([W], live, 0.0) == []
    assert p.observe([W], live | {W.host}, 0.5) == []        # its host renewed its lease
    assert p.observe([W], live, 0.9) == []                   # the wait starts again from here
    assert p.observe([W], live, 1.9) == [Claim(W.urn, 1, claim_urn(W.urn, 1))]


def test_a_standby_receivers_retention_drops_nothing_and_past_its_byte_budget_holds_the_sender() -> None:
    """A restartable receiver's retention is best effort (bounded in count and bytes); a standby
    one's is a promise: nothing acknowledged leaves before a checkpoint holds it, and past the
    byte budget the sender waits for that checkpoint instead."""
    big = 1 << 20
    for strict in (False, True):
        out = Outbound("a", "b", rng=random.Random(1), window=64, hwm=1000, window_bytes=64 * big)
        out.retain, out.strict, out.retain_bytes = 65536, strict, 8 * big
        for _ in range(12):
            out.submit(0, b"x" * big, 0.0, float("inf"))
        out.flush(0.0)
        out.on_ack(out.session, 12, 0.1)
        if not strict:
            assert len(out.retained) == 8 and out.retained_unsettled() == 0       # the oldest 4 let go
            continue
        assert [h.seq for h in out.retained] == list(range(1, 13))                 # all 12 MiB kept
        assert out.retained_unsettled() >= out.hwm and out.room() <= 0             # the sender waits
        out.on_checkpointed(out.session, 10)
        assert out.retained_unsettled() == 2 and out.room() == out.hwm - 2         # it may go on
        sends, failed = out.on_resume(out.session, 10, 0.2)
        assert failed == [] and seqs_of(sends) == [11, 12]


# --- sealed task secrets ---------------------------------------------------------------------------
def test_a_sealed_secret_opens_only_with_the_host_key_it_was_sealed_to() -> None:
    host, other = Identity.generate(), Identity.generate()
    secret = {"seed": b"\x01" * 32, "env": {"A": "1"}, "quota": {}}
    box = seal(secret, host.key_id)
    assert unseal(box, host) == secret
    with pytest.raises(IntegrityError):
        unseal(box, other)
    with pytest.raises(IntegrityError):
        unseal(box[:-1] + bytes([box[-1] ^ 1]), host)


def test_for_a_standby_replicated_receiver_retained_messages_hold_the_hwm_until_checkpointed() -> None:
    out = sent(4)
    out.strict = True
    out.on_ack(out.session, 4, 0.1)
    assert out.room() == out.hwm - 4 and out.retained_unsettled() == 4      # acknowledged, not yet safe
    out.on_checkpointed(out.session, 3)
    assert out.room() == out.hwm - 1
    sends, failed = out.on_resume(out.session, 3, 0.2)
    assert failed == [] and seqs_of(sends) == [4] and out.acked == 3       # unacknowledged again


def test_snipe_retained_resolve_s_sets_how_often_a_retained_peer_is_re_read() -> None:
    assert retained_resolve_every_s({}) == RETAINED_RESOLVE_EVERY_S
    assert retained_resolve_every_s({"SNIPE_RETAINED_RESOLVE_S": "2.5"}) == 2.5
    assert retained_resolve_every_s({"SNIPE_RETAINED_RESOLVE_S": str(RETAINED_RESOLVE_TIMEOUT_S)}) \
        == RETAINED_RESOLVE_TIMEOUT_S
    for bad in ("", "soon", "0", "-1", "1e-300", "nan", "inf"):
        with pytest.raises(ConfigError, match=f"SNIPE_RETAINED_RESOLVE_S must be .* not {bad!r}"):
            retained_resolve_every_s({"SNIPE_RETAINED_RESOLVE_S": bad})
    retained = _Peer("urn:b", sent(3))
    retained.out.on_ack(retained.out.session, 3, 0.1)
    retained.resolved_at = 0.0
    assert resolve_due(retained, 2.0 * 1.25 + 0.01, retained_every_s=2.0) == RETAINED_RESOLVE_TIMEOUT_S
    assert resolve_due(retained, 2.0 * 0.75 - 0.01, retained_every_s=2.0) is None
    assert resolve_due(retained, 2.0 * 1.25 + 0.01) is None          # the default: far later


def test_a_bad_snipe_retained_resolve_s_is_said_at_init(monkeypatch: pytest.MonkeyPatch) -> None:
    import snipe.runtime as runtime

    monkeypatch.setattr(runtime, "_session", None)
    monkeypatch.setenv("SNIPE_RETAINED_RESOLVE_S", "soon")
    monkeypatch.setenv("SNIPE_HOME", "/nonexistent/never-made")      # it fails before looking
    with pytest.raises(ConfigError, match="SNIPE_RETAINED_RESOLVE_S must be a number of seconds"):
        runtime.init()
    assert not os.path.exists("/nonexistent/never-made")
