"""Fixtures for the network-namespace suite: labs of namespace hosts, always torn down.

Every test here is skipped, with the reason, where the harness cannot run (not root, no `ip`,
`nft` or `tc`). Every participant, drivers and test clients included, runs inside a lab
namespace; this pytest process only builds, injects faults and reads files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snipe.netlab import Lab, Topology, cleanup_stale, why_not

HERE = Path(__file__).parent
REPORTS: list[tuple[str, dict[str, Any]]] = []


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


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not REPORTS:
        return
    terminalreporter.section("netns reliability reports")
    for case, rep in REPORTS:
        terminalreporter.write_line(f"{case}: {json.dumps(rep, default=str)}")


@pytest.fixture(scope="session")
def stale_cleaned() -> dict[str, Any]:
    """Once per session: remove what earlier, killed runs left behind (never a live run's)."""
    return cleanup_stale()


class _Labs:
    """Labs made for one fixture scope, all torn down at its end (logs kept when a test failed)."""

    def __init__(self, request: pytest.FixtureRequest) -> None:
        self.request = request
        self.labs: list[Lab] = []
        self.failed_before = request.session.testsfailed

    def make(self, topology: Topology, *, services: bool = True) -> Lab:
        lab = Lab(topology)
        self.labs.append(lab)
        t = time.monotonic()
        lab.up(services=services)
        print(f"lab {lab.rid} up in {time.monotonic() - t:.1f} s (netem: {lab.state.get('netem')})")
        return lab

    def close(self) -> None:
        node = self.request.node
        failed = self.request.session.testsfailed > self.failed_before or any(
            getattr(getattr(node, f"rep_{w}", None), "failed", False) for w in ("setup", "call"))
        for lab in self.labs:
            r = lab.down(keep_logs=failed)
            if r.get("logs"):
                print(f"lab {lab.rid} logs kept in {r['logs']}")


@pytest.fixture
def make_lab(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any]) -> Iterator[Callable[..., Lab]]:
    """make_lab(topology, services=True) -> a Lab that is up; torn down after the test (logs kept
    under the runs folder's logs/ when the test failed)."""
    labs = _Labs(request)
    try:
        yield labs.make
    finally:
        labs.close()


@pytest.fixture(scope="module")
def make_module_lab(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any]
                    ) -> Iterator[Callable[..., Lab]]:
    """make_lab for fixtures shared by several tests of a module."""
    labs = _Labs(request)
    try:
        yield labs.make
    finally:
        labs.close()


@pytest.fixture(scope="session")
def report() -> Callable[[str, dict[str, Any]], None]:
    """report(case, facts): print a case's sent/acknowledged/delivered/lost figures and timings,
    and repeat them in the terminal summary."""

    def emit(case: str, facts: dict[str, Any]) -> None:
        REPORTS.append((case, facts))
        print(f"REPORT {case}: {json.dumps(facts, indent=1, default=str)}")

    return emit
