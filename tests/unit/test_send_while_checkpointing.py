"""A task that checkpoints periodically keeps checkpointing while a send waits at the high-water
mark: a peer in standby mode settles messages only once its checkpoint holds them, so two such
tasks sending to each other would otherwise wait for each other for ever."""

from __future__ import annotations

import time

import pytest

from snipe import checkpoints, runtime
from snipe.errors import HighWaterMark, Unreachable

PEER = "urn:snipe:proc:peer"


class _FullThenRoom:
    """An endpoint whose peer has no room until `room_after` checkpoints were taken."""

    hwm = 4

    def __init__(self, room_after: int, taken: list[float]) -> None:
        self.room_after, self.taken, self.sent = room_after, taken, 0

    def send(self, dest: str, payload: bytes, tag: int, *, timeout: float | None, deadline_s: float) -> None:
        if len(self.taken) < self.room_after:
            raise HighWaterMark(f"{dest} is full")
        self.sent += 1

    def why_unsettled(self, dest: str) -> str:
        return "; because of its checkpoints"


class _Session:
    def __init__(self, ep: _FullThenRoom) -> None:
        self.ep = ep

    def endpoint(self) -> _FullThenRoom:
        return self.ep


@pytest.fixture
def periodic(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    taken: list[float] = []

    def maybe() -> None:             # as checkpoints.maybe_checkpoint, every 10 ms
        if time.monotonic() >= checkpoints.due:
            taken.append(time.monotonic())
            checkpoints.due = time.monotonic() + 0.01

    monkeypatch.setattr(checkpoints, "due", time.monotonic())
    monkeypatch.setattr(checkpoints, "maybe_checkpoint", maybe)
    return taken


def test_a_send_waiting_for_room_keeps_taking_the_periodic_checkpoints(monkeypatch: pytest.MonkeyPatch,
                                                                       periodic: list[float]) -> None:
    ep = _FullThenRoom(room_after=5, taken=periodic)
    monkeypatch.setattr(runtime, "session", lambda: _Session(ep))
    runtime.send(PEER, b"x")
    assert ep.sent == 1 and len(periodic) >= 5


def test_a_send_still_times_out_naming_the_high_water_mark(monkeypatch: pytest.MonkeyPatch,
                                                           periodic: list[float]) -> None:
    ep = _FullThenRoom(room_after=10**9, taken=periodic)
    monkeypatch.setattr(runtime, "session", lambda: _Session(ep))
    with pytest.raises(HighWaterMark, match=r"high-water mark.*timed out after 0\.05 s") as info:
        runtime.send(PEER, b"x", timeout=0.05)
    assert isinstance(info.value, Unreachable) and ep.sent == 0 and len(periodic) >= 2


def test_a_sender_held_by_a_standby_replica_without_checkpoints_is_told_why(
        caplog: pytest.LogCaptureFixture) -> None:
    """A standby replica settles a message only once a checkpoint of it holds it: one whose
    checkpoints keep failing holds its senders at the high-water mark. The sender's error says
    so, the counters show what waits and since when, and the endpoint logs it once a minute."""
    import logging

    from snipe.messaging.channel import Outbound
    from snipe.messaging.endpoint import Endpoint, _Peer

    out = Outbound("urn:snipe:proc:me", PEER)
    out.strict, out.retain = True, 65536
    for _ in range(3):
        out.submit(0, b"x", 100.0, float("inf"))
    assert out.flush(100.0)
    out.on_ack(out.session, 3, 100.0)
    assert len(out.retained) == 3 and out.retained_unsettled() == 3
    ep = Endpoint.__new__(Endpoint)              # the shell's reporting only: no sockets, no catalog
    ep.peers, ep._said, ep.received, ep.bytes_received, ep.dropped = {}, {}, {}, {}, {}
    peer = ep.peers[PEER] = _Peer(PEER, out, created_at=time.monotonic() - 45)
    why = ep.why_unsettled(PEER)
    assert "3 of them were acknowledged but wait for a checkpoint of it" in why and "none has come for 45 s" in why
    assert ep.stats()[PEER]["awaiting_checkpoint"] == 3 and ep.stats()[PEER]["checkpoint_age_s"] is None
    with caplog.at_level(logging.WARNING, logger="snipe.messaging"):
        ep._say_if_stuck(peer, time.monotonic())
        ep._say_if_stuck(peer, time.monotonic())                 # said once a minute, not every turn
    assert len([r for r in caplog.records if "wait for a checkpoint of it" in r.getMessage()]) == 1
    peer.checkpointed_at = time.monotonic() - 2                  # one came lately: no warning
    caplog.clear()
    ep._said.clear()
    ep._say_if_stuck(peer, time.monotonic())
    assert not caplog.records and ep.stats()[PEER]["checkpoint_age_s"] >= 2


def test_an_ordinary_peer_adds_nothing_to_the_high_water_mark_error() -> None:
    from snipe.messaging.channel import Outbound
    from snipe.messaging.endpoint import Endpoint, _Peer

    ep = Endpoint.__new__(Endpoint)
    ep.peers = {PEER: _Peer(PEER, Outbound("urn:snipe:proc:me", PEER))}
    assert ep.why_unsettled(PEER) == "" and ep.why_unsettled("urn:snipe:proc:unknown") == ""
