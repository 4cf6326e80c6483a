"""The replica core (rcds/replica.py): assertions in, Accepted/Refused out, state kept in storage.

Every test runs against both storages (MemoryStorage and LmdbStorage) so they are held to one
behaviour. Times are manual: `now_ms` values, never the wall clock.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest

from rcds.replica import Accepted, Refused, Replica
from rcds.storage import EXPIRE, PUT, ZERO, Change, MemoryStorage, Storage
from rcds.store import LmdbStorage
from snipe import hlc
from snipe.assertion import (
    MAX_STORED_URN_AND_NAME_BYTES,
    MAX_URN_AND_NAME_BYTES,
    Assertion,
    _signing_bytes,
    decode_assertion,
    make_assertion,
)
from snipe.errors import CodecError, NotAuthorized, SignatureError, StaleWrite, TooLarge
from snipe.identity import Identity

ADMIN, ALICE, BOB, HOSTKEY, TASK, STRANGER = (Identity.from_seed(bytes([i]) * 32) for i in range(11, 17))
T0 = 1_700_000_000_000
NOW = T0 + 1_000
GRACE = 60_000
SKEW = 30_000
USER_A, USER_B, HOST = "urn:snipe:user:alice", "urn:snipe:user:bob", "urn:snipe:host:h1"
PROC, PROC2 = "urn:snipe:proc:p1", "urn:snipe:proc:p2"


def put(who: Identity, urn: str, name: str, value: object, at: int = 0, ttl_ms: int = 0) -> Assertion:
    return make_assertion(who, urn, name, value, hlc.pack(T0 + at), ttl_ms)


def tomb(who: Identity, urn: str, name: str, at: int) -> Assertion:
    return make_assertion(who, urn, name, None, hlc.pack(T0 + at), deleted=True)


def claim(who: Identity, urn: str = PROC, at: int = 0) -> Assertion:
    return put(who, urn, "_owner", who.key_id, at)


def outcome(r: Accepted | Refused) -> tuple:
    """A result as plain data, so whole transcripts compare with ==."""
    if isinstance(r, Accepted):
        return ("accepted", r.record, r.rev, r.new)
    return ("refused", type(r.error), r.record)


MakeStorage = Callable[..., Storage]


@pytest.fixture(params=["memory", "lmdb"])
def make_storage(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MakeStorage]:
    opened: list[LmdbStorage] = []

    def make(**kw: int) -> Storage:
        if request.param == "memory":
            return MemoryStorage(**kw)
        s = LmdbStorage(tmp_path / f"db{len(opened)}", map_size=64 << 20, **kw)
        opened.append(s)
        return s

    yield make
    for s in opened:
        s.close()


@pytest.fixture
def storage(make_storage: MakeStorage) -> Storage:
    return make_storage()


@pytest.fixture
def replica(storage: Storage) -> Replica:
    return Replica(storage, ADMIN.public_key, gc_grace_ms=GRACE, max_skew_ms=SKEW)


def ingest(replica: Replica, *records: Assertion | bytes, now: int = NOW) -> list[tuple]:
    return [outcome(r) for r in replica.ingest(list(records), now)]


def admitted_alice(replica: Replica) -> Assertion:
    a = put(ADMIN, USER_A, "_owner", ALICE.key_id)
    assert ingest(replica, a) == [("accepted", a, 1, True)]
    return a


def held(storage: Storage, urn: str) -> set[Assertion]:
    return set(storage.held(urn))


# --- accepting and refusing ----------------------------------------------------------------------
def test_a_write_is_stored_logged_and_digested(replica, storage):
    assign = admitted_alice(replica)
    c, state = claim(ALICE, at=1), put(ALICE, PROC, "state", "running", at=2)
    assert ingest(replica, c, state) == [("accepted", c, 2, True), ("accepted", state, 3, True)]
    assert held(storage, PROC) == {c, state}
    assert held(storage, USER_A) == {assign}
    assert storage.count() == 3
    assert storage.last_rev() == 3
    assert storage.changes_since(0, 100) == (1, [Change(1, PUT, assign), Change(2, PUT, c), Change(3, PUT, state)])
    assert storage.changes_since(2, 100) == (1, [Change(3, PUT, state)])
    assert sum(d != ZERO for d in storage.top_digests()) >= 1


def test_identical_reput_is_idempotent(replica, storage):
    admitted_alice(replica)
    c = claim(ALICE, at=1)
    ingest(replica, c)
    digests, rev = storage.top_digests(), storage.last_rev()
    assert ingest(replica, c, c.encode()) == [("accepted", c, 0, False), ("accepted", c, 0, False)]
    assert (storage.top_digests(), storage.last_rev(), storage.count()) == (digests, rev, 2)


def test_older_write_is_refused_as_stale(replica, storage):
    admitted_alice(replica)
    c, new, old = claim(ALICE), put(ALICE, PROC, "state", "new", at=5), put(ALICE, PROC, "state", "old", at=4)
    ingest(replica, c, new)
    [result] = replica.ingest([old], NOW)
    assert outcome(result) == ("refused", StaleWrite, old)
    assert PROC in str(result.error) and "re-read and write again" in str(result.error)
    assert held(storage, PROC) == {c, new}


def test_future_timestamp_beyond_skew_is_refused(replica, storage):
    admitted_alice(replica)
    near = put(ALICE, PROC, "_owner", ALICE.key_id, at=NOW - T0 + SKEW)        # exactly at the limit
    far = put(ALICE, PROC2, "_owner", ALICE.key_id, at=NOW - T0 + SKEW + 1)
    zero = make_assertion(ALICE, PROC2, "_owner", ALICE.key_id, 0)
    results = replica.ingest([near, far, zero], NOW)
    assert [outcome(r) for r in results] == [("accepted", near, 2, True), ("refused", StaleWrite, far),
                                              ("refused", StaleWrite, zero)]
    assert "check the writer's clock" in str(results[1].error)
    assert held(storage, PROC2) == set()


def test_bad_signature_is_refused(replica, storage):
    admitted_alice(replica)
    good = claim(ALICE)
    forged = dataclasses.replace(good, value=BOB.key_id, signer=BOB.public_key)
    altered = dataclasses.replace(put(ALICE, PROC2, "_owner", ALICE.key_id), ts=hlc.pack(T0 + 7))
    results = replica.ingest([forged, altered.encode()], NOW)
    assert [outcome(r) for r in results] == [("refused", SignatureError, forged), ("refused", SignatureError, altered)]
    assert PROC in str(results[0].error)
    assert storage.count() == 1 and storage.last_rev() == 1


def test_garbage_is_refused_without_harming_the_rest_of_the_batch(replica, storage):
    admitted_alice(replica)
    c, state = claim(ALICE), put(ALICE, PROC, "state", "up", at=1)
    huge = b"\x00" * (2 * 1024 * 1024)
    results = replica.ingest([c.encode(), b"\xc1 not msgpack", b"\x93\x01\x02\x03", huge, state.encode()], NOW)
    assert [outcome(r) for r in results] == [
        ("accepted", c, 2, True),
        ("refused", CodecError, None),
        ("refused", CodecError, None),
        ("refused", TooLarge, None),
        ("accepted", state, 3, True),
    ]
    assert held(storage, PROC) == {c, state}


def test_unauthorized_write_is_refused(replica, storage):
    admitted_alice(replica)
    bob_in = put(ADMIN, USER_B, "_owner", BOB.key_id)
    c = claim(ALICE)
    theft, rival = put(BOB, PROC, "state", "mine", at=1), claim(BOB, at=2)
    results = replica.ingest([bob_in, c, theft, rival], NOW)
    assert [outcome(r) for r in results] == [("accepted", bob_in, 2, True), ("accepted", c, 3, True),
                                              ("refused", NotAuthorized, theft), ("refused", NotAuthorized, rival)]
    assert all(PROC in str(r.error) and "ask its owner" in str(r.error) for r in results[2:])
    assert held(storage, PROC) == {c}


def test_unadmitted_key_is_refused(replica, storage):
    a = claim(STRANGER)
    [result] = replica.ingest([a], NOW)
    assert outcome(result) == ("refused", NotAuthorized, a)
    assert "is not admitted" in str(result.error)
    assert storage.count() == 0 and storage.last_rev() == 0 and storage.top_digests() == [ZERO] * 256


def test_tombstone_supersedes(replica, storage):
    admitted_alice(replica)
    c, state, gone = claim(ALICE), put(ALICE, PROC, "state", "up", at=1), tomb(ALICE, PROC, "state", at=2)
    late = put(ALICE, PROC, "state", "late", at=1)  # older than the tombstone, arriving after it
    assert [o[0] for o in ingest(replica, c, state, gone)] == ["accepted"] * 3
    assert ingest(replica, late) == [("refused", StaleWrite, late)]
    assert held(storage, PROC) == {c, gone}
    assert not gone.is_live(NOW)
    revived = put(ALICE, PROC, "state", "again", at=3)
    assert ingest(replica, revived) == [("accepted", revived, 5, True)]


def test_the_longest_urn_and_name_are_stored_leased_expired_and_deleted(replica, storage):
    """MAX_URN_AND_NAME_BYTES is what LMDB's 511-byte keys allow: a record at the limit, with an
    expiry timer and then a tombstone (and its clean-up timer), stores at every step."""
    admitted_alice(replica)
    urn = "urn:snipe:proc:" + "p" * 241                     # 256 characters, the longest URN
    name = "é" * ((MAX_URN_AND_NAME_BYTES - len(urn)) // 2)  # two bytes a character in UTF-8
    assert len(urn) + len(name.encode()) == MAX_URN_AND_NAME_BYTES
    c, lease = claim(ALICE, urn), put(ALICE, urn, name, 1, at=1, ttl_ms=5_000)
    assert [o[0] for o in ingest(replica, c, lease)] == ["accepted"] * 2
    assert replica.tick(T0 + 1 + 5_000) == 1               # expired through its timer
    gone = tomb(ALICE, urn, name, at=2)
    assert ingest(replica, gone) == [("accepted", gone, 5, True)]
    assert held(storage, urn) == {c, gone}


def test_a_record_stored_before_the_key_limit_still_decodes_but_none_that_long_is_taken_anew(replica):
    """Records without a timer of up to 475 bytes of URN and name fit LMDB's keys and may have
    been stored before the 466-byte limit: they decode (nothing stored goes unread), but a
    replica takes no new one, as its tombstone's clean-up timer would not fit."""
    admitted_alice(replica)
    urn = "urn:snipe:proc:" + "p" * 241
    name = "n" * (MAX_STORED_URN_AND_NAME_BYTES - len(urn))
    ts = hlc.pack(T0 + 1)
    body = _signing_bytes(urn, name, 1, ts, 0, False, ALICE.public_key)
    raw = msgpack.packb([urn, name, 1, ts, 0, False, ALICE.public_key, ALICE.sign(body)], use_bin_type=True)
    a = decode_assertion(raw)
    assert a.name == name
    with pytest.raises(CodecError, match="take 475 bytes"):
        put(ALICE, urn, name, 1, at=1)
    assert ingest(replica, claim(ALICE, urn))[0][0] == "accepted"
    (result,) = replica.ingest([raw], NOW)
    assert isinstance(result, Refused) and "more than the 466" in str(result.error)


