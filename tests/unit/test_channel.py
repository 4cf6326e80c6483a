"""The reliable channel (snipe/messaging/channel.py): Outbound and Inbound cores, msg/1 codec.

Single steps are transcripts (events in, effects out, asserted whole); runs under faults go
through tests/unit/channelnet.py, a seeded fake network with a manual clock.
"""

from __future__ import annotations

import random

import pytest
from channelnet import INF, ChannelNet
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from snipe.effects import Send
from snipe.errors import CodecError
from snipe.messaging.channel import (
    INITIAL_RTO,
    PROTOCOL,
    VERSION,
    Deliver,
    DeliveryFailed,
    Inbound,
    Outbound,
    parse_ack,
    parse_data,
)
from snipe.wire import Envelope

SEED = 7
_sessions = random.Random(SEED)                             # what Outbound(rng=Random(SEED)) draws
S1, S2, S3 = (_sessions.getrandbits(63) for _ in range(3))

PROPERTY = settings(deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow])


def outbound(**kw: int) -> Outbound:
    return Outbound("a", "b", rng=random.Random(SEED), **kw)


def data(session: int, base: int, first: int, messages: list[tuple[int, bytes]], to: str = "b") -> Send:
    return Send(to, Envelope(PROTOCOL, VERSION, "data", 0, {"s": session, "b": base, "q": first,
                                                             "t": [t for t, _ in messages]}),
                tuple(p for _, p in messages))


def ack(session: int, cum: int, to: str = "a") -> Send:
    return Send(to, Envelope(PROTOCOL, VERSION, "ack", 0, {"s": session, "c": cum}))


def feed(inbound: Inbound, send: Send) -> tuple[list[Deliver], Send]:
    """Carry a data Send to an Inbound as a shell would (through parse_data)."""
    return inbound.on_data(*parse_data(send.envelope, send.frames), send.frames)


def delivered(session_msgs: list[tuple[int, int, bytes]], source: str = "a") -> list[Deliver]:
    return [Deliver(source, tag, payload, seq) for seq, tag, payload in session_msgs]


# --- Outbound transcripts --------------------------------------------------------------------------


def test_a_batch_flushes_as_one_data_send_with_its_payload_frames() -> None:
    out = outbound()
    assert out.session == S1
    for tag, payload in [(10, b"x"), (11, b""), (12, b"zz")]:
        out.submit(tag, payload, 0.0, INF)
    assert out.flush(0.0) == [data(S1, 1, 1, [(10, b"x"), (11, b""), (12, b"zz")])]
    assert out.flush(0.0) == []
    assert (out.held(), out.sent, out.next_deadline()) == (3, 3, INITIAL_RTO)


def test_batches_are_cut_at_max_batch_and_carry_the_lowest_held_seq_as_base() -> None:
    out = outbound(max_batch=2)
    msgs = [(t, bytes([t])) for t in range(5)]
    for tag, payload in msgs:
        out.submit(tag, payload, 0.0, INF)
    assert out.flush(0.0) == [data(S1, 1, 1, msgs[0:2]), data(S1, 1, 3, msgs[2:4]), data(S1, 1, 5, msgs[4:5])]


def test_cumulative_ack_releases_the_window_and_flushes_what_was_queued() -> None:
    out = outbound(window=2)
    msgs = [(t, b"m%d" % t) for t in range(5)]
    for tag, payload in msgs:
        out.submit(tag, payload, 0.0, INF)
    assert out.flush(0.0) == [data(S1, 1, 1, msgs[0:2])]
    assert (len(out.flight), len(out.queue)) == (2, 3)
    assert out.on_ack(S1, 1, 0.1) == [data(S1, 2, 3, msgs[2:3])]
    assert out.on_ack(S1, 1, 0.1) == []                       # a repeated ack changes nothing
    assert out.on_ack(S1, 3, 0.2) == [data(S1, 4, 4, msgs[3:5])]
    assert out.on_ack(S1, 5, 0.3) == []
    assert (out.held(), out.acked, out.next_deadline()) == (0, 5, None)


