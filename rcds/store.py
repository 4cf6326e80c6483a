"""LMDB storage for a replica: the durable implementation of rcds/storage.py's interface.

Sub-databases:
  records   storage key (see storage.record_key)            -> encoded assertion
  log       revision (8 bytes, big-endian)                   -> event byte + encoded assertion
  digests   b"L" + leaf (2 bytes) / b"T" + top (1 byte)      -> 32-byte XOR digest
  timers    when (8 bytes) + kind byte + storage key         -> b""
  admitted  key (32 bytes) + reason (URN)                    -> b""
  byurn     urn NUL name NUL signer                          -> b"" (URN order, for prefix queries)
  byname    name NUL urn NUL signer                          -> b"" (the URNs holding a name, for predicates)
  curves    X25519 key (32 bytes)                            -> Ed25519 key it derives from
  meta      b"rev", b"first_rev"                             -> 8-byte integers; b"byname" once that is built

Durability: each write batch is one LMDB transaction. With `sync=False` (the default) a commit
is in the OS page cache when the replica acknowledges it, so it survives kill -9 of the
replica but not a power cut; `sync=True` flushes every commit to disk (msync of the map;
batches amortise it). Python holds no records: 1,000,000 assertions live in the memory map,
not on the heap.

Writes go straight into the memory map (LMDB's MDB_WRITEMAP), not through a pwrite(2) per
dirty page at each commit (some 4 a put, a sixth of a busy replica's time in the kernel):
- the map is shared and writable, so a committed page is in the page cache the moment it is
  written, and kill -9 loses nothing committed (the kernel writes the pages back); a commit
  cut short leaves its pages unreferenced (LMDB never overwrites the pages the last commit
  uses) and the store opens at the last commit;
- LMDB sizes data.mdb to the whole map (16 GiB, sparse: only the used pages take disk).
  Copy a store with `copy_to` (or mdb_copy), never a plain file copy, which writes every
  hole out; its size on disk is its allocated blocks (`du`), not its length (`ls`);
- a write into a hole of the file when its file system is full would kill the replica
  (SIGBUS) where a pwrite would have failed the commit. So every write transaction first checks
  the file system's free space (`check_room`, one statvfs) and is refused with StorageFull under
  `min_free_bytes` (64 MiB by default, far above what one transaction writes): the client is
  told, and the replica keeps serving reads;
- every process opening a store must use it alike (LMDB's rule): all go through this class.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections import deque
from collections.abc import Collection, Iterator
from pathlib import Path

import lmdb
import nacl.bindings

from rcds.storage import (
    DIGEST_BYTES,
    EXPIRE,
    PUT,
    TOPS,
    ZERO,
    Change,
    Summary,
    element_digest,
    leaf_of,
    record_key,
    urn_prefix_key,
    xor,
)
from snipe.assertion import Assertion, decode_assertion
from snipe.errors import CodecError, ConfigError, StorageFull, TooLarge

_U64 = struct.Struct(">Q")
_EVENTS = {PUT: b"P", EXPIRE: b"E"}
_EVENT_NAMES = {v: k for k, v in _EVENTS.items()}
_TIMER_KINDS = {EXPIRE: b"E", "gc": b"G"}
_TIMER_NAMES = {v: k for k, v in _TIMER_KINDS.items()}
HOST_REASON = b"urn:snipe:host:"
MIN_FREE_BYTES = 64 << 20         # a write is refused while the store's file system has less free
NAME_INDEX_BATCH = 20_000         # byname entries built per transaction for a store that predates the index


class LmdbStorage:
    def __init__(self, path: str | Path, *, map_size: int = 16 << 30, sync: bool = False,
                 log_retention: int = 200_000, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        path = Path(path)
        self.path, self.min_free_bytes = path, min_free_bytes
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(path), map_size=map_size, max_dbs=9, sync=sync, metasync=sync,
                                 readahead=False, max_readers=256, writemap=True)
        except (OSError, lmdb.Error) as exc:
            raise ConfigError(f"cannot open the catalog store at {path}: {exc}") from None
        self.data_file = path / "data.mdb"
        self.records = self.env.open_db(b"records")
        self.log = self.env.open_db(b"log")
        self.digests = self.env.open_db(b"digests")
        self.timers = self.env.open_db(b"timers")
        self.admitted = self.env.open_db(b"admitted")
        self.meta = self.env.open_db(b"meta")
        self.byurn = self.env.open_db(b"byurn")
        self.curves = self.env.open_db(b"curves")
        self.byname = self.env.open_db(b"byname")
        self.log_retention = log_retention
        # keys whose stored bytes no longer decode (disk tampering): the last 100, and a count
        self.corrupt: deque[str] = deque(maxlen=100)
        self.corrupt_total = 0
        self._index_names()

    def _index_names(self) -> None:
        """Build the byname index of a store written before it existed, NAME_INDEX_BATCH keys per
        transaction (one transaction would hold every page it dirties in memory, and a store too
        large for that could then never open). Writes meanwhile add their own entries; queries
        scan without the index until it is whole, which the meta flag records."""
        with self.env.begin() as txn:
            self._names_indexed = txn.get(b"byname", db=self.meta) is not None
        after = b""
        while not self._names_indexed:
            with self.env.begin(write=True) as txn:
                cur = txn.cursor(self.byurn)
                more = cur.set_range(after) if after else cur.first()
                for _ in range(NAME_INDEX_BATCH):
                    if not more:
                        break
                    txn.put(_name_key(cur.key()), b"", db=self.byname)
                    more = cur.next()
                if more:
                    after = bytes(cur.key())        # the first key the next batch indexes
                else:
                    txn.put(b"byname", b"1", db=self.meta)
                    self._names_indexed = True

    def close(self) -> None:
        self.env.close()

    def copy_to(self, path: str | Path) -> None:
        """Write a consistent copy of the store into folder `path` (made if missing): only the
        pages in use, as a file copy of the sparse data file would not be."""
        Path(path).mkdir(parents=True, exist_ok=True)
        self.env.copy(str(path))

    def write(self) -> _LmdbTxn:
        self.check_room()
        return _LmdbTxn(self)

    def check_room(self) -> None:
        """Raise StorageFull while the store's file system has less than `min_free_bytes` free
        (see the module docstring: a write into the sparse map on a full disk is a SIGBUS)."""
        st = os.statvfs(self.path)
        free = st.f_bavail * st.f_frsize
        if free < self.min_free_bytes:
            raise StorageFull(f"the catalog store at {self.path} has {free >> 20} MiB free on its file system, under "
                              f"the {self.min_free_bytes >> 20} MiB kept free for writes: writes are refused (reads "
                              f"go on) until space is freed")

    # --- reads ------------------------------------------------------------------------------
    def _decode(self, key: bytes, raw: bytes) -> Assertion | None:
        try:
            return decode_assertion(bytes(raw))
        except (CodecError, TooLarge):
            self.corrupt.append(key.hex())
            self.corrupt_total += 1
            return None

    def _held(self, txn: lmdb.Transaction, urn: str, names: bytes = b"") -> list[Assertion]:
        """The records about `urn` (only those whose names start with `names`, if given)."""
        prefix = urn_prefix_key(urn) + names
        out = []
        cur = txn.cursor(self.records)
        if cur.set_range(prefix):
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                a = self._decode(k, v)
                if a is not None:
                    out.append(a)
        return out

    def held(self, urn: str) -> list[Assertion]:
        with self.env.begin() as txn:
            return self._held(txn, urn)

    def held_raw(self, urn: str, name: str | None = None) -> list[bytes]:
        """The stored bytes of the records about `urn`, not decoded (readers verify them); with
        `name`, that name's and the URN's reserved names' (its ownership and delegation)."""
        prefix = urn_prefix_key(urn)
        with self.env.begin() as txn:
            cur = txn.cursor(self.records)
            if name is None:
                return _values_under(cur, prefix)
            out = _values_under(cur, prefix + b"_")     # every reserved name starts with "_"
            if not name.startswith("_"):
                out += _values_under(cur, prefix + name.encode() + b"\0")
            return out

    def scan_prefix(self, prefix: str, having: Collection[str] = ()) -> Iterator[Assertion]:
        """Every record whose URN starts with `prefix`, in URN order, read in one snapshot; with
        `having`, only the records of URNs that hold a record of each of those names, found by
        the byname index: a query's predicates each need a record of their name, and the
        daemons' sweeps for the few tasks on call to them once decoded every task in the
        catalog, each second (most of a replica's time with 1000 tasks)."""
        pb = prefix.encode()
        with self.env.begin() as txn:
            if not having or not self._names_indexed:      # (the caller checks the names anyway)
                cur = txn.cursor(self.byurn)
                if not cur.set_range(pb):
                    return
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(pb):
                        break
                    urn = bytes(k[: k.index(b"\0")]).decode()
                    v = txn.get(leaf_of(urn).to_bytes(2, "big") + k, db=self.records)
                    if v is not None:
                        a = self._decode(k, v)
                        if a is not None:
                            yield a
                return
            first, *others = sorted(having)
            fb = first.encode()
            start = fb + b"\0" + pb
            cur = txn.cursor(self.byname)
            if not cur.set_range(start):
                return
            last = b""
            for k in cur.iternext(keys=True, values=False):
                if not k.startswith(start):
                    break
                rest = k[len(fb) + 1:]             # bytes: a name is any text, not only ASCII
                urn = rest[: rest.index(b"\0")]
                if urn == last:
                    continue                   # the same URN, another signer of the name
                last = urn
                records = self._held(txn, urn.decode())
                names = {a.name for a in records}
                if all(n in names for n in others):
                    yield from records

    def records_by_keys(self, keys: list[bytes]) -> list[Assertion]:
        """The records stored under `keys`; a key LMDB could not hold (empty, too long) has none."""
        out = []
        longest = self.env.max_key_size()
        with self.env.begin() as txn:
            for k in keys:
                if not 0 < len(k) <= longest:
                    continue
                v = txn.get(k, db=self.records)
                if v is not None:
                    a = self._decode(k, v)
                    if a is not None:
                        out.append(a)
        return out

    def top_digests(self) -> list[bytes]:
        return self._digests_under(b"T", TOPS)

    def leaf_digests(self, top: int) -> list[bytes]:
        return self._digests_under(b"L" + bytes([top]), 256)

    def _digests_under(self, prefix: bytes, count: int) -> list[bytes]:
        """The digests keyed `prefix` + one byte, ZERO where none is stored (one cursor pass)."""
        out = [ZERO] * count
        with self.env.begin() as txn:
            cur = txn.cursor(self.digests)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    out[k[len(prefix)]] = v
        return out

    def leaf_summaries(self, leaf: int) -> list[Summary]:
        prefix = leaf.to_bytes(2, "big")
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(self.records)
            if cur.set_range(prefix):
                for k, v in cur:
                    if not k.startswith(prefix):
                        break
                    a = self._decode(k, v)
                    if a is not None:
                        out.append(Summary(bytes(k), a.ts, a.signature[:8]))
        return out

    def _meta_int(self, txn: lmdb.Transaction, name: bytes, default: int) -> int:
        v = txn.get(name, db=self.meta)
        return _U64.unpack(v)[0] if v is not None else default

    def last_rev(self) -> int:
        with self.env.begin() as txn:
            return self._meta_int(txn, b"rev", 0)

    def changes_since(self, rev: int, limit: int) -> tuple[int, list[Change]]:
        out: list[Change] = []
        with self.env.begin() as txn:
            first = self._meta_int(txn, b"first_rev", 1)
            cur = txn.cursor(self.log)
            if cur.set_range(_U64.pack(rev + 1)):
                for k, v in cur:
                    a = self._decode(k, v[1:])
                    if a is not None:
                        out.append(Change(_U64.unpack(k)[0], _EVENT_NAMES.get(bytes(v[:1]), PUT), a))
                    if len(out) >= limit:
                        break
        return first, out

    def is_admitted(self, key: bytes) -> bool:
        with self.env.begin() as txn:
            return _has_prefix(txn, self.admitted, key)

    def admission_reasons(self, key: bytes) -> list[str]:
        """The URNs whose assertions admit `key` (its user or host URN, or a task's proc URN)."""
        out = []
        with self.env.begin() as txn:
            cur = txn.cursor(self.admitted)
            if cur.set_range(key):
                for k in cur.iternext(keys=True, values=False):
                    if not k.startswith(key):
                        break
                    out.append(bytes(k[len(key):]).decode())
        return out

    def ed_key_of_curve(self, curve: bytes) -> bytes | None:
        """The Ed25519 key of an admitted key's CurveZMQ key (for the ZAP handler's thread)."""
        if len(curve) != 32:
            return None
        with self.env.begin() as txn:
            v = txn.get(curve, db=self.curves)
            return bytes(v) if v is not None else None

    def count(self) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.records)["entries"]

    def tamper(self, urn: str, name: str, new_value_bytes: bytes) -> None:
        """Rewrite a stored record's bytes in place, bypassing every check (tests only)."""
        with self.env.begin(write=True) as txn:
            for a in self._held(txn, urn):
                if a.name == name:
                    txn.put(record_key(a), new_value_bytes, db=self.records)


