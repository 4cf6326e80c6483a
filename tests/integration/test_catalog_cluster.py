"""The catalog as users meet it: three real rcds-server processes on loopback."""

from __future__ import annotations

import itertools
import signal
import threading
import time

import pytest
import zmq

from snipe import hlc
from snipe.assertion import make_assertion
from snipe.catalog import CatalogClient
from snipe.catalog import protocol as P
from snipe.catalog.client import Watch
from snipe.catalog.protocol import REPLICA_SET_URN
from snipe.errors import QuorumError
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog, ReplicaProc, free_port
from snipe.transport import Link
from snipe.wire import Envelope, decode, encode
from tests.support import wait_for


def now_ms() -> int:
    return int(time.time() * 1000)


def only(cat: LocalCatalog, i: int, ident: Identity | None = None, **kw: object) -> CatalogClient:
    """A client that talks to replica i alone."""
    return CatalogClient([cat.replicas[i].address], ident or cat.admin, cat.admin.key_id, **kw)  # type: ignore[arg-type]


def test_w2_write_survives_kill9_of_any_one_replica(catalog: LocalCatalog, user: Identity) -> None:
    with catalog.client(user) as c:
        c.claim("urn:snipe:proc:job")
        for victim in range(3):
            c.set("urn:snipe:proc:job", f"step{victim}", victim, w=2)
            catalog.kill(victim)
            survivors = [r.address for i, r in enumerate(catalog.replicas) if i != victim]
            with CatalogClient(survivors, user, catalog.admin.key_id, r=2) as reader:
                assert reader.get("urn:snipe:proc:job").value(f"step{victim}", now_ms()) == victim
            catalog.start(victim)


def test_restarted_replica_converges_after_missing_1000_writes(catalog: LocalCatalog, user: Identity) -> None:
    catalog.kill(2)
    with catalog.client(user, timeout=5) as c:
        c.claim("urn:snipe:proc:bulk")
        for batch in range(20):
            c.put([c.sign("urn:snipe:proc:bulk", f"item{batch * 50 + i}", batch * 50 + i) for i in range(50)], w=2)
        expected = c.status(catalog.replicas[0].endpoint)
    catalog.start(2)
    with only(catalog, 2) as lone:
        wait_for(lambda: lone.status()["digest"] == expected["digest"], 30, "replica 3 to converge")
        entry = lone.get("urn:snipe:proc:bulk", r=1)
        assert {a.name for a in entry.live(now_ms())} >= {f"item{i}" for i in range(1000)}
        assert lone.status()["count"] == expected["count"]
        assert lone.status()["repaired"] == 0       # it received, the others repaired it
    # the two replicas that stayed up were never restarted
    assert all(r.alive for r in catalog.replicas)


def test_tampered_record_is_detected_and_the_good_value_read_elsewhere(catalog: LocalCatalog, user: Identity) -> None:
    from rcds.store import LmdbStorage

    with catalog.client(user) as c:
        c.claim("urn:snipe:proc:t")
        good = c.set("urn:snipe:proc:t", "answer", 42, w=3)
    forged = good.__class__(good.urn, good.name, 41, good.ts, good.ttl_ms, good.deleted, good.signer, good.signature)
    store = LmdbStorage(catalog.replicas[0].data_dir)
    store.tamper("urn:snipe:proc:t", "answer", forged.encode())
    store.close()
    # R=1, and replica 1 (the tampered one) is asked first
    with CatalogClient(catalog.addresses, user, catalog.admin.key_id, r=1) as reader:
        entry = reader.get("urn:snipe:proc:t")
        assert entry.value("answer", now_ms()) == 42
        assert reader.rejected_total == 1
        bad = reader.rejected[0]
        assert bad.replica == catalog.replicas[0].endpoint and "signature does not verify" in bad.reason


