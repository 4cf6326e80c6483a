"""Code fetches off the daemon's loop: published code a host does not hold, got from its holders.

A holder may take the request and answer only after up to 30 s (its own loop busy), or not take
it at all. Done on the loop, a fetch held every other request meanwhile (spawns, waits, the host
lease). So the loop only decides: it reads the catalog (the manifest, which live daemons hold
the code) and raises `AwaitingCode`; whoever dispatched the work parks it here as a waiter and
goes on serving. A worker thread asks the holders in turn and installs the code; the loop
collects what ended each turn (`ended`, woken through `fileno`) and carries on with each waiter:
a request answered again, a takeover tried again.

Invariants: at most one fetch per code URN at a time (later waiters join it); the loop parks
no request past MAX_WAITERS waiters in all (it refuses it with QuotaExceeded); a fetch ends, with the code
installed or an error naming its URN and why, within FETCH_TOTAL_S; every waiter of a fetch is
handed back exactly once, in `ended`. Only the workers touch holders' sockets; only the loop
reads the catalog or calls `start` and `ended`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from snipe.code import CodeCache
from snipe.daemonclient import DaemonClient
from snipe.errors import NotFound, SnipeError
from snipe.identity import Identity

log = logging.getLogger("snipe.daemon")

WORKERS = 2                 # fetches running at once (others wait their turn)
MAX_WAITERS = 1024          # work parked on fetches, in all
FETCH_TOTAL_S = 60.0        # one fetch, over all its holders, at most (a spawn's client waits 120 s)
HOLDER_ANSWER_S = 30.0      # a holder that took the request may answer this late (its loop busy)
HOLDER_CONNECT_S = 5.0      # the most a fetch waits for one holder to take a connection


class AwaitingCode(Exception):      # not an error: the work waits for the code
    """Raised on the loop by work that needs code this host does not hold yet: the fetch to start
    (`holders` to ask, in order, and `errors`, why listed ones were left out)."""

    def __init__(self, urn: str, holders: list[str], errors: list[str]) -> None:
        super().__init__(urn)
        self.urn, self.holders, self.errors = urn, holders, errors


@dataclass
class FetchEnded:
    urn: str
    error: SnipeError | None          # None: the code is installed here
    holder: str | None                # who supplied it
    waiters: list[Any] = field(default_factory=list)


class CodeFetches:
    def __init__(self, codes: CodeCache, identity: Identity) -> None:
        self.codes, self.identity = codes, identity
        self._waiting: dict[str, list[Any]] = {}     # code URN -> its waiters (the loop's own)
        self._todo: queue.SimpleQueue[AwaitingCode | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[str, SnipeError | None, str | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # daemon threads, as the warm pool's: a stopping daemon does not wait for a stalled holder
        self._threads = [threading.Thread(target=self._work, name=f"snipe-fetch-{i}", daemon=True)
                         for i in range(WORKERS)]
        for t in self._threads:
            t.start()

    def fileno(self) -> int:
        """Readable when a fetch has ended (for the loop's poller)."""
        return self._wake_r

    def __len__(self) -> int:
        return sum(len(w) for w in self._waiting.values())

    def full(self) -> bool:
        """Whether MAX_WAITERS wait: a request that needs code fetched is refused (QuotaExceeded)."""
        return len(self) >= MAX_WAITERS

    def start(self, wanted: AwaitingCode, waiter: Any) -> None:
        """Fetch `wanted.urn` unless a fetch of it runs already; hand `waiter` back when it ends."""
        waiters = self._waiting.get(wanted.urn)
        if waiters is not None:
            waiters.append(waiter)
            return
        self._waiting[wanted.urn] = [waiter]
        self._todo.put(wanted)

    def ended(self) -> list[FetchEnded]:
        """The fetches that ended since the last call, each with its waiters."""
        with contextlib.suppress(BlockingIOError):
            os.read(self._wake_r, 4096)
        out = []
        while True:
            try:
                urn, error, holder = self._done.get_nowait()
            except queue.Empty:
                return out
            out.append(FetchEnded(urn, error, holder, self._waiting.pop(urn, [])))

    def close(self) -> None:
        for _ in self._threads:
            self._todo.put(None)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # --- the workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while (wanted := self._todo.get()) is not None:
            holder: str | None = None
            error: SnipeError | None = None
            try:
                holder = self._fetch(wanted)
            except SnipeError as exc:
                error = exc
            except Exception as exc:      # a bug here must not leave the waiters waiting forever
                log.exception("fetching %s failed", wanted.urn)
                error = NotFound(f"could not fetch code {wanted.urn}: {exc.__class__.__name__}: {exc}")
            self._done.put((wanted.urn, error, holder))
            with contextlib.suppress(OSError):     # full: the loop is woken already; closed: it stopped
                os.write(self._wake_w, b"\x01")

    def _fetch(self, wanted: AwaitingCode) -> str:
        """Ask each holder in turn; install what one sends (checked against the URN). Its address."""
        urn, errors = wanted.urn, list(wanted.errors)
        end = time.monotonic() + FETCH_TOTAL_S
        for location in wanted.holders:
            left = end - time.monotonic()
            if left <= 0:
                errors.append(f"{location}: not asked, the fetch had taken {FETCH_TOTAL_S:g} s")
                continue
            try:
                with DaemonClient(location, self.identity, timeout=min(HOLDER_ANSWER_S, left)) as peer:
                    _, frames = peer.call("get-code", {"urn": urn}, connect_wait=min(HOLDER_CONNECT_S, left))
                if len(frames) != 1:
                    raise NotFound(f"it answered get-code with {len(frames)} frames, not the code blob")
                self.codes.install(frames[0], urn)          # raises if the bytes do not hash to the URN
                return location
            except SnipeError as exc:
                errors.append(f"{location}: {exc}")
        raise NotFound(f"could not fetch code {urn}: " + ("; ".join(errors) or "no live daemon is listed as holding it")
                       + ("" if wanted.holders else "; publish it again from a host that has it"))
