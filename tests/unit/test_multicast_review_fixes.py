"""Fixes from a review of 27a173e (ReplayWait) and 928e5fd (Reorder.start), each as a transcript
that failed on the code before it."""

from __future__ import annotations

import threading
import time

from snipe.messaging.channel import Deliver
from snipe.migration.groups import export_groups, restore_groups
from snipe.multicast.core import (
    FIRST_SEQ,
    MCAST_DELIVER,
    MCAST_REPLAYED,
    MCAST_RESUME,
    NO_REPLAY,
    History,
    PendingAnswers,
    Reorder,
    ReplayWait,
    Resume,
    pack_replayed,
    pack_resume,
    unpack_batch,
    unpack_resume,
)
from snipe.multicast.groups import Membership

# the same fake endpoint and member as the stream-start transcripts
from tests.unit.test_multicast_stream_start import S0, S1, S2, G, M, S, _batch, _got, _member


def _answer(m: Membership, router: str) -> None:
    m.endpoint.system_handlers[MCAST_REPLAYED]([Deliver(router, MCAST_REPLAYED, pack_replayed(G), 0)])


# --- 1. a restored member crashed on the second router's copy ------------------------------------
def test_a_restored_member_drops_the_second_routers_copy_of_a_batch():
    m, ep = _member()
    m._on_deliver([_batch(S0, 1, 3)])
    assert _got(ep) == [1, 2, 3]
    state = export_groups(m)
    m2, ep2 = _member()
    restore_groups(m2, state)
    m2._on_deliver([_batch(S0, 4, 2)])
    m2._on_deliver([_batch(S1, 4, 2)])               # the same run from the other router (crashed)
    m2._on_deliver([_batch(S1, 2, 2)])               # an old replay: delivered before the move
    assert _got(ep2) == [4, 5]
    assert m2.reorder[(G, S)].start == 1             # kept: a seq below 1 would be late, not a duplicate


def test_a_member_restored_from_a_state_without_the_start_has_no_lower_bound():
    m, _ = _member()
    m._on_deliver([_batch(S0, 1, 3)])
    state = export_groups(m)
    state["reorder"] = [row[:4] for row in state["reorder"]]      # as exported before the start was kept
    m2, ep2 = _member()
    restore_groups(m2, state)
    m2._on_deliver([_batch(S0, 4, 1)])
    m2._on_deliver([_batch(S1, 3, 2)])               # 3 was delivered before the move: a duplicate
    assert _got(ep2) == [4]


def test_a_reorder_with_no_start_takes_duplicates_below_expected():
    r = Reorder()
    r.expected = 5
    assert r.on_run(5, ["m5"], 0.0) == ["m5"]
    assert r.on_run(4, ["m4", "m5"], 0.0) == [] and r.take_late() == []


# --- 2. a late answer to an earlier Resume ended the next round ----------------------------------
def test_a_late_answer_to_an_earlier_resume_does_not_end_the_next_round():
    wait = ReplayWait(cap=5.0)
    wait.asked([S0], 0.0)                            # S0 is slow: no answer within the cap
    assert wait.asked([S0], 6.0) == 11.0             # a new round (a sender first seen past seq 1)
    assert not wait.answered(S0, 6.1)                # the answer to the Resume of 0.0
    assert wait.hold_until == 11.1                   # (progress: S0's deadline moves, see 5.)
    assert wait.answered(S0, 6.2) and wait.hold_until == 6.2     # the answer to the Resume of 6.0
    assert not wait.answered(S0, 6.3)                # no Resume left unanswered


def test_a_late_answer_does_not_start_a_new_origin_early():
    m, ep = _member()
    wait = m.waits[G]
    wait.asked([S0], 1.0)                            # a Resume S0 answers only after the cap
    m._on_deliver([_batch(S0, 5, 1)])                # a sender first seen past seq 1: a new round
    _answer(m, S0)                                   # the answer to the Resume of 1.0
    m._on_deliver([_batch(S1, 3, 3)])                # S1's replay: 3..5
    assert _got(ep) == []                            # S1 has not answered, nor S0 the new Resume
    _answer(m, S1)
    assert _got(ep) == []                            # S0's answer to the new Resume is still owed
    _answer(m, S0)
    assert _got(ep) == [3, 4, 5]


