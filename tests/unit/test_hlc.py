"""Hybrid logical clock: packing, monotonic now(), update() past local and received."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from snipe import hlc
from snipe.hlc import HybridClock


def test_pack_and_unpack():
    ts = hlc.pack(1_700_000_000_123, 7)
    assert ts == (1_700_000_000_123 << 16) | 7
    assert (hlc.physical_ms(ts), hlc.logical(ts)) == (1_700_000_000_123, 7)
    assert hlc.pack(5) == 5 << 16
    assert (hlc.physical_ms(hlc.pack(5)), hlc.logical(hlc.pack(5))) == (5, 0)
    assert hlc.logical(hlc.pack(5, hlc.LOGICAL_MASK)) == 65535


def test_packed_timestamps_order_like_the_pair():
    assert hlc.pack(10, 65535) < hlc.pack(11, 0)
    assert hlc.pack(10, 1) < hlc.pack(10, 2)


def test_now_follows_the_wall_clock_when_it_advances():
    clock = HybridClock()
    assert [clock.now(1000), clock.now(1001), clock.now(1005)] == [
        hlc.pack(1000),
        hlc.pack(1001),
        hlc.pack(1005),
    ]


def test_now_counts_logically_when_the_wall_clock_stalls_or_goes_backwards():
    clock = HybridClock()
    stamps = [clock.now(w) for w in (1000, 1000, 999, 500, 1000, 1001)]
    assert stamps == [
        hlc.pack(1000, 0),
        hlc.pack(1000, 1),
        hlc.pack(1000, 2),
        hlc.pack(1000, 3),
        hlc.pack(1000, 4),
        hlc.pack(1001, 0),
    ]


def test_now_starts_after_a_restored_last_value():
    clock = HybridClock(last=hlc.pack(2000, 3))
    assert clock.now(1000) == hlc.pack(2000, 4)


def test_update_with_a_timestamp_from_the_future_moves_past_it():
    clock = HybridClock()
    clock.now(1000)
    assert clock.update(hlc.pack(5000, 9), wall_ms=1001) == hlc.pack(5000, 10)
    assert clock.now(1002) == hlc.pack(5000, 11)


def test_update_with_an_old_timestamp_still_advances_the_local_clock():
    clock = HybridClock()
    clock.now(1000)
    assert clock.update(hlc.pack(10), wall_ms=1000) == hlc.pack(1000, 1)
    assert clock.update(hlc.pack(10), wall_ms=3000) == hlc.pack(3000, 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 10_000), min_size=1, max_size=60))
def test_now_strictly_increases_whatever_the_wall_clock_does(walls):
    clock = HybridClock()
    stamps = [clock.now(w) for w in walls]
    assert all(a < b for a, b in pairwise(stamps))
    for w, ts in zip(walls, stamps, strict=True):
        assert hlc.physical_ms(ts) >= w


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(0, 10_000), st.integers(0, hlc.pack(10_000, 100))),
        min_size=1,
        max_size=60,
    )
)
def test_update_exceeds_both_the_local_clock_and_the_received_stamp(events):
    clock = HybridClock()
    last = clock.last
    for is_receive, wall, received in events:
        if is_receive:
            ts = clock.update(received, wall)
            assert ts > received
        else:
            ts = clock.now(wall)
        assert ts > last
        assert ts >= hlc.pack(wall)
        assert clock.last == ts
        last = ts