def test_a_lost_claim_race_and_a_revoked_delegation_leave_records_readers_drop_without_suspicion(
        catalog: LocalCatalog, user: Identity) -> None:
    """Records whose signer could write them when they were stored, and no longer can, are
    genuine: readers drop them but still count every replica's answer. (The suite caught 12
    group members joining at once: a claim with an earlier timestamp reached the replicas after
    a later claimant's delegation, which then made every answer about the group look tampered,
    and every join failed with a QuorumError.)"""
    from rcds.store import LmdbStorage

    bob, carol = Identity.generate(), Identity.generate()
    catalog.admit(bob, "bob")
    catalog.admit(carol, "carol")
    group = "urn:snipe:group:race"
    early = hlc.pack(now_ms() - 5_000, 0)           # bob claimed first, but his claim arrives last
    with catalog.client(user) as alice_c, catalog.client(bob) as bob_c, catalog.client(carol) as carol_c, \
            catalog.client(user, r=3) as reader:
        alice_c.put([alice_c.sign(group, "_owner", user.key_id), alice_c.sign(group, "_delegate.*", ["member."])],
                    w=3)
        bob_c.put([make_assertion(bob, group, "_owner", bob.key_id, early)], w=3)
        assert reader.get(group).owner(catalog.admin.public_key, now_ms()) == bob.key_id
        bob_c.put([bob_c.sign(group, f"_delegate.{carol.key_id}", ["note"])], w=3)
        carol_c.set(group, "note", "hello", w=3)
        bob_c.put([bob_c.sign(group, f"_delegate.{carol.key_id}", [])], w=3)      # revoked
        entry = reader.get(group)
        assert entry.value("note", now_ms()) is None
        assert {a.name for a in entry.records} >= {"_owner", f"_delegate.{carol.key_id}"}
        assert "_delegate.*" not in {a.name for a in entry.records}               # alice's: she lost
        assert reader.suspect_total == 0
        assert {r.reason.split(":")[-1].strip() for r in reader.rejected} == {"signer is neither owner nor delegate"}
        # a record nothing in the URN's history explains still counts against its replica
        stranger = Identity.generate()
        catalog.admit(stranger, "stranger")
        proc = "urn:snipe:proc:raced"
        alice_c.claim(proc, w=3)
        store = LmdbStorage(catalog.replicas[0].data_dir)
        with store.write() as txn:
            for forged_in in (make_assertion(stranger, proc, "note", "hijacked", hlc.pack(now_ms(), 0)),
                              make_assertion(stranger, proc, f"_delegate.{stranger.key_id}", [""],
                                             hlc.pack(now_ms(), 0))):
                txn.store(forged_in, None, None, None)
        store.close()
        with CatalogClient([catalog.replicas[0].address], user, catalog.admin.key_id, r=1) as lone:
            with pytest.raises(QuorumError):
                lone.get(proc, timeout=2)
            assert lone.suspect_total == 2


def _events_until(w: Watch, last: tuple[str, object], timeout: float = 20) -> list[tuple[str, object]]:
    """(name, value) of each event the watch delivers, "expired" for an expiry, until `last`."""
    seen: list[tuple[str, object]] = []
    deadline = time.monotonic() + timeout
    while last not in seen and time.monotonic() < deadline:
        ev = w.next(0.5)
        if ev is not None and ev.record is not None:
            seen.append((ev.record.name, ev.record.value if ev.kind != "expire" else "expired"))
    return seen


def test_a_tampered_replica_cannot_feed_a_watcher_a_record_or_an_expiry(catalog: LocalCatalog, user: Identity) -> None:
    """Watch events are judged like reads: a record its signer could not write (put straight into
    the watched replica's store, as a tampered replica would) is dropped and counted against the
    replica, and an expiry is delivered only once the record's own signed lease has run out."""
    from rcds.store import LmdbStorage

    mallory = Identity.generate()
    catalog.admit(mallory, "mallory")
    urn = "urn:snipe:proc:watched"
    with catalog.client(user) as c, only(catalog, 0, user) as watcher:
        c.claim(urn, w=3)
        before = c.put([c.sign(urn, "up", True, ttl=30.0)], w=3).records[0]      # written before the watch
        w = watcher.watch(urn)
        lease = c.put([c.sign(urn, "alive", True, ttl=30.0)], w=3).records[0]
        past = hlc.pack(now_ms() - 10_000, 0)
        store = LmdbStorage(catalog.replicas[0].data_dir)
        with store.write() as txn:
            txn.store(make_assertion(mallory, urn, "state", "exited", hlc.pack(now_ms(), 0)), None, None, None)
            txn.log_expiry(lease)                       # 30 s early
            txn.log_expiry(make_assertion(user, urn, "up", True, past, ttl_ms=1000))   # an old lease, replayed
        store.close()
        c.set(urn, "state", "running", w=3)
        seen = _events_until(w, ("state", "running"))
        assert ("state", "running") in seen and ("state", "exited") not in seen, seen
        assert ("alive", "expired") not in seen and ("up", "expired") not in seen, seen
        assert watcher.suspect_total == 1 and "neither owner nor delegate" in watcher.rejected[-1].reason
        # the early expiry waits for its lease to run out; once the lease is renewed it never comes
        assert [e[0] for e in w.expiring] == [lease] and before.ts > past
        c.put([c.sign(urn, "alive", True, ttl=30.0)], w=3)
        wait_for(lambda: (ev := w.next(0.2)) is not None and ev.record is not None and ev.record.name == "alive",
                 10, "the renewal")
        assert not w._current(lease)
        w.close()


