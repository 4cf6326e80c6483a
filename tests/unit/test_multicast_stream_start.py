"""Where a member starts a sender's stream, as a transcript of the silent loss of its first message.

The netns partition case (tests/netns/test_reliability.py, case 3) and the revert in 374bfad saw
members each silently miss one message with three routers at the start of the stream. The
sender sends each message to two of the three (`targets`): seq 1 to s1 and s2, seq 2 to s2 and
s0. Router s0 gets seq 1 only as s1's forward, after the sender's own seq 2, so it relays seq 2
first. A member of s0 and s1 whose join wait was long over took s0's seq 2 as the first of that
sender (a slow s1 had not delivered seq 1 yet), started its stream there and dropped seq 1 from
both routers as a duplicate: a loss nobody reported, at the start where no later hole shows it.

Now a sender first seen past its first seq makes the member ask its routers to replay and wait
for their answers (core.ReplayWait) before starting, and a seq below the start that still comes
is reported, never dropped.
"""

from __future__ import annotations

from typing import Any

from snipe.messaging.channel import Deliver
from snipe.messaging.endpoint import Endpoint, Message
from snipe.multicast.core import (
    FIRST_SEQ,
    MCAST_DELIVER,
    MCAST_REPLAYED,
    MCAST_RESUME,
    Header,
    Relay,
    Reorder,
    ReplayWait,
    batches,
    pack_replayed,
    targets,
    unpack_resume,
)
from snipe.multicast.groups import Membership

G = "urn:snipe:group:g"
S = "urn:snipe:proc:sender"
M = "urn:snipe:proc:member"
S0, S1, S2 = "urn:snipe:host:s0", "urn:snipe:host:s1", "urn:snipe:host:s2"
ROUTERS = [S0, S1, S2]


def test_with_three_routers_one_relays_seq_2_before_it_has_seq_1():
    assert targets(ROUTERS, 1) == [S1, S2] and targets(ROUTERS, 2) == [S2, S0]
    relays = {r: Relay(r) for r in ROUTERS}
    one = relays[S1].on_data(Header(G, S, 1, 0, (S1, S2)), (M,), ROUTERS)
    assert one is not None and one.forward_to == (S0,)                # seq 1 reaches s0 only so
    two = relays[S0].on_data(Header(G, S, 2, 0, (S2, S0)), (M,), ROUTERS)
    assert two is not None and two.deliver_to == (M,)                 # ... and the sender's seq 2 came first
    late = relays[S0].on_data(one.header, (M,), ROUTERS)
    assert late is not None and late.deliver_to == (M,)               # s0 relays seq 1 after seq 2


def test_a_seq_below_the_start_that_comes_is_reported_once_not_dropped():
    r = Reorder(first_seq=FIRST_SEQ)                  # no hold: the old start at the first seen
    assert r.on_run(2, ["m2", "m3"], 1.0) == ["m2", "m3"] and r.start == 2
    assert r.wants(1)
    assert r.on_run(1, ["m1"], 1.1) == [] and r.take_late() == [(1, 1)]
    assert not r.wants(1) and r.on_run(1, ["m1"], 1.2) == [] and r.take_late() == []   # s0's copy
    assert r.on_timer(30.0) == ([], None)


def test_the_first_seq_starts_at_once_even_while_a_replay_is_awaited():
    r = Reorder(hold_until=5.0, first_seq=FIRST_SEQ)
    assert r.on_run(1, ["m1", "m2"], 0.1) == ["m1", "m2"] and r.start == 1
    held = Reorder(hold_until=5.0, first_seq=FIRST_SEQ)
    assert held.on_run(3, ["m3"], 0.1) == []                          # 2 (and 1) may come yet
    assert held.on_run(1, ["m1"], 0.2) == ["m1"]                      # nothing precedes seq 1
    assert held.on_run(2, ["m2"], 0.3) == ["m2", "m3"] and held.take_late() == []


