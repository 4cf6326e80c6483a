"""A router answers a member's Resume only once it has no hole below the highest seq it held when
the Resume came (core.PendingAnswers), or after ANSWER_HOLD_S at most.

The simulator's high-rate world (12 routers, a message to 7) showed why: a member's router got a
sender's seq 3 directly before seq 1 came as another router's forward; the member, seeing the
sender first past seq 1, asked its routers (replay-only Resume) and held the sender; each router
answered with what it held then, which says nothing of seq 1 still on its way, so the member
started at seq 3 and seq 1 came late (an owed loss, reported)."""

from __future__ import annotations

import math
from types import SimpleNamespace

from daemon.mcast import GroupRouter, _View
from snipe.messaging.channel import Deliver
from snipe.multicast.core import (
    MCAST_DATA,
    MCAST_DELIVER,
    MCAST_REPLAYED,
    MCAST_RESUME,
    NO_REPLAY,
    Answer,
    Header,
    History,
    PendingAnswers,
    Relay,
    Resume,
    pack,
    pack_resume,
    unpack_batch,
)

G = "urn:snipe:group:g"
S = "urn:snipe:proc:sender"
T = "urn:snipe:proc:other-sender"
M = "urn:snipe:proc:member"
ME = "urn:snipe:host:r0"
PEERS = (ME, "urn:snipe:host:r1", "urn:snipe:host:r2")


def _relay(*seqs: int, origin: str = S, relay: Relay | None = None, history: History | None = None) -> Relay:
    relay = relay or Relay(ME)
    for q in seqs:
        assert relay.on_data(Header(G, origin, q, 0, ()), (), PEERS) is not None
        if history is not None:
            history.add(origin, q, 0.0, (origin, q), 1)
    return relay


# --- the core, with a fake clock ------------------------------------------------------------------
def test_an_answer_waits_for_the_holes_below_what_the_router_held_at_the_ask():
    relay, answers = _relay(3), PendingAnswers(hold=2.0)
    answers.ask(M, Resume(G, 0, {}, follow=False), relay, 0, True, 10.0)
    registered = lambda g, m: True   # noqa: E731
    assert answers.ready({G: relay}, registered, 10.0) == []        # seq 1 and 2 may be on their way
    _relay(1, relay=relay)
    assert answers.ready({G: relay}, registered, 10.5) == []        # seq 2 still missing
    _relay(4, relay=relay)                                          # a later hole is none of this ask's business
    _relay(2, relay=relay)
    assert answers.ready({G: relay}, registered, 11.0) == [Answer(M, G)]
    assert len(answers) == 0 and answers.at_bound == 0


def test_an_answer_goes_at_once_with_no_hole_and_at_the_bound_with_one():
    relay, answers = _relay(1, 2, 3), PendingAnswers(hold=2.0)
    answers.ask(M, Resume(G, 0, {}, follow=False), relay, 0, True, 0.0)
    assert answers.ready({G: relay}, lambda g, m: True, 0.0) == [Answer(M, G)]
    _relay(7, relay=relay)                                         # a router elected mid-stream: 4-6 never come
    answers.ask(M, Resume(G, 0, {}, follow=False), relay, 0, True, 1.0)
    assert answers.ready({G: relay}, lambda g, m: True, 2.9) == []
    assert answers.next_due() == 3.0
    assert answers.ready({G: relay}, lambda g, m: True, 3.0) == [Answer(M, G)]
    assert answers.at_bound == 1


def test_a_started_sender_marked_no_replay_is_not_waited_for():
    relay, answers = _relay(3), PendingAnswers()
    _relay(1, 2, origin=T, relay=relay)
    answers.ask(M, Resume(G, 0, {S: NO_REPLAY}, follow=False), relay, 0, True, 0.0)
    assert answers.ready({G: relay}, lambda g, m: True, 0.0) == [Answer(M, G)]


