"""Code fetches off the daemon's loop (daemon/fetches.py): the bounds on what waits for them,
waiters taken out (a dropped clone, an expired request, a shutdown), a worker that ends after
`close` writing nothing, and a takeover whose code is still missing after its fetch not fetched
again forever."""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any

import pytest
import snipe_daemon.fetches as fetches
from snipe_daemon.fetches import AwaitingCode, CodeFetches, FetchEnded

from snipe.code import CodeCache
from snipe.errors import QuotaExceeded, ServerError, SnipeError
from snipe.identity import Identity
from tests.support import wait_for

CODE = [f"urn:snipe:code:sha256:{i:064x}" for i in range(4)]


@pytest.fixture
def stalled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """CodeFetches whose workers stall in each fetch until `release` is set."""
    release = threading.Event()

    def fetch(self: CodeFetches, wanted: AwaitingCode) -> str:
        release.wait(30)
        return "tcp://127.0.0.1:1#x"
    monkeypatch.setattr(CodeFetches, "_fetch", fetch)
    f = CodeFetches(CodeCache(tmp_path / "code"), Identity.generate())
    f.release = release            # type: ignore[attr-defined]
    yield f
    release.set()
    f.close()


def test_parked_work_is_bounded_per_client_in_all_and_in_distinct_codes(stalled: CodeFetches,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fetches, "MAX_WAITERS_PER_CLIENT", 2)
    monkeypatch.setattr(fetches, "MAX_FETCHES", 2)
    monkeypatch.setattr(fetches, "MAX_WAITERS", 5)
    monkeypatch.setattr(fetches, "MAX_CODES_PER_CLIENT", 1)
    f = stalled
    f.start(AwaitingCode(CODE[0], [], []), "a1", b"a")
    f.start(AwaitingCode(CODE[0], [], []), "a2", b"a")
    with pytest.raises(QuotaExceeded, match=r"this connection already has 2 requests waiting .* \(2\)"):
        f.start(AwaitingCode(CODE[0], [], []), "a3", b"a")
    f.start(AwaitingCode(CODE[1], [], []), "b1", b"b")
    with pytest.raises(QuotaExceeded, match=r"2 codes are already being fetched .* \(2\)"):
        f.start(AwaitingCode(CODE[2], [], []), "e1", b"e")       # a third code: refused
    f.start(AwaitingCode(CODE[0], [], []), "c1", b"c")
    with pytest.raises(QuotaExceeded, match=r"this connection already has 1 codes being fetched for it, .* \(1\)"):
        f.start(AwaitingCode(CODE[1], [], []), "c2", b"c")       # a second code for c
    # The daemon's own work is never refused: clients filling the bounds must not get a takeover
    # refused (it would end with the task marked lost).
    f.start(AwaitingCode(CODE[1], [], []), "t1")
    f.start(AwaitingCode(CODE[2], [], []), "t2")                 # past MAX_FETCHES too
    with pytest.raises(QuotaExceeded, match=r"6 requests already wait .* \(5\)"):
        f.start(AwaitingCode(CODE[1], [], []), "d1", b"d")
    assert len(f) == 6
    assert f.take_out(lambda w: w in ("a1", "c1")) == ["a1", "c1"] and len(f) == 4
    f.start(AwaitingCode(CODE[0], [], []), "a4", b"a")           # a's slot came free
    f.release.set()                                               # type: ignore[attr-defined]
    ended: list[FetchEnded] = []
    wait_for(lambda: ended.extend(f.ended()) or len(ended) == 3, 10, "the three fetches to end")
    assert sorted((e.urn, sorted(e.waiters)) for e in ended) == [
        (CODE[0], ["a2", "a4"]), (CODE[1], ["b1", "t1"]), (CODE[2], ["t2"])]
    assert len(f) == 0