def test_a_tampered_replica_cannot_hand_a_urn_to_a_key_of_its_own(catalog: LocalCatalog, user: Identity) -> None:
    """The earliest claim owns a URN, so a tampered replica could add a claim older than the
    owner's, signed by a key it made up, and then that key's records about the URN. Readers
    believe a claim only from a key the cluster admitted: the replica's answer does not count,
    and the value is read from the others."""
    from rcds.store import LmdbStorage

    urn = "urn:snipe:proc:coveted"
    with catalog.client(user) as c:
        c.claim(urn, w=3)
        c.set(urn, "state", "running", w=3)
    made_up = Identity.generate()                                   # never admitted
    with catalog.client(user) as c:                                 # only a host key's vouching admits
        c.claim("urn:snipe:proc:vouching", w=3)
        c.set("urn:snipe:proc:vouching", f"_delegate.{made_up.key_id}", [""], w=3)
    early = hlc.pack(now_ms() - 60_000, 0)
    store = LmdbStorage(catalog.replicas[0].data_dir)
    with store.write() as txn:
        txn.store(make_assertion(made_up, urn, "_owner", made_up.key_id, early), None, None, None)
        txn.store(make_assertion(made_up, urn, "state", "exited", hlc.pack(now_ms(), 0)), None, None, None)
        txn.admit(made_up.public_key, "urn:snipe:proc:vouching")      # and names a user's vouching as proof
    store.close()
    with CatalogClient(catalog.addresses, user, catalog.admin.key_id, r=1) as reader:   # replica 0 first
        entry = reader.get(urn)
        assert entry.value("state", now_ms()) == "running"
        assert entry.owner(catalog.admin.public_key, now_ms()) == user.key_id
        assert any("not admitted" in r.reason and r.replica == catalog.replicas[0].endpoint for r in reader.rejected)
        assert any(r.record is not None and r.record.value == "exited" for r in reader.rejected)


def test_a_tampered_replica_cannot_hand_a_watched_urn_to_a_key_of_its_own(catalog: LocalCatalog,
                                                                         user: Identity) -> None:
    """The watch's version of the forged claim above: a claim older than the owner's by a key
    nobody admitted, and that key's record, fed to a watcher as events. Ownership changes are
    read again (from the other replicas when this one's answer does not hold up), so neither is
    delivered, and the owner's next write is."""
    from rcds.store import LmdbStorage

    urn = "urn:snipe:proc:watched-owner"
    made_up = Identity.generate()
    with catalog.client(user) as c, CatalogClient(catalog.addresses, user, catalog.admin.key_id) as watcher:
        c.claim(urn, w=3)
        w = watcher.watch(urn)
        assert w.conn is not None and w.conn.address.endpoint == catalog.replicas[0].endpoint
        store = LmdbStorage(catalog.replicas[0].data_dir)
        with store.write() as txn:
            txn.store(make_assertion(made_up, urn, "_owner", made_up.key_id, hlc.pack(now_ms() - 60_000, 0)),
                      None, None, None)
            txn.store(make_assertion(made_up, urn, "state", "exited", hlc.pack(now_ms(), 0)), None, None, None)
        store.close()
        c.set(urn, "state", "running", w=3)
        seen = _events_until(w, ("state", "running"))
        assert seen == [("state", "running")], seen
        assert any("not admitted" in r.reason for r in watcher.rejected)
        w.close()