def test_retransmission_after_rto_backs_off_exponentially() -> None:
    out = outbound()
    out.submit(1, b"p", 0.0, INF)
    first = out.flush(0.0)
    assert out.on_timer(0.19) == ([], [])
    assert out.next_deadline() == pytest.approx(0.2)
    assert out.on_timer(0.2) == (first, [])                    # same data again, same base
    assert (out.flight[0].attempts, out.next_deadline()) == (2, pytest.approx(0.2 + 0.4))
    assert out.on_timer(0.55) == ([], [])
    assert out.on_timer(out.next_deadline()) == (first, [])
    assert (out.flight[0].attempts, out.next_deadline()) == (3, pytest.approx(0.6 + 0.8))
    assert out.retransmitted == 2


def test_go_back_retransmits_everything_unacknowledged_in_batches() -> None:
    out = outbound(max_batch=2)
    msgs = [(t, b"%d" % t) for t in range(5)]
    for tag, payload in msgs:
        out.submit(tag, payload, 0.0, INF)
    out.flush(0.0)
    assert out.on_ack(S1, 2, 0.05) == []
    assert out.on_timer(0.3) == ([data(S1, 3, 3, msgs[2:4]), data(S1, 3, 5, msgs[4:5])], [])


def test_rtt_is_sampled_only_from_messages_sent_once() -> None:
    out = outbound()
    out.submit(1, b"p", 0.0, INF)
    out.flush(0.0)
    out.on_timer(0.2)
    assert out.on_ack(S1, 1, 0.25) == []                      # ambiguous: which copy was acked?
    assert (out.srtt, out.rto) == (None, INITIAL_RTO)
    out.submit(2, b"q", 2.0, INF)
    out.flush(2.0)
    out.on_ack(S1, 2, 2.05)
    assert (out.srtt, out.rttvar, out.rto) == pytest.approx((0.05, 0.025, 0.05 + 4 * 0.025))
    out.submit(3, b"r", 3.0, INF)
    out.flush(3.0)
    out.on_ack(S1, 3, 3.1)
    rttvar, srtt = 0.75 * 0.025 + 0.25 * 0.05, 0.875 * 0.05 + 0.125 * 0.1
    assert (out.srtt, out.rttvar, out.rto) == pytest.approx((srtt, rttvar, srtt + 4 * rttvar))


def test_a_message_past_its_deadline_fails_with_everything_behind_it_and_the_session_changes() -> None:
    out = outbound(window=2)
    out.submit(1, b"one", 0.0, 1.0)
    out.submit(2, b"two", 0.0, 9.0)
    out.submit(3, b"three", 0.0, 9.0)
    assert out.flush(0.0) == [data(S1, 1, 1, [(1, b"one"), (2, b"two")])]
    assert out.next_deadline() == pytest.approx(0.2)
    out.on_timer(0.2)
    out.on_timer(out.next_deadline())                         # ~0.6; the next retry would be ~1.4
    assert out.next_deadline() == 1.0                         # the deadline comes before the next retry
    reason = "not acknowledged by b before its deadline"
    assert out.on_timer(1.0) == ([], [DeliveryFailed("b", 1, 1, reason), DeliveryFailed("b", 2, 2, reason),
                                      DeliveryFailed("b", 3, 3, reason)])
    assert (out.session, out.next_seq, out.held(), out.next_deadline()) == (S2, 1, 0, None)
    out.submit(4, b"four", 1.0, INF)
    assert out.flush(1.0) == [data(S2, 1, 1, [(4, b"four")])]  # new session, seq restarts at 1

    inbound = Inbound("b", "a")
    assert feed(inbound, data(S1, 1, 1, [(1, b"one")])) == (delivered([(1, 1, b"one")]), ack(S1, 1))
    assert feed(inbound, data(S2, 1, 1, [(4, b"four")])) == (delivered([(1, 4, b"four")]), ack(S2, 1))


def test_an_expired_message_still_queued_fails_too() -> None:
    out = outbound(window=1)
    out.submit(1, b"a", 0.0, INF)
    out.submit(2, b"b", 0.0, 0.5)
    out.flush(0.0)
    assert out.next_deadline() == pytest.approx(0.2)
    sends, failed = out.on_timer(0.5)
    assert (sends, [(f.seq, f.tag) for f in failed]) == ([], [(1, 1), (2, 2)])


