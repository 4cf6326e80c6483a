"""Entry: what a reader was told about one URN, and when that stops holding."""

from __future__ import annotations

from snipe import hlc
from snipe.assertion import make_assertion
from snipe.catalog.entry import Entry
from snipe.identity import Identity

URN = "urn:snipe:proc:p1"
NOW = 1_800_000_000_000


def test_next_expiry_is_the_soonest_live_lease_and_leases_that_ran_out_say_nothing() -> None:
    me = Identity.generate()
    ran_out = make_assertion(me, URN, "old", 1, hlc.pack(NOW - 10_000), ttl_ms=2_000)       # until NOW - 8 s
    soon = make_assertion(me, URN, "soon", 1, hlc.pack(NOW - 1_000), ttl_ms=4_000)          # until NOW + 3 s
    later = make_assertion(me, URN, "later", 1, hlc.pack(NOW), ttl_ms=60_000)
    forever = make_assertion(me, URN, "plain", 1, hlc.pack(NOW))
    assert Entry(URN, [ran_out, soon, later, forever]).next_expiry(NOW) == NOW + 3_000
    assert Entry(URN, [ran_out, soon, later, forever]).next_expiry(NOW + 3_000) == NOW + 60_000
    assert Entry(URN, [ran_out, forever]).next_expiry(NOW) is None     # re-reading would tell nothing new
    assert Entry(URN, []).next_expiry(NOW) is None