def test_a_urn_claimed_by_a_key_no_longer_admitted_still_reads(catalog: LocalCatalog, user: Identity) -> None:
    """Admission can be withdrawn (a host re-keyed, a user's URN given to another key). The
    claims that key made are genuine history: readers stop believing them and what they vouched
    for, but hold nothing against the replicas, so reads of those URNs still answer."""
    bob, other = Identity.generate(), Identity.generate()
    catalog.admit(bob, "bob")
    urn = "urn:snipe:proc:bobs"
    with catalog.client(bob) as c:
        c.claim(urn, w=3)
        c.set(urn, "state", "running", w=3)
    with catalog.client(user, r=3) as reader:
        assert reader.get(urn).value("state", now_ms()) == "running"
    catalog.admit(other, "bob")                                    # bob's user URN now names another key
    with catalog.client(user, r=3) as reader:
        entry = reader.get(urn)
        assert entry.value("state", now_ms()) is None and entry.owner(catalog.admin.public_key, now_ms()) is None
        assert reader.suspect_total == 0 and any("not admitted" in r.reason for r in reader.rejected)


def test_a_tampered_replica_cannot_replay_an_admission_the_admin_withdrew(catalog: LocalCatalog,
                                                                        user: Identity) -> None:
    """Bob's user URN is given to another key. A tampered replica puts bob's old admission back
    (a genuine admin signature, only older) and hides the reassignment. A reader that asks that
    replica first still reads the proof from a majority and takes the newest: bob's claim, and
    what it vouched for, are not believed."""
    from rcds.store import LmdbStorage

    bob, other = Identity.generate(), Identity.generate()
    bobs_urn = catalog.admit(bob, "bob-replayed")
    urn = "urn:snipe:proc:bobs-replayed"
    with catalog.client(bob) as c:
        c.claim(urn, w=3)
        c.set(urn, "state", "running", w=3)
    with only(catalog, 0) as c0:
        old_admission = next(a for a in c0.get(bobs_urn, r=1).records if a.name == "_owner")
    catalog.admit(other, "bob-replayed")
    store = LmdbStorage(catalog.replicas[0].data_dir)
    with store.write() as txn:                                      # the older proof, in place of the newer
        txn.store(old_admission, None, None, None)
        txn.admit(bob.public_key, bobs_urn)
    store.close()
    with only(catalog, 0) as c0:                                    # replica 0 alone shows the replay
        assert c0.get(bobs_urn, r=1).value("_owner", now_ms()) == bob.key_id
    with CatalogClient(catalog.addresses, user, catalog.admin.key_id, r=1) as reader:   # replica 0 first
        entry = reader.get(urn)
        assert entry.value("state", now_ms()) is None
        assert entry.owner(catalog.admin.public_key, now_ms()) is None
        assert any("not admitted" in r.reason for r in reader.rejected)


def test_a_forged_answer_to_a_proof_read_blames_only_the_replica_that_gave_it(catalog: LocalCatalog,
                                                                               user: Identity) -> None:
    """Proving a claimant admitted reads the admitting URN from a majority. An answer there
    that holds a forgery does not count (the next replica, if any, is asked instead), and the
    honest replica whose answer held the claim is not blamed for what another returned."""
    from rcds.store import LmdbStorage

    carol = Identity.generate()
    carols_urn = catalog.admit(carol, "carol-proof")
    urn = "urn:snipe:proc:carols-proof"
    with catalog.client(carol) as c:
        c.claim(urn, w=3)
        state = c.set(urn, "state", "running", w=3)
    with only(catalog, 0) as c0:
        admission = next(a for a in c0.get(carols_urn, r=1).records if a.name == "_owner")
    forged = admission.__class__(admission.urn, "_owner", "f" * 64, admission.ts + 1, admission.ttl_ms,
                                 admission.deleted, admission.signer, admission.signature)    # signature no longer fits
    store = LmdbStorage(catalog.replicas[0].data_dir)
    store.tamper(carols_urn, "_owner", forged.encode())
    store.tamper(urn, "state", state.__class__(urn, "state", "exited", state.ts, state.ttl_ms, state.deleted,
                                               state.signer, state.signature).encode())
    store.close()
    # The reader knows two replicas: honest 1, which holds the claim, and tampered 0. Had 0's
    # forgeries in the proof read counted against 1's answer, no answer would be left.
    order = [catalog.replicas[i].address for i in (1, 0)]
    with CatalogClient(order, user, catalog.admin.key_id, r=1) as reader:
        assert reader.get(urn).value("state", now_ms()) == "running"
        blamed = {r.replica for r in reader.rejected}
        assert blamed == {catalog.replicas[0].endpoint}, reader.rejected