def test_acks_for_an_abandoned_session_are_ignored() -> None:
    out = outbound()
    out.submit(1, b"old", 0.0, 0.5)
    out.flush(0.0)
    out.on_timer(0.5)
    out.submit(2, b"new", 0.5, INF)
    out.flush(0.5)
    assert out.on_ack(S1, 1, 0.6) == []
    assert out.on_ack(12345, 1, 0.6) == []
    assert (out.held(), out.acked, out.srtt) == (1, 0, None)
    assert out.on_ack(S2, 1, 0.6) == []
    assert (out.held(), out.acked) == (0, 1)


def test_window_and_hwm_bound_what_is_held() -> None:
    out = outbound(window=4, hwm=10, max_batch=3)
    accepted = 0
    while out.room() > 0:
        out.submit(accepted, b"x", 0.0, INF)
        accepted += 1
        out.flush(0.0)
    assert (accepted, out.room(), out.held(), len(out.flight), len(out.queue)) == (10, 0, 10, 4, 6)
    assert out.flush(0.0) == []                               # nothing beyond the window goes out
    sends = out.on_ack(S1, 4, 0.1)
    assert [s.envelope.body["q"] for s in sends] == [5, 8]
    assert (out.room(), len(out.flight), len(out.queue)) == (4, 4, 2)

    inbound = Inbound("b", "a", window=4)
    msgs = [(t, b"%d" % t) for t in range(1, 11)]
    assert feed(inbound, data(S1, 1, 2, msgs[1:])) == ([], ack(S1, 0))
    assert sorted(inbound.early) == [2, 3, 4]                 # beyond expected + window is not held
    got, reply = feed(inbound, data(S1, 1, 1, msgs[:1]))
    assert ([d.seq for d in got], reply, inbound.early) == ([1, 2, 3, 4], ack(S1, 4), {})


ops = st.lists(st.one_of(st.tuples(st.just("send"), st.integers(0, 3000), st.sampled_from([5.0, 9.0, INF])),
                         st.tuples(st.just("ack"), st.integers(0, 40), st.just(0.0)),
                         st.tuples(st.just("resume"), st.integers(0, 40), st.just(0.0))), max_size=60)


@PROPERTY
@given(ops=ops, window=st.integers(1, 6), window_bytes=st.integers(1, 6000))
def test_send_one_is_submit_then_flush_for_a_lone_message(ops: list[tuple[str, int, float]], window: int,
                                                          window_bytes: int) -> None:
    """The shell's one-step direct send sends what submit + flush would, and leaves the channel
    in the same state, whether the window has room, is full, or a queue waits (after acks and
    a resume, which marks data "r")."""
    def state(o: Outbound) -> tuple[object, ...]:
        return (o.next_seq, [(h.seq, h.tag, h.size, h.deadline, h.attempts) for h in o.flight],
                [(h.seq, h.tag, h.deadline) for h in o.queue], [list(d) for d in o.deadlines], o.flight_bytes,
                o.sent, o.sent_bytes, o.acked)

    one, two = (outbound(window=window, window_bytes=window_bytes, max_batch=1) for _ in range(2))
    one.retain = two.retain = 100
    now = 0.0
    for kind, n, deadline in ops:
        now += 0.001
        if kind == "send":
            body = one.send_one(n % 7, b"p" * n, now, now + deadline)
            two.submit(n % 7, b"p" * n, now, now + deadline)
            sends = two.flush(now)
            assert ([body] if body is not None else []) == [s.envelope.body for s in sends]
        elif kind == "ack":
            cum = min(n, two.next_seq - 1)
            assert [s.envelope.body for s in one.on_ack(one.session, cum, now)] == \
                [s.envelope.body for s in two.on_ack(two.session, cum, now)]
        else:
            cum = min(n, two.acked_upto)
            assert [s.envelope.body for s in one.on_resume(one.session, cum, now, 5)[0]] == \
                [s.envelope.body for s in two.on_resume(two.session, cum, now, 5)[0]]
        assert state(one) == state(two)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([1, 2]), st.integers(1, 3), st.integers(-1, 2)), max_size=40),
       st.sampled_from([0, 7]))