def test_keys_lmdb_cannot_hold_are_looked_up_as_absent(tmp_path):
    """An anti-entropy ae-want names keys; an empty or over-long one raised out of LMDB."""
    s = LmdbStorage(tmp_path / "db", map_size=16 << 20)
    try:
        assert s.records_by_keys([b"", b"k" * 600, b"\0\0urn:snipe:proc:none\0n\0"]) == []
        assert s.ed_key_of_curve(b"") is None
    finally:
        s.close()


# --- timers: leases and garbage collection -------------------------------------------------------
def test_lease_expiry_is_logged_at_expiry(replica, storage):
    admitted_alice(replica)
    c = claim(ALICE)
    lease = put(ALICE, PROC, "alive", True, at=100, ttl_ms=5_000)
    ingest(replica, c, lease)
    expiry = T0 + 100 + 5_000
    assert lease.expires_at_ms == expiry
    assert replica.tick(expiry - 1) == 0
    assert storage.last_rev() == 3 and lease.is_live(expiry - 1)
    assert replica.tick(expiry) == 1
    assert storage.changes_since(3, 10) == (1, [Change(4, EXPIRE, lease)])
    assert not lease.is_live(expiry)
    assert held(storage, PROC) == {c, lease}          # remembered until its grace runs out
    assert replica.tick(expiry + GRACE - 1) == 0
    assert replica.tick(expiry + GRACE) == 1
    assert held(storage, PROC) == {c}
    assert storage.last_rev() == 4                    # forgetting is not a change watchers see