def test_with_no_majority_up_a_claim_is_still_read_and_its_proof_believed_briefly(tmp_path) -> None:
    """Availability first: with one of two replicas down, a majority cannot be asked for the
    proof. What the live replica shows is used (and re-checked within a second, not trusted
    for the usual 30 s), and the read answers instead of failing."""
    with LocalCatalog(tmp_path / "two", 2) as cat:
        dave = Identity.generate()
        cat.admit(dave, "dave")
        urn = "urn:snipe:proc:daves"
        with cat.client(dave) as c:
            c.claim(urn, w=2)
            c.set(urn, "state", "running", w=2)
        cat.kill(1)
        with CatalogClient([r.address for r in cat.replicas], cat.admin, cat.admin.key_id, r=1, timeout=5) as reader:
            assert reader.get(urn).value("state", now_ms()) == "running"
            assert reader.suspect_total == 0
            assert reader._admission[dave.public_key] - time.monotonic() <= 1.0


def test_watch_across_a_replica_crash_misses_nothing(catalog: LocalCatalog, user: Identity) -> None:
    with catalog.client(user) as writer, catalog.client(user) as watcher:
        writer.claim("urn:snipe:proc:w")
        w = watcher.watch("urn:snipe:proc:w")
        watched = w.conn
        assert watched is not None
        victim = next(i for i, r in enumerate(catalog.replicas) if r.endpoint == watched.address.endpoint)
        seen: list[str] = []
        for i in range(200):
            writer.set("urn:snipe:proc:w", f"n{i}", i, w=2)
            if i == 100:
                catalog.kill(victim)
            while (ev := w.next(timeout=0)) is not None:
                seen.append(ev.record.name)
        wait_for(lambda: _drain(w, seen) >= 200, 30, "every change to reach the watcher")
        names = [n for n in seen if n.startswith("n")]
        assert sorted(names, key=lambda n: int(n[1:])) == [f"n{i}" for i in range(200)]
        assert len(names) == len(set(names))             # none twice
        assert w.switches >= 1 and w.conn is not watched  # it really moved


def _drain(w: object, seen: list[str]) -> int:
    while (ev := w.next(timeout=0.05)) is not None:  # type: ignore[attr-defined]
        seen.append(ev.record.name)
    return len([n for n in seen if n.startswith("n")])


def test_writes_keep_being_acknowledged_while_a_replica_is_killed(catalog: LocalCatalog, user: Identity) -> None:
    """A client writes every 5 ms with W=2 and a replica is killed -9 midway: every write is
    acknowledged. The longest gap between acknowledgements is printed (benchmarks/catalog.py
    reports it as a figure; tests assert no timings)."""
    with catalog.client(user, timeout=5) as c:
        c.claim("urn:snipe:proc:pace")
        acked: list[float] = []
        start = time.monotonic()
        for i in range(300):
            if i == 100:
                catalog.kill(1)
            c.set("urn:snipe:proc:pace", "tick", i, w=2)
            acked.append(time.monotonic())
            pause = start + (i + 1) * 0.005 - time.monotonic()
            if pause > 0:
                time.sleep(pause)
        gaps = [b - a for a, b in itertools.pairwise(acked)]
        print(f"acknowledged {len(acked)} writes; longest gap {max(gaps) * 1000:.1f} ms")
        assert len(acked) == 300
        assert c.get("urn:snipe:proc:pace", r=2).value("tick", now_ms()) == 299


def test_leases_expire_and_watchers_hear_it(catalog: LocalCatalog) -> None:
    with catalog.client() as c:
        c.set("urn:snipe:host:lease", "_owner", catalog.admin.key_id)
        w = c.watch("urn:snipe:host:lease")
        c.set("urn:snipe:host:lease", "alive", True, ttl=0.5)
        kinds = []
        wait_for(lambda: (ev := w.next(0.1)) is not None and kinds.append(ev.kind) is None and "expire" in kinds,
                 10, "the lease's expire event")
        assert kinds[-1] == "expire"
        assert c.get("urn:snipe:host:lease").value("alive", now_ms()) is None


