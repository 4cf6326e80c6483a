"""The LMDB store (rcds/store.py) against the reference MemoryStorage (rcds/storage.py): the same
writes give the same records, digests, summaries and log; prefix scans keep URN order; data
survives a reopen; tampered bytes are caught without crashing reads."""

from __future__ import annotations

import dataclasses
import random
import tempfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcds import store
from rcds.replica import Accepted, Replica
from rcds.storage import (
    EXPIRE,
    LEAVES,
    TOPS,
    ZERO,
    Change,
    MemoryStorage,
    Storage,
    element_digest,
    leaf_of,
    record_key,
    xor,
)
from rcds.store import LmdbStorage
from snipe import hlc
from snipe.assertion import Assertion, decode_assertion, make_assertion
from snipe.errors import SignatureError, StorageFull
from snipe.identity import Identity

ADMIN, ALICE = Identity.from_seed(bytes([21]) * 32), Identity.from_seed(bytes([22]) * 32)
T0 = 1_700_000_000_000
NOW = T0 + 1_000
GRACE = 60_000
MAP = 64 << 20


def put(who: Identity, urn: str, name: str, value: object, at: int = 0, ttl_ms: int = 0,
        deleted: bool = False) -> Assertion:
    return make_assertion(who, urn, name, None if deleted else value, hlc.pack(T0 + at), ttl_ms, deleted)


