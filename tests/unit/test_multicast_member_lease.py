"""A member's `member.` assertion is a lease its process renews: every group's in one catalog
write per third of the lease, none after the process moved away, and a bad lease setting said."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from snipe.errors import ConfigError, QuorumError
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


class FakeCatalog:
    """Records each put as the list of (urn, name, ttl) it carried."""

    def __init__(self) -> None:
        self.puts: list[list[tuple[str, str, float | None]]] = []
        self.fail = False

    def sign(self, urn: str, name: str, value: Any = None, *, ttl: float | None = None) -> Signed:
        return Signed(urn, name, value, ttl)

    def put(self, records: list[Signed]) -> None:
        if self.fail:
            raise QuorumError("no replica answered")
        self.puts.append([(r.urn, r.name, r.ttl) for r in records])

    def set(self, urn: str, name: str, value: Any, *, ttl: float | None = None) -> None:
        self.put([self.sign(urn, name, value, ttl=ttl)])

    def delete(self, urn: str, name: str) -> None:
        self.put([self.sign(urn, name, None)])


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
    assert cat.puts == [[(G1, MEMBER + ME, None)]]          # the tombstone
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