def test_a_read_sent_behind_a_put_sees_it_on_that_replica(catalog: LocalCatalog) -> None:
    """A replica stores the puts it received in a turn before it answers the reads behind them,
    so a client that moves on once W others acknowledged still reads its write at R=1 from a
    slower replica. Pipelined by hand (no waiting for the put's answer) to put both in one turn."""
    r = catalog.replicas[0]
    link = Link(zmq.Context.instance(), catalog.admin, r.endpoint, r.identity.public_key, immediate=False)
    pairs = 100
    try:
        for i in range(pairs):
            a = make_assertion(catalog.admin, f"urn:snipe:host:piped{i}", "_owner", catalog.admin.key_id,
                               hlc.pack(now_ms()))
            link.sock.send_multipart(encode(Envelope(P.PROTOCOL, P.VERSION, "put", 2 * i, {}),
                                            [P.pack_records([a.encode()])]))
            link.sock.send_multipart(encode(Envelope(P.PROTOCOL, P.VERSION, "get", 2 * i + 1,
                                                     {"urn": f"urn:snipe:host:piped{i}"})))
        answers: dict[int, tuple[Envelope, list[bytes]]] = {}
        deadline = time.monotonic() + 20
        while len(answers) < 2 * pairs and time.monotonic() < deadline:
            if link.sock.poll(100):
                env, frames = decode(link.sock.recv_multipart())
                answers[env.request_id] = (env, frames)
        assert len(answers) == 2 * pairs, f"{len(answers)} of {2 * pairs} answers in 20 s"
        empty = [i for i in range(pairs) if not P.unpack_records(answers[2 * i + 1][1], P.MAX_BATCH_RECORDS, "get")]
        assert empty == [], f"gets that missed the put sent just before them: {empty}"
    finally:
        link.close()


def test_a_put_is_one_request_answered_once_a_peer_holds_it_and_refused_when_none_can(catalog: LocalCatalog,
                                                                                      user: Identity) -> None:
    """With replica 3 paused, a relayed W=2 put goes to replica 1 alone, which answers once
    replica 2 holds the write too: replica 2 has every acknowledged write at once, and the
    answer says so. With both peers paused, no put is acknowledged."""
    first, second, third = (r.endpoint for r in catalog.replicas)
    with catalog.client(user, timeout=5, relay=True) as c, only(catalog, 1, user) as reader:
        c.claim("urn:snipe:proc:relayed")
        catalog.replicas[2].proc.send_signal(signal.SIGSTOP)    # type: ignore[union-attr]
        try:
            for i in range(20):
                result = c.put([c.sign("urn:snipe:proc:relayed", "n", i)], w=2)
                assert result.replicas == {first: "stored", second: "stored", third: "no answer"}
                assert reader.get("urn:snipe:proc:relayed", "n", r=1).value("n", now_ms()) == i
            assert c.relayed == 20
            catalog.replicas[1].proc.send_signal(signal.SIGSTOP)    # type: ignore[union-attr]
            with pytest.raises(QuorumError, match="W=2"):
                c.set("urn:snipe:proc:relayed", "n", "never", w=2)
        finally:
            for r in catalog.replicas[1:]:
                r.proc.send_signal(signal.SIGCONT)    # type: ignore[union-attr]
        assert c.put([c.sign("urn:snipe:proc:relayed", "n", "after")], w=2).acks >= 2


def test_a_direct_put_asks_a_spare_replica_when_one_of_its_first_w_is_silent(catalog: LocalCatalog,
                                                                             user: Identity) -> None:
    """A direct W=2 put goes to replicas 1 and 2; with replica 2 paused it cannot answer, and
    the client asks replica 3 once about its usual put time has passed (the hedge), so the
    write is acknowledged by 1 and 3 long before the client's timeout."""
    first, second, third = (r.endpoint for r in catalog.replicas)
    with catalog.client(user, timeout=30, relay=False) as c:
        # on every replica (W=3): the spare must hold the claim to store the put (a merged R=3
        # read below does not show that each does: one flaked with "no owner yet")
        c.claim("urn:snipe:proc:hedged", w=3)
        # every replica answers once, so none is set aside as unreachable (a link still in its
        # handshake when the claim went out would be) and the put asks replicas 1 and 2 first
        assert c.get("urn:snipe:proc:hedged", r=3).value("_owner", now_ms()) == user.key_id
        catalog.replicas[1].proc.send_signal(signal.SIGSTOP)    # type: ignore[union-attr]
        try:
            result = c.put([c.sign("urn:snipe:proc:hedged", "n", 1)], w=2)
        finally:
            catalog.replicas[1].proc.send_signal(signal.SIGCONT)    # type: ignore[union-attr]
        assert result.replicas == {first: "stored", second: "no answer", third: "stored"}
        assert c.spares_asked == 1 and c.relayed == 0


