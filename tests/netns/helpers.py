"""Helpers for the netns suite: waiting on files the drivers and tasks write (the file system is
shared by every namespace; the network is not)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
