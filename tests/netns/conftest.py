"""Fixtures for the network-namespace suite: labs of namespace hosts, always torn down.

Every test here is skipped, with the reason, where the harness cannot run (not root, no `ip`,
`nft` or `tc`). Every participant, drivers and test clients included, runs inside a lab
namespace; this pytest process only builds, injects faults and reads files.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snipe.netlab import Lab, cleanup_stale, why_not
from tests.netns.helpers import Labs
from tests.support import NETNS_REPORT

HERE = Path(__file__).parent
_unsent: list[str] = []           # reports made in this process, not yet attached to a test's report


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = None
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        item.add_marker(pytest.mark.netns)
        if reason is None:
            reason = why_not() or ""
        if reason:
            item.add_marker(pytest.mark.skip(reason=f"netns suite: {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
    # Reports travel with the test's report, so that an xdist worker's reach the terminal summary
    # (tests/conftest.py writes it: the xdist controller never loads this conftest).
    rep.user_properties += [(NETNS_REPORT, line) for line in _unsent]
    _unsent.clear()


@pytest.fixture(scope="session")
def stale_cleaned() -> dict[str, Any]:
    """Once per session: remove what earlier, killed runs left behind (never a live run's)."""
    return cleanup_stale()


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any]) -> Iterator[Callable[..., Lab]]:
    """make_lab(topology, services=True) -> a Lab that is up; torn down after the test (logs kept
    under the runs folder's logs/ when the test failed)."""
    labs = Labs(request)
    try:
        yield labs.make
    finally:
        labs.close()


@pytest.fixture(scope="session")
def report() -> Callable[[str, dict[str, Any]], None]:
    """report(case, facts): print a case's sent/acknowledged/delivered/lost figures and timings,
    and repeat them in the terminal summary."""

    def emit(case: str, facts: dict[str, Any]) -> None:
        _unsent.append(f"{case}: {json.dumps(facts, default=str)}")
        print(f"REPORT {case}: {json.dumps(facts, indent=1, default=str)}")

    return emit