# --- 3. a sender first seen past seq 1 during a wait made no ask of its own ----------------------
def test_a_sender_first_seen_past_seq_1_during_a_wait_is_asked_for_and_waited_on():
    m, ep = _member()
    m.waits[G].asked([S0, S1], time.monotonic())     # a join's wait under way
    m.hold_new_until[G] = m.waits[G].hold_until
    m._on_deliver([_batch(S0, 2, 2)])                # seq 1 reached neither router before the join's Resumes
    asked = [to for to, tag, _ in ep.sent if tag == MCAST_RESUME]
    assert sorted(asked) == [S0, S1]                 # asked anyway
    m._on_deliver([_batch(S0, 4, 1), _batch(S1, 3, 2)])
    assert len(ep.sent) == 2                         # no new sender: no new ask
    for r in (S0, S1):                               # the answers to the join's Resumes
        _answer(m, r)
    assert _got(ep) == []                            # they say nothing about that sender
    m._on_deliver([_batch(S1, 1, 1)])                # seq 1, replayed for the new ask ...
    assert _got(ep) == [1, 2, 3, 4]                  # ... starts it at once (nothing precedes seq 1)


def test_new_senders_in_one_call_make_one_ask():
    m, ep = _member()
    m._on_deliver([_batch(S0, 5, 1, origin="urn:snipe:proc:a"), _batch(S0, 7, 1, origin="urn:snipe:proc:b")])
    assert sorted(to for to, tag, _ in ep.sent if tag == MCAST_RESUME) == [S0, S1]


# --- 4. an ask for a new sender's start made routers resend every started sender's stream -------
def test_the_ask_for_a_new_sender_replays_only_the_senders_not_started():
    m, ep = _member()
    a = "urn:snipe:proc:a"
    m._on_deliver([_batch(S0, 1, 3)])                # S: started, 1..3 delivered
    m._on_deliver([_batch(S0, 5, 1, origin=a)])      # a: first seen at 5
    (data,) = {p for to, tag, p in ep.sent if tag == MCAST_RESUME}
    resume = unpack_resume(data)
    assert not resume.follow and resume.next == {S: NO_REPLAY}
    history = History()                              # what a router holds: both senders since the join
    for q in range(1, 7):
        history.add(S, q, float(q), ("S", q), 1)
        history.add(a, q, float(q), ("a", q), 1)
    assert history.replay(resume.next, resume.since_ms) == [("a", q) for q in range(1, 7)]


def test_a_router_answers_a_new_only_resume_with_the_new_senders_only():
    from daemon.mcast import GroupRouter

    class _RouterEndpoint:
        def __init__(self) -> None:
            self.sent: list[tuple[str, int, bytes]] = []

        def submit(self, to: str, tag: int, payload: bytes, deadline: float | None = None) -> None:
            self.sent.append((to, tag, payload))

    router = GroupRouter.__new__(GroupRouter)        # only what _on_resume uses
    router.endpoint = _RouterEndpoint()
    router.histories, router.counts, router.resumed, router.views = {G: History()}, {}, {}, {}
    router.replayed, router._flush = 0, lambda: None
    router.answers, router.relays = PendingAnswers(), {}
    router.last_traffic, router.routing, router.local, router.lock = {}, {G}, {}, threading.Lock()
    a = "urn:snipe:proc:a"
    for q in range(1, 4):
        router.histories[G].add(S, q, float(q), (S, q, 0, b"s"), 1)
        router.histories[G].add(a, q, float(q), (a, q, 0, b"a"), 1)
    router._on_resume(Deliver(M, MCAST_RESUME, pack_resume(Resume(G, 0, {S: NO_REPLAY}, follow=False)), 0))
    tags = [tag for _, tag, _ in router.endpoint.sent]
    assert tags == [MCAST_DELIVER, MCAST_REPLAYED] and router.replayed == 3
    (_, runs) = unpack_batch(router.endpoint.sent[0][2])
    assert [(o, first, len(t)) for o, first, t, _ in runs] == [(a, 1, 3)]