def test_a_members_answers_go_in_the_order_asked():
    relay, answers = _relay(3), PendingAnswers(hold=2.0)
    answers.ask(M, Resume(G, 0, {}, follow=False), relay, 0, True, 0.0)       # waits for seq 1, 2
    answers.ask(M, Resume(G, 0, {S: NO_REPLAY}, follow=False), relay, 0, True, 0.5)   # nothing to wait for
    answers.ask("other", Resume(G, 0, {S: NO_REPLAY}, follow=False), relay, 0, True, 0.5)
    assert answers.ready({G: relay}, lambda g, m: True, 0.5) == [Answer("other", G)]
    _relay(1, 2, relay=relay)
    assert answers.ready({G: relay}, lambda g, m: True, 0.6) == [Answer(M, G), Answer(M, G)]


def test_a_member_not_delivered_to_gets_what_filled_the_holes_replayed_first():
    history = History()
    relay, answers = _relay(3, history=history), PendingAnswers()
    answers.ask(M, Resume(G, 0, {}, follow=False), relay, history.mark, False, 0.0)
    _relay(1, 2, relay=relay, history=history)
    _relay(1, origin=T, relay=relay, history=history)
    (a,) = answers.ready({G: relay}, lambda g, m: False, 0.1)
    assert a.replay == {S: 3}
    assert history.added_since(a.mark, a.replay) == [(S, 1), (S, 2)]


# --- the daemon's router: the hole-filling message, then the answer, on the same channel ------------
class _Endpoint:  # (also the fake endpoint of test_mcast_router_runs)
    def __init__(self) -> None:
        self.system_handlers: dict = {}
        self.turn_end: list = []
        self.sent: list[tuple[str, int, bytes]] = []
        self.one_by_one = lambda f: f
        self.decoded = lambda messages, decode, what: [(m, decode(m.payload)) for m in messages]

    def submit(self, to: str, tag: int, payload: bytes, deadline: float | None = None) -> None:
        self.sent.append((to, tag, payload))


def _router(members: tuple[str, ...]) -> tuple[GroupRouter, _Endpoint]:
    ep = _Endpoint()
    router = GroupRouter(ME, "tcp://r0", SimpleNamespace(), ep, 5.0)  # type: ignore[arg-type]
    router.views[G] = _View(math.inf, None, members, PEERS)          # never refreshed: no catalog here
    return router, ep


def _data(router: GroupRouter, ep: _Endpoint, seq: int) -> None:
    peers = tuple(p for p in PEERS if p != ME)                      # every router already has it: no forwards
    router._on_data([Deliver(S, MCAST_DATA, pack(Header(G, S, seq, 0, peers), b"x%d" % seq), 0)])
    for hook in ep.turn_end:
        hook()


def _to_member(ep: _Endpoint) -> list:
    out = []
    for to, tag, payload in ep.sent:
        if to != M:
            continue
        if tag == MCAST_REPLAYED:
            out.append("answer")
        else:
            assert tag == MCAST_DELIVER
            out.extend(q for _, first, tags, _ in unpack_batch(payload)[1] for q in range(first, first + len(tags)))
    return out


def test_the_router_answers_only_after_seq_1_reached_the_member():
    router, ep = _router((M,))                                       # the member is delivered to
    _data(router, ep, 3)                                             # directly from the sender
    router._on_resume(Deliver(M, MCAST_RESUME, pack_resume(Resume(G, 0, {}, follow=False)), 0))
    assert _to_member(ep) == [3, 3]                                  # relayed, then replayed; no answer yet
    _data(router, ep, 1)                                             # forwards from other routers
    assert "answer" not in _to_member(ep)
    _data(router, ep, 2)
    assert _to_member(ep) == [3, 3, 1, 2, "answer"]


def test_the_router_replays_the_filled_seqs_to_a_member_it_does_not_deliver_to():
    router, ep = _router(())
    _data(router, ep, 3)
    router._on_resume(Deliver(M, MCAST_RESUME, pack_resume(Resume(G, 0, {}, follow=False)), 0))
    _data(router, ep, 1)
    _data(router, ep, 2)
    assert _to_member(ep) == [3, 1, 2, "answer"]


def test_the_router_answers_at_the_bound_when_the_hole_never_fills():
    router, ep = _router((M,))
    router.answers.hold = 0.0
    _data(router, ep, 3)
    router._on_resume(Deliver(M, MCAST_RESUME, pack_resume(Resume(G, 0, {}, follow=False)), 0))
    assert _to_member(ep) == [3, 3, "answer"] and router.answers.at_bound == 1
