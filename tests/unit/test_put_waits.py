"""The relayed put's wait (rcds/put_waits.py): answered once, by confirmations or by its deadline."""

from __future__ import annotations

from rcds.put_waits import TIMER, PutWaits, WaitingPut
from snipe.effects import StartTimer
from snipe.wire import Envelope


def waiting(rid: int, needed: int, deadline: float) -> WaitingPut:
    return WaitingPut(b"client", Envelope("rcds", 1, "put", rid, {}), [[1, "", "", rid]], needed, deadline)


def test_a_put_is_answered_when_its_last_needed_peer_confirms_and_never_again():
    w = PutWaits()
    one, two = waiting(1, 1, 10.0), waiting(2, 2, 10.0)
    assert w.wait(0, one) == [StartTimer(TIMER, 10.0)]
    assert w.wait(0, two) == []                          # the timer already fires by then
    assert w.on_confirmed("B", 0) == [one]
    assert w.on_confirmed("B", 0) == []                  # the same peer twice counts once
    assert w.on_confirmed("C", 0) == [two]
    assert two.confirmed_by == ["B", "C"]
    assert len(w) == 0
    assert w.on_confirmed("C", 0) == [] and w.on_confirmed("B", 5) == []
    assert w.on_timer(11.0) == ([], [])


def test_a_put_past_its_deadline_is_answered_with_what_confirmed_and_the_timer_moves_on():
    w = PutWaits()
    early, late = waiting(1, 2, 1.0), waiting(2, 2, 3.0)
    assert w.wait(0, late) == [StartTimer(TIMER, 3.0)]
    assert w.wait(1, early) == [StartTimer(TIMER, 1.0)]  # an earlier deadline moves the timer
    assert w.on_confirmed("B", 1) == []
    assert w.on_timer(0.5) == ([], [StartTimer(TIMER, 1.0)])
    assert w.on_timer(1.0) == ([early], [StartTimer(TIMER, 3.0)])
    assert early.confirmed_by == ["B"]
    assert w.on_confirmed("B", 1) == []                  # answered already: nothing more
    assert w.on_timer(3.5) == ([late], [])
    assert len(w) == 0
