"""A reliable channel survives the migration of either end (no I/O): the receiver's Inbound, or
the sender's Outbound, is exported mid-stream and continued by a clone; the peer follows the
redirect (Outbound.resend_all). Under loss and reordering every message arrives exactly once
and in order. Also the migrate/1 state codec."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snipe.effects import Send
from snipe.errors import CodecError
from snipe.messaging.channel import Inbound, Outbound, parse_ack, parse_data
from snipe.migration import transfer

INF = float("inf")
PROPERTY = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])


class Net:
    """Packets in flight between the two ends, each addressed to one incarnation of an end;
    delivered in random order, each lost with probability `drop`."""

    def __init__(self, rng: random.Random, drop: float) -> None:
        self.rng, self.drop = rng, drop
        self.flight: list[tuple[str, Send]] = []

    def put(self, to: str, sends: list[Send]) -> None:
        for s in sends:
            if self.rng.random() >= self.drop:
                self.flight.append((to, s))

    def take(self) -> tuple[str, Send] | None:
        if not self.flight:
            return None
        return self.flight.pop(self.rng.randrange(len(self.flight)))


def stream(seed: int, n: int, cut: int, drop: float, move: str) -> list[int]:
    """Stream n messages from a to b; after `cut` steps, `move` ("receiver" or "sender") migrates.
    Returns what b delivered (old and new incarnation together), in delivery order."""
    rng = random.Random(seed)
    net = Net(rng, drop)
    out = Outbound("a", "b", rng=random.Random(seed), window=8, max_batch=3)
    rx = Inbound("b", "a", window=8)
    sender_at, receiver_at = "a0", "b0"          # the incarnation each end now is
    sender_thinks_b_at = "b0"                    # where a sends until it follows the redirect
    redirect_due: int | None = None
    got: list[int] = []
    now = 0.0
    for i in range(n):
        out.submit(0, i.to_bytes(4, "big"), now, INF)
    net.put(sender_thinks_b_at, out.flush(now))
    for step in range(20_000):
        if len(got) == n and not out.held():
            return got
        now += 0.01
        if step == cut:
            if move == "receiver":               # b freezes, exports, a clone continues it
                clone = Inbound("b", "a", window=8)
                clone.restore_state(rx.export_state())
                rx, receiver_at = clone, "b1"
                # worst case: the acknowledgements of what b0 delivered are all lost, so a holds them
                net.flight = [(to, s) for to, s in net.flight if s.envelope.kind != "ack"]
                redirect_due = step + rng.randrange(1, 20)   # the redirect takes a while to arrive
            else:                                # a freezes, exports, a clone continues it
                clone_out = Outbound("a", "b", rng=random.Random(seed + 1), window=8, max_batch=3)
                clone_out.restore_state(out.export_state(now), out.held_payloads(), now)
                out, sender_at = clone_out, "a1"
                net.put(sender_thinks_b_at, out.flush(now))
        if redirect_due == step:
            sender_thinks_b_at = receiver_at
            net.put(sender_thinks_b_at, out.resend_all(now))
        packet = net.take()
        if packet is None:
            sends, failed = out.on_timer(now + 1.0)
            assert not failed
            net.put(sender_thinks_b_at, sends)
            continue
        to, s = packet
        if s.envelope.kind == "data":
            if to != receiver_at:
                continue                          # the old place answers with a redirect, delivers nothing
            delivered, ack = rx.on_data(*parse_data(s.envelope, s.frames), s.frames)
            got.extend(int.from_bytes(d.payload, "big") for d in delivered)
            net.put(sender_at, [ack])
        else:
            if to != sender_at:
                continue                          # an ack for the sender's old place: it moved on
            session, cum = parse_ack(s.envelope)
            net.put(sender_thinks_b_at, out.on_ack(session, cum, now))
    raise AssertionError(f"the stream did not finish: {len(got)} of {n} delivered")


@PROPERTY
@given(seed=st.integers(0, 10_000), n=st.integers(1, 60), cut=st.integers(0, 80), drop=st.sampled_from([0.0, 0.1, 0.3]),
       move=st.sampled_from(["receiver", "sender"]))
def test_a_channel_is_exactly_once_and_in_order_across_a_migration(seed: int, n: int, cut: int, drop: float,
                                                                    move: str) -> None:
    assert stream(seed, n, cut, drop, move) == list(range(n))


def test_an_exported_outbound_keeps_session_seqs_and_deadlines() -> None:
    out = Outbound("a", "b", rng=random.Random(1))
    out.submit(3, b"x", 0.0, 10.0)
    out.submit(4, b"y", 0.0, INF)
    out.flush(0.0)
    out.submit(5, b"z", 1.0, 10.0)
    state = out.export_state(2.0)
    assert state == {"session": out.session, "next_seq": 4, "retain": 0,
                     "held": [[1, 3, 8.0], [2, 4, None], [3, 5, 8.0]]}
    clone = Outbound("a", "b", rng=random.Random(2))
    clone.restore_state(state, out.held_payloads(), 100.0)
    sends = clone.flush(100.0)
    assert [s.envelope.body for s in sends] == [{"s": out.session, "b": 1, "q": 1, "t": [3, 4, 5]}]
    assert list(sends[0].frames) == [b"x", b"y", b"z"]
    assert clone.next_deadline() is not None and clone.deadlines[0][0] == 108.0
    with pytest.raises(ValueError):
        clone.restore_state(state, out.held_payloads(), 100.0)     # only into a fresh channel
    with pytest.raises(CodecError):
        Outbound("a", "b").restore_state(state, [b"x"], 0.0)


def test_the_state_codec_round_trips_and_keeps_big_payloads_as_frames() -> None:
    big = bytes(range(256)) * 1024                   # 256 KiB: travels as its own frame
    payloads = [b"", b"a", big, b"bc"]
    parts = transfer.encode_state("m1", {"out": []}, payloads, {"joined": {}}, {"count": 3})
    env, frames = transfer.parse(parts)
    assert env.kind == "state" and env.body["sizes"] == [0, 1, -1, 2]
    assert frames[1] is big                          # not copied on the way out
    lib, got, groups, app = transfer.decode_state(env, frames)
    assert (lib, got, groups, app) == ({"out": []}, payloads, {"joined": {}}, {"count": 3})
    env, frames = transfer.parse(transfer.encode_state("m1", {}, [], {}, b"\x00" * 10))
    assert transfer.decode_state(env, frames)[3] == b"\x00" * 10


@pytest.mark.parametrize("sizes, frames", [([5], [b"abc"]), ([1], [b"ab"]), ([-1], [b""]), ([-2], [b""]),
                                           (["x"], [b"a"]), ([], [])])
def test_malformed_payload_packing_is_a_codec_error(sizes: list, frames: list) -> None:
    with pytest.raises(CodecError):
        transfer.unpack_payloads(sizes, frames)


def test_unencodable_application_state_is_a_codec_error() -> None:
    with pytest.raises(CodecError, match="msgpack cannot encode"):
        transfer.encode_state("m1", {}, [], {}, {"f": object()})
    with pytest.raises(CodecError):
        transfer.parse([b"\x91\x01"])
