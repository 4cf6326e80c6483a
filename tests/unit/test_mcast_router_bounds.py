"""The daemon as multicast router under load any admitted key could make: groups per key and per
host are bounded, a group whose last local member left is dropped (its router lease withdrawn
and no longer renewed), and the per-group catalog upkeep runs in slices that keep the host lease.

A fake catalog charges each round trip to a manual clock, so a slow catalog is a number here."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from daemon import mcast
from daemon.mcast import GroupRouter
from snipe.errors import QuotaExceeded, SnipeError
from snipe.multicast.groups import ROUTER

ME = "urn:snipe:host:h1"
ROUND_TRIP_S = 0.02


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


class FakeCatalog:
    """Router leases per group; every read or write costs ROUND_TRIP_S of the manual clock."""

    admin_key = b"\0" * 32

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leases: dict[str, dict[str, Any]] = {}
        self.writes: list[tuple[str, str]] = []

    def get(self, urn: str, r: int | None = None) -> SimpleNamespace:
        self.clock.t += ROUND_TRIP_S
        records = [SimpleNamespace(name=ROUTER + h, value=v) for h, v in self.leases.get(urn, {}).items()]
        return SimpleNamespace(owner=lambda admin, now: "claimed", live=lambda now: records)

    def invalidate(self, urn: str) -> None:
        pass

    def cached(self, urn: str, max_age: float) -> SimpleNamespace:
        raise SnipeError("no interfaces in this test")

    def set(self, urn: str, name: str, value: Any, ttl: float | None = None) -> None:
        self.clock.t += ROUND_TRIP_S
        self.writes.append((urn, name))
        self.leases.setdefault(urn, {})[name[len(ROUTER):]] = value

    def delete(self, urn: str, name: str) -> None:
        self.clock.t += ROUND_TRIP_S
        self.leases.get(urn, {}).pop(name[len(ROUTER):], None)


def router() -> tuple[GroupRouter, FakeCatalog, Clock, list[float]]:
    clock = Clock()
    catalog = FakeCatalog(clock)
    kept: list[float] = []
    endpoint = SimpleNamespace(system_handlers={}, one_by_one=lambda f: f, turn_end=[])
    r = GroupRouter(ME, "tcp://h1#k", catalog, endpoint, 2.0,  # type: ignore[arg-type]
                    keep_lease=lambda: kept.append(clock.t), clock=clock)
    return r, catalog, clock, kept


def group(i: int) -> str:
    return f"urn:snipe:group:g{i}"


def test_upkeep_runs_in_slices_and_keeps_the_host_lease_after_each_group():
    r, catalog, clock, kept = router()
    for i in range(40):
        r.join(group(i), f"urn:snipe:proc:p{i}", f"key{i % 4}")
    catalog.writes.clear()
    renewed: set[str] = set()
    turns = 0
    while len(renewed) < 40:
        turns += 1
        assert turns < 100, "the upkeep never got round all groups"
        kept.clear()
        before, writes = clock.t, len(catalog.writes)
        r.tick(clock.t)
        done = catalog.writes[writes:]
        renewed |= {g for g, _ in done}
        # one group (a read and a write) past the slice at most, and the host lease kept after each
        assert clock.t - before <= mcast.UPKEEP_SLICE_S + 2 * ROUND_TRIP_S + 1e-9
        assert len(kept) == len(done) >= 1
    assert turns >= 40 * 2 * ROUND_TRIP_S / (mcast.UPKEEP_SLICE_S + 2 * ROUND_TRIP_S)


def test_a_group_whose_last_member_left_is_dropped_and_its_lease_withdrawn():
    r, catalog, clock, _ = router()
    r.join(group(1), "urn:snipe:proc:a", "ka")
    r.join(group(1), "urn:snipe:proc:b", "kb")
    assert r.status()["routing"] == [group(1)] and ME in catalog.leases[group(1)]
    r.leave(group(1), "urn:snipe:proc:a")
    assert r.status()["routing"] == [group(1)]            # b is still here
    r.leave(group(1), "urn:snipe:proc:b")
    assert (r.status()["routing"], r.status()["local"]) == ([], {})
    assert catalog.leases[group(1)] == {}                   # withdrawn, not left to lapse
    catalog.writes.clear()
    clock.t += 10
    r.tick(clock.t)
    assert catalog.writes == []                             # and not renewed
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