def test_accept_next_is_accept_for_the_next_lone_message(ops: list[tuple[int, int, int]], restore: int) -> None:
    """The shell's one-step receive (`accept_next`) delivers what `accept` would, and changes the
    receiver as it would, when the message is the next in order of the current session; in any
    other case (another session, a gap, a duplicate, early arrivals held) it changes nothing."""
    def state(ib: Inbound) -> tuple[object, ...]:
        return (ib.session, ib.expected, dict(ib.early), dict(ib.left), ib.pinned, set(ib.left_pinned),
                ib.delivered, ib.duplicates, list(ib.wanted))

    one, two = Inbound("b", "a", restore=restore), Inbound("b", "a", restore=restore)
    for session, base, offset in ops:
        first = max(base, two.expected + offset) if session == two.session else base + max(0, offset)
        before = state(one)
        if one.accept_next(session, first):
            assert two.accept(session, base, first, [3], [b"x"]) == [Deliver("a", 3, b"x", first)]
        else:
            assert state(one) == before
            one.accept(session, base, first, [3], [b"x"])
            two.accept(session, base, first, [3], [b"x"])
        assert state(one) == state(two)


# --- Inbound transcripts ---------------------------------------------------------------------------


def test_duplicates_are_dropped_and_acked_again() -> None:
    inbound = Inbound("b", "a")
    msgs = [(5, b"e"), (6, b"f")]
    assert feed(inbound, data(S1, 1, 1, msgs)) == (delivered([(1, 5, b"e"), (2, 6, b"f")]), ack(S1, 2))
    assert feed(inbound, data(S1, 1, 1, msgs)) == ([], ack(S1, 2))
    assert feed(inbound, data(S1, 2, 2, msgs[1:])) == ([], ack(S1, 2))
    assert (inbound.delivered, inbound.duplicates) == (2, 3)


def test_early_arrivals_are_held_and_delivered_in_order() -> None:
    inbound = Inbound("b", "a")
    assert feed(inbound, data(S1, 1, 4, [(4, b"4")])) == ([], ack(S1, 0))
    assert feed(inbound, data(S1, 1, 2, [(2, b"2")])) == ([], ack(S1, 0))
    assert feed(inbound, data(S1, 1, 4, [(4, b"4")])) == ([], ack(S1, 0))     # held already
    assert feed(inbound, data(S1, 1, 1, [(1, b"1")])) == (delivered([(1, 1, b"1"), (2, 2, b"2")]), ack(S1, 2))
    assert feed(inbound, data(S1, 1, 3, [(3, b"3")])) == (delivered([(3, 3, b"3"), (4, 4, b"4")]), ack(S1, 4))
    assert (inbound.early, inbound.duplicates) == ({}, 1)


def test_a_new_session_is_accepted_starting_at_its_base() -> None:
    inbound = Inbound("b", "a")
    assert feed(inbound, data(S1, 1, 1, [(1, b"1")]))[0] == delivered([(1, 1, b"1")])
    # The sender restarted (or reset after a failure) and already had 1..6 acknowledged: start at 7.
    assert feed(inbound, data(S2, 7, 8, [(8, b"8")])) == ([], ack(S2, 6))
    assert feed(inbound, data(S2, 7, 7, [(7, b"7")])) == (delivered([(7, 7, b"7"), (8, 8, b"8")]), ack(S2, 8))


def test_a_restarted_receiver_follows_the_senders_base_past_a_stale_first_packet() -> None:
    """The first packet a new Inbound sees was sent before the sender's window moved on: its base
    is stale. What the sender sends later must still get through (it used to wait forever for
    seqs the sender no longer holds)."""
    out = outbound(max_batch=2)
    msgs = [(t, b"%d" % t) for t in range(1, 7)]
    for tag, payload in msgs:
        out.submit(tag, payload, 0.0, INF)
    b12, b34, b56 = out.flush(0.0)
    old = Inbound("b", "a")
    for batch in (b12, b34):
        _, reply = feed(old, batch)
        out.on_ack(*parse_ack(reply.envelope), 0.05)
    assert [h.seq for h in out.flight] == [5, 6]
    new = Inbound("b", "a")                                   # the receiver restarted
    assert feed(new, b56) == ([], ack(S1, 0))                 # in flight since t=0: base 1
    retry, _ = out.on_timer(0.2)
    assert retry == [data(S1, 5, 5, msgs[4:6])]
    assert feed(new, retry[0]) == (delivered([(5, 5, b"5"), (6, 6, b"6")]), ack(S1, 6))
    assert out.on_ack(S1, 6, 0.25) == [] and out.held() == 0


