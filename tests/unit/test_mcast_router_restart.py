"""A daemon killed and started again routes its groups again for its members, who do nothing:
the router keeps each group's local members and whether it routes it in the daemon's durable
state, and its first upkeep round after a restart stands again where a member still needs it
and withdraws its old lease where none does (daemon/mcast.py, "Restart").

A restart here is a new GroupRouter on the same store and catalog; the old one is dropped
without a word, as SIGKILL drops a daemon."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from daemon import mcast
from daemon.mcast import GroupRouter
from daemon.state import DaemonState
from snipe.errors import QuotaExceeded, ServerError
from snipe.multicast.groups import MEMBER, ROUTER
from tests.unit.test_mcast_router_bounds import ME, Clock, FakeCatalog, FakeEndpoint, dies, group, join, upkeep_round

DRIVER = "urn:snipe:proc:driver"        # a member without a daemon of its own, registered with this router


class FakeStore:
    """The daemon's state as the router sees it; `fail` makes every write raise (a full disk)."""

    def __init__(self) -> None:
        self.groups: dict[str, Any] = {}
        self.fail = False

    def put_group(self, group: str, record: dict[str, Any]) -> None:
        if self.fail:
            raise OSError("no space left on device")
        self.groups[group] = msgpack.unpackb(msgpack.packb(record))       # as kept on disk: no shared dicts

    def drop_group(self, group: str) -> None:
        if self.fail:
            raise OSError("no space left on device")
        self.groups.pop(group, None)

    def all_groups(self) -> dict[str, Any]:
        return dict(self.groups)


def start(catalog: FakeCatalog, clock: Clock, store: FakeStore) -> GroupRouter:
    """A daemon's router starting (again) on `store`."""
    return GroupRouter(ME, "tcp://h1#k", catalog, FakeEndpoint(catalog), 2.0,  # type: ignore[arg-type]
                       clock=clock, store=store)


def cluster() -> tuple[FakeCatalog, Clock, FakeStore]:
    clock = Clock()
    return FakeCatalog(clock), clock, FakeStore()


def test_a_restarted_router_knows_its_members_and_stands_again_where_they_need_it():
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:a", "ka")
    join(r, catalog, group(1), "urn:snipe:proc:b", "kb")
    join(r, catalog, group(2), "urn:snipe:proc:worker", "kw")     # then only a driver elsewhere needs it
    catalog.records[group(2)][MEMBER + DRIVER] = {"host": "", "routers": [ME], "since": 0}
    dies(catalog, group(2), "urn:snipe:proc:worker")
    r.leave(group(2), "urn:snipe:proc:worker")
    assert store.groups == {group(1): {"members": {"urn:snipe:proc:a": "ka", "urn:snipe:proc:b": "kb"},
                                       "routing": True},
                            group(2): {"members": {}, "routing": True}}
    for g in (group(1), group(2)):
        del catalog.records[g][ROUTER + ME]          # it was down longer than its lease

    r = start(catalog, clock, store)
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a", "urn:snipe:proc:b"]}
    assert (r.status()["routing"], r.status()["restored"]) == ([], [group(1), group(2)])
    catalog.writes.clear()
    upkeep_round(r, clock)
    assert (r.status()["routing"], r.status()["restored"]) == ([group(1), group(2)], [])
    assert sorted(catalog.writes) == [(group(1), ROUTER + ME), (group(2), ROUTER + ME)]   # its leases again
    assert {g: v["routing"] for g, v in store.groups.items()} == {group(1): True, group(2): True}
    catalog.puts.clear()
    clock.t += 1.0
    r.tick(clock.t)
    assert catalog.puts == [[(group(1), ROUTER + ME), (group(2), ROUTER + ME)]]    # and renews them


def test_a_router_restarted_within_its_lease_goes_on_under_the_same_lease():
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:a", "ka")
    r = start(catalog, clock, store)
    catalog.writes.clear()
    upkeep_round(r, clock)
    assert r.status()["routing"] == [group(1)]
    assert catalog.writes == [(group(1), ROUTER + ME)]      # written again: its counters start anew


def test_what_ended_while_it_was_down_is_forgotten_after_the_join_grace():
    """A member that died while its daemon was down is kept through the join grace (counted from
    the restart), then forgotten; a group routed for a driver that registered elsewhere meanwhile
    is stepped down from at once, its old lease withdrawn; the store forgets both."""
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:a", "ka")
    join(r, catalog, group(2), "urn:snipe:proc:worker", "kw")
    catalog.records[group(2)][MEMBER + DRIVER] = {"host": "", "routers": [ME], "since": 0}
    dies(catalog, group(2), "urn:snipe:proc:worker")
    r.leave(group(2), "urn:snipe:proc:worker")
    dies(catalog, group(1), "urn:snipe:proc:a")             # while the daemon is down
    catalog.records[group(2)][MEMBER + DRIVER] = {"host": "", "routers": ["urn:snipe:host:h2"], "since": 0}

    clock.t += 60.0
    r = start(catalog, clock, store)
    upkeep_round(r, clock)
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]}       # within the grace: kept
    assert r.status()["routing"] == [group(1)] and ME not in catalog.leases(group(2))
    assert set(store.groups) == {group(1)}
    clock.t += mcast.JOIN_GRACE_LEASES * r.lease_s
    upkeep_round(r, clock)
    assert (r.status()["local"], r.status()["routing"], r.status()["restored"]) == ({}, [], [])
    assert catalog.leases(group(1)) == {} and store.groups == {}