def test_renewed_lease_does_not_expire_at_the_old_time(replica, storage):
    admitted_alice(replica)
    first = put(ALICE, PROC, "alive", True, at=0, ttl_ms=1_000)
    renewed = put(ALICE, PROC, "alive", True, at=900, ttl_ms=1_000)
    ingest(replica, claim(ALICE), first, renewed)
    assert replica.tick(T0 + 1_000) == 1              # the old timer fires, and finds a newer record
    assert storage.last_rev() == 4
    assert replica.tick(T0 + 1_900) == 1
    assert storage.changes_since(4, 10) == (1, [Change(5, EXPIRE, renewed)])


def test_gc_forgets_tombstones_and_refuses_to_resurrect_them(make_storage):
    storage = make_storage()
    replica = Replica(storage, ADMIN.public_key, gc_grace_ms=GRACE, max_skew_ms=SKEW)
    admitted_alice(replica)
    c = claim(ALICE)
    state, gone = put(ALICE, PROC, "state", "up", at=1), tomb(ALICE, PROC, "state", at=2)
    ingest(replica, c)
    digests_before = storage.top_digests()
    ingest(replica, state, gone)
    gc_at = T0 + 2 + GRACE
    assert replica.tick(gc_at - 1) == 0
    assert held(storage, PROC) == {c, gone}
    assert replica.tick(gc_at) == 1
    assert held(storage, PROC) == {c}
    assert storage.top_digests() == digests_before     # the XOR digest is back where it was
    # A peer that still holds the tombstone pushes it: accepted as a no-op, not stored.
    assert ingest(replica, gone, now=gc_at) == [("accepted", gone, 0, False)]
    assert held(storage, PROC) == {c}
    # The same on a replica that never saw it, and for an expired lease past its grace.
    fresh_storage = make_storage()
    fresh = Replica(fresh_storage, ADMIN.public_key, gc_grace_ms=GRACE, max_skew_ms=SKEW)
    lease = put(ALICE, PROC, "alive", True, at=0, ttl_ms=10)
    later = T0 + 10 + GRACE
    assert ingest(fresh, gone, lease, now=later) == [("accepted", gone, 0, False), ("accepted", lease, 0, False)]
    assert fresh_storage.count() == 0 and fresh_storage.last_rev() == 0


