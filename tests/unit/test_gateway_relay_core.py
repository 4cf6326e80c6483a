"""Relaying through a gateway (snipe/messaging/gateway.py): sealing end to end, the relay envelope,
and the relay core as transcripts (events in, effects out)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snipe.errors import CodecError, SignatureError, SnipeError
from snipe.identity import Identity
from snipe.messaging.gateway import Lookup, RelayCore, Sealer, ToPeer, ToSender, parse_relay, relay_parts
from snipe.wire import decode

A, B = "urn:snipe:proc:a", "urn:snipe:proc:b"
ALICE, BOB, MALLORY = (Identity.from_seed(bytes([i]) * 32) for i in (1, 2, 3))


def test_sealed_frames_open_only_for_the_right_keys_and_direction():
    parts = [b"envelope", b"payload" * 100]
    sealed = Sealer(ALICE).seal(BOB.public_key, A, B, parts)
    assert b"payload" not in sealed
    assert Sealer(BOB).open(ALICE.public_key, A, B, sealed) == parts
    with pytest.raises(SignatureError):                  # a third key cannot open it ...
        Sealer(MALLORY).open(ALICE.public_key, A, B, sealed)
    with pytest.raises(SignatureError):                  # ... nor pass off its own box as Alice's
        Sealer(BOB).open(ALICE.public_key, A, B, Sealer(MALLORY).seal(BOB.public_key, A, B, parts))
    with pytest.raises(CodecError):                      # reflected back to its writer: wrong direction
        Sealer(ALICE).open(BOB.public_key, B, A, sealed)
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(SignatureError):
        Sealer(BOB).open(ALICE.public_key, A, B, bytes(tampered))


def test_relay_envelope_round_trip_and_malformed_ones():
    env, frames = decode(relay_parts(A, B, b"sealed"))
    assert parse_relay(env, frames) == (A, B, b"sealed")
    bad = [({"f": A}, [b"x"]), ({"f": A, "t": 5}, [b"x"]), ({"f": "nope", "t": B}, [b"x"]), ({"f": A, "t": B}, []),
           ({"f": A, "t": B}, [b"x", b"y"])]
    for body, fr in bad:
        with pytest.raises(CodecError):
            parse_relay(env.reply("relay", **body), fr)
    with pytest.raises(CodecError):
        parse_relay(env.reply("data", f=A, t=B), [b"x"])


@given(st.binary(max_size=300))
def test_opening_arbitrary_bytes_raises_only_our_errors(junk: bytes):
    with pytest.raises(SnipeError):
        Sealer(BOB).open(ALICE.public_key, A, B, junk)


def test_relay_core_looks_up_queues_then_forwards_and_routes_acks_back():
    core = RelayCore(queue_max=2)
    assert core.from_sender(b"c1", A, B, [b"m1"], 0.0) == [Lookup(B)]
    assert core.from_sender(b"c1", A, B, [b"m2"], 0.1) == []             # still looking: queued
    assert core.from_sender(b"c1", A, B, [b"m3"], 0.2) == []             # queue full: dropped, counted
    assert core.resolved(B, "tcp://10.0.0.2:1", "kb", 0.3) == [
        ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m1",)), ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m2",))]
    assert core.from_sender(b"c1", A, B, [b"m4"], 0.4) == [ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m4",))]
    # an ack from B for A goes back on A's connection, the latest one A used
    assert core.from_sender(b"c2", A, B, [b"m5"], 0.5) == [ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m5",))]
    assert core.from_peer(B, B, A, [b"ack"], 0.6) == [ToSender(b"c2", (b"ack",))]
    # what B's link says comes from someone else, or goes to a sender we never saw, is dropped
    assert core.from_peer(B, "urn:snipe:proc:x", A, [b"ack"], 0.7) == []
    assert core.from_peer(B, B, "urn:snipe:proc:nobody", [b"ack"], 0.7) == []
    # dropped counts both directions of the pair: m3 (queue full) and the ack B's link forged
    assert core.stats()[f"{A} -> {B}"] == {"forwarded": 4, "returned": 1, "dropped": 2, "bytes": 8}
    # looked up again after refresh_s while in use; a failed look-up keeps the last known place
    effects = core.from_sender(b"c2", A, B, [b"m6"], 6.0)
    assert effects == [Lookup(B), ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m6",))]
    assert core.resolved(B, None, None, 6.1) == []
    assert core.from_sender(b"c2", A, B, [b"m7"], 6.2) == [ToPeer(B, "tcp://10.0.0.2:1", "kb", (b"m7",))]
    # a destination that moved: the next look-up gives the new place
    core.from_sender(b"c2", A, B, [b"m8"], 12.0)
    assert core.resolved(B, "tcp://10.0.0.9:1", "kb", 12.1) == []
    assert core.from_sender(b"c2", A, B, [b"m9"], 12.2) == [ToPeer(B, "tcp://10.0.0.9:1", "kb", (b"m9",))]


def test_relay_core_drops_what_waits_for_a_destination_never_found_and_forgets_idle_state():
    core = RelayCore(forget_s=10.0)
    assert core.from_sender(b"c1", A, B, [b"m1"], 0.0) == [Lookup(B)]
    assert core.resolved(B, None, None, 0.1) == []
    assert core.stats()[f"{A} -> {B}"]["dropped"] == 1
    assert core.tick(5.0) == []
    assert core.tick(10.5) == [B]
    assert core.senders == {} and core.dests == {}
    assert core.resolved(B, "tcp://x:1", "k", 11.0) == []                 # a late answer for a forgotten one
