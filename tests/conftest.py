"""Fixtures shared by every test: real replica processes, always cleaned up."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from snipe.identity import Identity
from snipe.localcluster import LocalCatalog


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