def test_a_withdrawn_admission_or_delegation_is_remembered_past_the_grace(replica, storage):
    """Forgetting these tombstones would let a replica that missed them (or a tampered one)
    push the genuine, older grant back, long after it was withdrawn."""
    assign = admitted_alice(replica)
    c = claim(ALICE)
    grant = put(ALICE, PROC, "_delegate." + BOB.key_id, ["state"], at=1)
    ingest(replica, c, grant)
    withdraw, revoke = tomb(ADMIN, USER_A, "_owner", at=3), tomb(ALICE, PROC, "_delegate." + BOB.key_id, at=4)
    note = put(ALICE, PROC, "note", "x", at=5)
    gone = tomb(ALICE, PROC, "note", at=6)
    assert [o[0] for o in ingest(replica, revoke, note, gone, withdraw)] == ["accepted"] * 4
    assert not storage.is_admitted(ALICE.public_key)
    far = T0 + 10 * GRACE
    replica.tick(far)
    assert gone not in held(storage, PROC)            # an ordinary tombstone is forgotten...
    assert revoke in held(storage, PROC) and withdraw in held(storage, USER_A)   # ...these are not
    # The old grants, pushed back by a peer long after: refused as older than what is held.
    assert [outcome(r) for r in replica.ingest([assign, grant], far, from_peer=True)] == [
        ("refused", StaleWrite, assign), ("refused", StaleWrite, grant)]
    assert not storage.is_admitted(ALICE.public_key)


