"""Fixtures shared by every test: real replica processes, always cleaned up."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from hypothesis import HealthCheck, settings

import snipe
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog, LocalCluster
from tests.support import NETNS_REPORT

# Hypothesis's deadline and too-slow health check time the machine, not the code: the suite runs
# on two busy CPUs beside other workers' clusters, so they would fail tests whose properties hold.
settings.register_profile("snipe", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("snipe")


_config: pytest.Config | None = None
_runtime_dir: str | None = None
_netns_reports: list[str] = []


def _interrupt(signum: int, frame: object) -> None:
    if _config is not None and _config.pluginmanager.get_plugin("dsession") is not None:
        # The xdist controller: the tests, and the clusters they started, are in its workers
        # (its only children), which SIGTERM reaches only from here (Ctrl-C reaches them all).
        # Each tears its fixtures down on it; the controller waits for them before it kills any.
        for worker in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                worker.send_signal(signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    global _config
    _config = config
    # A run stopped with SIGTERM (a CI timeout, `kill`) tears its fixtures down like Ctrl-C does,
    # so the clusters and tasks the tests started do not outlive it.
    signal.signal(signal.SIGTERM, _interrupt)
    _own_runtime_dir()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _runtime_dir is not None:
        shutil.rmtree(_runtime_dir, ignore_errors=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _netns_reports.extend(str(value) for name, value in report.user_properties if name == NETNS_REPORT)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _netns_reports:
        terminalreporter.section("netns reliability reports")
        for line in _netns_reports:
            terminalreporter.write_line(line)


@pytest.hookimpl(optionalhook=True)       # a pytest-xdist hook: unknown when xdist is not loaded
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """With --dist loadgroup (bin/dev test's default): xdist's loadgroup scheduling, which hands
    each worker single tests, except that the netns suite is one unit run on one worker, as the
    suite runs alone: one lab at a time, its module-scoped labs built once, its timing-bound
    cases not squeezed by a second lab, while the other workers run the rest. (A path rule here,
    not an xdist_group mark: with pytest 9.2, xdist 3.8 silently drops those marks, its issue 1386.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    netns = f"{(Path(__file__).parent / 'netns').relative_to(config.rootpath).as_posix()}/"

    class NetnsAsOneScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            # The largest unit, so it is handed out first (xdist orders units by size).
            return "netns" if nodeid.startswith(netns) else super()._split_scope(nodeid)

    return NetnsAsOneScheduling(config, log)


def _own_runtime_dir() -> None:
    """Give this test process (each xdist worker has its own) a default runtime folder of its
    own: the embedded cluster's home and the ipc sockets' folder are per user by default, so two
    workers, another test run or the user's own cluster would otherwise meet there. Tests that
    want the default home get this one; SNIPE_HOME would override it, so it is dropped."""
    global _runtime_dir
    _runtime_dir = tempfile.mkdtemp(prefix=f"snipe-test-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}-")
    # Others may pass through (not list) it, as through /tmp to /tmp/snipe-<uid>: the folder snipe
    # makes in it is 0700, and a test opens that one to another user to see the ipc gate refuse them.
    os.chmod(_runtime_dir, 0o711)
    os.environ["XDG_RUNTIME_DIR"] = _runtime_dir
    os.environ.pop("SNIPE_HOME", None)


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[LocalCatalog]:
    """Three rcds-server processes on loopback, killed when the test ends."""
    cat = LocalCatalog(tmp_path / "catalog", 3, anti_entropy_s=0.2)
    try:
        cat.start()
        yield cat
    finally:
        cat.close()


@pytest.fixture
def user(catalog: LocalCatalog) -> Identity:
    """A key the admin has admitted as a user."""
    ident = Identity.generate()
    catalog.admit(ident, "alice")
    return ident


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """Three replicas and three daemons (hosts h1-h3 on 127.0.0.2-4); this test process is
    joined to it as the cluster's user."""
    c = LocalCluster(tmp_path / "cluster", replicas=3, hosts=3, lease_s=2.0, anti_entropy_s=0.3)
    for d in c.daemons:             # a restart that cannot succeed gives up in 3 s, not 15
        d.settings["takeover_backoff_s"] = 0.2
    try:
        c.start()
        snipe.init(catalog=c.catalog.addresses, identity=c.user, admin_key=c.admin.key_id,
                   daemon=c.daemons[0].address)
        yield c
    finally:
        snipe.shutdown()
        c.close()
