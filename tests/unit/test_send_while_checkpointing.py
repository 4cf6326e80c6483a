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