def test_an_expired_lease_arriving_within_grace_is_stored_and_expires_at_the_next_tick(replica, storage):
    admitted_alice(replica)
    c, lease = claim(ALICE), put(ALICE, PROC, "alive", True, at=0, ttl_ms=10)
    ingest(replica, c)
    assert ingest(replica, lease, now=T0 + 500) == [("accepted", lease, 3, True)]
    assert replica.tick(T0 + 500) == 1
    assert storage.changes_since(3, 10) == (1, [Change(4, EXPIRE, lease)])


# --- admission -----------------------------------------------------------------------------------
def test_admission_through_an_admin_owner_on_a_user_urn(replica, storage):
    early = claim(ALICE, PROC, at=0)
    assert ingest(replica, early) == [("refused", NotAuthorized, early)]
    assert not storage.is_admitted(ALICE.public_key)
    admitted_alice(replica)
    assert storage.is_admitted(ALICE.public_key)
    later = claim(ALICE, PROC, at=1)
    assert ingest(replica, later) == [("accepted", later, 2, True)]


def test_revoking_the_user_urn_unadmits_the_key(replica, storage):
    admitted_alice(replica)
    revoke = tomb(ADMIN, USER_A, "_owner", at=5)
    c = claim(ALICE, PROC, at=6)
    assert ingest(replica, revoke, c) == [("accepted", revoke, 2, True), ("refused", NotAuthorized, c)]
    assert not storage.is_admitted(ALICE.public_key)


def test_a_leased_admission_ends_at_expiry(replica, storage):
    lease = put(ADMIN, USER_A, "_owner", ALICE.key_id, ttl_ms=2_000)
    ingest(replica, lease)
    assert storage.is_admitted(ALICE.public_key)
    replica.tick(T0 + 2_000)
    assert not storage.is_admitted(ALICE.public_key)
    c = claim(ALICE, PROC, at=2_500)
    assert ingest(replica, c, now=T0 + 3_000) == [("refused", NotAuthorized, c)]


def test_a_host_vouches_for_the_task_it_started(replica, storage):
    host_in = put(ADMIN, HOST, "_owner", HOSTKEY.key_id)
    host_claim = claim(HOSTKEY, PROC)
    vouch = put(HOSTKEY, PROC, f"_delegate.{TASK.key_id}", [""], at=1)
    task_claim = claim(TASK, PROC2, at=2)
    results = ingest(replica, host_in, host_claim, vouch, task_claim)
    assert results == [("accepted", host_in, 1, True), ("accepted", host_claim, 2, True),
                       ("accepted", vouch, 3, True), ("accepted", task_claim, 4, True)]
    assert storage.is_admitted(TASK.public_key)
    withdraw = put(HOSTKEY, PROC, f"_delegate.{TASK.key_id}", [], at=3)
    task_again = put(TASK, PROC2, "state", "up", at=4)
    assert ingest(replica, withdraw, task_again) == [("accepted", withdraw, 5, True),
                                                     ("refused", NotAuthorized, task_again)]


# --- the change log ------------------------------------------------------------------------------
def test_revisions_strictly_increase_and_the_log_keeps_its_retention(make_storage):
    storage = make_storage(log_retention=5)
    replica = Replica(storage, ADMIN.public_key, gc_grace_ms=GRACE, max_skew_ms=SKEW)
    writes = [put(ADMIN, f"urn:snipe:group:g{i}", "n", i, at=i) for i in range(8)]
    revs = [r.rev for r in replica.ingest(writes[:3], NOW)] + [r.rev for r in replica.ingest(writes[3:], NOW)]
    assert revs == [1, 2, 3, 4, 5, 6, 7, 8]
    first, changes = storage.changes_since(0, 100)
    assert first == 4
    assert changes == [Change(rev, PUT, w) for rev, w in zip(range(4, 9), writes[3:], strict=True)]
    assert storage.changes_since(6, 100) == (4, [Change(7, PUT, writes[6]), Change(8, PUT, writes[7])])
    assert storage.changes_since(3, 2) == (4, [Change(4, PUT, writes[3]), Change(5, PUT, writes[4])])
    assert storage.changes_since(8, 100) == (4, [])
    # expiries are revisions too, and advance the window
    lease = put(ADMIN, "urn:snipe:group:lease", "n", 0, at=10, ttl_ms=10)
    ingest(replica, lease)
    replica.tick(T0 + 20)
    first, changes = storage.changes_since(0, 100)
    assert first == 6
    assert [c.rev for c in changes] == [6, 7, 8, 9, 10]
    assert changes[-2:] == [Change(9, PUT, lease), Change(10, EXPIRE, lease)]


