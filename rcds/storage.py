"""What the replica core needs from storage, and an in-memory implementation of it.

The replica core (rcds/replica.py) does no I/O: it reads and writes through this interface.
`LmdbStorage` (rcds/store.py) is the durable one the server uses; `MemoryStorage` here serves
unit tests and the simulator. Both keep the same derived state:

- records keyed by `(urn, name, signer)`, the newest by rank;
- a change log of `(revision, event, record)`, revisions strictly increasing per replica;
- digests for anti-entropy: each record hashes to 32 bytes, XORed into one of 65,536 leaf
  buckets chosen by its URN and into the leaf's top bucket (256 of them). XOR lets a
  replacement update a digest in O(1) and makes equal sets have equal digests;
- timers: when a lease expires (a watch event) and when a tombstone or expired record may be
  forgotten (after `gc_grace_ms`, long enough that no replica can still push it back);
- admitted keys (see snipe/authority.py).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Protocol

from snipe.assertion import Assertion

LEAVES = 65536
TOPS = 256
DIGEST_BYTES = 32
ZERO = bytes(DIGEST_BYTES)

# Change-log events.
PUT = "put"
EXPIRE = "expire"


@functools.lru_cache(maxsize=8192)
def leaf_of(urn: str) -> int:
    return int.from_bytes(hashlib.sha256(urn.encode()).digest()[:2], "big")


def record_key(a: Assertion) -> bytes:
    """Storage key: leaf (2 bytes) + urn NUL name NUL signer. URNs and names hold no NUL."""
    return leaf_of(a.urn).to_bytes(2, "big") + a.urn.encode() + b"\0" + a.name.encode() + b"\0" + a.signer


def urn_prefix_key(urn: str) -> bytes:
    return leaf_of(urn).to_bytes(2, "big") + urn.encode() + b"\0"


def element_digest(a: Assertion) -> bytes:
    return hashlib.sha256(record_key(a) + a.ts.to_bytes(8, "big") + a.signature).digest()


def xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(DIGEST_BYTES, "big")


@dataclass(frozen=True, slots=True)
class Change:
    rev: int
    event: str          # PUT or EXPIRE
    record: Assertion


@dataclass(frozen=True, slots=True)
class Summary:
    """What anti-entropy compares per record: enough to tell who holds the newer one."""
    key: bytes
    ts: int
    sig8: bytes


class WriteTxn(Protocol):
    def held(self, urn: str) -> list[Assertion]: ...
    def reserved(self, urn: str) -> list[Assertion]: ...     # held, reserved names only
    def current(self, a: Assertion) -> Assertion | None: ...
    def store(self, a: Assertion, previous: Assertion | None, expires_at: int | None, gc_at: int | None) -> int: ...
    def log_expiry(self, a: Assertion) -> int: ...
    def forget(self, a: Assertion) -> None: ...
    def admit(self, key: bytes, reason: str) -> None: ...
    def unadmit(self, key: bytes, reason: str) -> None: ...
    def is_admitted(self, key: bytes) -> bool: ...
    def is_host_key(self, key: bytes) -> bool: ...
    def due_timers(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]: ...
    def drop_timer(self, when: int, what: str, key: bytes) -> None: ...
    def record_by_key(self, key: bytes) -> Assertion | None: ...


class Storage(Protocol):
    def write(self) -> WriteTxnContext: ...
    def held(self, urn: str) -> list[Assertion]: ...
    def held_raw(self, urn: str, name: str | None = None) -> list[bytes]: ...
    def scan_prefix(self, prefix: str, having: Collection[str] = ()) -> Iterator[Assertion]: ...
    def records_by_keys(self, keys: list[bytes]) -> list[Assertion]: ...
    def top_digests(self) -> list[bytes]: ...
    def leaf_digests(self, top: int) -> list[bytes]: ...
    def leaf_summaries(self, leaf: int) -> list[Summary]: ...
    def changes_since(self, rev: int, limit: int) -> tuple[int, list[Change]]: ...
    def last_rev(self) -> int: ...
    def is_admitted(self, key: bytes) -> bool: ...
    def count(self) -> int: ...


class WriteTxnContext(Protocol):
    def __enter__(self) -> WriteTxn: ...
    def __exit__(self, *exc: object) -> None: ...


# --------------------------------------------------------------------------------------------
class MemoryStorage:
    """Storage in dictionaries; the reference implementation of the interface above."""

    def __init__(self, log_retention: int = 100_000) -> None:
        self.records: dict[bytes, Assertion] = {}
        self.log: list[Change] = []
        self.rev = 0
        self.first_rev = 1
        self.leaves: dict[int, bytes] = {}
        self.tops: dict[int, bytes] = {}
        self.timers: set[tuple[int, str, bytes]] = set()
        self.admitted: dict[bytes, set[str]] = {}
        self.host_keys: set[bytes] = set()
        self.log_retention = log_retention

    # the transaction is the storage itself: memory writes cannot half-fail
    def write(self) -> _MemoryTxn:
        return _MemoryTxn(self)

    def held(self, urn: str) -> list[Assertion]:
        p = urn_prefix_key(urn)
        return [a for k, a in self.records.items() if k.startswith(p)]

    def held_raw(self, urn: str, name: str | None = None) -> list[bytes]:
        """Encoded records about `urn`; with `name`, that name's and the URN's reserved names'."""
        return [a.encode() for a in sorted(self.held(urn), key=record_key)
                if name is None or a.name == name or a.name.startswith("_")]

    def scan_prefix(self, prefix: str, having: Collection[str] = ()) -> Iterator[Assertion]:
        names: dict[str, set[str]] = {}
        for a in self.records.values():
            names.setdefault(a.urn, set()).add(a.name)
        for a in sorted(self.records.values(), key=lambda a: (a.urn, a.name, a.signer)):
            if a.urn.startswith(prefix) and names[a.urn].issuperset(having):
                yield a

    def records_by_keys(self, keys: list[bytes]) -> list[Assertion]:
        return [self.records[k] for k in keys if k in self.records]

    def top_digests(self) -> list[bytes]:
        return [self.tops.get(i, ZERO) for i in range(TOPS)]

    def leaf_digests(self, top: int) -> list[bytes]:
        return [self.leaves.get(top * 256 + i, ZERO) for i in range(256)]

    def leaf_summaries(self, leaf: int) -> list[Summary]:
        p = leaf.to_bytes(2, "big")
        return sorted((Summary(k, a.ts, a.signature[:8]) for k, a in self.records.items() if k.startswith(p)),
                      key=lambda s: s.key)

    def changes_since(self, rev: int, limit: int) -> tuple[int, list[Change]]:
        start = max(0, rev + 1 - self.first_rev)
        return self.first_rev, self.log[start:start + limit]

    def last_rev(self) -> int:
        return self.rev

    def is_admitted(self, key: bytes) -> bool:
        return bool(self.admitted.get(key))

    def count(self) -> int:
        return len(self.records)


