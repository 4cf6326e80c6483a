"""A few interpreters started ahead of time, each ready to become one task (daemon/zygote.py).

The daemon takes one per spawn of a Python program and starts a replacement in the background
of its loop, so a burst of spawns is served warm up to the pool's size and then cold. Zygotes
run in sessions of their own, like tasks; closing the pool ends the idle ones.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path


class WarmPool:
    def __init__(self, size: int, cwd: Path, python: str = sys.executable) -> None:
        self.size = size
        self.cwd = cwd
        self.python = python
        self.idle: list[subprocess.Popen[bytes]] = []
        self.served = 0
        self.missed = 0

    def _start_one(self) -> subprocess.Popen[bytes]:
        self.cwd.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen([self.python, "-m", "snipe_daemon.zygote"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.cwd, env=env,
                                start_new_session=True, close_fds=True)

    def refill(self) -> None:
        self.idle = [p for p in self.idle if p.poll() is None]
        while len(self.idle) < self.size:
            self.idle.append(self._start_one())

    def take(self, python: str) -> subprocess.Popen[bytes] | None:
        """An idle zygote for a program run by `python`, or None (then start it cold)."""
        if python != self.python:
            return None
        while self.idle:
            p = self.idle.pop(0)
            if p.poll() is None:
                self.served += 1
                return p
        self.missed += 1
        return None

    def close(self) -> None:
        for p in self.idle:
            with contextlib.suppress(OSError):
                if p.stdin is not None:
                    p.stdin.close()          # a zygote reading EOF exits by itself
        for p in self.idle:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(2)
        self.idle.clear()