def test_restored_members_count_against_the_quotas(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(mcast, "MAX_GROUPS_PER_KEY", 2)
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    for i in range(2):
        join(r, catalog, group(i), f"urn:snipe:proc:p{i}", "ka")
    r = start(catalog, clock, store)
    with pytest.raises(QuotaExceeded, match="already has members in 2 groups"):
        r.join(group(2), "urn:snipe:proc:p2", "ka")


def test_unreadable_records_are_dropped_and_the_rest_restored():
    catalog, clock, store = cluster()
    good = {"members": {"urn:snipe:proc:a": "ka"}, "routing": True}
    store.groups = {group(1): good, "not a urn": good, group(2): None, group(3): {"members": [], "routing": True},
                    group(4): {"members": {"urn:snipe:proc:a": 7}, "routing": False},
                    group(5): {"members": {"junk": "k"}, "routing": False}, group(6): {"members": {}},
                    group(7): {"members": {}, "routing": False}}
    r = start(catalog, clock, store)
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]} and r.status()["restored"] == [group(1)]
    assert store.groups == {group(1): good}


def test_a_join_that_cannot_be_kept_is_refused_and_the_rest_goes_on():
    """A join is answered only once kept (a restart would forget it); what else fails to be kept
    (a leave) is logged, and a restart settles it by the catalog's leases."""
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:a", "ka")
    store.fail = True
    with pytest.raises(ServerError, match=r"could not keep urn:snipe:group:g2 in its state \(no space left"):
        r.join(group(2), "urn:snipe:proc:a", "ka")
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]} and catalog.leases(group(2)) == {}
    dies(catalog, group(1), "urn:snipe:proc:a")
    r.leave(group(1), "urn:snipe:proc:a")
    assert (r.status()["local"], r.status()["routing"]) == ({}, [])
    assert set(store.groups) == {group(1)}                  # kept as it was: the restart sees no live member
    store.fail = False
    r = start(catalog, clock, store)
    clock.t += mcast.JOIN_GRACE_LEASES * r.lease_s
    upkeep_round(r, clock)
    upkeep_round(r, clock)
    assert (r.status()["local"], r.status()["routing"], store.groups) == ({}, [], {})


def test_the_daemon_state_keeps_group_records_across_a_reopen(tmp_path: Path):
    state = DaemonState(tmp_path / "state")
    record = {"members": {"urn:snipe:proc:a": "ka"}, "routing": True}
    state.put_group(group(1), record)
    state.put_group(group(2), {"members": {}, "routing": True})
    state.drop_group(group(2))
    with state.env.begin(write=True) as txn:                # a damaged value: read as None, not a crash
        txn.put(group(3).encode(), b"\xc1", db=state.groups)
    state.close()
    state = DaemonState(tmp_path / "state")
    try:
        assert state.all_groups() == {group(1): record, group(3): None}
    finally:
        state.close()


def test_a_task_that_migrated_away_is_forgotten_here_at_once():
    """The original of a migrated task ends here (`forget_moved`): its clone joined through its new
    host's daemon and renews the lease from there, so this daemon must not keep it as its own
    (nor stand as a router for it alone, nor count it against its bounds, nor restore it)."""
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:mover", "km")
    join(r, catalog, group(2), "urn:snipe:proc:mover", "km")
    join(r, catalog, group(1), "urn:snipe:proc:stayer", "ks")
    r.forget_moved("urn:snipe:proc:mover")
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:stayer"]}
    assert store.groups[group(1)]["members"] == {"urn:snipe:proc:stayer": "ks"}
    assert group(1) in r.status()["routing"]     # the stayer still needs it


def test_a_member_whose_lease_names_another_host_is_kept():
    """The copies of a task replicated in mode "all" renew one `member.` lease from several hosts:
    the host the lease names last says nothing of a move, and each copy's daemon keeps it."""
    catalog, clock, store = cluster()
    r = start(catalog, clock, store)
    join(r, catalog, group(1), "urn:snipe:proc:a", "ka")
    catalog.records[group(1)][MEMBER + "urn:snipe:proc:a"] = {"host": "urn:snipe:host:h2", "routers": [ME],
                                                               "since": 0}
    upkeep_round(r, clock)
    assert r.status()["local"] == {group(1): ["urn:snipe:proc:a"]}