def test_stale_packets_of_a_session_left_behind_are_not_delivered_again() -> None:
    """Acks were lost, so the sender gave up on S1 (after the receiver had delivered it) and moved
    to S2; a late retransmission of S1, then of S2, must not deliver anything twice."""
    inbound = Inbound("b", "a")
    s1 = data(S1, 1, 1, [(1, b"x"), (2, b"y")])
    s2 = data(S2, 1, 1, [(3, b"z")])
    assert feed(inbound, s1) == (delivered([(1, 1, b"x"), (2, 2, b"y")]), ack(S1, 2))
    assert feed(inbound, s2) == (delivered([(1, 3, b"z")]), ack(S2, 1))
    assert feed(inbound, s1) == ([], ack(S1, 2))
    assert feed(inbound, s2) == ([], ack(S2, 1))
    assert feed(inbound, data(S2, 1, 2, [(4, b"w")])) == (delivered([(2, 4, b"w")]), ack(S2, 2))


def test_a_restarted_sender_makes_the_inbound_switch_session() -> None:
    net = ChannelNet(SEED)
    net.link("a", "b")
    net.send_all("a", "b", [(1, b"1"), (2, b"2")])
    net.run()
    new = net.restart_sender("a", "b")
    net.send_all("a", "b", [(3, b"3")])
    net.run()
    assert net.inbound[("a", "b")].session == new.session
    assert [(d.tag, d.seq) for d in net.delivered[("a", "b")]] == [(1, 1), (2, 2), (3, 1)]


# --- runs under faults -----------------------------------------------------------------------------

faults = st.fixed_dictionaries({
    "drop": st.floats(0, 0.4), "ack_drop": st.floats(0, 0.5), "duplicate": st.floats(0, 0.3),
    "reorder": st.floats(0, 0.5), "jitter": st.floats(0, 0.3), "stray_timers": st.floats(0, 0.1),
})
shapes = st.fixed_dictionaries({
    "window": st.integers(1, 64), "extra_hwm": st.integers(0, 64), "max_batch": st.integers(1, 32),
})


def messages(rng: random.Random, n: int, max_size: int, start: int = 0) -> list[tuple[int, bytes]]:
    return [(start + i, rng.randbytes(rng.randint(0, max_size))) for i in range(n)]


def make_net(seed: int, fault: dict[str, float], shape: dict[str, int], links: list[tuple[str, str]]) -> ChannelNet:
    net = ChannelNet(seed, **fault)
    for src, dst in links:
        net.link(src, dst, window=shape["window"], hwm=shape["window"] + shape["extra_hwm"],
                 max_batch=shape["max_batch"])
    return net


def assert_exactly_once_in_order(net: ChannelNet) -> None:
    for link, sent in net.submitted.items():
        assert [(d.tag, d.payload) for d in net.delivered[link]] == sent, link
        assert net.outbound[link].held() == 0 and not net.outbound[link].flight
        assert net.failed[link] == []


PAIRS = [("a", "b"), ("b", "a"), ("c", "b"), ("a", "c")]


@PROPERTY
@given(seed=st.integers(0, 2**32), n=st.integers(0, 300), max_size=st.integers(0, 200), fault=faults,
       shape=shapes, links=st.lists(st.sampled_from(PAIRS), min_size=1, max_size=4, unique=True),
       partition=st.one_of(st.none(), st.tuples(st.integers(0, 300), st.integers(1, 400))),
       fault_steps=st.integers(0, 2000))
# Found in a suite run: an early RTT sample set a 20 ms RTO, and the backoff was dropped on every
# ack of a resent message, so under 0.3 s of jitter 8 messages took 13 retransmissions.
@example(seed=560, n=8, max_size=0, fault={"drop": 0.0625, "ack_drop": 0.0, "duplicate": 0.0, "reorder": 0.375,
                                           "jitter": 0.296875, "stray_timers": 0.0},
         shape={"window": 1, "extra_hwm": 0, "max_batch": 1}, links=[("a", "b")], partition=None, fault_steps=0)