def test_a_read_gets_its_quorum_from_replicas_slower_than_its_hedge(catalog: LocalCatalog, user: Identity) -> None:
    """Every replica busy past the hedge delay (here paused): the read asks the third replica
    too, and when the two it asked first answer (resumed) while the third stays paused, their
    answers make the quorum. A read once dropped the requests it had sent before its hedge, and
    failed with "only 1 of R=2" (the demo at 300 workers on 2 CPUs) however long its timeout."""
    with catalog.client(user) as w:
        w.claim("urn:snipe:proc:busy", w=3)
        w.set("urn:snipe:proc:busy", "n", 7, w=3)
    outcome: dict[str, object] = {}
    c = catalog.client(user, timeout=8.0)
    try:
        assert c.get("urn:snipe:proc:busy", r=3).value("n", now_ms()) == 7   # every link up, none set aside
        for r in catalog.replicas:
            r.proc.send_signal(signal.SIGSTOP)    # type: ignore[union-attr]
        try:
            def read() -> None:
                try:
                    outcome["n"] = c.get("urn:snipe:proc:busy").value("n", now_ms())
                except QuorumError as exc:
                    outcome["error"] = exc

            reader = threading.Thread(target=read)
            reader.start()
            wait_for(lambda: c.spares_asked >= 1, 10, "the read to ask the third replica")   # within a second
            for r in catalog.replicas[:2]:
                r.proc.send_signal(signal.SIGCONT)    # type: ignore[union-attr]
            reader.join(30)
        finally:
            for r in catalog.replicas:
                r.proc.send_signal(signal.SIGCONT)    # type: ignore[union-attr]
        assert outcome == {"n": 7}
        assert c.spares_asked == 1, "the read did not ask the third replica (its hedge)"
    finally:
        c.close()


def test_a_lone_client_writes_directly(catalog: LocalCatalog, user: Identity) -> None:
    """By default a client relays its puts only once replicas report storing several puts a
    turn: one client writing alone never does (a relay costs a second hop in a row)."""
    with catalog.client(user) as c:
        c.claim("urn:snipe:proc:lone")
        for i in range(20):
            c.set("urn:snipe:proc:lone", "n", i, w=2)
        assert c.relayed == 0


def test_query_by_prefix_and_predicates(catalog: LocalCatalog) -> None:
    with catalog.client() as c:
        for name, arch, mem in (("a", "x86_64", 16 << 30), ("b", "aarch64", 32 << 30), ("c", "x86_64", 4 << 30)):
            urn = f"urn:snipe:host:{name}"
            c.put([c.sign(urn, "_owner", catalog.admin.key_id), c.sign(urn, "arch", arch), c.sign(urn, "memory", mem)])
        found = c.query("urn:snipe:host:", [("arch", "=", "x86_64"), ("memory", ">=", 8 << 30)])
        assert list(found) == ["urn:snipe:host:a"]
        assert set(c.query("urn:snipe:host:")) == {"urn:snipe:host:a", "urn:snipe:host:b", "urn:snipe:host:c"}


def test_deletes_are_tombstones_that_replicate(catalog: LocalCatalog, user: Identity) -> None:
    with catalog.client(user) as c:
        c.claim("urn:snipe:proc:d")
        c.set("urn:snipe:proc:d", "x", 1, w=3)
        c.delete("urn:snipe:proc:d", "x", w=2)
        for i in range(3):
            with only(catalog, i, user) as lone:
                wait_for(lambda lone=lone: lone.get("urn:snipe:proc:d", r=1).value("x", now_ms()) is None, 10,
                         f"the tombstone on replica {i + 1}")


