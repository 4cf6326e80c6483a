"""Processes the harness owns, identified by pid and start time (a reused pid is never signalled)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import psutil


def create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def same_process(pid: int, ctime: float | None) -> bool:
    """Is `pid` still the process that started at `ctime`?"""
    now = create_time(pid)
    if now is None:
        return False
    try:
        if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return False
    except psutil.Error:
        return False
    return ctime is None or abs(now - ctime) < 0.05


def signal_pid(pid: int, ctime: float | None, sig: int) -> bool:
    """Send `sig` to `pid` only if it is still the process that started at `ctime`."""
    if not same_process(pid, ctime):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
        return True
    return False


def wait_gone(pids: list[tuple[int, float | None]], timeout: float) -> list[tuple[int, float | None]]:
    """Wait (bounded) until none of `pids` runs; return those still running."""
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        for pid, _ in left:               # reap our own children so they do not linger as zombies
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)
        left = [(p, c) for p, c in left if same_process(p, c)]
        if left:
            time.sleep(0.02)
    return left


def terminate(pids: list[tuple[int, float | None]], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL whatever is left after `grace` seconds."""
    for pid, ctime in pids:
        signal_pid(pid, ctime, signal.SIGTERM)
    left = wait_gone(pids, grace)
    for pid, ctime in left:
        signal_pid(pid, ctime, signal.SIGKILL)
    wait_gone(left, 5.0)


@dataclass
class Proc:
    """A service the lab runs inside a namespace: a replica, a daemon or a relay."""

    name: str                   # replica@h1, daemon@h2, relay@h1/f3
    kind: str                   # replica, daemon, relay
    host: str
    argv: list[str]
    log: str
    ready_file: str | None = None
    pid: int | None = None
    ctime: float | None = None
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return self.pid is not None and same_process(self.pid, self.ctime)

    def to_value(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "host": self.host, "argv": self.argv, "log": self.log,
                "ready_file": self.ready_file, "pid": self.pid, "ctime": self.ctime, "info": self.info}

    @classmethod
    def from_value(cls, v: dict[str, Any]) -> Proc:
        return cls(v["name"], v["kind"], v["host"], list(v["argv"]), v["log"], v.get("ready_file"), v.get("pid"),
                   v.get("ctime"), None, dict(v.get("info", {})))