# --- 5. the wait's cap: from progress, with an overall bound; routers gone are dropped ------------
def test_a_router_that_keeps_sending_is_waited_on_past_the_cap_up_to_the_bound():
    wait = ReplayWait(cap=5.0, bound=30.0)
    assert wait.asked([S0, S1], 0.0) == 5.0
    assert wait.answered(S1, 1.0) is False
    assert wait.heard(S0, 4.0) and wait.hold_until == 9.0        # S0's long replay is coming in
    assert wait.heard(S0, 8.0) and wait.hold_until == 13.0
    assert not wait.heard(S1, 8.5)                               # S1 is done: its batches move nothing
    for t in range(12, 28, 4):
        assert wait.heard(S0, float(t)) and wait.hold_until == t + 5.0
    assert wait.heard(S0, 28.0) and wait.hold_until == 30.0      # the bound
    assert not wait.heard(S0, 30.0)                              # over
    assert not wait.answered(S0, 31.0) and wait.hold_until == 30.0


def test_a_router_found_gone_is_dropped_from_the_wait_and_its_counts_forgotten():
    wait = ReplayWait(cap=5.0)
    wait.asked([S0, S1], 0.0)
    assert wait.answered(S0, 0.5) is False
    assert wait.forget(S1, 1.0) and wait.hold_until == 1.0       # S0 answered, S1 is gone: over
    wait.asked([S1], 2.0)                                        # S1 back (a new daemon): one Resume
    assert wait.answered(S1, 2.5)                                # ... one answer ends it


def test_a_batch_from_a_router_waited_on_moves_the_new_origins_hold():
    m, ep = _member()
    now = time.monotonic()
    hold = m.hold_new_until[G] = m.waits[G].asked([S0], now - 4.9)    # S0's cap runs out in 0.1 s
    r = m.reorder[(G, S)] = Reorder(hold_until=hold, first_seq=FIRST_SEQ)   # a sender held, asked for
    m._on_deliver([_batch(S0, 3, 1)])                # S0 is still sending (its replay): wait for it
    assert ep.sent == [] and r.expected is None
    assert r.hold_until >= now + 4.0 and m.hold_new_until[G] == r.hold_until


def test_tend_drops_a_router_no_longer_live_from_the_wait(monkeypatch):
    import snipe.multicast.groups as groups

    class _Catalog:
        def invalidate(self, group: str) -> None:
            pass

        def get(self, group: str, r: int = 0) -> None:
            return None

    m, ep = _member()
    m.joined[G] = [S0]
    ep.catalog = _Catalog()
    monkeypatch.setattr(groups, "live_routers", lambda entry, now: {S0: {}})
    now = time.monotonic()
    m.hold_new_until[G] = m.waits[G].asked([S0, S2], now)       # S2: a replay-only router that died
    m._on_deliver([_batch(S0, 4, 2)])
    _answer(m, S0)                                               # the answers to both asks
    _answer(m, S0)
    assert _got(ep) == []                                        # S2 never answers
    m._tend(now + 0.1)                                           # S2 is not live: not waited on
    assert _got(ep) == [4, 5]


# --- 6. a message sent before a mid-stream join is not owed: not counted as lost ------------------
def test_the_simulated_member_does_not_count_a_late_message_sent_before_its_join_as_lost():
    from types import SimpleNamespace

    from benchmarks.sim.multicast import MemberNode
    from snipe.multicast.core import Header

    world = SimpleNamespace(sim=SimpleNamespace(now=10.0), cfg=SimpleNamespace(gap_timeout=10.0, messages=10),
                            latency=[])
    m = MemberNode(world, "m", "h", G)  # type: ignore[arg-type]
    m.joined_at = 5.0
    m.on_message(S0, (Header(G, S, 2, 0, ()), 5.5))              # the first seen: 2, sent after the join
    m.on_message(S0, (Header(G, S, 3, 0, ()), 6.0))
    m.on_message(S0, (Header(G, S, 1, 0, ()), 4.9))              # 1, sent before the join, forwarded late
    assert m.holes == 0 and m.late_before_join == 1


def test_a_late_report_says_a_message_sent_before_the_join_is_not_owed():
    m, ep = _member()
    m._on_deliver([_batch(S0, 2, 2)])
    for r in (S0, S1):
        _answer(m, r)
        _answer(m, r)
    m._on_deliver([_batch(S0, 1, 1)])
    (report,) = [x for x in ep.inbox if x.failed]
    assert "unless sent before it joined" in report.reason