def _name_key(byurn_key: bytes) -> bytes:
    """The byname key of a record from its byurn key: urn NUL name NUL signer -> name NUL urn NUL signer."""
    cut = byurn_key.index(b"\0")
    end = byurn_key.index(b"\0", cut + 1)
    return byurn_key[cut + 1:end] + b"\0" + byurn_key[:cut] + byurn_key[end:]


def _values_under(cur: lmdb.Cursor, prefix: bytes) -> list[bytes]:
    out = []
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            out.append(v)
    return out


def _has_prefix(txn: lmdb.Transaction, db: object, prefix: bytes) -> bool:
    cur = txn.cursor(db)
    return bool(cur.set_range(prefix)) and bytes(cur.key()).startswith(prefix)


class _LmdbTxn:
    def __init__(self, s: LmdbStorage) -> None:
        self.s = s

    def __enter__(self) -> _LmdbTxn:
        self.txn = self.s.env.begin(write=True)
        self.rev = self.s._meta_int(self.txn, b"rev", 0)
        self.start_rev = self.rev
        self.digest_cache: dict[bytes, bytes] = {}
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self.txn.abort()
            return
        for k, d in self.digest_cache.items():
            self.txn.put(k, d, db=self.s.digests)
        if self.rev != self.start_rev:
            self.txn.put(b"rev", _U64.pack(self.rev), db=self.s.meta)
            first = self.s._meta_int(self.txn, b"first_rev", 1)
            new_first = max(first, self.rev - self.s.log_retention + 1)
            if new_first > first:
                cur = self.txn.cursor(self.s.log)
                while cur.first() and _U64.unpack(cur.key())[0] < new_first:
                    cur.delete()
                self.txn.put(b"first_rev", _U64.pack(new_first), db=self.s.meta)
        self.txn.commit()

    def held(self, urn: str) -> list[Assertion]:
        return self.s._held(self.txn, urn)

    def reserved(self, urn: str) -> list[Assertion]:
        return self.s._held(self.txn, urn, b"_")     # every reserved name starts with "_"

    def current(self, a: Assertion) -> Assertion | None:
        return self.record_by_key(record_key(a))

    def record_by_key(self, key: bytes) -> Assertion | None:
        v = self.txn.get(key, db=self.s.records)
        return self.s._decode(key, v) if v is not None else None

    def _digest(self, k: bytes) -> bytes:
        if k not in self.digest_cache:
            self.digest_cache[k] = bytes(self.txn.get(k, default=ZERO, db=self.s.digests))
        return self.digest_cache[k]

    def _digest_delta(self, key: bytes, delta: bytes) -> None:
        for k in (b"L" + key[:2], b"T" + key[:1]):
            self.digest_cache[k] = xor(self._digest(k), delta)

    def _log(self, event: str, a: Assertion, data: bytes | None = None) -> int:
        self.rev += 1
        self.txn.put(_U64.pack(self.rev), _EVENTS[event] + (data or a.encode()), db=self.s.log, append=True)
        return self.rev

    def store(self, a: Assertion, previous: Assertion | None, expires_at: int | None, gc_at: int | None) -> int:
        key = record_key(a)
        delta = element_digest(a) if previous is None else xor(element_digest(a), element_digest(previous))
        self._digest_delta(key, delta)
        data = a.encode()
        self.txn.put(key, data, db=self.s.records)
        if previous is None:
            self.txn.put(key[2:], b"", db=self.s.byurn)
            self.txn.put(_name_key(key[2:]), b"", db=self.s.byname)
        if expires_at is not None:
            self.txn.put(_U64.pack(expires_at) + _TIMER_KINDS[EXPIRE] + key, b"", db=self.s.timers)
        if gc_at is not None:
            self.txn.put(_U64.pack(gc_at) + _TIMER_KINDS["gc"] + key, b"", db=self.s.timers)
        return self._log(PUT, a, data)

    def log_expiry(self, a: Assertion) -> int:
        return self._log(EXPIRE, a)

    def forget(self, a: Assertion) -> None:
        key = record_key(a)
        cur = self.record_by_key(key)
        if cur is not None and cur.rank == a.rank:
            self.txn.delete(key, db=self.s.records)
            self.txn.delete(key[2:], db=self.s.byurn)
            self.txn.delete(_name_key(key[2:]), db=self.s.byname)
            self._digest_delta(key, element_digest(a))

    def admit(self, key: bytes, reason: str) -> None:
        self.txn.put(key + reason.encode(), b"", db=self.s.admitted)
        # not a valid Ed25519 point: it can never complete a Curve handshake anyway
        with contextlib.suppress(Exception):
            self.txn.put(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(key), key, db=self.s.curves)

    def unadmit(self, key: bytes, reason: str) -> None:
        self.txn.delete(key + reason.encode(), db=self.s.admitted)

    def is_admitted(self, key: bytes) -> bool:
        return _has_prefix(self.txn, self.s.admitted, key)

    def is_host_key(self, key: bytes) -> bool:
        return _has_prefix(self.txn, self.s.admitted, key + HOST_REASON)

    def due_timers(self, now_ms: int, limit: int) -> list[tuple[int, str, bytes]]:
        out = []
        cur = self.txn.cursor(self.s.timers)
        for k, _ in cur:
            when = _U64.unpack(k[:8])[0]
            if when > now_ms or len(out) >= limit:
                break
            out.append((when, _TIMER_NAMES[bytes(k[8:9])], bytes(k[9:])))
        return out

    def drop_timer(self, when: int, what: str, key: bytes) -> None:
        self.txn.delete(_U64.pack(when) + _TIMER_KINDS[what] + key, db=self.s.timers)


assert DIGEST_BYTES == 32
