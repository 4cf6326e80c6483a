"""Code fetches off the daemon's loop: published code a host does not hold, got from its holders.

A holder may take the request and answer only after up to 30 s (its own loop busy), or not take
it at all. Done on the loop, a fetch held every other request meanwhile (spawns, waits, the host
lease). So the loop only decides: it reads the catalog (the manifest, which live daemons hold
the code) and raises `AwaitingCode`; whoever dispatched the work parks it here as a waiter and
goes on serving. A worker thread asks the holders in turn and installs the code; the loop
collects what ended each turn (`ended`, woken through `fileno`) and carries on with each waiter:
a request answered again, a takeover tried again.

Invariants: at most one fetch per code URN at a time (later waiters join it). For clients'
requests: at most MAX_FETCHES codes fetched or waiting to be, MAX_WAITERS waiters in all, and per
client connection MAX_WAITERS_PER_CLIENT waiters and MAX_CODES_PER_CLIENT codes (`start` refuses
more with QuotaExceeded, naming the bound). The daemon's own work (takeovers, standby code) is
bounded by its tasks and never refused: clients filling the bounds must not get a task it should
take over marked lost. A fetch ends, with the code installed or an error naming its URN and why,
within FETCH_TOTAL_S of its start. Every waiter is handed back exactly once: in `ended`, by
`take_out`, or by `close`. A fetch all of whose waiters were taken out before its turn does not
run (one wanted again first serves the new waiters, fetched once). Only the workers touch
holders' sockets; only the loop reads the catalog or calls `start`, `ended`, `take_out` and
`close`. No worker writes to the wake pipe once `close` has begun (it may be closed, its number
reused).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from snipe.code import CodeCache
from snipe.daemonclient import DaemonClient
from snipe.errors import NotFound, QuotaExceeded, SnipeError
from snipe.identity import Identity

log = logging.getLogger("snipe.daemon")

WORKERS = 2                 # fetches running at once (others wait their turn)
MAX_WAITERS = 1024          # work parked on fetches, in all
MAX_WAITERS_PER_CLIENT = 64     # requests one client connection (a ROUTER identity) may have parked
MAX_FETCHES = 64            # distinct codes being fetched or waiting their turn, for clients
MAX_CODES_PER_CLIENT = 8    # distinct codes one client connection may have fetched for it at once
FETCH_TOTAL_S = 60.0        # one fetch, over all its holders, at most (a spawn's client waits 120 s)
HOLDER_ANSWER_S = 30.0      # a holder that took the request may answer this late (its loop busy)
HOLDER_CONNECT_S = 5.0      # the most a fetch waits for one holder to take a connection

T = TypeVar("T")


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
        # code URN -> its waiters, each with the client it answers (None: the daemon's own work)
        self._waiting: dict[str, list[tuple[bytes | None, Any]]] = {}
        self._per_client: Counter[bytes] = Counter()
        self._count = 0
        self._todo: queue.SimpleQueue[AwaitingCode | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[str, SnipeError | None, str | None]] = queue.SimpleQueue()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()      # a worker's write and `close` never overlap
        # Codes whose waiters all left (expired, dropped) while their fetch was queued or running:
        # a queued one is skipped, unless wanted again first (`start` then lets it serve the new
        # waiters). Shared with the workers, under `_unwanted_lock`.
        self._unwanted: set[str] = set()
        self._unwanted_lock = threading.Lock()
        self._closed = False
        # daemon threads, as the warm pool's: a stopping daemon does not wait for a stalled holder
        self._threads = [threading.Thread(target=self._work, name=f"snipe-fetch-{i}", daemon=True)
                         for i in range(WORKERS)]
        for t in self._threads:
            t.start()

    def fileno(self) -> int:
        """Readable when a fetch has ended (for the loop's poller)."""
        return self._wake_r

    def __len__(self) -> int:
        return self._count

    def start(self, wanted: AwaitingCode, waiter: Any, client: bytes | None = None) -> None:
        """Fetch `wanted.urn` unless a fetch of it runs already; hand `waiter` back when it ends.
        QuotaExceeded (nothing kept) past a bound; `client`: whose request waits (None: the
        daemon's own work, not counted per client)."""
        self._check_room(wanted.urn, client)
        waiters = self._waiting.get(wanted.urn)
        if waiters is None:
            waiters = self._waiting[wanted.urn] = []
            with self._unwanted_lock:
                queued = wanted.urn in self._unwanted      # its fetch is queued or running still
                self._unwanted.discard(wanted.urn)
            if not queued:
                self._todo.put(wanted)
        waiters.append((client, waiter))
        self._count += 1
        if client is not None:
            self._per_client[client] += 1

    def _check_room(self, urn: str, client: bytes | None) -> None:
        if client is None:
            return                        # the daemon's own work (see the module docstring)
        if self._per_client[client] >= MAX_WAITERS_PER_CLIENT:
            raise QuotaExceeded(f"this connection already has {self._per_client[client]} requests waiting for code "
                                f"to be fetched, the most one connection may ({MAX_WAITERS_PER_CLIENT}); "
                                "wait for their answers first")
        codes = {u for u, waiters in self._waiting.items() if any(c == client for c, _ in waiters)}
        if urn not in codes and len(codes) >= MAX_CODES_PER_CLIENT:
            raise QuotaExceeded(f"this connection already has {len(codes)} codes being fetched for it, the most one "
                                f"connection may ({MAX_CODES_PER_CLIENT}); wait for their answers first")
        if self._count >= MAX_WAITERS:
            raise QuotaExceeded(f"{self._count} requests already wait for code to be fetched here, the most this "
                                f"daemon holds ({MAX_WAITERS}); try again shortly")
        if urn not in self._waiting and len(self._waiting) >= MAX_FETCHES:
            raise QuotaExceeded(f"{len(self._waiting)} codes are already being fetched here or wait their turn, the "
                                f"most this daemon takes on ({MAX_FETCHES}); try again shortly")

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
            out.append(FetchEnded(urn, error, holder, self._forget(self._waiting.pop(urn, []))))

    def waiting(self, pick: Callable[[Any], bool]) -> list[Any]:
        """The waiters `pick` chooses, left where they are."""
        return [w for waiters in self._waiting.values() for _, w in waiters if pick(w)]

    def take_out(self, pick: Callable[[Any], bool]) -> list[Any]:
        """Take out and return the waiters `pick` chooses (their fetches run on for any others)."""
        out: list[Any] = []
        for urn, waiters in list(self._waiting.items()):
            picked = [pick(w[1]) for w in waiters]
            if any(picked):
                left = [w for w, p in zip(waiters, picked, strict=True) if not p]
                out += self._forget([w for w, p in zip(waiters, picked, strict=True) if p])
                if left:
                    self._waiting[urn] = left
                else:                     # nobody waits for it now: its fetch need not run
                    del self._waiting[urn]
                    with self._unwanted_lock:
                        self._unwanted.add(urn)
        return out

    def _forget(self, waiters: list[tuple[bytes | None, Any]]) -> list[Any]:
        for client, _ in waiters:
            if client is not None:
                self._per_client[client] -= 1
                if self._per_client[client] <= 0:
                    del self._per_client[client]
        self._count -= len(waiters)
        return [w for _, w in waiters]

    def close(self) -> list[Any]:
        """Stop: the waiters still waiting, taken out to be answered. Workers still asking a
        holder (up to FETCH_TOTAL_S) are not waited for; none writes to the pipe after this."""
        for _ in self._threads:
            self._todo.put(None)
        with self._wake_lock:
            self._closed = True
            for fd in (self._wake_r, self._wake_w):
                with contextlib.suppress(OSError):
                    os.close(fd)
        return self.take_out(lambda _: True)

    # --- the workers --------------------------------------------------------------------------
    def _work(self) -> None:
        while (wanted := self._todo.get()) is not None:
            with self._unwanted_lock:
                if wanted.urn in self._unwanted:      # its waiters left before its turn came
                    self._unwanted.discard(wanted.urn)
                    continue
            holder: str | None = None
            error: SnipeError | None = None
            try:
                holder = self._fetch(wanted)
            except SnipeError as exc:
                error = exc
            except Exception as exc:      # a bug here must not leave the waiters waiting forever
                log.exception("fetching %s failed", wanted.urn)
                error = NotFound(f"could not fetch code {wanted.urn}: {exc.__class__.__name__}: {exc}")
            with self._unwanted_lock:     # (left while it ran: what it got is kept all the same)
                self._unwanted.discard(wanted.urn)
            self._done.put((wanted.urn, error, holder))
            with self._wake_lock:
                if self._closed:          # the loop stopped: its pipe is closed, its number maybe reused
                    return
                with contextlib.suppress(BlockingIOError):    # full: the loop is woken already
                    os.write(self._wake_w, b"\x01")

    def _fetch(self, wanted: AwaitingCode) -> str:
        """Ask each holder in turn; install what one sends (checked against the URN). Its address."""
        urn, errors = wanted.urn, list(wanted.errors)
        end = time.monotonic() + FETCH_TOTAL_S

        def limits(last: bool) -> tuple[float, float] | None:
            left = end - time.monotonic()
            return (min(HOLDER_ANSWER_S, left), min(HOLDER_CONNECT_S, left)) if left > 0 else None
        got = ask_holders(wanted.holders, self.identity, "get-code", urn,
                          lambda blob: self.codes.install(blob, urn), limits, errors)    # install checks the hash
        if got is not None:
            return got[1]
        raise NotFound(f"could not fetch code {urn}: " + ("; ".join(errors) or "no live daemon is listed as holding it")
                       + ("" if wanted.holders else "; publish it again from a host that has it"))


def ask_holders(holders: list[str], identity: Identity, request: str, urn: str, take: Callable[[bytes], T],
                limits: Callable[[bool], tuple[float, float] | None], errors: list[str],
                while_waiting: Callable[[], None] | None = None) -> tuple[T, str] | None:
    """Ask each holder in turn for blob `urn` (`request`: get-code or get-file) until one sends a
    blob `take` accepts (it raises SnipeError on bytes that do not hash to the URN): what `take`
    returned and that holder's address. None if none did; why each failed is added to `errors`.
    `limits(last)`: how long to wait for the answer and for a connection, or None when time is
    up (the holder is not asked)."""
    for i, location in enumerate(holders):
        wait = limits(i + 1 == len(holders))
        if wait is None:
            errors.append(f"{location}: not asked, the fetch's time was up")
            continue
        try:
            with DaemonClient(location, identity, timeout=wait[0]) as peer:
                _, frames = peer.call(request, {"urn": urn}, connect_wait=wait[1], while_waiting=while_waiting)
            if len(frames) != 1:
                raise NotFound(f"it answered {request} with {len(frames)} frames, not the blob")
            return take(bytes(frames[0])), location
        except SnipeError as exc:
            errors.append(f"{location}: {exc}")
    return None