def test_get_by_name_returns_what_owners_and_delegates_wrote(catalog: LocalCatalog, user: Identity) -> None:
    """A get by name carries the URN's ownership and delegations too, so the reader can believe
    a record signed by a key other than the admin."""
    helper = Identity.generate()
    catalog.admit(helper, "bob")
    with catalog.client(user) as owner, catalog.client(helper) as delegate, catalog.client() as reader:
        owner.claim("urn:snipe:proc:named")
        owner.put([owner.sign("urn:snipe:proc:named", "x", 1), owner.sign("urn:snipe:proc:named", "y", 2)], w=3)
        owner.delegate("urn:snipe:proc:named", helper.key_id, ["z"], w=3)
        delegate.set("urn:snipe:proc:named", "z", 3, w=3)
        for r in (1, 2):
            x = reader.get("urn:snipe:proc:named", name="x", r=r)
            assert x.value("x", now_ms()) == 1 and x.value("y", now_ms()) is None
            assert x.owner(catalog.admin.public_key, now_ms()) == user.key_id
            assert reader.get("urn:snipe:proc:named", name="z", r=r).value("z", now_ms()) == 3
        assert reader.rejected_total == 0


def test_watch_from_a_compacted_revision_gets_every_change_or_a_resync(tmp_path) -> None:
    with LocalCatalog(tmp_path, 1, extra_args=("--log-retention", "20")) as cat, cat.client() as c:
        c.set("urn:snipe:host:h", "_owner", cat.admin.key_id)
        for i in range(50):
            c.set("urn:snipe:host:h", f"k{i}", i)
        w = c.watch("urn:snipe:host:", from_rev=1)
        names = set()
        wait_for(lambda: (ev := w.next(0.1)) is not None and names.add(ev.record.name) is None and len(names) >= 51,
                 10, "the state of every key after the resync")
        assert names == {"_owner", *(f"k{i}" for i in range(50))}


def test_replicas_join_and_leave_a_running_set(catalog: LocalCatalog, user: Identity, tmp_path) -> None:
    with catalog.client(user) as c:
        c.claim("urn:snipe:proc:m")
        c.set("urn:snipe:proc:m", "before", 1)
    new = ReplicaProc("r4", f"tcp://127.0.0.1:{free_port()}", tmp_path / "r4", Identity.generate())
    new.identity.save(new.data_dir / "replica.key")
    catalog.replicas.append(new)
    catalog.start(3)
    with catalog.client() as admin:
        admin.set(REPLICA_SET_URN, "_owner", catalog.admin.key_id)
        admin.set(REPLICA_SET_URN, "replica.r4", {"endpoint": new.endpoint, "key": new.identity.key_id})
        with only(catalog, 3) as lone:
            wait_for(lambda: lone.get("urn:snipe:proc:m", r=1).value("before", now_ms()) == 1, 20,
                     "the new replica to receive existing data")
            wait_for(lambda: "r4" in admin.status(catalog.replicas[0].endpoint)["peers"], 10, "r1 to list r4")
        admin.delete(REPLICA_SET_URN, "replica.r4")
        wait_for(lambda: "r4" not in admin.status(catalog.replicas[0].endpoint)["peers"], 10, "r1 to drop r4")


def test_quorum_failure_is_an_error_not_silence(catalog: LocalCatalog, user: Identity) -> None:
    catalog.kill(1)
    catalog.kill(2)
    with catalog.client(user, timeout=1) as c:
        with pytest.raises(QuorumError, match="only 1 of the W=2"):
            c.claim("urn:snipe:proc:q")
        c.claim("urn:snipe:proc:q", w=1)


def test_a_repeated_answer_holding_a_lease_is_judged_again(catalog: LocalCatalog, user: Identity) -> None:
    """Readers remember wholly believed answers by their bytes, but not one with a lease: the
    same bytes stop being believable once the lease that owns the URN runs out."""
    with catalog.client(user) as c, catalog.client(user, r=1) as reader:
        c.put([c.sign("urn:snipe:proc:leased", "_owner", user.key_id, ttl=1.0)], w=3)
        c.set("urn:snipe:proc:leased", "x", 1, w=3)
        assert reader.get("urn:snipe:proc:leased").value("x", now_ms()) == 1
        assert reader.get("urn:snipe:proc:leased").value("x", now_ms()) == 1
        assert reader.rejected_total == 0

        def judged_again() -> bool:
            # an answer, not a QuorumError: records whose owner's lease ran out are genuine, only
            # no longer believed, so the replicas that return them still count toward R
            entry = reader.get("urn:snipe:proc:leased", timeout=2)
            return reader.rejected_total > 0 and entry.value("x", now_ms()) is None

        wait_for(judged_again, 10, "the name to lose its owner when the owner's lease runs out")
        assert "no owner" in reader.rejected[-1].reason
        assert reader.suspect_total == 0                  # nothing counted against the replicas