def test_every_message_is_delivered_exactly_once_in_order_after_faults_heal(
        seed: int, n: int, max_size: int, fault: dict[str, float], shape: dict[str, int],
        links: list[tuple[str, str]], partition: tuple[int, int] | None, fault_steps: int) -> None:
    net = make_net(seed, fault, shape, links)
    rng = random.Random(seed)
    for i, (tag, payload) in enumerate(messages(rng, n, max_size)):
        if partition is not None and i == partition[0]:
            a, b = rng.choice(links)
            net.partition(a, b, steps=partition[1], one_way=rng.random() < 0.5)
        src, dst = rng.choice(links)
        net.send_all(src, dst, [(tag, payload)], steps_between=rng.randint(0, 2))
    for _ in range(fault_steps):
        if not net.step():
            break
    net.heal()
    net.run()
    assert_exactly_once_in_order(net)
    # Bounded effort: one ack per data packet that arrived, and retransmissions stay a small
    # multiple of what the faults forced (each lost data or ack packet costs at most one go-back
    # round, each round resends at most a window).
    data_packets = net.sends["data"]
    assert net.sends["ack"] <= 2 * data_packets
    retransmitted = sum(o.retransmitted for o in net.outbound.values())
    assert retransmitted <= shape["window"] * (2 * net.dropped + 4 * len(links) + net.steps // 10)


@st.composite
def adversarial_data(draw: st.DrawFn, sessions: list[int]) -> list[tuple[int, int, int, int]]:
    """(session, base, first, count) for data messages an adversary might send."""
    out = []
    for _ in range(draw(st.integers(0, 60))):
        first = draw(st.integers(1, 40))
        out.append((draw(st.sampled_from(sessions)), draw(st.integers(1, first)), first, draw(st.integers(0, 6))))
    return out


def payload_of(session: int, seq: int) -> bytes:
    return b"%d:%d" % (session % 1000, seq)


@PROPERTY
@given(stream=adversarial_data([S1]), window=st.integers(1, 50))
def test_inbound_delivers_each_seq_at_most_once_and_only_after_its_predecessor(
        stream: list[tuple[int, int, int, int]], window: int) -> None:
    """Whatever data messages arrive for one session, seq n is delivered only right after n-1,
    or at the highest base the sender announced (it holds nothing below: all acknowledged)."""
    inbound = Inbound("b", "a", window=window)
    last, max_base = 0, 0
    for session, base, first, count in stream:
        seqs = range(first, first + count)
        max_base = max(max_base, base)
        got, reply = inbound.on_data(session, base, first, list(seqs), [payload_of(session, q) for q in seqs])
        for d in got:
            assert d.seq == last + 1 or d.seq == max_base, (last, d.seq, max_base)
            assert d.seq > last and d.tag == d.seq and d.payload == payload_of(session, d.seq)
            last = d.seq
        assert reply == ack(S1, inbound.expected - 1)
        assert inbound.expected - 1 == max(last, max_base - 1)
        assert len(inbound.early) <= window and all(q > inbound.expected for q in inbound.early)


@PROPERTY
@given(stream=adversarial_data([S1, S2, S3]))
def test_interleaved_sessions_never_deliver_a_seq_twice(stream: list[tuple[int, int, int, int]]) -> None:
    inbound = Inbound("b", "a")
    last = {S1: 0, S2: 0, S3: 0}
    for session, base, first, count in stream:
        seqs = range(first, first + count)
        got, _ = inbound.on_data(session, base, first, list(seqs), [payload_of(session, q) for q in seqs])
        for d in got:
            assert d.seq > last[session] and d.payload == payload_of(session, d.seq)
            last[session] = d.seq


@PROPERTY
@given(seed=st.integers(0, 2**32), n=st.integers(1, 200), fault=faults, shape=shapes,
       restart_at=st.integers(0, 199))
def test_a_receiver_restarting_mid_stream_resumes_without_gaps(
        seed: int, n: int, fault: dict[str, float], shape: dict[str, int], restart_at: int) -> None:
    net = make_net(seed, fault, shape, [("a", "b")])
    rng = random.Random(seed)
    msgs = messages(rng, n, 50)
    before: list[Deliver] = []
    for i, m in enumerate(msgs):
        if i == restart_at:
            before = list(net.delivered[("a", "b")])
            net.restart_receiver("a", "b")
        net.send_all("a", "b", [m], steps_between=rng.randint(0, 2))
    net.heal()
    net.run()
    assert net.outbound[("a", "b")].held() == 0 and net.failed[("a", "b")] == []
    after = net.delivered[("a", "b")][len(before):]
    first_seqs = [d.seq for d in before]
    assert first_seqs == list(range(1, len(before) + 1))      # the first Inbound: in order, once
    seqs = [d.seq for d in after]
    assert seqs == sorted(set(seqs))                          # the second: in order, never twice
    assert seqs[-1] == n                                      # and it reached the end
    gaps = set(range(seqs[0], n + 1)) - set(seqs)
    assert gaps <= set(first_seqs)                            # it skipped only what the first delivered
    assert seqs[0] <= len(before) + 1
    for d in [*before, *after]:
        assert (d.tag, d.payload) == msgs[d.seq - 1]


@PROPERTY
@given(seed=st.integers(0, 2**32), n=st.integers(1, 150), fault=faults, shape=shapes,
       restart_at=st.integers(0, 149))
def test_a_sender_restarting_mid_stream_starts_a_session_the_inbound_follows(
        seed: int, n: int, fault: dict[str, float], shape: dict[str, int], restart_at: int) -> None:
    net = make_net(seed, fault, shape, [("a", "b")])
    rng = random.Random(seed)
    msgs = messages(rng, n, 50)
    for i, m in enumerate(msgs):
        if i == restart_at:
            net.restart_sender("a", "b")
        net.send_all("a", "b", [m], steps_between=rng.randint(0, 2))
    net.heal()
    net.run()
    got = [(d.tag, d.payload) for d in net.delivered[("a", "b")]]
    if restart_at >= n:
        assert got == msgs
        return
    inbound, new = net.inbound[("a", "b")], net.outbound[("a", "b")]
    assert new.held() == 0
    assert new.session == inbound.session or new.session in inbound.left   # it switched (late old packets may follow)
    old_part, new_part = msgs[:restart_at], msgs[restart_at:]
    # The new session carries everything submitted to it, once and in order; of what the old
    # sender lost with its restart, some may still arrive late (its packets were in flight), but
    # nothing twice, out of order, or invented.
    assert [m for m in got if m[0] >= restart_at] == new_part
    from_old = [m for m in got if m[0] < restart_at]
    assert [t for t, _ in from_old] == sorted({t for t, _ in from_old}) and set(from_old) <= set(old_part)


@PROPERTY
@given(seed=st.integers(0, 2**32), n=st.integers(1, 150), fault=faults, shape=shapes,
       deadline=st.floats(0.05, 3.0), cut=st.tuples(st.integers(0, 149), st.integers(1, 300)))
def test_with_deadlines_each_message_is_delivered_or_reported_failed_and_never_twice(
        seed: int, n: int, fault: dict[str, float], shape: dict[str, int], deadline: float,
        cut: tuple[int, int]) -> None:
    net = make_net(seed, fault, shape, [("a", "b")])
    rng = random.Random(seed)
    msgs = messages(rng, n, 20)
    for i, m in enumerate(msgs):
        if i == cut[0]:
            net.partition("a", "b", steps=cut[1], one_way=rng.random() < 0.5)
        net.send_all("a", "b", [m], steps_between=rng.randint(0, 2), deadline=deadline)
    net.heal()
    net.run()
    tags = [d.tag for d in net.delivered[("a", "b")]]
    failed = {f.tag for f in net.failed[("a", "b")]}
    assert len(tags) == len(set(tags))
    assert set(tags) | failed == {t for t, _ in msgs}
    # Order holds among everything that was not reported failed.
    kept = [t for t in tags if t not in failed]
    assert kept == sorted(kept)


# --- codec -----------------------------------------------------------------------------------------


def env(kind: str, **body: object) -> Envelope:
    return Envelope(PROTOCOL, VERSION, kind, 0, body)


def test_parse_data_and_ack_read_what_the_cores_send() -> None:
    send = data(S1, 2, 3, [(7, b"x"), (8, b"y")])
    assert parse_data(send.envelope, send.frames) == (S1, 2, 3, [7, 8])
    assert parse_data(env("data", s=0, b=1, q=1, t=[]), ()) == (0, 1, 1, [])
    assert parse_ack(ack(S1, 0).envelope) == (S1, 0)


@pytest.mark.parametrize("body,frames", [
    ({"b": 1, "q": 1, "t": []}, ()),                                    # no session
    ({"s": 1, "q": 1, "t": []}, ()),                                    # no base
    ({"s": 1, "b": 1, "t": []}, ()),                                    # no seq
    ({"s": 1, "b": 1, "q": 1}, ()),                                     # no tags
    ({"s": True, "b": 1, "q": 1, "t": []}, ()),                         # bool is not an int
    ({"s": 1, "b": 1.0, "q": 1, "t": []}, ()),
    ({"s": 1, "b": 1, "q": "1", "t": []}, ()),
    ({"s": 1, "b": 1, "q": 1, "t": (1,)}, (b"x",)),                     # tags must be a list
    ({"s": 1, "b": 1, "q": 1, "t": [1, 2]}, (b"x",)),                   # tags and frames disagree
    ({"s": 1, "b": 1, "q": 1, "t": []}, (b"x",)),
    ({"s": 1, "b": 1, "q": 1, "t": ["1"]}, (b"x",)),                    # a tag must be an int
    ({"s": 1, "b": 1, "q": 1, "t": [False]}, (b"x",)),
    ({"s": -1, "b": 1, "q": 1, "t": []}, ()),                           # out of range
    ({"s": 2**63, "b": 1, "q": 1, "t": []}, ()),
    ({"s": 1, "b": 0, "q": 1, "t": []}, ()),
    ({"s": 1, "b": 3, "q": 2, "t": []}, ()),                            # base above the first seq
    ({"s": 1, "b": 1, "q": 2**62, "t": []}, ()),
])
def test_parse_data_rejects_malformed_envelopes(body: dict[str, object], frames: tuple[bytes, ...]) -> None:
    with pytest.raises(CodecError):
        parse_data(Envelope(PROTOCOL, VERSION, "data", 0, body), frames)


@pytest.mark.parametrize("body", [
    {"c": 1}, {"s": 1}, {"s": False, "c": 1}, {"s": 1, "c": None}, {"s": 1, "c": -1}, {"s": -5, "c": 0},
    {"s": 2**63, "c": 0}, {"s": 1, "c": 2**62}, {"s": 1, "c": [1]},
])
def test_parse_ack_rejects_malformed_envelopes(body: dict[str, object]) -> None:
    with pytest.raises(CodecError):
        parse_ack(Envelope(PROTOCOL, VERSION, "ack", 0, body))


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=5)
    | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=8)
