"""The daemon as multicast router under load any admitted key could make: groups per key and per
host are bounded, counting live members only (one whose task ended or whose `member.` lease ran
out is forgotten); a group with no live member here or registered with this router is dropped
(its router lease withdrawn and no longer renewed); router leases are renewed in one write, and
the per-group catalog upkeep runs in slices that keep the host lease.

A fake catalog charges each round trip to a manual clock, so a slow catalog is a number here."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from daemon import mcast
from daemon.mcast import GroupRouter
from snipe.errors import QuotaExceeded, SnipeError
from snipe.messaging.channel import Deliver
from snipe.messaging.endpoint import Endpoint
from snipe.multicast.core import MCAST_DATA, MCAST_RESUME, Header, Resume, pack, pack_resume
from snipe.multicast.groups import MEMBER, ROUTER

ME = "urn:snipe:host:h1"
ROUND_TRIP_S = 0.02


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeCatalog:
    """Groups' live `member.` and `router.` assertions; every read or write (a batch is one)
    costs ROUND_TRIP_S of the manual clock. A lease that ran out is one a test removed."""

    admin_key = b"\0" * 32

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.records: dict[str, dict[str, Any]] = {}
        self.reads: list[str] = []
        self.writes: list[tuple[str, str]] = []          # single writes (set, delete)
        self.puts: list[list[tuple[str, str]]] = []      # batched writes
        self.on_set: Callable[[str, str], None] | None = None

    def leases(self, urn: str) -> dict[str, Any]:
        return {n[len(ROUTER):]: v for n, v in self.records.get(urn, {}).items() if n.startswith(ROUTER)}

    def get(self, urn: str, r: int | None = None) -> SimpleNamespace:
        self.clock.t += ROUND_TRIP_S
        self.reads.append(urn)
        records = [SimpleNamespace(name=n, value=v) for n, v in self.records.get(urn, {}).items()]
        return SimpleNamespace(owner=lambda admin, now: "claimed", live=lambda now: records,
                               next_expiry=lambda now: None)

    def invalidate(self, urn: str) -> None:
        pass

    def cached(self, urn: str, max_age: float) -> SimpleNamespace:
        raise SnipeError("no interfaces in this test")

    def set(self, urn: str, name: str, value: Any, ttl: float | None = None) -> None:
        self.clock.t += ROUND_TRIP_S
        if self.on_set is not None:
            self.on_set(urn, name)
        self.writes.append((urn, name))
        self.records.setdefault(urn, {})[name] = value

    def sign(self, urn: str, name: str, value: Any, ttl: float | None = None) -> tuple[str, str, Any]:
        return (urn, name, value)

    def put(self, records: list[tuple[str, str, Any]]) -> None:
        self.clock.t += ROUND_TRIP_S
        self.puts.append([(urn, name) for urn, name, _ in records])
        for urn, name, value in records:
            self.records.setdefault(urn, {})[name] = value

    def delete(self, urn: str, name: str) -> None:
        self.clock.t += ROUND_TRIP_S
        self.writes.append((urn, name))
        self.records.get(urn, {}).pop(name, None)


class FakeEndpoint:
    """The daemon's messaging endpoint as the router's relaying half sees it: what it submits."""

    decoded = staticmethod(Endpoint.decoded)

    def __init__(self, catalog: FakeCatalog) -> None:
        self.catalog = catalog
        self.system_handlers: dict[int, Callable[..., None]] = {}
        self.turn_end: list[Callable[[], None]] = []
        self.sent: list[tuple[str, int]] = []

    @staticmethod
    def one_by_one(f: Callable[[Deliver], None]) -> Callable[[Deliver], None]:
        return f

    def submit(self, to: str, tag: int, payload: bytes, deadline: float | None = None) -> None:
        self.sent.append((to, tag))


def router() -> tuple[GroupRouter, FakeCatalog, Clock, list[float]]:
    clock = Clock()
    catalog = FakeCatalog(clock)
    kept: list[float] = []
    endpoint = FakeEndpoint(catalog)
    r = GroupRouter(ME, "tcp://h1#k", catalog, endpoint, 2.0,  # type: ignore[arg-type]
                    keep_lease=lambda: kept.append(clock.t), clock=clock)
    return r, catalog, clock, kept


def group(i: int) -> str:
    return f"urn:snipe:group:g{i}"


def join(r: GroupRouter, catalog: FakeCatalog, g: str, member: str, key: str) -> None:
    """As a process on this host joins: through its daemon, then its own `member.` lease."""
    r.join(g, member, key)
    catalog.records[g][MEMBER + member] = {"host": ME, "routers": [ME], "since": 0}


def dies(catalog: FakeCatalog, g: str, member: str) -> None:
    """`member` exited without leave(): its `member.` lease runs out."""
    del catalog.records[g][MEMBER + member]


def upkeep_round(r: GroupRouter, clock: Clock) -> None:
    """Ticks until one whole upkeep round has run."""
    clock.t = max(clock.t, r.next_refresh)
    r.tick(clock.t)
    while r.upkeep_due:
        r.tick(clock.t)


def test_router_leases_are_renewed_in_one_write_and_the_upkeep_runs_in_slices_keeping_the_host_lease():
    r, catalog, clock, kept = router()
    for i in range(40):
        join(r, catalog, group(i), f"urn:snipe:proc:p{i}", f"key{i % 4}")
    catalog.writes.clear()
    catalog.reads.clear()
    looked_at: set[str] = set()
    turns = 0
    all_leases = [(group(i), ROUTER + ME) for i in sorted(range(40), key=group)]
    while len(looked_at) < 40:
        turns += 1
        assert turns < 100, "the upkeep never got round all groups"
        kept.clear()
        before, reads, puts = clock.t, len(catalog.reads), len(catalog.puts)
        r.tick(clock.t)
        # every router lease in one write, every quarter lease (0.5 s here), however far the upkeep is
        renewals = catalog.puts[puts:]
        assert renewals in ([], [all_leases]) and (renewals or turns > 1)
        done = catalog.reads[reads:]
        looked_at |= set(done)
        # one group (a read) past the slice at most, and the host lease kept after each
        assert clock.t - before <= mcast.UPKEEP_SLICE_S + ROUND_TRIP_S * (1 + len(renewals)) + 1e-9
        assert len(kept) == len(done) + len(renewals) and done
    assert catalog.writes == [] and catalog.puts == [all_leases] * len(catalog.puts) and len(catalog.puts) >= 2
    assert turns >= 40 * ROUND_TRIP_S / (mcast.UPKEEP_SLICE_S + 2 * ROUND_TRIP_S)


def test_a_group_whose_last_member_left_is_dropped_and_its_lease_withdrawn():
    r, catalog, clock, _ = router()
    r.join(group(1), "urn:snipe:proc:a", "ka")
    r.join(group(1), "urn:snipe:proc:b", "kb")
    assert r.status()["routing"] == [group(1)] and ME in catalog.leases(group(1))
    r.leave(group(1), "urn:snipe:proc:a")
    assert r.status()["routing"] == [group(1)]            # b is still here
    r.leave(group(1), "urn:snipe:proc:b")
    assert (r.status()["routing"], r.status()["local"]) == ([], {})
    assert catalog.leases(group(1)) == {}                   # withdrawn, not left to lapse
    catalog.writes.clear()
    clock.t += 10
    r.tick(clock.t)
    assert catalog.writes == [] and catalog.puts == []      # and not renewed
    r.leave(group(2), "urn:snipe:proc:a")                   # a group never joined: nothing to do


def test_groups_per_key_and_per_host_are_bounded(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(mcast, "MAX_GROUPS_PER_KEY", 3)
    monkeypatch.setattr(mcast, "MAX_GROUPS", 5)
    r, catalog, _, _ = router()
    for i in range(3):
        r.join(group(i), "urn:snipe:proc:a", "ka")
    writes = len(catalog.writes)
    with pytest.raises(QuotaExceeded, match=r"key ka… already has members in 3 groups on urn:snipe:host:h1, "
                                            r"the most one key may \(3\); leave one first"):
        r.join(group(3), "urn:snipe:proc:a", "ka")
    assert len(catalog.writes) == writes and group(3) not in r.status()["local"]      # refused before any write
    r.join(group(0), "urn:snipe:proc:a2", "ka")            # another process of the key, in a group it is in
    r.join(group(3), "urn:snipe:proc:b", "kb")
    r.join(group(4), "urn:snipe:proc:b", "kb")
    with pytest.raises(QuotaExceeded, match=r"already serves 5 groups, the most it takes \(5\)"):
        r.join(group(5), "urn:snipe:proc:c", "kc")
    r.join(group(4), "urn:snipe:proc:c", "kc")             # a group it serves already: fine
    r.leave(group(0), "urn:snipe:proc:a")
    r.leave(group(0), "urn:snipe:proc:a2")
    r.join(group(5), "urn:snipe:proc:c", "kc")             # room again


def test_members_that_die_without_leaving_are_forgotten_and_free_their_quota(monkeypatch: pytest.MonkeyPatch):
    """A script run again and again, each run joining a group of its own and exiting without
    leave(): once a run's `member.` lease has run out the daemon forgets it, steps down from
    its group, and the key may join again."""
    monkeypatch.setattr(mcast, "MAX_GROUPS_PER_KEY", 3)
    r, catalog, clock, _ = router()
    for i in range(3):
        join(r, catalog, group(i), f"urn:snipe:proc:run{i}", "ka")
        dies(catalog, group(i), f"urn:snipe:proc:run{i}")
    upkeep_round(r, clock)                                  # within the join grace: kept
    assert sorted(r.status()["local"]) == [group(i) for i in range(3)]
    with pytest.raises(QuotaExceeded):
        r.join(group(3), "urn:snipe:proc:run3", "ka")
    clock.t += mcast.JOIN_GRACE_LEASES * r.lease_s
    upkeep_round(r, clock)
    assert (r.status()["local"], r.status()["routing"]) == ({}, [])
    assert all(catalog.leases(group(i)) == {} for i in range(3))       # withdrawn
    join(r, catalog, group(3), "urn:snipe:proc:run3", "ka")             # room again
    assert r.status()["local"] == {group(3): ["urn:snipe:proc:run3"]}


def test_a_member_not_yet_listed_is_kept_through_its_join_grace():
    """The process writes its `member.` lease after the daemon answered its join."""
    r, catalog, clock, _ = router()
    r.join(group(1), "urn:snipe:proc:a", "ka")
    clock.t += mcast.JOIN_GRACE_LEASES * r.lease_s / 2
    upkeep_round(r, clock)
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]} and r.status()["routing"] == [group(1)]
    catalog.records[group(1)][MEMBER + "urn:snipe:proc:a"] = {"host": ME, "routers": [ME], "since": 0}
    clock.t += mcast.JOIN_GRACE_LEASES * r.lease_s
    upkeep_round(r, clock)                                  # listed now: a live member, kept
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]} and r.status()["routing"] == [group(1)]


def test_a_router_stays_while_a_member_without_a_daemon_is_registered_with_it():
    """A driver on a laptop (no daemon there) registered with this router: the workers here
    leaving does not orphan it; the router steps down once the driver's lease runs out too."""
    r, catalog, clock, _ = router()
    join(r, catalog, group(1), "urn:snipe:proc:worker", "kw")
    driver = "urn:snipe:proc:driver"
    catalog.records[group(1)][MEMBER + driver] = {"host": "", "routers": [ME], "since": 0}
    dies(catalog, group(1), "urn:snipe:proc:worker")        # leave(): its lease deleted, then the daemon told
    r.leave(group(1), "urn:snipe:proc:worker")
    assert (r.status()["local"], r.status()["routing"]) == ({}, [group(1)])
    assert ME in catalog.leases(group(1))
    catalog.puts.clear()
    upkeep_round(r, clock)
    assert r.status()["routing"] == [group(1)] and catalog.puts == [[(group(1), ROUTER + ME)]]     # renewed
    catalog.records[group(1)][MEMBER + driver] = {"host": "", "routers": ["urn:snipe:host:h2"], "since": 0}
    upkeep_round(r, clock)                                  # registered elsewhere now: not ours to keep
    assert r.status()["routing"] == [] and catalog.leases(group(1)) == {}


