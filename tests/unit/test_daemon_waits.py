"""The daemon's pending waits (daemon/waits.py): answered when the task ends or at the deadline,
a timeout over the cap refused naming it, bounded per connection and in all, a gone client's
waits dropped. A transcript with a manual `now`."""

from __future__ import annotations

import pytest

from daemon.waits import Waits
from snipe.daemonclient import MAX_WAIT_S
from snipe.errors import CodecError, QuotaExceeded
from snipe.wire import Envelope

T1, T2 = "urn:snipe:proc:t1", "urn:snipe:proc:t2"


def env(i: int) -> Envelope:
    return Envelope("daemon", 1, "wait", i, {})


def test_waits_are_answered_when_their_task_ends_or_their_deadline_passes():
    w = Waits()
    a = w.add(b"c1", env(1), T1, 5.0, now=0.0)
    b = w.add(b"c1", env(2), T2, 50.0, now=0.0)
    c = w.add(b"c2", env(3), T2, 50.0, now=0.0)
    ended: set[str] = set()
    assert w.due(1.0, ended.__contains__) == [] and len(w) == 3
    assert w.due(5.0, ended.__contains__) == [a] and len(w) == 2
    ended.add(T2)
    assert w.due(6.0, ended.__contains__) == [b, c] and len(w) == 0
    assert w.by_client == {}


def test_a_timeout_over_the_cap_is_refused_naming_the_cap():
    w = Waits()
    with pytest.raises(CodecError, match=f"timeout 1e[+]18 s is over the cap of {MAX_WAIT_S:g} s; wait at most"):
        w.add(b"c", env(1), T1, 1e18, now=0.0)
    w.add(b"c", env(2), T1, MAX_WAIT_S, now=0.0)
    assert len(w) == 1


def test_waits_are_bounded_per_connection_and_in_all():
    w = Waits(per_client=2, total=3)
    w.add(b"c1", env(1), T1, 1.0, now=0.0)
    w.add(b"c1", env(2), T1, 1.0, now=0.0)
    with pytest.raises(QuotaExceeded, match=r"this connection already has 2 waits pending, the most one "
                                            r"connection may \(2\)"):
        w.add(b"c1", env(3), T1, 1.0, now=0.0)
    w.add(b"c2", env(4), T1, 1.0, now=0.0)
    with pytest.raises(QuotaExceeded, match=r"this daemon already holds 3 pending waits, the most it takes \(3\)"):
        w.add(b"c3", env(5), T1, 1.0, now=0.0)
    assert len(w) == 3
    assert w.drop_client(b"c1") == 2 and len(w) == 1        # a gone client's waits go with it
    w.add(b"c3", env(6), T1, 1.0, now=0.0)
    assert w.drop_client(b"nobody") == 0 and len(w) == 2


def test_a_wait_is_held_a_while_at_most_then_answered_with_renew_and_its_slot_freed():
    """A client that left quietly does not keep its slot until its timeout: the hold ends first,
    and only a client still waiting asks again."""
    w = Waits(total=1, hold_s=30.0)
    a = w.add(b"gone", env(1), T1, 600.0, now=0.0, renew=True)
    with pytest.raises(QuotaExceeded):
        w.add(b"other", env(2), T1, 600.0, now=1.0, renew=True)
    assert w.due(29.9, set().__contains__) == []
    assert w.due(30.0, set().__contains__) == [a] and a.renew(30.0) and len(w) == 0
    b = w.add(b"other", env(3), T1, 10.0, now=31.0, renew=True)      # a timeout within the hold: no renew
    assert w.due(41.0, set().__contains__) == [b] and not b.renew(41.0)


def test_a_wait_that_did_not_ask_for_renew_is_held_to_its_timeout():
    """An older client takes any answer before its task ends as its timeout: its wait is not cut
    short by the hold (daemon/1's meaning of a wait stays as it was)."""
    w = Waits(hold_s=30.0)
    a = w.add(b"old", env(1), T1, 600.0, now=0.0)
    assert w.due(30.0, set().__contains__) == [] and w.due(599.9, set().__contains__) == []
    assert w.due(600.0, set().__contains__) == [a] and not a.renew(600.0)