fields = st.sampled_from(["s", "b", "q", "t", "c", "x"])
bodies = st.dictionaries(fields, values | st.integers(-3, 2**63 + 3) | st.lists(st.integers(-2, 5), max_size=3),
                         max_size=6)


@PROPERTY
@given(body=bodies, frames=st.lists(st.binary(max_size=3), max_size=3))
def test_arbitrary_bodies_parse_or_raise_codec_error_only(body: dict[str, object], frames: list[bytes]) -> None:
    e = Envelope(PROTOCOL, VERSION, "data", 0, body)
    try:
        session, base, first, tags = parse_data(e, frames)
    except CodecError:
        pass
    else:
        assert 0 <= session < 2**63 and 1 <= base <= first < 2**62
        assert len(tags) == len(frames) and all(type(t) is int for t in tags)
    try:
        session, cum = parse_ack(e)
    except CodecError:
        pass
    else:
        assert 0 <= session < 2**63 and 0 <= cum < 2**62


@given(st.lists(st.tuples(st.lists(st.tuples(st.integers(0, 5), st.binary(max_size=8)), max_size=6),
                          st.sampled_from([5.0, 9.0, INF])), max_size=6))
def test_submitting_runs_at_once_holds_what_submitting_each_message_holds(
        runs: list[tuple[list[tuple[int, bytes]], float]]) -> None:
    """`submit_many` (a shell's run of queued messages with one deadline) leaves the channel as
    `submit` of each message would: the same seqs, tags, payloads and deadline entries, whatever
    the deadlines of the runs before."""
    one_by_one, at_once = outbound(), outbound()
    for messages, deadline in runs:
        for tag, payload in messages:
            one_by_one.submit(tag, payload, 0.0, deadline)
        at_once.submit_many(messages, 0.0, deadline)
    assert at_once.next_seq == one_by_one.next_seq
    assert [(h.seq, h.tag, h.payload, h.deadline, h.size) for h in at_once.queue] == \
        [(h.seq, h.tag, h.payload, h.deadline, h.size) for h in one_by_one.queue]
    assert list(at_once.deadlines) == list(one_by_one.deadlines)
    assert at_once.flush(1.0) == one_by_one.flush(1.0)
