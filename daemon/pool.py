"""A few interpreters started ahead of time, each ready to become one task (daemon/zygote.py).

The daemon takes one per spawn of a Python program; a background thread of the pool starts a
replacement at once, so a burst of spawns is served warm as long as the refill keeps up. Where
the daemon can be a child subreaper (Linux), zygotes are forked from one template interpreter:
a few milliseconds each, with their memory shared with the template until they write to it.
Elsewhere each zygote is a fresh interpreter (hundreds of milliseconds of CPU each).

Zygotes run in sessions of their own, like tasks, and are the daemon's children either way;
closing the pool ends the idle ones and the template. A subreaper also inherits whatever a
task leaves running when it exits; `reap_orphans` collects those once they end.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

PR_SET_CHILD_SUBREAPER = 36
_PID = struct.Struct("!i")
TEMPLATE_TIMEOUT_S = 60.0          # to start and import; under heavy load it may take a while
TAKE_WAIT_S = 0.5                  # how long a spawn waits for a fork when the pool is empty


def become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux); False where that is not possible."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children_of_self() -> list[int]:
    """Our child pids, from /proc (every thread's list: a child belongs to the thread that made it)."""
    me = os.getpid()
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(b")") + 2:][:1] == b"Z"


def reap_orphans(known: set[int]) -> list[int]:
    """Reap children that ended and are not in `known` (the tasks and the pool's own processes):
    descendants of tasks, adopted by this subreaper when their parent died. Returns their pids."""
    reaped = []
    for pid in children_of_self():
        if pid in known or not _is_zombie(pid):
            continue
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                reaped.append(pid)
    return reaped


class Zygote:
    """An idle interpreter forked from the template: our child (we are its subreaper), blocked
    reading `stdin`. Quacks like the parts of subprocess.Popen the task runner uses."""

    def __init__(self, pid: int, stdin: IO[bytes]) -> None:
        self.pid = pid
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:          # reaped elsewhere: its code is lost
                self.returncode = -1
            else:
                if pid == self.pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if timeout is None:
            if self.returncode is None:
                try:
                    _, status = os.waitpid(self.pid, 0)
                    self.returncode = os.waitstatus_to_exitcode(status)
                except ChildProcessError:
                    self.returncode = -1
            return self.returncode
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"zygote {self.pid}", timeout)
            time.sleep(0.01)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, 9)


Warm = Zygote | subprocess.Popen[bytes]


class WarmPool:
    def __init__(self, size: int, cwd: Path, python: str = sys.executable, *, fork: bool | None = None) -> None:
        """`fork`: zygotes forked from a template (default: whenever this process can be a subreaper)."""
        self.size = size
        self.cwd = cwd
        self.python = python
        self.fork = become_subreaper() if fork is None else fork
        self.idle: list[Warm] = []
        self.served = 0
        self.missed = 0
        self._template: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        if size > 0:
            self._thread = threading.Thread(target=self._keep_full, name="snipe-warm-pool", daemon=True)
            self._thread.start()

    def _env(self) -> dict[str, str]:
        return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONUNBUFFERED": "1"}

    # --- making zygotes (in the pool's thread) ------------------------------------------------------
    def _start_exec(self) -> Warm:
        self.cwd.mkdir(parents=True, exist_ok=True)
        return subprocess.Popen([self.python, "-m", "snipe_daemon.zygote"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.cwd, env=self._env(),
                                start_new_session=True, close_fds=True)

    def _template_socket(self) -> socket.socket:
        if self._template is not None and self._template.poll() is None and self._sock is not None:
            return self._sock
        self._stop_template()
        self.cwd.mkdir(parents=True, exist_ok=True)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._template = subprocess.Popen(
                [self.python, "-m", "snipe_daemon.zygote", "--template", str(theirs.fileno())],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.cwd,
                env=self._env(), start_new_session=True, close_fds=True, pass_fds=(theirs.fileno(),))
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.settimeout(TEMPLATE_TIMEOUT_S)
        self._sock = ours
        return ours

    def _fork_one(self) -> Warm:
        sock = self._template_socket()
        r, w = os.pipe()
        try:
            socket.send_fds(sock, [b"F"], [r])
            reply = sock.recv(_PID.size)
        except OSError:
            os.close(w)
            self._stop_template()
            raise
        finally:
            os.close(r)
        pid = _PID.unpack(reply)[0] if len(reply) == _PID.size else -1
        if pid <= 0:
            os.close(w)
            self._stop_template()
            raise OSError("the zygote template could not fork")
        return Zygote(pid, os.fdopen(w, "wb"))

    def _stop_template(self) -> None:
        if self._sock is not None:
            self._sock.close()          # the template reads EOF and exits
            self._sock = None
        if self._template is not None:
            try:
                self._template.wait(2)
            except subprocess.TimeoutExpired:
                self._template.kill()
                self._template.wait(2)
            self._template = None

    def _alive_idle(self) -> int:
        self.idle = [p for p in self.idle if p.poll() is None]
        return len(self.idle)

    def _keep_full(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self._closed and self._alive_idle() >= self.size:
                    self._cond.wait(1.0)
                if self._closed:
                    return
            try:
                z = self._fork_one() if self.fork else self._start_exec()
                failures = 0
            except (OSError, subprocess.SubprocessError):
                failures += 1
                with self._cond:
                    self._cond.wait(min(5.0, 0.1 * 2 ** failures))
                continue
            with self._cond:
                if self._closed:
                    self._end([z])
                    return
                self.idle.append(z)
                self._cond.notify_all()          # a take() may be waiting for it

    # --- the daemon's side --------------------------------------------------------------------------
    def refill(self) -> None:
        """Wake the pool's thread (it refills by itself after each take)."""
        with self._cond:
            self._cond.notify()

    def take(self, python: str) -> Warm | None:
        """An idle zygote for a program run by `python`, or None (then start it cold).

        With a template running and the pool empty (a burst outran the refill), it waits up to
        TAKE_WAIT_S for the next fork: a few milliseconds, where a cold start costs hundreds."""
        if python != self.python or self.size <= 0:
            return None
        deadline = time.monotonic() + TAKE_WAIT_S
        with self._cond:
            while True:
                while self.idle:
                    p = self.idle.pop(0)
                    if p.poll() is None:
                        self.served += 1
                        self._cond.notify()
                        return p
                self._cond.notify()
                left = deadline - time.monotonic()
                template = self._template
                if not self.fork or left <= 0 or template is None or template.poll() is not None:
                    break
                self._cond.wait(left)
            self.missed += 1
        return None

    def pids(self) -> set[int]:
        """The pool's own processes (idle zygotes and the template), for `reap_orphans`."""
        with self._cond:
            out = {p.pid for p in self.idle}
        template = self._template
        if template is not None:
            out.add(template.pid)
        return out

    @staticmethod
    def _end(procs: list[Warm]) -> None:
        for p in procs:
            with contextlib.suppress(OSError):
                if p.stdin is not None:
                    p.stdin.close()          # a zygote reading EOF exits by itself
        for p in procs:
            try:
                p.wait(2)
            except subprocess.TimeoutExpired:
                p.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(2)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self.idle = self.idle, []
            self._cond.notify_all()
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)      # wakes the pool's thread if it waits for the template
        if self._thread is not None:
            self._thread.join(10)
        self._end(idle)
        self._stop_template()
