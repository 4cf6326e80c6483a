"""Storage and replica wiring that lets thousands of simulated replicas fit in one process.

Two pieces, both behaviour-preserving (tests/unit/test_sim.py checks them against the plain ones):

- `IndexedStorage` is `rcds.storage.MemoryStorage` with its records also indexed by digest leaf.
  `MemoryStorage.held(urn)` and `leaf_summaries(leaf)` scan every record; the replica core calls
  `held` on every ingest and anti-entropy calls `leaf_summaries` for every differing leaf, so
  with R records a replica's work grows as R per record. The index makes both proportional to
  the records of one leaf. `clone()` copies a storage cheaply: records, digests and log entries
  are immutable and shared, only the containers are copied (a converged cluster's replicas hold
  the same records, so one replica's bootstrap state is cloned into every other).
  Digests are cached too: `leaf_digests(top)` and `top_digests()` build 256-entry lists from
  dicts on every call (every anti-entropy message calls them); the cache keeps each list until
  a digest under it changes.
- `SharedDecodeReplica` is `rcds.replica.Replica` whose `ingest` decodes each distinct encoded
  record once per simulation and hands the core the decoded `Assertion` (which `ingest` accepts
  as such). Decoding is a pure function of the bytes and assertions are immutable, so every
  replica holding a record shares one object instead of ten thousand copies. It also counts
  refusals by error type, which the core returns but the replicator does not keep.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rcds.replica import IngestResult, Refused, Replica
from rcds.storage import ZERO, MemoryStorage, Summary, urn_prefix_key
from snipe.assertion import Assertion, decode_assertion
from snipe.errors import CodecError, TooLarge


class _IndexedRecords(dict[bytes, Assertion]):
    """A dict of records that also keeps, per leaf (a key's first two bytes), its keys in
    insertion order. Index tuples are replaced, never mutated, so clones may share them."""

    __slots__ = ("by_leaf",)

    def __init__(self) -> None:
        super().__init__()
        self.by_leaf: dict[bytes, tuple[bytes, ...]] = {}

    def __setitem__(self, key: bytes, value: Assertion) -> None:
        if key not in self:
            leaf = key[:2]
            self.by_leaf[leaf] = (*self.by_leaf.get(leaf, ()), key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key: bytes) -> None:
        dict.__delitem__(self, key)
        leaf = key[:2]
        rest = tuple(k for k in self.by_leaf[leaf] if k != key)
        if rest:
            self.by_leaf[leaf] = rest
        else:
            del self.by_leaf[leaf]

    def _unsupported(self, *args: Any, **kw: Any) -> None:
        raise NotImplementedError("IndexedStorage records change only through [key] = value and del")

    pop = popitem = setdefault = update = clear = _unsupported    # type: ignore[assignment]

    def clone(self) -> _IndexedRecords:
        c = _IndexedRecords()
        dict.update(c, self)
        c.by_leaf = dict(self.by_leaf)
        return c


class _CachedDigests(dict[int, bytes]):
    """A dict of leaf (or top) digests that remembers the 256-entry list of each group
    (`index >> shift`) until a digest in it changes. Cached lists are never mutated."""

    __slots__ = ("cache", "shift")

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift
        self.cache: dict[int, list[bytes]] = {}

    def __setitem__(self, key: int, value: bytes) -> None:
        dict.__setitem__(self, key, value)
        self.cache.pop(key >> self.shift, None)

    def __delitem__(self, key: int) -> None:
        dict.__delitem__(self, key)
        self.cache.pop(key >> self.shift, None)

    def _unsupported(self, *args: Any, **kw: Any) -> None:
        raise NotImplementedError("IndexedStorage digests change only through [key] = value and del")

    pop = popitem = setdefault = update = clear = _unsupported    # type: ignore[assignment]

    def group(self, g: int) -> list[bytes]:
        """The 256 digests of group `g` (ZERO where none), as a new list."""
        cached = self.cache.get(g)
        if cached is None:
            base = g << 8
            cached = self.cache[g] = [self.get(base + i, ZERO) for i in range(256)]
        return list(cached)

    def clone(self) -> _CachedDigests:
        c = _CachedDigests(self.shift)
        dict.update(c, self)
        c.cache = dict(self.cache)
        return c


class IndexedStorage(MemoryStorage):
    """MemoryStorage with records indexed by leaf; same state, same answers, less scanning."""

    def __init__(self, log_retention: int = 100_000) -> None:
        super().__init__(log_retention)
        self.records: _IndexedRecords = _IndexedRecords()
        self.leaves: _CachedDigests = _CachedDigests(8)
        self.tops: _CachedDigests = _CachedDigests(16)      # one group: all 256 tops

    def held(self, urn: str) -> list[Assertion]:
        p = urn_prefix_key(urn)
        recs = self.records
        return [recs[k] for k in recs.by_leaf.get(p[:2], ()) if k.startswith(p)]

    def leaf_summaries(self, leaf: int) -> list[Summary]:
        recs = self.records
        return sorted((Summary(k, recs[k].ts, recs[k].signature[:8])
                       for k in recs.by_leaf.get(leaf.to_bytes(2, "big"), ())), key=lambda s: s.key)

    def top_digests(self) -> list[bytes]:
        return self.tops.group(0)

    def leaf_digests(self, top: int) -> list[bytes]:
        return self.leaves.group(top)

    def clone(self) -> IndexedStorage:
        """An independent storage holding the same state (immutable contents shared)."""
        c = IndexedStorage.__new__(IndexedStorage)
        for name, value in vars(self).items():
            if isinstance(value, _IndexedRecords | _CachedDigests):
                value = value.clone()
            elif isinstance(value, dict):
                value = {k: set(v) if isinstance(v, set) else v for k, v in value.items()}
            elif isinstance(value, list | set):
                value = type(value)(value)
            setattr(c, name, value)
        return c


class SharedDecodeReplica(Replica):
    """A Replica that decodes each distinct record once per simulation (see the module doc)."""

    def __init__(self, storage: IndexedStorage, admin_key: bytes, decoded: dict[bytes, Assertion],
                 refusals: Counter[str], **kw: Any) -> None:
        super().__init__(storage, admin_key, **kw)
        self.decoded = decoded
        self.refusals = refusals

    def ingest(self, records: list[bytes | Assertion], now_ms: int, *, from_peer: bool = False) -> list[IngestResult]:
        cache = self.decoded
        items: list[bytes | Assertion] = []
        for r in records:
            if isinstance(r, bytes):
                a = cache.get(r)
                if a is None:
                    try:
                        a = decode_assertion(r)
                    except (CodecError, TooLarge):
                        items.append(r)          # the core refuses it and says why
                        continue
                    cache[r] = a
                items.append(a)
            else:
                items.append(r)
        results = super().ingest(items, now_ms, from_peer=from_peer)
        for res in results:
            if isinstance(res, Refused):
                self.refusals[type(res.error).__name__] += 1
        return results