def expected_digests(records: list[Assertion]) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Digests computed from scratch: the XOR of element digests per leaf and per top."""
    leaves: dict[int, bytes] = {}
    tops: dict[int, bytes] = {}
    for a in records:
        leaf = leaf_of(a.urn)
        leaves[leaf] = xor(leaves.get(leaf, ZERO), element_digest(a))
        tops[leaf >> 8] = xor(tops.get(leaf >> 8, ZERO), element_digest(a))
    return leaves, tops


def state(s: Storage) -> dict[str, object]:
    """Everything observable about a storage, for comparing two of them whole."""
    tops = s.top_digests()
    leaves = {t: s.leaf_digests(t) for t in range(TOPS) if tops[t] != ZERO}
    summaries = {t * 256 + i: s.leaf_summaries(t * 256 + i) for t, ds in leaves.items()
                 for i, d in enumerate(ds) if d != ZERO}
    return {"records": list(s.scan_prefix("")), "count": s.count(), "tops": tops, "leaves": leaves,
            "summaries": summaries, "log": s.changes_since(0, 10**6), "rev": s.last_rev()}


def check_digests_from_scratch(s: Storage) -> None:
    records = list(s.scan_prefix(""))
    leaves, tops = expected_digests(records)
    assert s.top_digests() == [tops.get(t, ZERO) for t in range(TOPS)]
    for t in {leaf >> 8 for leaf in leaves}:
        assert s.leaf_digests(t) == [leaves.get(t * 256 + i, ZERO) for i in range(256)]


@pytest.fixture
def lmdb_path(tmp_path: Path) -> Path:
    return tmp_path / "store"


# --- the XOR digests ------------------------------------------------------------------------------
def random_writes(rng: random.Random, n: int) -> list[Assertion]:
    urns = [f"urn:snipe:group:g{i}" for i in range(40)]
    out = []
    for _ in range(n):
        deleted = rng.random() < 0.2
        out.append(put(ADMIN, rng.choice(urns), rng.choice(["a", "b", "c"]), rng.randrange(100),
                       at=rng.randrange(500), ttl_ms=rng.choice([0, 0, 0, 200]), deleted=deleted))
    return out


def test_lmdb_digests_equal_memory_digests(lmdb_path):
    rng = random.Random(7)
    writes = random_writes(rng, 400)
    mem = MemoryStorage()
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        for s in (mem, lm):
            replica = Replica(s, ADMIN.public_key, gc_grace_ms=GRACE)
            for i in range(0, len(writes), 37):                       # several write transactions
                replica.ingest(writes[i:i + 37], NOW)
            replica.tick(T0 + 600)                                    # lease expiries
        assert state(lm) == state(mem)
        check_digests_from_scratch(mem)
        check_digests_from_scratch(lm)
        assert any(c.event == EXPIRE for c in lm.changes_since(0, 10**6)[1])
        for s in (mem, lm):                                           # and garbage collection
            Replica(s, ADMIN.public_key, gc_grace_ms=GRACE).tick(T0 + 1_000 + GRACE)
        assert state(lm) == state(mem)
        assert all(not a.deleted and not a.ttl_ms for a in mem.scan_prefix(""))
        check_digests_from_scratch(lm)
    finally:
        lm.close()


@settings(max_examples=25, deadline=None)
@given(ops=st.lists(st.tuples(st.integers(0, 5), st.sampled_from("xy"), st.integers(0, 20), st.booleans()),
                    max_size=30))
def test_digests_track_any_sequence_of_writes(ops):
    writes = [put(ADMIN, f"urn:snipe:proc:p{u}", name, at, at=at, deleted=deleted) for u, name, at, deleted in ops]
    mem = MemoryStorage()
    with tempfile.TemporaryDirectory() as d:
        lm = LmdbStorage(d, map_size=MAP)
        try:
            for s in (mem, lm):
                replica = Replica(s, ADMIN.public_key)
                for w in writes:
                    replica.ingest([w], NOW)
            assert state(lm) == state(mem)
            check_digests_from_scratch(lm)
        finally:
            lm.close()


def test_digests_return_to_zero_when_everything_is_forgotten(lmdb_path):
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        replica = Replica(lm, ADMIN.public_key, gc_grace_ms=GRACE)
        replica.ingest([put(ADMIN, f"urn:snipe:group:g{i}", "x", None, at=i, deleted=True) for i in range(50)], NOW)
        assert lm.top_digests() != [ZERO] * TOPS
        assert replica.tick(T0 + 50 + GRACE) == 50
        assert lm.top_digests() == [ZERO] * TOPS
        assert lm.count() == 0 and list(lm.scan_prefix("")) == []
    finally:
        lm.close()


def test_record_keys_and_summaries(lmdb_path):
    a = put(ADMIN, "urn:snipe:host:h1", "cpus", 8)
    key = record_key(a)
    assert key == leaf_of(a.urn).to_bytes(2, "big") + b"urn:snipe:host:h1\0cpus\0" + ADMIN.public_key
    assert 0 <= leaf_of(a.urn) < LEAVES
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        for s in (MemoryStorage(), lm):
            Replica(s, ADMIN.public_key).ingest([a], NOW)
            [summary] = s.leaf_summaries(leaf_of(a.urn))
            assert (summary.key, summary.ts, summary.sig8) == (key, a.ts, a.signature[:8])
            assert s.records_by_keys([key, b"\0\0missing"]) == [a]
            assert s.leaf_summaries((leaf_of(a.urn) + 1) % LEAVES) == []
    finally:
        lm.close()


# --- prefix scans ---------------------------------------------------------------------------------
URNS = ["urn:snipe:host:a", "urn:snipe:host:a-b", "urn:snipe:host:ab", "urn:snipe:host:b", "urn:snipe:proc:a",
        "urn:snipe:group:a", "urn:snipe:user:a.b"]



def store_straight(s: Storage, writes: list[Assertion]) -> None:
    """Store `writes` straight into `s`, not through a Replica (no authority checks)."""
    with s.write() as txn:
        for w in writes:
            txn.store(w, None, None, None)

def test_scan_prefix_orders_by_urn_name_signer_and_respects_boundaries(lmdb_path):
    writes = [put(who, urn, name, 1) for urn in URNS for name in ("x", "xy", "a") for who in (ADMIN, ALICE)]
    random.Random(3).shuffle(writes)
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        for s in (MemoryStorage(), lm):
            store_straight(s, writes)    # this tests ordering, not authority

            def scan(prefix: str, s: Storage = s) -> list[tuple[str, str, bytes]]:
                return [(a.urn, a.name, a.signer) for a in s.scan_prefix(prefix)]

            everything = sorted((a.urn, a.name, a.signer) for a in writes)
            assert scan("") == everything
            assert scan("urn:snipe:") == everything
            assert scan("urn:snipe:host:a") == [k for k in everything if k[0] in URNS[:3]]
            assert [k[0] for k in scan("urn:snipe:host:a")][::6] == ["urn:snipe:host:a", "urn:snipe:host:a-b",
                                                                    "urn:snipe:host:ab"]
            assert scan("urn:snipe:host:a-") == [k for k in everything if k[0] == "urn:snipe:host:a-b"]
            assert scan("urn:snipe:host:") == [k for k in everything if k[0].startswith("urn:snipe:host:")]
            assert scan("urn:snipe:host:c") == []
            assert scan("urn:snipe:proc") == [k for k in everything if k[0] == "urn:snipe:proc:a"]
            assert scan("urn:snipe:zzz") == []
            assert [n for u, n, _ in scan("urn:snipe:user:a.b")] == ["a", "a", "x", "x", "xy", "xy"]
    finally:
        lm.close()


def test_scan_prefix_having_names_keeps_only_the_urns_that_hold_each_of_them(lmdb_path,
                                                                              monkeypatch: pytest.MonkeyPatch):
    """A query's predicates each need a record of their name: a scan given those names skips the
    other URNs (an LMDB store finds the rest by its byname index) and keeps every record of those."""
    writes = [put(ADMIN, "urn:snipe:proc:a", "on_call", ["h1"]), put(ADMIN, "urn:snipe:proc:a", "state", "running"),
              put(ALICE, "urn:snipe:proc:a", "result", 1), put(ADMIN, "urn:snipe:proc:b", "state", "exited"),
              put(ALICE, "urn:snipe:proc:b", "on_call", ["h2"]), put(ADMIN, "urn:snipe:proc:c", "state", "running"),
              put(ADMIN, "urn:snipe:proc:d", "on_call", [], deleted=True), put(ALICE, "urn:snipe:proc:e", "état", 1),
              put(ALICE, "urn:snipe:proc:f", "名前", 1), put(ADMIN, "urn:snipe:host:a", "on_call", 1)]
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        for s in (MemoryStorage(), lm):
            store_straight(s, writes)

            def scan(having: set[str], s: Storage = s) -> list[tuple[str, str]]:
                return [(a.urn, a.name) for a in s.scan_prefix("urn:snipe:proc:", having)]

            assert scan(set()) == [(a.urn, a.name) for a in sorted(writes[:-1], key=lambda a: (a.urn, a.name))]
            # a tombstone holds the name too: whether it matches is the query's to judge
            assert scan({"on_call"}) == [("urn:snipe:proc:a", "on_call"), ("urn:snipe:proc:a", "result"),
                                         ("urn:snipe:proc:a", "state"), ("urn:snipe:proc:b", "on_call"),
                                         ("urn:snipe:proc:b", "state"), ("urn:snipe:proc:d", "on_call")]
            assert scan({"on_call", "result"}) == scan({"result"}) == [
                ("urn:snipe:proc:a", "on_call"), ("urn:snipe:proc:a", "result"), ("urn:snipe:proc:a", "state")]
            assert scan({"missing"}) == []
            # names are any text: the index's keys are bytes
            assert scan({"état"}) == [("urn:snipe:proc:e", "état")] and scan({"名前", "état"}) == []
        # a store written before the byname index existed gets it built when opened, in batches
        expected = [(a.urn, a.name) for a in lm.scan_prefix("urn:snipe:", {"on_call"})]
        with lm.env.begin(write=True) as txn:
            txn.drop(lm.byname, delete=False)
            txn.delete(b"byname", db=lm.meta)
        lm.close()
        monkeypatch.setattr(store, "NAME_INDEX_BATCH", 2)
        lm = LmdbStorage(lmdb_path, map_size=MAP)
        assert [(a.urn, a.name) for a in lm.scan_prefix("urn:snipe:", {"on_call"})] == expected
        assert ("urn:snipe:host:a", "on_call") in expected
        with lm.env.begin() as txn:
            assert txn.stat(lm.byname)["entries"] == txn.stat(lm.byurn)["entries"] == len(writes)
    finally:
        lm.close()


def test_held_raw_reads_an_entry_or_one_name_with_the_reserved_ones(lmdb_path):
    names = ("_owner", "_delegate.*", "a", "Z", "x", "xy", "x_")
    writes = [put(who, urn, name, 1) for urn in URNS[:3] for name in names for who in (ADMIN, ALICE)]
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        for s in (MemoryStorage(), lm):
            store_straight(s, writes)

            def read(name: str | None, s: Storage = s) -> list[tuple[str, str]]:
                return sorted((a.urn, a.name) for a in map(decode_assertion, s.held_raw("urn:snipe:host:a", name)))

            everything = sorted(("urn:snipe:host:a", n) for n in names for _ in (ADMIN, ALICE))
            assert read(None) == everything
            assert read("x") == [k for k in everything if k[1] in ("_owner", "_delegate.*", "x")]
            assert read("_owner") == [k for k in everything if k[1] in ("_owner", "_delegate.*")]
            assert read("nothing") == [k for k in everything if k[1] in ("_owner", "_delegate.*")]
            assert s.held_raw("urn:snipe:host:c") == []
    finally:
        lm.close()


def test_scan_prefix_forgets_what_gc_forgot(lmdb_path):
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        replica = Replica(lm, ADMIN.public_key, gc_grace_ms=GRACE)
        keep, gone = put(ADMIN, "urn:snipe:group:a", "x", 1), put(ADMIN, "urn:snipe:group:ab", "x", None, deleted=True)
        replica.ingest([keep, gone], NOW)
        assert list(lm.scan_prefix("urn:snipe:group:a")) == [keep, gone]
        replica.tick(T0 + GRACE)
        assert list(lm.scan_prefix("urn:snipe:group:a")) == [keep]
        replica.ingest([put(ADMIN, "urn:snipe:group:ab", "x", 2, at=GRACE)], T0 + GRACE)
        assert [a.urn for a in lm.scan_prefix("urn:snipe:group:")] == ["urn:snipe:group:a", "urn:snipe:group:ab"]
    finally:
        lm.close()


# --- durability -----------------------------------------------------------------------------------
def test_data_survives_close_and_reopen(lmdb_path):
    lm = LmdbStorage(lmdb_path, map_size=MAP, log_retention=4)
    replica = Replica(lm, ADMIN.public_key, gc_grace_ms=GRACE)
    assign = put(ADMIN, "urn:snipe:user:alice", "_owner", ALICE.key_id)
    c = put(ALICE, "urn:snipe:proc:p", "_owner", ALICE.key_id, at=1)
    lease = put(ALICE, "urn:snipe:proc:p", "alive", True, at=2, ttl_ms=1_000)
    more = [put(ADMIN, f"urn:snipe:group:g{i}", "n", i, at=3) for i in range(3)]
    assert all(isinstance(r, Accepted) for r in replica.ingest([assign, c, lease, *more], NOW))
    before = state(lm)
    lm.close()

    lm = LmdbStorage(lmdb_path, map_size=MAP, log_retention=4)
    try:
        assert state(lm) == before
        assert lm.changes_since(0, 100)[0] == 3                   # the trimmed log stays trimmed
        assert lm.is_admitted(ALICE.public_key)                   # admissions persist
        assert lm.ed_key_of_curve(bytes(32)) is None
        replica = Replica(lm, ADMIN.public_key, gc_grace_ms=GRACE)
        assert replica.tick(T0 + 2 + 1_000) == 1                  # so do timers
        assert lm.changes_since(6, 10) == (4, [Change(7, EXPIRE, lease)])
        assert isinstance(replica.ingest([put(ALICE, "urn:snipe:proc:p", "state", "up", at=4)], NOW)[0], Accepted)
    finally:
        lm.close()


def test_a_store_short_of_disk_space_refuses_writes_and_keeps_what_it_holds(lmdb_path):
    """Writes go into a sparse, map-sized file (writemap): on a full disk such a write would be a
    SIGBUS. Under `min_free_bytes` free, every write transaction is refused with StorageFull
    before LMDB is touched; reads go on, and what was stored stays."""
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    replica = Replica(lm, ADMIN.public_key, gc_grace_ms=GRACE)
    held = put(ADMIN, "urn:snipe:group:kept", "n", 1)
    assert isinstance(replica.ingest([held], NOW)[0], Accepted)
    before = state(lm)
    lm.min_free_bytes = 1 << 62                      # more than any file system here has free
    with pytest.raises(StorageFull, match=r"MiB free on its file system.*writes are refused \(reads go on\)"):
        replica.ingest([put(ADMIN, "urn:snipe:group:more", "n", 2, at=1)], NOW)
    with pytest.raises(StorageFull):
        replica.tick(NOW)                            # timers too: they fire once there is room
    assert state(lm) == before                       # nothing half-written, every read served
    lm.min_free_bytes = store.MIN_FREE_BYTES
    assert isinstance(replica.ingest([put(ADMIN, "urn:snipe:group:more", "n", 2, at=1)], NOW)[0], Accepted)
    lm.close()


def test_admission_records_the_curve_key(lmdb_path):
    import nacl.bindings
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        Replica(lm, ADMIN.public_key).ingest([put(ADMIN, "urn:snipe:user:alice", "_owner", ALICE.key_id)], NOW)
        curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ALICE.public_key)
        assert lm.ed_key_of_curve(curve) == ALICE.public_key
    finally:
        lm.close()


def test_a_failed_write_transaction_leaves_nothing_behind(lmdb_path):
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    try:
        before = state(lm)
        with pytest.raises(RuntimeError), lm.write() as txn:
            txn.store(put(ADMIN, "urn:snipe:group:g", "n", 1), None, None, None)
            raise RuntimeError("crash mid-batch")
        assert state(lm) == before
    finally:
        lm.close()


# --- tampering --------------------------------------------------------------------------------------
URN = "urn:snipe:proc:p"


@pytest.fixture
def tampered_store(lmdb_path):
    lm = LmdbStorage(lmdb_path, map_size=MAP)
    replica = Replica(lm, ADMIN.public_key)
    records = [put(ADMIN, URN, name, name, at=1) for name in ("a", "b", "c")]
    replica.ingest(records, NOW)
    yield lm, records
    lm.close()


def forged_bytes(a: Assertion) -> bytes:
    """The record re-encoded with another value and the old signature."""
    return dataclasses.replace(a, value="evil").encode()


@pytest.mark.parametrize("new_bytes", [
    b"",
    b"\xc1",                                                      # never valid msgpack
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"not": "an assertion"}),
    b"\x92" + b"\xff" * 40,
    b"\x00" * (2 * 1024 * 1024),                                  # too large to be an assertion
], ids=["empty", "c1", "short-array", "map", "truncated", "huge"])
def test_tampered_bytes_are_skipped_not_crashed_on(tampered_store, new_bytes):
    lm, (a, b, c) = tampered_store
    lm.tamper(URN, "b", new_bytes)
    assert sorted(lm.held(URN), key=lambda x: x.name) == [a, c]
    assert list(lm.scan_prefix("urn:snipe:proc:")) == [a, c]
    assert lm.records_by_keys([record_key(a), record_key(b), record_key(c)]) == [a, c]
    assert [s.key for s in lm.leaf_summaries(leaf_of(URN))] == [record_key(a), record_key(c)]
    assert record_key(b).hex() in lm.corrupt
    assert lm.changes_since(0, 10)[1][1].record == b                 # the log holds its own copy
    # and the replica keeps working on the same URN
    newer = put(ADMIN, URN, "d", "d", at=2)
    assert isinstance(Replica(lm, ADMIN.public_key).ingest([newer], NOW)[0], Accepted)


def test_tampered_value_fails_verification(tampered_store):
    lm, (a, b, c) = tampered_store
    lm.tamper(URN, "b", forged_bytes(b))
    read = {x.name: x for x in lm.held(URN)}
    assert (read["a"], read["c"]) == (a, c)
    assert read["b"].value == "evil"
    with pytest.raises(SignatureError):
        read["b"].verify()
    read["a"].verify()
    assert [x for x in lm.scan_prefix(URN) if x.name == "b"] == [read["b"]]
    assert decode_assertion(forged_bytes(b)) == read["b"]
