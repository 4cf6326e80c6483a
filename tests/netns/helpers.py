"""Helpers for the netns suite: waiting on files the drivers and tasks write (the file system is
shared by every namespace; the network is not)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snipe.netlab import Lab, Topology

DRIVER = Path(__file__).parent / "driver.py"
TASKS = Path(__file__).parent / "tasks"


def driver_argv(*args: object) -> list[str]:
    return [sys.executable, str(DRIVER), *[str(a) for a in args]]


def read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def wait_file(path: Path, pred: Callable[[dict[str, Any]], bool] = lambda v: True, timeout: float = 60.0,
              proc: Any = None, what: str = "") -> dict[str, Any]:
    """Wait (bounded) until `path` holds JSON satisfying `pred`; fail with the driver's stderr if
    the driver `proc` ends first."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if path.exists():
            try:
                last = json.loads(path.read_text())
                if pred(last):
                    return last
            except ValueError:
                pass
        if proc is not None and proc.poll() is not None:
            with contextlib.suppress(OSError, ValueError):
                last = json.loads(path.read_text())
                if pred(last):
                    return last
            out, err = proc.communicate(timeout=5)
            raise AssertionError(f"the driver ended ({proc.returncode}) before {what or path.name}:\n"
                                 f"{out[-2000:]}\n{err[-4000:]}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or path.name}; last value: {last}")


class Labs:
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


@contextlib.contextmanager
def lab_scope(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """For module-scoped fixtures: `with lab_scope(request) as make: lab = make(topology) ...
    yield facts` keeps the lab for the tests that use the fixture and removes it when pytest
    finalizes that fixture (before the next parameter's lab is built)."""
    labs = Labs(request)
    try:
        yield labs.make
    finally:
        labs.close()