def data(r: GroupRouter, g: str, seq: int = 1, sender: str = "urn:snipe:proc:s", body: bytes = b"x") -> None:
    """A sender's multicast message for `g` reaches this router."""
    r.endpoint.system_handlers[MCAST_DATA]([Deliver(sender, MCAST_DATA, pack(Header(g, sender, seq, 0, ()), body), 0)])


def resume(r: GroupRouter, g: str, member: str = "urn:snipe:proc:m") -> None:
    r.endpoint.system_handlers[MCAST_RESUME](Deliver(member, MCAST_RESUME, pack_resume(Resume(g, 0, {})), 0))


def test_relay_state_for_groups_not_routed_here_is_bounded_forgetting_the_least_recently_active(
        monkeypatch: pytest.MonkeyPatch):
    """Any process may send a router data or Resumes naming groups of its choosing: state is
    held for MAX_UNROUTED_GROUPS such groups at most, the least recently active forgotten to
    make room; routed groups are never counted or forgotten."""
    monkeypatch.setattr(mcast.time, "monotonic", lambda: now[0])
    now = [1000.0]
    monkeypatch.setattr(mcast, "MAX_UNROUTED_GROUPS", 3)
    r, _, _, _ = router()
    r.join(group(0), "urn:snipe:proc:a", "ka")              # routed here
    data(r, group(0))
    for i, send in enumerate([data, resume, data, data, resume, data]):
        now[0] += 1
        send(r, group(101 + i))
        if i == 1:
            now[0] += 1
            data(r, group(101), seq=2)                      # 101 active again: 102 is the oldest now
    unrouted = {g for g in r.last_traffic if g != group(0)}
    assert unrouted == {group(104), group(105), group(106)}
    assert r.unrouted_evicted == 3 and r.status()["unrouted_evicted"] == 3
    held = (r.relays, r.histories, r.views, r.ours, r.resumed, r.counts, r.pending)
    assert not any(group(g) in d for d in held for g in (101, 102, 103))
    assert group(0) in r.relays and group(0) in r.histories     # routed: kept
    assert r.relays[group(106)].relayed == 1


