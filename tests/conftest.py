"""Fixtures shared by every test: real replica processes, always cleaned up."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

import snipe
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog, LocalCluster


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    # A run stopped with SIGTERM (a CI timeout, `kill`) tears its fixtures down like Ctrl-C does,
    # so the clusters and tasks the tests started do not outlive it.
    signal.signal(signal.SIGTERM, _interrupt)


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
