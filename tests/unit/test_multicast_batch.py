"""Multicast batches (router -> member), Relay's dedup and forwarding, and Reorder's run fast path."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from snipe.errors import CodecError
from snipe.multicast.core import (
    BATCH_FORM,
    BATCH_MESSAGES,
    Batch,
    Header,
    Relay,
    Reorder,
    batches,
    unpack_batch,
)


def test_a_batch_keeps_runs_of_consecutive_seqs_per_origin_and_unpacks_to_what_went_in():
    b = Batch("urn:snipe:group:g")
    for origin, seq, tag, body in [("a", 1, 0, b"x"), ("a", 2, 5, b""), ("b", 7, 0, b"yy"), ("a", 3, 1, b"z"),
                                   ("a", 5, 0, b"w")]:
        b.add(origin, seq, tag, body)
    assert b.count == 5 and b.size == 5
    assert unpack_batch(b.pack()) == ("urn:snipe:group:g", [
        ("a", 1, [0, 5], [b"x", b""]), ("b", 7, [0], [b"yy"]), ("a", 3, [1], [b"z"]), ("a", 5, [0], [b"w"])])


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 50), st.integers(-5, 5), st.binary(max_size=40)),
                max_size=60))
def test_batches_round_trip_every_item_in_order(items):
    out = [(o, first + i, t, body) for payload in batches("urn:snipe:group:g", items)
           for o, first, tags, bodies in unpack_batch(payload)[1]
           for i, (t, body) in enumerate(zip(tags, bodies, strict=True))]
    assert out == items


def test_batches_are_bounded_by_count():
    items = [("a", i, 0, b".") for i in range(1, BATCH_MESSAGES + 2)]
    packed = batches("urn:snipe:group:g", items)
    assert [sum(len(r[2]) for r in unpack_batch(p)[1]) for p in packed] == [BATCH_MESSAGES, 1]


def _form2(header: list, bodies: bytes = b"") -> bytes:
    head = msgpack.packb(header)
    return bytes([BATCH_FORM]) + len(head).to_bytes(4, "big") + head + bodies


@pytest.mark.parametrize("payload", [
    b"",
    b"\x02\x00\x00\x00",                                                     # shorter than the fixed header
    b"\x02\x00\x00\x00\x05abc",                                               # header past the payload
    b"\x02\x00\x00\x00\x01\x90",                                             # header not [group, runs]
    _form2(["g", [["a", 1, 1, 0, 3]]], b"ab"),                                # short body
    _form2(["g", [["a", 1, 2, [0, 1], [1]]]], b"a"),                          # sizes != count
    _form2(["g", [["a", 1, 2, [0], 1]]], b"aa"),                              # tags != count
    _form2(["g", [["a", "1", 1, 0, 1]]], b"a"),                               # seq not int
    _form2(["g", [["a", 1, 0, [], []]]]),                                     # an empty run
    _form2(["g", [["a", 1, 1, 0, -1]]]),                                      # a negative size
    _form2(["g", [["a", 1, 1, True, 1]]], b"a"),                              # a tag not an int
    _form2(["g", [["a", 1, BATCH_MESSAGES + 1, 0, 0]]]),                      # more than a batch holds
    _form2(["g", [["a", 1, BATCH_MESSAGES, 0, 0], ["b", 1, 1, 0, 0]]]),       # ... over its runs
    _form2(["g", [["a", 1, 1, 0, 1]]], b"ab"),                                # bytes left
    _form2(["g", [["a", 1, 1, 0]]], b"a"),                                    # form 1's run of four
    (lambda h: len(h).to_bytes(4, "big") + h)(msgpack.packb(["g", [["a", 1, [0], [1]]]])) + b"a",  # form 1
])
def test_a_malformed_batch_is_a_codec_error(payload):
    with pytest.raises(CodecError):
        unpack_batch(payload)


@given(st.binary(max_size=200))
def test_any_bytes_read_as_a_batch_or_give_a_codec_error_only(payload):
    try:
        group, runs = unpack_batch(payload)
    except CodecError:
        return
    assert type(group) is str and sum(len(b) for r in runs for b in r[3]) <= len(payload)
    assert all(len(tags) == len(bodies) >= 1 for _, _, tags, bodies in runs)


@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 6), st.sampled_from([0, 0, 0, 7]),
                          st.sampled_from([b"", b"xy", b"xy", b"xyz"])), max_size=40))
def test_a_cut_batch_is_a_codec_error(items):
    for payload in batches("urn:snipe:group:g", items):
        for cut in range(len(payload)):
            try:
                unpack_batch(payload[:cut])
            except CodecError:
                continue
            raise AssertionError(f"a batch cut to {cut} of {len(payload)} bytes was read")


def test_a_run_keeps_one_tag_and_one_size_while_they_are_all_the_same():
    b = Batch("g")
    for seq, tag, body in [(1, 0, b"ab"), (2, 0, b"cd"), (3, 0, b"ef")]:
        b.add("a", seq, tag, body)
    assert b.runs == [["a", 1, 3, 0, 2]]
    b.add("a", 4, 9, b"g")
    assert b.runs == [["a", 1, 4, [0, 0, 0, 9], [2, 2, 2, 1]]]
    assert unpack_batch(b.pack()) == ("g", [("a", 1, [0, 0, 0, 9], [b"ab", b"cd", b"ef", b"g"])])


def test_reorder_takes_a_run_at_once_and_falls_back_to_one_by_one_around_holes():
    r = Reorder()
    assert r.on_run(5, ["m5", "m6"], 0.0) == ["m5", "m6"]              # first seen: from here on
    assert r.on_run(9, ["m9"], 0.0) == [] and r.gap_since == 0.0          # 7 and 8 missing: held
    assert r.on_run(6, ["m6", "m7", "m8"], 1.0) == ["m7", "m8", "m9"]    # the replay fills it; m6 again dropped
    assert r.expected == 10 and not r.held and r.gap_since is None


def test_while_a_replay_is_awaited_a_new_origin_starts_at_the_lowest_seq_seen_not_the_first():
    # The suite once saw a member take a live #41 from one router as the origin's first, then drop
    # the other router's replay of #0..40 as duplicates: a gap nobody reported.
    r = Reorder(hold_until=1.0)
    assert r.on_run(41, ["m41", "m42"], 0.1) == [] and r.expected is None     # held: a replay may come
    assert r.wants(0) and not r.wants(41)
    assert r.on_run(0, [f"m{i}" for i in range(41)], 0.2) == []               # the replay, still held
    assert r.on_timer(0.5) == ([], None)
    items, lost = r.on_timer(1.0)                                             # the hold is over
    assert items == [f"m{i}" for i in range(43)] and lost is None and r.expected == 43
    late = Reorder(hold_until=1.0)
    assert late.on_run(7, ["m7"], 0.5) == []
    assert late.on_run(8, ["m8"], 1.5) == ["m7", "m8"]                       # the next batch after the hold
    quiet = Reorder(hold_until=1.0)
    assert quiet.on_run(3, ["m3"], 2.0) == ["m3"]                            # no hold left: from the first seen


def test_a_router_relays_each_message_once_and_forwards_only_to_routers_that_have_not_had_it():
    relay = Relay("r1")
    h = Header("g", "s", 1, 0, ("r1", "r2"))
    out = relay.on_data(h, ["m1"], ["r1", "r2", "r3"])
    assert out is not None and out.deliver_to == ("m1",) and out.forward_to == ("r3",)
    assert out.header.seen == ("r1", "r2", "r3")                        # r3 does not send it back to r2
    assert relay.on_data(h, ["m1"], ["r1", "r2", "r3"]) is None          # a duplicate (from another router)
    seen_by_all = Header("g", "s", 2, 0, ("r1", "r2", "r3"))
    out = relay.on_data(seen_by_all, ["m1"], ["r1", "r2", "r3"])
    assert out is not None and out.forward_to == () and out.header is seen_by_all
    late = Header("g", "s", 5, 0, ("r1",))                               # 3 and 4 not yet: 5 is still new once
    assert relay.on_data(late, [], ["r1"]) is not None and relay.on_data(late, [], ["r1"]) is None
    assert relay.on_data(Header("g", "s", 3, 0, ("r1",)), [], ["r1"]) is not None
    assert (relay.relayed, relay.duplicates) == (4, 2)


def test_the_earlier_batch_form_is_refused_naming_both_forms():
    """A batch from a router of an earlier release (a 4-byte header length, then msgpack): a clear
    error saying to run one release everywhere, never a misread batch."""
    head = msgpack.packb(["urn:snipe:group:g", [["urn:snipe:proc:s#1", 1, [0], [4]]]])
    with pytest.raises(CodecError, match=r"wire form 0; this release reads form 2 .*run one release on every host"):
        unpack_batch(len(head).to_bytes(4, "big") + head + b"body")
