"""Where code and checkpoint blobs can be fetched from, across daemon restarts.

A daemon that holds a code blob asserts `location` = its address (`tcp://host:port#<host key>`)
on the code's URN, signed with its host key; a checkpoint record names its `holders` by address.
A daemon that restarts may listen on another port (a local cluster picks new ones at each
`cluster up`), so those addresses go stale, and an old port may by then be another process's.

Two parts keep blobs fetchable:

- `LiveDaemons` maps a listed address to where that daemon is now: the key after `#` names the
  host, whose live entry gives its current `daemon` address. An address whose key is no live
  host's is skipped, with the reason kept for the error a failed fetch raises.
- `Republisher`: a daemon that starts republishes `location` for every blob it holds. The catalog
  keeps the newest assertion per (URN, name, writer), so the stale address is replaced, not
  added to. Invariants: each `step` makes at most one catalog put of at most BATCH records, so
  neither the start nor a turn of the loop is held up for long; a batch the catalog refuses is
  tried again record by record, and a record refused alone is dropped and logged (once, with the
  others, when the work is done); a batch no replica answered is tried again after a backoff.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from snipe.catalog.entry import Entry
from snipe.errors import SnipeError, Unreachable

log = logging.getLogger("snipe.daemon")

BATCH = 256                 # `location` assertions a put carries, at most
RETRY_FIRST_S = 0.5         # a batch no replica answered is tried again after this, then twice as long
RETRY_MAX_S = 30.0


def key_of(address: str) -> str:
    """The daemon key id an address names (`ENDPOINT#KEYID`), or "" if it names none."""
    return address.partition("#")[2]


@dataclass(frozen=True)
class LiveDaemons:
    """The current daemon address of every live host, by the host's key id."""

    by_key: Mapping[str, str]

    @classmethod
    def from_hosts(cls, hosts: Mapping[str, Entry], now_ms: int) -> LiveDaemons:
        by_key = {}
        for entry in hosts.values():
            key, address = entry.value("key", now_ms), entry.value("daemon", now_ms)
            if entry.value("alive", now_ms) is True and isinstance(key, str) and isinstance(address, str):
                by_key[key] = address
        return cls(by_key)

    def current(self, address: str) -> str | None:
        """Where the daemon `address` names listens now, or None if no live host has its key."""
        return self.by_key.get(key_of(address))

    def holders(self, listed: Iterable[str], *, besides: str = "") -> tuple[list[str], list[str]]:
        """The current addresses of the listed holders (sorted, once each, without `besides`),
        and a reason for each listed address that is skipped."""
        ask: set[str] = set()
        skipped: list[str] = []
        for address in sorted(set(listed)):
            now = self.current(address)
            if now is None:
                skipped.append(f"{address}: skipped, no live host has the key it names (its host is down, "
                               "or its lease lapsed)")
            elif now != besides:
                ask.add(now)
        return sorted(ask), skipped


class Republisher:
    """Republishes `location` = this daemon's address for the code blobs it holds, a batch a
    step. `put` signs and writes one assertion per URN, raising the catalog's error."""

    def __init__(self, urns: Iterable[str], put: Callable[[list[str]], None], *, batch: int = BATCH) -> None:
        urns = list(urns)
        self.total = len(urns)
        self._chunks: deque[list[str]] = deque(urns[i:i + batch] for i in range(0, len(urns), batch))
        self._put = put
        self._not_before = 0.0
        self._retry_s = RETRY_FIRST_S
        self.refused: list[str] = []          # "URN (why)", for the log when done

    @property
    def done(self) -> bool:
        return not self._chunks

    def step(self, now: float) -> bool:
        """Put the next batch if one is due; return True once there is nothing left to put."""
        if not self._chunks or now < self._not_before:
            return not self._chunks
        chunk = self._chunks[0]
        try:
            self._put(chunk)
        except Unreachable as exc:        # no quorum answered: the catalog may be back shortly
            self._not_before = now + self._retry_s
            self._retry_s = min(RETRY_MAX_S, self._retry_s * 2)
            log.info("could not republish the location of %d code blob(s) yet (%s); trying again in %.1f s",
                     len(chunk), exc, self._not_before - now)
            return False
        except SnipeError as exc:         # refused: by one record, or all (the URN no longer owned?)
            self._chunks.popleft()
            if len(chunk) > 1:
                self._chunks.extendleft([u] for u in reversed(chunk))
            else:
                self.refused.append(f"{chunk[0]} ({exc})")
        else:
            self._chunks.popleft()
            self._retry_s = RETRY_FIRST_S
        if not self._chunks and self.refused:
            log.warning("the catalog refused the new location of %d of the %d code blob(s) held here: %s; "
                        "other holders may still supply them, or publish them again", len(self.refused),
                        self.total, "; ".join(self.refused[:5]) + (" …" if len(self.refused) > 5 else ""))
        return not self._chunks
