"""A member's `member.` assertion is a lease its process renews: every group's in one catalog
write per third of the lease, also while a migration has the endpoint frozen, none after the
process moved away, and a bad lease setting said. Where the lease may have lapsed (a renewal
that got through late, a clone's or a restored checkpoint's re-registration) the member asks its
routers to replay; a renewal never outlasts leave()'s tombstone; safe_point() never raises."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from snipe import runtime
from snipe.errors import ConfigError, QuorumError
from snipe.hlc import HybridClock
from snipe.identity import Identity
from snipe.messaging.endpoint import Endpoint
from snipe.migration.groups import reregister, restore_groups
from snipe.multicast.core import FIRST_SEQ, MCAST_RESUME, Reorder, unpack_resume
from snipe.multicast.groups import MEMBER, MEMBER_LEASE_S, Membership, member_lease_s
from tests.unit.test_multicast_stream_start import _Endpoint

ME = "urn:snipe:proc:me"
G1, G2 = "urn:snipe:group:a", "urn:snipe:group:b"


@dataclass(frozen=True)
class Signed:
    urn: str
    name: str
    value: Any
    ttl: float | None
    ts: int
    deleted: bool = False


WALL_MS = 1_000_000           # every fake signs in the same millisecond: only the clocks' order tells


class FakeCatalog:
    """Records each put as the list of (urn, name, ttl) it carried, and keeps the latest
    assertion per (urn, name) in `store` (shared by the fakes of one test), as replicas do."""

    def __init__(self, store: dict[tuple[str, str], Signed] | None = None) -> None:
        self.puts: list[list[tuple[str, str, float | None]]] = []
        self.fail = False
        self.clock = HybridClock()
        self.store: dict[tuple[str, str], Signed] = {} if store is None else store
        self.on_put: Callable[[], None] | None = None

    def sign(self, urn: str, name: str, value: Any = None, *, ttl: float | None = None,
             deleted: bool = False) -> Signed:
        return Signed(urn, name, value, ttl, self.clock.now(WALL_MS), deleted)

    def put(self, records: list[Signed]) -> None:
        if self.on_put is not None:
            hook, self.on_put = self.on_put, None
            hook()
        if self.fail:
            raise QuorumError("no replica answered")
        self.puts.append([(r.urn, r.name, r.ttl) for r in records])
        for r in records:
            old = self.store.get((r.urn, r.name))
            if old is None or r.ts > old.ts:
                self.store[(r.urn, r.name)] = r

    def set(self, urn: str, name: str, value: Any, *, ttl: float | None = None) -> None:
        self.put([self.sign(urn, name, value, ttl=ttl)])

    def delete(self, urn: str, name: str) -> None:
        self.put([self.sign(urn, name, deleted=True)])

    def listed(self, group: str) -> bool:
        a = self.store.get((group, MEMBER + ME))
        return a is not None and not a.deleted


class LeaseEndpoint(_Endpoint):
    def __init__(self, catalog: FakeCatalog) -> None:
        super().__init__()
        self.catalog = catalog        # type: ignore[assignment]
        self.moved: dict[str, Any] | None = None


def _member(lease: float = 9.0) -> tuple[Membership, LeaseEndpoint, FakeCatalog]:
    cat = FakeCatalog()
    ep = LeaseEndpoint(cat)
    m = Membership(ep, cat, ME, "urn:snipe:host:h", lease_s=lease)  # type: ignore[arg-type]
    for g in (G1, G2):
        m.joined[g] = ["urn:snipe:host:r1"]
        m.assert_member(cat, g, {"host": "urn:snipe:host:h", "routers": ["urn:snipe:host:r1"], "since": 0})
    cat.puts.clear()
    return m, ep, cat


def test_every_groups_lease_is_renewed_in_one_write_each_third_of_the_lease() -> None:
    m, _ep, cat = _member(lease=9.0)
    start = m.renew_at                       # a third of the lease after the join
    m._renew(cat, start - 0.1)  # type: ignore[arg-type]
    assert cat.puts == []
    m._renew(cat, start)  # type: ignore[arg-type]
    assert cat.puts == [[(G1, MEMBER + ME, 9.0), (G2, MEMBER + ME, 9.0)]]
    m._renew(cat, start + 2.9)  # type: ignore[arg-type]
    assert len(cat.puts) == 1                # not again before another third
    m._renew(cat, start + 3.0)  # type: ignore[arg-type]
    assert len(cat.puts) == 2


def test_a_left_group_is_not_renewed_and_with_none_left_nothing_is_written() -> None:
    m, _ep, cat = _member()
    m.leave(G1)
    assert cat.puts == [[(G1, MEMBER + ME, None)]] and not cat.listed(G1)     # the tombstone
    cat.puts.clear()
    m._renew(cat, m.renew_at)  # type: ignore[arg-type]
    assert cat.puts == [[(G2, MEMBER + ME, 9.0)]]
    m.leave(G2)
    cat.puts.clear()
    m._renew(cat, 1e9)  # type: ignore[arg-type]
    assert cat.puts == []


def test_a_process_that_moved_away_leaves_the_renewal_to_its_clone() -> None:
    m, ep, cat = _member()
    ep.moved = {"host": "urn:snipe:host:h2"}
    m._renew(cat, 1e9)  # type: ignore[arg-type]
    assert cat.puts == []


def test_a_failed_renewal_is_tried_again_within_the_lease() -> None:
    m, _ep, cat = _member(lease=9.0)
    at = m.renew_at
    cat.fail = True
    m._renew(cat, at)  # type: ignore[arg-type]
    assert at < m.renew_at <= at + 1.0
    cat.fail = False
    m._renew(cat, m.renew_at)  # type: ignore[arg-type]
    assert len(cat.puts) == 1


def test_the_lease_setting_is_read_and_a_bad_one_named() -> None:
    assert member_lease_s({}) == MEMBER_LEASE_S
    assert member_lease_s({"SNIPE_MEMBER_LEASE_S": "4.5"}) == 4.5
    for bad in ("0", "-3", "nan", "inf", "soon"):
        with pytest.raises(ConfigError, match="SNIPE_MEMBER_LEASE_S"):
            member_lease_s({"SNIPE_MEMBER_LEASE_S": bad})


R1 = "urn:snipe:host:r1"
ORIGIN = "urn:snipe:proc:sender"


def _resumes(ep: LeaseEndpoint) -> list[tuple[str, str, dict[str, int], bool]]:
    """The Resumes sent, as (router, group, next seq per origin, follow)."""
    out = []
    for to, tag, payload in ep.sent:
        if tag == MCAST_RESUME:
            r = unpack_resume(payload)
            out.append((to, r.group, dict(r.next), r.follow))
    return out


def test_the_lease_is_renewed_while_a_migration_has_the_endpoint_frozen_and_not_once_it_moved() -> None:
    """A migration freezes the endpoint for as long as its state takes to move (10 s and more):
    the lease renewal, a catalog write, goes on meanwhile; the rest of the periodic work waits."""
    cat = FakeCatalog()
    ep = Endpoint(ME, Identity.generate(), ["tcp://127.0.0.1:1"], b"\0" * 32)
    try:
        ep.catalog = cat                     # type: ignore[assignment]   # the I/O thread's client
        m = Membership(ep, cat, ME, "urn:snipe:host:h", lease_s=9.0)  # type: ignore[arg-type]
        m.joined[G1] = [R1]
        m.assert_member(cat, G1, {"host": "urn:snipe:host:h", "routers": [R1], "since": 0})
        cat.puts.clear()
        tended: list[float] = []
        ep.periodic.append(tended.append)
        ep.frozen = True
        m.renew_at = 0.0                     # a renewal is due
        with ep.io:
            ep._turn()
        assert cat.puts == [[(G1, MEMBER + ME, 9.0)]] and tended == []
        ep.moved = {"host": "urn:snipe:host:h2"}
        m.renew_at, ep._periodic_at = 0.0, 0.0
        with ep.io:
            ep._turn()
        assert len(cat.puts) == 1            # the clone renews from here
    finally:
        ep.close()


def test_a_renewal_that_gets_through_only_after_the_lease_ran_out_asks_the_routers_to_replay() -> None:
    m, ep, cat = _member(lease=9.0)
    r = m.reorder[(G1, ORIGIN)] = Reorder(first_seq=FIRST_SEQ)
    r.expected = 7                            # where that sender's stream stands here
    m.since[G1] = m.since[G2] = 0
    at = m.renew_at
    m._renew(cat, at)  # type: ignore[arg-type]
    assert len(cat.puts) == 1 and _resumes(ep) == []          # in time: nothing to replay
    cat.fail = True
    now = at + 3.0
    while now < at + 14.0:                    # the catalog unreachable past the lease (9 s from `at`)
        m._renew(cat, now)  # type: ignore[arg-type]
        now = max(now + 0.5, m.renew_at)
    cat.fail = False
    m._renew(cat, now)  # type: ignore[arg-type]
    assert len(cat.puts) == 2
    assert sorted(_resumes(ep)) == [(R1, G1, {ORIGIN: 7}, True), (R1, G2, {}, True)]


def test_a_clone_or_restored_task_re_registers_on_its_host_and_asks_its_routers_to_replay() -> None:
    cat = FakeCatalog()
    ep = LeaseEndpoint(cat)
    m = Membership(ep, cat, ME, "urn:snipe:host:h2", lease_s=9.0)  # type: ignore[arg-type]
    restore_groups(m, {"joined": {G1: [R1]}, "since": {G1: 5}, "reorder": [[G1, ORIGIN, 12, [], 1]],
                       "seqs": {}, "origin": ME})
    reregister(m, cat, "urn:snipe:host:h2")  # type: ignore[arg-type]
    assert cat.store[(G1, MEMBER + ME)].value["host"] == "urn:snipe:host:h2"
    assert _resumes(ep) == [(R1, G1, {ORIGIN: 12}, True)]


def test_a_re_registration_the_catalog_refused_is_retried_by_the_renewal_which_then_replays() -> None:
    cat = FakeCatalog()
    ep = LeaseEndpoint(cat)
    m = Membership(ep, cat, ME, "urn:snipe:host:h2", lease_s=9.0)  # type: ignore[arg-type]
    restore_groups(m, {"joined": {G1: [R1]}, "since": {G1: 5}, "reorder": [], "seqs": {}, "origin": ME})
    cat.fail = True
    reregister(m, cat, "urn:snipe:host:h2")  # type: ignore[arg-type]    # said, not raised
    assert _resumes(ep) == [] and m.renew_at < float("inf")
    cat.fail = False
    m._renew(cat, m.renew_at)  # type: ignore[arg-type]
    assert cat.listed(G1) and _resumes(ep) == [(R1, G1, {}, True)]


def test_a_renewal_signed_just_before_leave_cannot_outlast_the_tombstone() -> None:
    """The I/O thread's client signs the renewal; leave() runs before its put arrives, with the
    session's client, whose clock is behind the other's (both in the same millisecond)."""
    m, _ep, cat = _member(lease=9.0)
    io_cat = FakeCatalog(cat.store)
    io_cat.clock = HybridClock(cat.clock.last + 5)
    io_cat.on_put = lambda: m.leave(G1)
    m._renew(io_cat, m.renew_at)  # type: ignore[arg-type]
    assert not cat.listed(G1) and cat.listed(G2)


class _NoStartSession:
    """A task's session whose messaging cannot start (the catalog unreachable)."""

    me = "urn:snipe:proc:task"
    _endpoint = None

    def __init__(self) -> None:
        self.tries = 0

    def endpoint(self) -> Any:
        self.tries += 1
        raise QuorumError("no catalog replica answered 'put' in time")


def test_safe_point_in_a_task_whose_messaging_cannot_start_says_so_once_and_retries_later(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    s = _NoStartSession()
    monkeypatch.setenv("SNIPE_PROC_URN", s.me)
    monkeypatch.setattr(runtime, "session", lambda: s)
    monkeypatch.setattr(runtime, "_safe_point_start", runtime._StartRetry())
    caplog.set_level(logging.WARNING, "snipe.runtime")
    for _ in range(5):
        runtime.safe_point()                  # never raises in a compute loop
    assert s.tries == 1                       # not again within SAFE_POINT_START_RETRY_S
    monkeypatch.setattr(runtime, "SAFE_POINT_START_RETRY_S", 0.0)
    runtime._safe_point_start.at = 0.0
    runtime.safe_point()
    runtime.safe_point()
    assert s.tries == 3
    said = [r.getMessage() for r in caplog.records if "safe_point" in r.getMessage()]
    assert len(said) == 1 and "could not start this task's messaging" in said[0]
