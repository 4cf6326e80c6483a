"""The I/O-free parts of checkpoint/restart: retention and resume in the channel core, the
takeover planner, sealed task secrets. Transcripts first, then a hypothesis property."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snipe.errors import IntegrityError
from snipe.identity import Identity
from snipe.messaging.channel import Deliver, DeliveryFailed, Inbound, Outbound, ResumeWanted, parse_data
from snipe.replication.sealed import seal, unseal
from snipe.replication.takeover import Claim, TakeoverPlanner, Watched, claim_urn, ranking


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
        d, _ = inbound.on_data(*parse_data(s.envelope, s.frames), s.frames, s.envelope.body.get("r", 0))
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
    assert failed == [] and seqs_of(sends) == [1, 2, 3, 4, 5, 6] and sends[0].envelope.body["r"] == RESTORE
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
    """No resume for a session that starts after the restore (base 1: nothing was acknowledged),
    nor for one the checkpoint had left (it knows where that stopped: a late packet of it is
    not delivered again)."""
    fresh = Inbound("b", "a", restore=RESTORE)
    assert [d.seq for d in fresh.on_data(11, 1, 1, [0, 0], [b"x", b"y"])[0]] == [1, 2]
    restored = Inbound.restored("b", "a", 12, 5, restore=RESTORE, left={11: 3})
    assert restored.on_data(11, 1, 1, [0, 0], [b"x", b"y"])[0] == []        # delivered before the checkpoint
    assert restored.on_data(11, 2, 2, [0], [b"y"])[0] == []
    assert fresh.take_resume_wanted() == [] and restored.take_resume_wanted() == []


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
    assert early[0].envelope.body["r"] == RESTORE and feed(second, early) == []     # still pinned at 4
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