def test_relay_state_of_groups_no_longer_routed_is_forgotten_once_idle(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(mcast.time, "monotonic", lambda: now[0])
    now = [1000.0]
    r, _, _, _ = router()
    r.join(group(1), "urn:snipe:proc:a", "ka")
    r.join(group(2), "urn:snipe:proc:b", "kb")
    data(r, group(1))
    data(r, group(2))
    resume(r, group(3))                                     # a Resume for a group never routed here
    r.leave(group(2), "urn:snipe:proc:b")                   # stepped down from group 2
    assert r.status()["routing"] == [group(1)] and {group(1), group(2)} <= set(r.histories)
    now[0] += mcast.FORGET_IDLE_S - 1
    for hook in r.endpoint.turn_end:
        hook()
    assert {group(1), group(2), group(3)} <= set(r.last_traffic)     # not idle long enough yet
    now[0] += 1
    r._next_sweep = 0.0
    for hook in r.endpoint.turn_end:
        hook()
    held = (r.relays, r.histories, r.views, r.ours, r.resumed, r.counts, r.pending, r.last_traffic)
    assert not any(g in d for d in held for g in (group(2), group(3)))
    assert group(1) in r.relays and group(1) in r.histories           # routed: kept however idle
    assert r.forgotten == 2 and r.status()["forgotten"] == 2


def test_a_router_takes_data_for_its_group_as_soon_as_its_lease_can_be_read():
    """A sender that reads the new router's lease may send at once: the router counts the group
    as routed before the lease is written."""
    r, catalog, _, _ = router()
    at_write: list[bool] = []
    catalog.on_set = lambda urn, name: at_write.append(name == ROUTER + ME and urn in r.routing)
    r.join(group(1), "urn:snipe:proc:a", "ka")
    assert at_write == [True]


def test_a_router_whose_lease_write_fails_does_not_count_the_group_as_routed():
    r, catalog, _, _ = router()

    def refuse(urn: str, name: str) -> None:
        if name.startswith(ROUTER):
            raise SnipeError("catalog down")
    catalog.on_set = refuse
    with pytest.raises(SnipeError, match="catalog down"):
        r.join(group(1), "urn:snipe:proc:a", "ka")
    assert r.status()["routing"] == []


def test_the_histories_of_all_groups_together_keep_at_most_their_total(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(mcast, "HISTORY_TOTAL_BYTES", 8 << 20)
    r, _, _, _ = router()
    for i in range(4):
        r.join(group(i), f"urn:snipe:proc:p{i}", f"k{i}")
        data(r, group(i))
    assert {h.max_bytes for h in r.histories.values()} == {2 << 20}
    big = b"x" * (1 << 20)
    for seq in range(2, 12):                # 10 MiB to one group: it keeps its share, 2 MiB
        data(r, group(0), seq, body=big)
    assert r.histories[group(0)].bytes <= 2 << 20 and [h.items[-1][1] for h in r.histories.values()] == [11, 1, 1, 1]
    data(r, group(1), 2, body=big)          # groups filled before a share is lowered shed at once
    data(r, group(1), 3, body=big)
    for i in range(4, 8):
        r.join(group(i), f"urn:snipe:proc:p{i}", f"k{i}")
        data(r, group(i))
    assert {h.max_bytes for h in r.histories.values()} == {1 << 20}
    assert sum(h.bytes for h in r.histories.values()) <= 8 << 20
    assert all(h.bytes <= 1 << 20 for h in r.histories.values())


def test_a_join_costs_the_daemons_loop_one_catalog_read_and_one_write():
    """The daemon's loop waits on each catalog round trip of a join: the read that checks the
    group is claimed serves the election, and the routers returned are the election's."""
    r, catalog, _, _ = router()
    other = "urn:snipe:host:h2"
    catalog.records[group(1)] = {ROUTER + other: {"daemon": "tcp://h2#k"}}
    assert r.join(group(1), "urn:snipe:proc:a", "ka") == sorted([ME, other])
    assert (catalog.reads, catalog.writes) == ([group(1)], [(group(1), ROUTER + ME)])
    assert r.join(group(1), "urn:snipe:proc:b", "kb") == sorted([ME, other])     # standing: no write
    assert (catalog.reads, catalog.writes) == ([group(1)] * 2, [(group(1), ROUTER + ME)])
