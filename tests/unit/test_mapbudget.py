"""The LMDB map budget (rcds/mapbudget.py): over budget, the mapped pages are dropped and read back
unchanged; under it, nothing happens; checks are rate-limited."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from rcds.mapbudget import MapBudget
from rcds.store import LmdbStorage
from snipe import hlc
from snipe.assertion import make_assertion
from snipe.identity import Identity

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/smaps (Linux)")

ADMIN = Identity.from_seed(bytes([41]) * 32)


def test_mapped_pages_over_the_budget_are_dropped_and_read_back_unchanged(tmp_path: Path) -> None:
    store = LmdbStorage(tmp_path / "db", map_size=256 << 20)
    try:
        records = [make_assertion(ADMIN, f"urn:snipe:group:g{i}", "v", b"x" * 2000, hlc.pack(1_700_000_000_000))
                   for i in range(3000)]
        with store.write() as txn:
            for a in records:
                txn.store(a, None, None, None)
        everything = list(store.scan_prefix(""))                 # maps every page of the records
        budget = MapBudget(store.data_file, budget=1 << 20, interval=10.0)
        dropped = budget.check(now=100.0)
        assert dropped > 1 << 20 and budget.trims == 1 and budget.resident == 0
        assert budget.check(now=105.0) == 0                      # not due yet
        assert list(store.scan_prefix("")) == everything         # read back through fresh faults
        generous = MapBudget(store.data_file, budget=1 << 30)
        assert generous.check(now=0.0) == 0 and generous.resident > 1 << 20 and generous.trims == 0
    finally:
        store.close()


def test_a_file_that_is_not_mapped_is_left_alone(tmp_path: Path) -> None:
    budget = MapBudget(tmp_path / "nothing.mdb", budget=0)
    assert budget.check(now=0.0) == 0 and budget.trims == 0
