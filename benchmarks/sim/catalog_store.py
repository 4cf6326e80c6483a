"""Storage and replica wiring that lets thousands of simulated replicas fit in one process.

Two pieces, both behaviour-preserving (tests/unit/test_sim.py checks them against the plain ones):

- `IndexedStorage` is `rcds.storage.MemoryStorage` with its records also indexed by digest leaf.
  `MemoryStorage.held(urn)` (which its write transaction's `reserved` uses too) and
  `leaf_summaries(leaf)` scan every record; the replica core reads a URN's reserved names on
  writes and anti-entropy reads the summaries of every differing leaf, so with R records a
  replica's work grows as R per record. The index makes both proportional to the records of one
  leaf. Digests are indexed too: `leaf_digests(top)` and `top_digests()` look up 256 dict entries
  per call (every anti-entropy message makes such calls), mostly absent ones; the index lists
  the entries present, and the top list is kept until a top changes.
  `clone()` copies a storage cheaply: records, digests and log entries are immutable and
  shared, only the containers are copied (a converged cluster's replicas hold the same records,
  so one replica's bootstrap state is cloned into every other).
- `CountingReplica` is `rcds.replica.Replica` counting its refusals by error type.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from rcds.replica import IngestResult, Refused, Replica
from rcds.storage import ZERO, MemoryStorage, Summary, urn_prefix_key
from snipe.assertion import Assertion


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


class _SparseDigests(dict[int, bytes]):
    """A dict of leaf (or top) digests that also keeps, per group of 256 (`index >> shift`),
    which indexes it holds, so a group's 256-entry list is built from the few it holds; with
    `cache`, the built lists are kept until a digest in their group changes (for the tops, read
    every round and changed far less often). Tuples and cached lists are replaced, never
    mutated, so clones may share them."""

    __slots__ = ("cache", "members", "shift")

    def __init__(self, shift: int, cache: bool = False) -> None:
        super().__init__()
        self.shift = shift
        self.members: dict[int, tuple[int, ...]] = {}
        self.cache: dict[int, list[bytes]] | None = {} if cache else None

    def __setitem__(self, key: int, value: bytes) -> None:
        g = key >> self.shift
        if key not in self:
            self.members[g] = (*self.members.get(g, ()), key)
        dict.__setitem__(self, key, value)
        if self.cache is not None:
            self.cache.pop(g, None)

    def __delitem__(self, key: int) -> None:
        dict.__delitem__(self, key)
        g = key >> self.shift
        self.members[g] = tuple(k for k in self.members[g] if k != key)
        if self.cache is not None:
            self.cache.pop(g, None)

    def _unsupported(self, *args: Any, **kw: Any) -> None:
        raise NotImplementedError("IndexedStorage digests change only through [key] = value and del")

    pop = popitem = setdefault = update = clear = _unsupported    # type: ignore[assignment]

    def group(self, g: int) -> list[bytes]:
        """The 256 digests of group `g` (ZERO where none), as a new list."""
        if self.cache is not None:
            hit = self.cache.get(g)
            if hit is not None:
                return list(hit)
        out = [ZERO] * 256
        for k in self.members.get(g, ()):
            out[k & 255] = self[k]
        if self.cache is not None:
            self.cache[g] = list(out)
        return out

    def clone(self) -> _SparseDigests:
        c = _SparseDigests(self.shift)
        dict.update(c, self)
        c.members = dict(self.members)
        c.cache = None if self.cache is None else dict(self.cache)
        return c


class IndexedStorage(MemoryStorage):
    """MemoryStorage with records indexed by leaf; same state, same answers, less scanning."""

    def __init__(self, log_retention: int = 100_000) -> None:
        super().__init__(log_retention)
        self.records: _IndexedRecords = _IndexedRecords()
        self.leaves: _SparseDigests = _SparseDigests(8)
        self.tops: _SparseDigests = _SparseDigests(16, cache=True)      # one group: all 256 tops

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
            if isinstance(value, _IndexedRecords | _SparseDigests):
                value = value.clone()
            elif isinstance(value, dict):
                value = {k: set(v) if isinstance(v, set) else v for k, v in value.items()}
            elif isinstance(value, list | set):
                value = type(value)(value)
            setattr(c, name, value)
        return c


class CountingReplica(Replica):
    """A Replica that also counts its refusals by error type (the core returns them; the
    replicator does not keep them). Ingest itself is the core's, untouched."""

    def __init__(self, storage: IndexedStorage, admin_key: bytes, refusals: Counter[str], **kw: Any) -> None:
        super().__init__(storage, admin_key, **kw)
        self.refusals = refusals

    def ingest(self, records: list[bytes | Assertion], now_ms: int, *, from_peer: bool = False) -> list[IngestResult]:
        results = super().ingest(records, now_ms, from_peer=from_peer)
        for res in results:
            if isinstance(res, Refused):
                self.refusals[type(res.error).__name__] += 1
        return results