def test_close_hands_back_what_waits_and_a_worker_that_ends_later_writes_nothing(stalled: CodeFetches) -> None:
    """A worker still asking a holder when the daemon stops: the wake pipe is closed under it,
    and its number may be reused at once (here: by the next pipe opened)."""
    f = stalled
    f.start(AwaitingCode(CODE[0], [], []), "r1", b"a")
    f.start(AwaitingCode(CODE[1], [], []), "t1")
    assert sorted(f.close()) == ["r1", "t1"] and len(f) == 0
    r, w = os.pipe()           # likely the closed pipe's numbers
    try:
        os.set_blocking(r, False)
        f.release.set()                                            # type: ignore[attr-defined]
        for t in f._threads:
            t.join(10)
        assert not any(t.is_alive() for t in f._threads)
        with pytest.raises(BlockingIOError):
            os.read(r, 16)
    finally:
        os.close(r)
        os.close(w)


def test_a_queued_fetch_whose_waiters_all_left_is_skipped_unless_wanted_again(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiters taken out (expired, dropped) left their fetch queued: it still ran, up to a minute
    of a worker, while new codes were refused. Now it is skipped when its turn comes, and one
    wanted again before that serves its new waiters, fetched once."""
    release = threading.Event()
    fetched: list[str] = []

    def fetch(self: CodeFetches, wanted: AwaitingCode) -> str:
        fetched.append(wanted.urn)
        release.wait(30)
        return "tcp://127.0.0.1:1#x"
    monkeypatch.setattr(CodeFetches, "_fetch", fetch)
    f = CodeFetches(CodeCache(tmp_path / "code"), Identity.generate())
    try:
        for i in range(2):                                 # both workers busy
            f.start(AwaitingCode(CODE[i], [], []), f"busy{i}", b"a")
        wait_for(lambda: len(fetched) == 2, 10, "both workers to be fetching")
        f.start(AwaitingCode(CODE[2], [], []), "gone", b"b")          # queued, then its waiter leaves
        f.start(AwaitingCode(CODE[3], [], []), "left", b"c")          # queued, left, wanted again
        assert f.take_out(lambda w: w in ("gone", "left")) == ["gone", "left"] and len(f) == 2
        f.start(AwaitingCode(CODE[3], [], []), "again", b"c")
        release.set()
        ended: list[FetchEnded] = []
        wait_for(lambda: ended.extend(f.ended()) or len(ended) == 3, 10, "the wanted fetches to end")
        assert sorted((e.urn, e.waiters) for e in ended) == [
            (CODE[0], ["busy0"]), (CODE[1], ["busy1"]), (CODE[3], ["again"])]
        assert sorted(fetched) == [CODE[0], CODE[1], CODE[3]]       # CODE[2]: skipped; CODE[3]: once
        assert len(f) == 0
    finally:
        release.set()
        f.close()


class FakeFetches:
    def __init__(self) -> None:
        self.started: list[tuple[AwaitingCode, Any]] = []

    def start(self, wanted: AwaitingCode, waiter: Any, client: bytes | None = None) -> None:
        self.started.append((wanted, waiter))


def test_a_takeover_whose_code_is_missing_after_its_fetch_fails_instead_of_fetching_again() -> None:
    """A takeover item parked on a fetch that succeeded, yet still without its code, was queued
    and fetched again forever (its tries never counted)."""
    from snipe_daemon.server import Daemon

    d: Any = object.__new__(Daemon)
    d.takeovers = queue.Queue()
    d.fetches = FakeFetches()
    failed: list[SnipeError] = []
    d._takeover_failed = lambda now, claim, values, exc: failed.append(exc)

    def missing(urn: str) -> None:
        raise AwaitingCode(urn, ["tcp://127.0.0.1:1#x"], [])
    d._fetch_code = missing
    d.takeovers.put((None, {"code": CODE[0]}))          # a standby's fetch of the code
    for _ in range(3):
        Daemon._run_takeovers(d, 0.0)
        if failed:
            break
        wanted, waiter = d.fetches.started[-1]
        Daemon._carry_on(d, waiter, FetchEnded(wanted.urn, None, "tcp://127.0.0.1:1#x", [waiter]))
    assert len(d.fetches.started) == 1, "fetched again after a fetch that succeeded"
    assert len(failed) == 1 and isinstance(failed[0], ServerError) and CODE[0] in str(failed[0])