# --- group commit, and what a replica remembers of it ----------------------------------------------
def test_a_batch_commits_every_ingest_in_it_at_once(make_storage):
    storage = make_storage()
    replica = Replica(storage, ADMIN.public_key, gc_grace_ms=GRACE, max_skew_ms=SKEW)
    a, b = put(ADMIN, "urn:snipe:group:a", "n", 1), put(ADMIN, "urn:snipe:group:b", "n", 2)
    with replica.batch():
        assert ingest(replica, a.encode()) == [("accepted", a, 1, True)]
        assert replica.recently_held(a.encode())               # within the batch it joins
        assert [outcome(r) for r in replica.ingest([b.encode()], NOW, from_peer=True)] == [("accepted", b, 2, True)]
    assert storage.last_rev() == 2
    assert replica.recently_held(a.encode()) and replica.recently_held(b.encode())


def test_an_aborted_batch_is_not_remembered(tmp_path):
    storage = LmdbStorage(tmp_path / "db", map_size=64 << 20)
    try:
        replica = Replica(storage, ADMIN.public_key)
        a = put(ADMIN, "urn:snipe:group:a", "n", 1)
        with pytest.raises(RuntimeError), replica.batch():
            replica.ingest([a.encode()], NOW)
            raise RuntimeError("the shell failed mid-batch")
        assert storage.last_rev() == 0 and not replica.recently_held(a.encode())
        assert ingest(replica, a.encode()) == [("accepted", a, 1, True)]
    finally:
        storage.close()


def test_recently_held_covers_identical_retries_but_not_refusals(replica):
    admitted_alice(replica)
    c, stranger = claim(ALICE), claim(STRANGER, PROC2)
    forged = dataclasses.replace(put(ALICE, PROC, "n", 1), value=2)
    ingest(replica, c.encode(), stranger.encode(), forged.encode())
    assert replica.recently_held(c.encode())
    assert not replica.recently_held(stranger.encode()) and not replica.recently_held(forged.encode())
    big = put(ALICE, PROC, "big", b"x" * 5000)
    ingest(replica, big.encode())
    assert not replica.recently_held(big.encode())                # big records are simply checked again
    again = Replica(replica.storage, ADMIN.public_key)            # a restarted replica remembers nothing
    assert not again.recently_held(c.encode())
    assert ingest(again, c.encode()) == [("accepted", c, 0, False)]
    assert again.recently_held(c.encode())


def test_watched_urns_report_stores_expiries_and_forgetting(storage):
    replica = Replica(storage, ADMIN.public_key, gc_grace_ms=GRACE, watched_urns=("urn:snipe:group:set",))
    other, mine = put(ADMIN, "urn:snipe:group:other", "n", 1), put(ADMIN, "urn:snipe:group:set", "n", 1, ttl_ms=10)
    replica.ingest([other], NOW)
    assert replica.changed == set()
    replica.ingest([mine, mine], NOW)
    assert replica.changed == {"urn:snipe:group:set"}
    replica.changed.clear()
    replica.ingest([mine], NOW)                                  # held already: no change
    assert replica.changed == set()
    replica.tick(T0 + 10)
    assert replica.changed == {"urn:snipe:group:set"}


def test_a_batch_begins_its_transaction_with_its_first_ingest():
    class Counting(MemoryStorage):
        begun = 0

        def write(self):  # type: ignore[no-untyped-def]
            self.begun += 1
            return super().write()

    storage = Counting()
    replica = Replica(storage, ADMIN.public_key)
    with replica.batch():
        pass
    assert storage.begun == 0
    with replica.batch():
        replica.ingest([put(ADMIN, "urn:snipe:group:a", "n", 1)], NOW)
        replica.ingest([put(ADMIN, "urn:snipe:group:b", "n", 1)], NOW, from_peer=True)
    assert storage.begun == 1 and storage.last_rev() == 2
