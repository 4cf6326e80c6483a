"""free_port(): a port one process handed out is not handed out by another until released."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator

import pytest

from snipe import localcluster
from snipe.localcluster import free_port, release_ports

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="claims are abstract unix sockets")

HOLDER = """
import sys
from snipe.localcluster import free_port
print(" ".join(str(free_port()) for _ in range(5)), flush=True)
sys.stdin.read()          # hold them until told to end
"""


@pytest.fixture
def holder() -> Iterator[tuple[subprocess.Popen[str], list[int]]]:
    """Another process that handed out five ports and holds them until its stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        yield p, [int(x) for x in p.stdout.readline().split()]
    finally:
        if p.poll() is None:
            p.kill()
        p.wait(10)


def _picks_first(monkeypatch: pytest.MonkeyPatch, ports: list[int]) -> None:
    """free_port() draws `ports` first, then counts up from just below the ephemeral range's floor."""
    low = localcluster._ephemeral_low()
    draws = itertools.chain(ports, range(low - 6000, low))
    monkeypatch.setattr(localcluster.random, "randrange", lambda a, b: next(draws))


def test_ports_another_process_handed_out_are_not_handed_out_while_it_runs(
        holder: tuple[subprocess.Popen[str], list[int]], monkeypatch: pytest.MonkeyPatch) -> None:
    _, held = holder
    _picks_first(monkeypatch, held)
    got = free_port()
    try:
        assert got not in held          # each of them was free to bind (no server yet), and skipped
    finally:
        release_ports([f"tcp://127.0.0.1:{got}"])


def test_ports_are_claimable_again_once_their_process_ended(
        holder: tuple[subprocess.Popen[str], list[int]]) -> None:
    p, held = holder
    assert p.stdin is not None
    p.stdin.close()
    p.wait(10)
    # The claims themselves, not free_port(): this process may have handed one of these ports out
    # before (the holder picked it after we released it), and then never hands it out again.
    try:
        assert [localcluster._claim(port) for port in held] == [True] * len(held)
    finally:
        release_ports([f"tcp://127.0.0.1:{port}" for port in held])


CLAIM = "import sys; from snipe.localcluster import _claim; sys.exit(0 if _claim(int(sys.argv[1])) else 3)"


def test_a_released_port_may_be_handed_out_by_another_process() -> None:
    port = free_port()
    other = [sys.executable, "-c", CLAIM, str(port)]
    assert subprocess.run(other, timeout=30).returncode == 3          # claimed by us
    release_ports([f"tcp://127.0.0.1:{port}"])
    assert subprocess.run(other, timeout=30).returncode == 0