class _Endpoint:
    """What Membership uses of the messaging endpoint, recording what it sends and delivers."""

    decoded = staticmethod(Endpoint.decoded)
    one_by_one = staticmethod(Endpoint.one_by_one)

    def __init__(self) -> None:
        self.system_handlers: dict[int, Any] = {}
        self.periodic: list[Any] = []
        self.leases: list[Any] = []
        self.catalog = None
        self.session_seed = None
        self.sent: list[tuple[str, int, bytes]] = []
        self.inbox: list[Message] = []

    def submit(self, to: str, tag: int, payload: bytes, deadline: float | None = None) -> None:
        self.sent.append((to, tag, payload))

    def deliver_local(self, messages: list[Message]) -> None:
        self.inbox.extend(messages)


def _member() -> tuple[Membership, _Endpoint]:
    """A member of G registered with s0 and s1 whose join wait is long over (both answered)."""
    ep = _Endpoint()
    m = Membership(ep, None, M, "urn:snipe:host:h")  # type: ignore[arg-type]
    m.joined[G], m.since[G] = [S0, S1], 0
    wait = m.waits[G] = ReplayWait()
    wait.asked([S0, S1], 0.0)
    assert not wait.answered(S0, 0.1) and wait.answered(S1, 0.2)
    m.hold_new_until[G] = wait.hold_until
    return m, ep


def _batch(source: str, first: int, n: int, origin: str = S) -> Deliver:
    (payload,) = batches(G, [(origin, q, 0, b"%d" % q) for q in range(first, first + n)])
    return Deliver(source, MCAST_DELIVER, payload, 0)


def _got(ep: _Endpoint) -> list[Any]:
    return [m.reason if m.failed else int(m.payload) for m in ep.inbox]


def test_a_member_that_first_sees_seq_2_asks_its_routers_and_starts_at_seq_1():
    m, ep = _member()
    m._on_deliver([_batch(S0, 2, 2)])               # s0: 2, 3 (seq 1 still on its way to it)
    assert _got(ep) == []                            # not started at 2
    asked = {to: unpack_resume(p) for to, tag, p in ep.sent if tag == MCAST_RESUME}
    assert set(asked) == {S0, S1} and all(not r.follow and r.next == {} and r.since_ms == 0
                                          for r in asked.values())
    m._on_deliver([_batch(S1, 1, 3)])               # the slow router, or its replay: 1, 2, 3
    assert _got(ep) == [1, 2, 3]                     # nothing precedes seq 1: no need to wait on
    m._on_deliver([_batch(S0, 1, 1)])               # s0's forwarded seq 1: a duplicate now
    for r in (S0, S1):
        m.endpoint.system_handlers[MCAST_REPLAYED]([Deliver(r, MCAST_REPLAYED, pack_replayed(G), 0)])
    assert _got(ep) == [1, 2, 3]


def test_a_sender_first_seen_mid_stream_waits_for_every_router_asked_then_starts_at_the_lowest():
    m, ep = _member()
    m._on_deliver([_batch(S0, 5, 2)])               # joined mid-stream: 5, 6 live from s0
    m._on_deliver([_batch(S1, 3, 4)])               # s1's replay of what came since the join: 3..6
    answered = m.endpoint.system_handlers[MCAST_REPLAYED]
    answered([Deliver(S1, MCAST_REPLAYED, pack_replayed(G), 0)])
    assert _got(ep) == []                            # s0 has not answered yet
    answered([Deliver(S0, MCAST_REPLAYED, pack_replayed(G), 0)])
    assert _got(ep) == [3, 4, 5, 6]


def test_a_member_that_first_sees_seq_1_starts_at_once_and_asks_nobody():
    m, ep = _member()
    m._on_deliver([_batch(S1, 1, 2)])
    assert _got(ep) == [1, 2] and ep.sent == []


def test_a_seq_below_the_start_that_still_comes_is_reported_to_the_member():
    m, ep = _member()
    m._on_deliver([_batch(S0, 2, 2)])
    for r in (S0, S1):                               # neither router had seq 1 when asked
        m.endpoint.system_handlers[MCAST_REPLAYED]([Deliver(r, MCAST_REPLAYED, pack_replayed(G), 0)])
    assert _got(ep) == [2, 3]
    m._on_deliver([_batch(S1, 1, 1)])
    m._on_deliver([_batch(S0, 1, 1)])
    reasons = _got(ep)[2:]
    assert len(reasons) == 1 and reasons[0].startswith(f"multicast messages 1..1 from {S} arrived after")