class _MemoryTxn:
    def __init__(self, s: MemoryStorage) -> None:
        self.s = s

    def __enter__(self) -> _MemoryTxn:
        return self

    def __exit__(self, *exc: object) -> None:
        excess = len(self.s.log) - self.s.log_retention
        if excess > 0:
            del self.s.log[:excess]
            self.s.first_rev += excess

    def held(self, urn: str) -> list[Assertion]:
        return self.s.held(urn)

    def reserved(self, urn: str) -> list[Assertion]:
        return [a for a in self.s.held(urn) if a.name.startswith("_")]

    def current(self, a: Assertion) -> Assertion | None:
        return self.s.records.get(record_key(a))

    def record_by_key(self, key: bytes) -> Assertion | None:
        return self.s.records.get(key)

    def _digest_delta(self, key: bytes, delta: bytes) -> None:
        leaf = int.from_bytes(key[:2], "big")
        self.s.leaves[leaf] = xor(self.s.leaves.get(leaf, ZERO), delta)
        self.s.tops[leaf >> 8] = xor(self.s.tops.get(leaf >> 8, ZERO), delta)

    def store(self, a: Assertion, previous: Assertion | None, expires_at: int | None, gc_at: int | None) -> int:
        key = record_key(a)
        delta = element_digest(a) if previous is None else xor(element_digest(a), element_digest(previous))
        self._digest_delta(key, delta)
        self.s.records[key] = a
        if expires_at is not None:
            self.s.timers.add((expires_at, EXPIRE, key))
        if gc_at is not None:
            self.s.timers.add((gc_at, "gc", key))
        self.s.rev += 1
        self.s.log.append(Change(self.s.rev, PUT, a))
        return self.s.rev

    def log_expiry(self, a: Assertion) -> int:
        self.s.rev += 1
        self.s.log.append(Change(self.s.rev, EXPIRE, a))
        return self.s.rev

    def forget(self, a: Assertion) -> None:
        key = record_key(a)
        if self.s.records.get(key) == a:
            del self.s.records[key]
            self._digest_delta(key, element_digest(a))

    def admit(self, key: bytes, reason: str) -> None:
        self.s.admitted.setdefault(key, set()).add(reason)
        if reason.startswith("urn:snipe:host:"):
            self.s.host_keys.add(key)

    def unadmit(self, key: bytes, reason: str) -> None:
        reasons = self.s.admitted.get(key, set())
        reasons.discard(reason)
        if not any(r.startswith("urn:snipe:host:") for r in reasons):
            self.s.host_keys.discard(key)

    def is_admitted(self, key: bytes) -> bool:
        return self.s.is_admitted(key)

    def is_host_key(self, key: bytes) -> bool:
        return key in self.s.host_keys

    def due_timers(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]:
        return sorted(t for t in self.s.timers if t[0] <= now_ms)[:limit]

    def drop_timer(self, when: int, what: str, key: bytes) -> None:
        self.s.timers.discard((when, what, key))
