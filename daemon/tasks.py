"""The per-host task runner: start, watch, control and re-adopt child processes, under quotas.

A SNIPE daemon (paper 3.3) starts local tasks when asked, monitors them for state changes and
quota violations, delivers signals to them, and tells interested parties when one exits or is
suspended; a playground (3.6, 4.8) adds resource quotas. This module is that machinery for one
host, with no catalog and no network: the daemon calls `TaskRunner.poll()` periodically (say
every 100 ms) and publishes the `TaskEvent`s it returns. No threads: nothing happens between calls.

A task is a process group. Its leader starts in a new session, so its pid is the group id, and
whatever it forks stays in the group unless it calls setsid itself. Kills, suspensions and
resumptions go to the group and to any descendants that left it; when the leader exits, the
stragglers left in its group are killed, so nothing of a task runs on unwatched.

Invariants:
- A task is named by (pid, create_time); a pid alone may have been reused, so nothing is sent
  to a pid whose create time differs from the record's.
- The group of a child we started is signalled only before we reap its leader: an unreaped
  leader, even a zombie, keeps its pid (hence the group id) from being reused.
- Every state change goes through `_TRANSITIONS` and yields exactly one `TaskEvent`. Events are
  queued and handed out by `poll()`, so `wait()` can drive the checks without losing any.

Quotas, and how each is enforced:
- cpu_seconds: user+system time of the whole tree, sampled on each poll (a task with none of
  the cpu, memory and open-files quotas only every UNLIMITED_SAMPLE_S, for its figures); RLIMIT_CPU on each
  process (soft = ceil(quota), hard = soft + 1) is the kernel's backstop, and a death by its
  SIGXCPU is reported as a cpu breach.
- memory_bytes: resident set size of the whole tree, sampled on each poll (an over-estimate
  when processes share pages, never an under-estimate). RLIMIT_AS is only a generous safety net
  (4 x quota + 2 GiB): address space is not memory. Interpreters, thread stacks, malloc arenas
  and BLAS thread pools reserve far more than they touch, so an address-space limit near the
  quota fails innocent programs (numpy, anything with threads); RLIMIT_DATA has the same flaw
  since Linux 4.7 counts private anonymous mmaps in it. A program that does hit the net sees
  MemoryError/ENOMEM and exits on its own account.
- wall_seconds: age of the task; time spent suspended counts.
- open_files: RLIMIT_NOFILE = quota for each process (the program sees EMFILE, as under any
  ulimit), plus the descriptors of the whole tree summed on each poll, which a per-process limit
  cannot see (a fork doubles them).
A breach kills the group with SIGKILL; the "killed" event's reason names the quota, e.g.
"quota: memory 268435456 bytes exceeded (peak 300000000)".

Tasks adopted after a daemon restart are no longer our children: their exit is seen through
psutil (gone, pid reused, or a zombie), and their exit code is unknown unless we are still their
parent (a daemon that re-executed itself in place).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import resource
import shutil
import signal as _signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import IO, Any, Protocol

import psutil

from snipe.errors import BadQuota, CodecError, TaskError, TaskTimeout, UnknownTask

__all__ = ["EVENT_KINDS", "LIVE_STATES", "STATES", "Quota", "TaskEvent", "TaskRecord", "TaskRunner"]

STATES = ("running", "suspended", "exited", "killed", "lost")
LIVE_STATES = ("running", "suspended")
EVENT_KINDS = ("exited", "killed", "suspended", "resumed", "lost")

# psutil's create_time is start ticks plus the boot time, and the boot time it derives moves
# when the wall clock is stepped; a pid reused within a second of its owner's death is not a
# practical concern, a clock step is.
_CTIME_TOLERANCE_S = 1.0
_GIB = 1 << 30

# (state, what happened) -> (new state, event kind). The only place states change.
_TRANSITIONS: dict[tuple[str, str], tuple[str, str]] = {
    ("running", "suspend"): ("suspended", "suspended"),
    ("suspended", "resume"): ("running", "resumed"),
    ("running", "exit"): ("exited", "exited"),
    ("suspended", "exit"): ("exited", "exited"),
    ("running", "die"): ("killed", "killed"),
    ("suspended", "die"): ("killed", "killed"),
    ("running", "vanish"): ("lost", "lost"),
    ("suspended", "vanish"): ("lost", "lost"),
}

# Why a wrapper sets the rlimits, and not preexec_fn or prlimit(2) after the start:
# - preexec_fn runs Python between fork and exec; in a threaded parent (the daemon runs ZeroMQ
#   I/O threads) a lock held by another thread at fork time (the import lock, a logging lock,
#   malloc's) stays locked forever in the child, which then deadlocks.
# - resource.prlimit(pid, ...) or psutil's rlimit() right after Popen returns races the program:
#   it may already have opened files, allocated, or forked children that inherit no limit.
# - This wrapper is a fresh single-threaded interpreter (-I -S: no site, no environment, ~15 ms)
#   that sets the limits and then execs the program, so the task keeps the wrapper's pid,
#   create time and process group, and the program's first instruction already runs limited.
_EXEC_WITH_LIMITS = """\
import os, resource, sys
for spec in sys.argv[1].split(","):
    name, soft, hard = spec.split(":")
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
try:
    os.execv(sys.argv[2], sys.argv[3:])
except OSError as exc:
    sys.stderr.write(f"snipe: cannot execute {sys.argv[2]}: {exc}\\n")
    os._exit(127)
"""

_INTEGER_QUOTAS = ("memory_bytes", "open_files")
_RLIM_MAX = (1 << 63) - 1       # the largest rlimit setrlimit takes below RLIM_INFINITY


@dataclass(frozen=True)
class Quota:
    """Limits on a task's resources; None means no limit. Values are positive and finite."""

    cpu_seconds: float | None = None
    memory_bytes: int | None = None
    wall_seconds: float | None = None
    open_files: int | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            integral = f.name in _INTEGER_QUOTAS
            if isinstance(value, bool) or not isinstance(value, int if integral else (int, float)):
                kind = "an integer" if integral else "a number"
                raise BadQuota(f"quota {f.name} must be {kind} or None, not {type(value).__name__} {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise BadQuota(f"quota {f.name} must be positive and finite, got {value!r}; "
                               "leave it out for no limit")

    @classmethod
    def from_value(cls, value: Mapping[str, Any] | None) -> Quota:
        """The quota a decoded dict describes (None or {} is no limit); unknown fields are refused."""
        if value is None:
            return cls()
        if not isinstance(value, Mapping):
            raise BadQuota(f"a quota must be a map of limits, not {type(value).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise BadQuota(f"unknown quota field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        return cls(**value)

    def to_value(self) -> dict[str, float | int]:
        """A msgpack-able dict of the limits that are set."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass(frozen=True)
class TaskEvent:
    """Something that happened to a task, at `at` on the runner's clock."""

    urn: str
    kind: str  # one of EVENT_KINDS
    exit_code: int | None = None
    reason: str | None = None
    at: float = 0.0

    def to_value(self) -> dict[str, Any]:
        return {"urn": self.urn, "kind": self.kind, "exit_code": self.exit_code, "reason": self.reason,
                "at": self.at}


_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "urn": (str,), "pid": (int,), "create_time": (int, float), "argv": (list, tuple), "cwd": (str,),
    "started_at": (int, float), "quota": (Mapping,), "state": (str,), "exit_code": (int, type(None)),
    "reason": (str, type(None)), "stderr_path": (str,), "stdout_path": (str,),
}


@dataclass
class TaskRecord:
    """What the daemon stores about a task, enough to re-adopt it after a restart."""

    urn: str
    pid: int
    create_time: float  # psutil's, to tell a reused pid apart
    argv: list[str]
    cwd: str
    started_at: float  # on the runner's clock (wall time by default, so it survives restarts)
    quota: Quota
    state: str  # one of STATES
    exit_code: int | None
    reason: str | None
    stderr_path: str
    stdout_path: str

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES

    def to_value(self) -> dict[str, Any]:
        """A msgpack-able dict."""
        value = {f.name: getattr(self, f.name) for f in fields(self)}
        value["argv"] = list(self.argv)
        value["quota"] = self.quota.to_value()
        return value

    @classmethod
    def from_value(cls, value: Mapping[str, Any]) -> TaskRecord:
        if not isinstance(value, Mapping):
            raise CodecError(f"a task record must be a map, not {type(value).__name__}")
        urn = value.get("urn", "?")
        for name, types in _RECORD_FIELDS.items():
            if name not in value:
                raise CodecError(f"task record {urn}: field {name} is missing")
            if isinstance(value[name], bool) or not isinstance(value[name], types):
                raise CodecError(f"task record {urn}: field {name} has type {type(value[name]).__name__}")
        if value["state"] not in STATES:
            raise CodecError(f"task record {urn}: state {value['state']!r} is not one of {', '.join(STATES)}")
        if not all(isinstance(a, str) for a in value["argv"]):
            raise CodecError(f"task record {urn}: argv holds something other than strings")
        fields_ = {name: value[name] for name in _RECORD_FIELDS}
        fields_["argv"] = list(value["argv"])
        fields_["quota"] = Quota.from_value(value["quota"])
        return cls(**fields_)


class WarmProcess(Protocol):
    """An idle interpreter, our child, that becomes the task it reads from `stdin` (daemon/zygote.py):
    a subprocess.Popen, or a daemon/pool.py Zygote forked from a template and adopted by us."""

    pid: int
    stdin: IO[bytes] | None
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


@dataclass
class _Task:
    record: TaskRecord
    popen: subprocess.Popen[bytes] | WarmProcess | None  # None: adopted, not our child
    kill_reason: str | None = None  # set once we decided to SIGKILL it; its exit reports this
    cpu_seconds: float = 0.0  # the most seen: time of reaped-elsewhere descendants drops out
    rss_bytes: int = 0
    open_files: int = 0
    peak_rss_bytes: int = 0
    peak_open_files: int = 0
    ended_at: float | None = None
    sampled_at: float = float("-inf")  # when a task without usage quotas was last sampled (see _sample_due)
    measured: bool = False  # its use was read at least once (not, e.g., one that ended while the daemon was down)


UNLIMITED_SAMPLE_S = 2.0        # how often the use of a task without cpu/memory/files quotas is read


class TaskRunner:
    """Starts tasks and watches them; `poll()` reports exits, quota kills and state changes.

    `clock` gives `started_at` and the default `now`; a `now` passed to poll() must come from the
    same clock. `address_space_net=False` drops the RLIMIT_AS safety net of memory quotas.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time, address_space_net: bool = True) -> None:
        self._clock = clock
        self._address_space_net = address_space_net
        self._tasks: dict[str, _Task] = {}
        self._pending: list[TaskEvent] = []

    # ----- starting and adopting

    def start(self, urn: str, argv: Sequence[str], *, cwd: str | os.PathLike[str], env: Mapping[str, str],
              quota: Quota | None = None, stdin: str | os.PathLike[str] | None = None,
              warm: WarmProcess | None = None) -> TaskRecord:
        """Start `argv` in `cwd` with exactly `env`, in a new session, under `quota`.

        stdout and stderr go to `<urn with : as _>.stdout/.stderr` in `cwd`; stdin is the named
        file (relative to `cwd`) or /dev/null. `warm` is an idle zygote (daemon/zygote.py) to
        become the task instead of starting a new process; only for Python programs, no stdin.
        """
        if not isinstance(urn, str) or not urn:
            raise TaskError(f"a task needs a URN, got {urn!r}")
        old = self._tasks.get(urn)
        if old is not None and old.record.live:
            raise TaskError(f"{urn} is already {old.record.state} as pid {old.record.pid}; "
                            "kill it first or choose another URN")
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise TaskError(f"cannot start {urn}: argv must be a non-empty list of strings, got {argv!r}")
        quota = Quota() if quota is None else quota
        if not isinstance(quota, Quota):
            raise BadQuota(f"cannot start {urn}: quota must be a Quota, not {type(quota).__name__}")
        workdir = Path(cwd).resolve()
        if not workdir.is_dir():
            raise TaskError(f"cannot start {urn}: working directory {workdir} does not exist")
        program = _resolve_program(urn, argv[0], workdir, env)
        stem = _file_stem(urn)
        stdout_path, stderr_path = workdir / f"{stem}.stdout", workdir / f"{stem}.stderr"
        limits = self._rlimits(quota)
        if warm is not None and stdin is None and warm.stdin is not None:
            return self._become(urn, warm, argv, workdir, env, quota, limits, stdout_path, stderr_path)
        if limits:
            spec = ",".join(f"{name}:{soft}:{hard}" for name, soft, hard in limits)
            command = [sys.executable, "-I", "-S", "-c", _EXEC_WITH_LIMITS, spec, program, *argv]
            executable = None
        else:
            command, executable = list(argv), program
        try:
            with contextlib.ExitStack() as files:
                stdin_file: Any = subprocess.DEVNULL
                if stdin is not None:
                    stdin_file = files.enter_context(open(workdir / stdin, "rb"))
                out = files.enter_context(open(stdout_path, "wb"))
                err = files.enter_context(open(stderr_path, "wb"))
                popen = subprocess.Popen(command, executable=executable, cwd=workdir, env=dict(env),
                                         stdin=stdin_file, stdout=out, stderr=err,
                                         start_new_session=True, close_fds=True)
        except OSError as exc:
            raise TaskError(f"cannot start {urn} ({argv[0]} in {workdir}): {exc}") from exc
        record = TaskRecord(
            urn=urn, pid=popen.pid, create_time=psutil.Process(popen.pid).create_time(), argv=list(argv),
            cwd=str(workdir), started_at=self._clock(), quota=quota, state="running", exit_code=None,
            reason=None, stderr_path=str(stderr_path), stdout_path=str(stdout_path))
        self._tasks[urn] = _Task(record=record, popen=popen)
        return _copy(record)

    def _become(self, urn: str, warm: WarmProcess, argv: Sequence[str], workdir: Path,
                env: Mapping[str, str], quota: Quota, limits: list[tuple[str, int, int]], stdout_path: Path,
                stderr_path: Path) -> TaskRecord:
        """Hand a zygote its task (one JSON line); it applies the limits to itself and runs it."""
        import json
        command = {"argv": list(argv), "cwd": str(workdir), "env": dict(env), "limits": limits,
                   "stdout": str(stdout_path), "stderr": str(stderr_path)}
        assert warm.stdin is not None
        try:
            warm.stdin.write(json.dumps(command).encode() + b"\n")
            warm.stdin.close()
            create_time = psutil.Process(warm.pid).create_time()
        except (OSError, psutil.Error) as exc:
            raise TaskError(f"cannot start {urn}: the warm interpreter {warm.pid} failed ({exc})") from exc
        record = TaskRecord(
            urn=urn, pid=warm.pid, create_time=create_time, argv=list(argv), cwd=str(workdir),
            started_at=self._clock(), quota=quota, state="running", exit_code=None, reason=None,
            stderr_path=str(stderr_path), stdout_path=str(stdout_path))
        self._tasks[urn] = _Task(record=record, popen=warm)
        return _copy(record)

    def adopt(self, records: Iterable[TaskRecord]) -> list[TaskEvent]:
        """Take over the tasks of a previous daemon; report those that ended while it was down.

        A live record whose pid is gone, or now names another process, is "lost"; a zombie that is
        still the same process "exited" (code unknown unless we are its parent). Finished records
        are kept as they are, without events (they were reported before).
        """
        records = list(records)
        seen: set[str] = set()
        for rec in records:
            if rec.urn in self._tasks or rec.urn in seen:
                raise TaskError(f"{rec.urn} is already known to this runner; adopt each record once")
            seen.add(rec.urn)
        now = self._clock()
        first = len(self._pending)
        for rec in records:
            task = _Task(record=_copy(rec), popen=None)
            self._tasks[rec.urn] = task
            if not rec.live:
                continue
            proc = _same_process(rec.pid, rec.create_time)
            if proc is None:
                self._move(task, "vanish", now, reason="vanished while the daemon was down")
                continue
            ended, code = self._reap(task)
            if ended:
                self._finish(task, code, now, unknown_reason="exited while the daemon was down")
                continue
            with contextlib.suppress(psutil.Error):
                stopped = proc.status() == psutil.STATUS_STOPPED
                if stopped != (rec.state == "suspended"):
                    self._move(task, "resume" if rec.state == "suspended" else "suspend", now)
        events = self._pending[first:]
        del self._pending[first:]
        return events

    # ----- watching

    def poll(self, now: float | None = None) -> list[TaskEvent]:
        """Check every live task (exit, quotas) and return the events since the last poll."""
        self._check(self._clock() if now is None else now)
        events, self._pending = self._pending, []
        return events

    def wait(self, urn: str, timeout: float) -> TaskRecord:
        """Block until the task ends (its events still come out of poll()); TaskTimeout if it does not."""
        task = self._task(urn)
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            self._check(self._clock())
            if not task.record.live:
                return _copy(task.record)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TaskTimeout(f"{urn} (pid {task.record.pid}) is still {task.record.state} after {timeout:g} s")
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.05)

    def status(self, urn: str) -> dict[str, Any]:
        """State and current use of a task (the last use seen, once it has ended)."""
        task = self._task(urn)
        rec = task.record
        if rec.live:
            self._sample(task)
        end = self._clock() if task.ended_at is None else task.ended_at
        return {"urn": urn, "state": rec.state, "pid": rec.pid, "cpu_seconds": task.cpu_seconds,
                "rss_bytes": task.rss_bytes, "open_files": task.open_files, "age_s": end - rec.started_at,
                "peak_rss_bytes": task.peak_rss_bytes, "exit_code": rec.exit_code, "reason": rec.reason}

    def record(self, urn: str) -> TaskRecord:
        """A copy of one task's record."""
        return _copy(self._task(urn).record)

    def pids(self) -> set[int]:
        """The pids of the live tasks (their leaders)."""
        return {t.record.pid for t in self._tasks.values() if t.record.live}

    def records(self) -> list[TaskRecord]:
        """Copies of every task's record, for the daemon to store."""
        return [_copy(task.record) for task in self._tasks.values()]

    def stderr_tail(self, urn: str, n_bytes: int = 4096) -> str:
        """The last `n_bytes` the task wrote to stderr, decoded as UTF-8 (bad bytes replaced)."""
        return _tail(self._task(urn).record.stderr_path, n_bytes)

    def stdout_tail(self, urn: str, n_bytes: int = 4096) -> str:
        return _tail(self._task(urn).record.stdout_path, n_bytes)

    def forget(self, urn: str) -> None:
        """Drop the record of an ended task."""
        task = self._task(urn)
        if task.record.live:
            raise TaskError(f"cannot forget {urn}: it is still {task.record.state}; kill it first")
        del self._tasks[urn]

    # ----- controlling

    def signal(self, urn: str, signum: int, *, group: bool = True) -> None:
        """Send `signum` to the task's process group (or only its leader). SIGSTOP, SIGCONT and
        SIGKILL mean suspend(), resume() and kill(), so the task's state follows."""
        if signum == _signal.SIGSTOP:
            return self.suspend(urn)
        if signum == _signal.SIGCONT:
            return self.resume(urn)
        if signum == _signal.SIGKILL:
            return self.kill(urn)
        task = self._live(urn, "signal")
        if not self._send(task, signum, group=group, tree=False):
            raise TaskError(f"cannot signal {urn}: pid {task.record.pid} is gone; poll() reports how it ended")
        return None

    def kill(self, urn: str, reason: str | None = None) -> None:
        """SIGKILL the task's group and descendants; its "killed" event comes from poll().

        `reason` (default "signal SIGKILL") is what the event reports. Killing an ended task does nothing.
        """
        task = self._task(urn)
        if not task.record.live:
            return
        if task.kill_reason is None:
            task.kill_reason = reason or "signal SIGKILL"
        self._send(task, _signal.SIGKILL, group=True, tree=True)

    def suspend(self, urn: str) -> None:
        """SIGSTOP the task's group and descendants. Its cpu time stops; its wall time does not."""
        task = self._live(urn, "suspend")
        if task.record.state == "suspended":
            return
        if not self._send(task, _signal.SIGSTOP, group=True, tree=True):
            raise TaskError(f"cannot suspend {urn}: pid {task.record.pid} is gone; poll() reports how it ended")
        self._move(task, "suspend", self._clock())

    def resume(self, urn: str) -> None:
        """SIGCONT the task's group and descendants."""
        task = self._live(urn, "resume")
        if task.record.state == "running":
            return
        if not self._send(task, _signal.SIGCONT, group=True, tree=True):
            raise TaskError(f"cannot resume {urn}: pid {task.record.pid} is gone; poll() reports how it ended")
        self._move(task, "resume", self._clock())

    # ----- internals

    def _task(self, urn: str) -> _Task:
        try:
            return self._tasks[urn]
        except KeyError:
            raise UnknownTask(f"no task {urn} on this host; records() lists the tasks it knows") from None

    def _live(self, urn: str, action: str) -> _Task:
        task = self._task(urn)
        if not task.record.live:
            rec = task.record
            why = f" ({rec.reason})" if rec.reason else ""
            raise TaskError(f"cannot {action} {urn}: it has already ended, state {rec.state}{why}")
        return task

    def _move(self, task: _Task, happening: str, now: float, *, exit_code: int | None = None,
              reason: str | None = None) -> None:
        rec = task.record
        try:
            state, kind = _TRANSITIONS[(rec.state, happening)]
        except KeyError:
            raise TaskError(f"{rec.urn}: cannot {happening} a task that is {rec.state}") from None
        rec.state = state
        if state not in LIVE_STATES:
            rec.exit_code, rec.reason = exit_code, reason
            task.ended_at = now
        self._pending.append(TaskEvent(rec.urn, kind, exit_code, reason, now))

    def _check(self, now: float) -> None:
        for task in list(self._tasks.values()):
            if not task.record.live:
                continue
            ended, code = self._reap(task)
            if ended:
                self._finish(task, code, now, unknown_reason="exit code unknown: adopted, not a child of this daemon")
                continue
            if task.kill_reason is None:
                if self._sample_due(task, now):
                    self._sample(task)
                task.kill_reason = self._breach(task, now)      # wall time needs no sample
            if task.kill_reason is not None:  # sent again on every poll until the exit is seen
                self._send(task, _signal.SIGKILL, group=True, tree=True)

    def _reap(self, task: _Task) -> tuple[bool, int | None]:
        """(ended, exit code or None when unknown). Kills what is left of the group on the way."""
        rec = task.record
        if task.popen is not None:
            try:
                info = os.waitid(os.P_PID, rec.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # reaped behind our back; the code is lost unless Popen has it
                return True, task.popen.returncode
            if info is None:
                return False, None
            self._last_cpu(task)
            _killpg(rec.pid, _signal.SIGKILL)  # the unreaped leader still holds the group id
            return True, task.popen.wait()
        proc = _same_process(rec.pid, rec.create_time)
        if proc is None:
            return True, None
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                return False, None
            ours = proc.ppid() == os.getpid()
        except psutil.NoSuchProcess:
            return True, None
        self._last_cpu(task)
        _killpg(rec.pid, _signal.SIGKILL)
        if ours:  # a daemon that re-executed itself is still the parent, so the code is ours to read
            with contextlib.suppress(ChildProcessError):
                _, status = os.waitpid(rec.pid, 0)
                return True, os.waitstatus_to_exitcode(status)
        return True, None

    def _finish(self, task: _Task, code: int | None, now: float, *, unknown_reason: str) -> None:
        if task.kill_reason is not None:
            happening, reason = "die", task.kill_reason
        elif code is None:
            happening, reason = "exit", unknown_reason
        elif code < 0:
            happening, reason = "die", self._signal_reason(task, -code)
        else:
            happening, reason = "exit", (f"exit code {code}" if code else None)
        self._move(task, happening, now, exit_code=code, reason=reason)

    @staticmethod
    def _signal_reason(task: _Task, signum: int) -> str:
        cpu = task.record.quota.cpu_seconds
        if signum == _signal.SIGXCPU and cpu is not None:
            return f"quota: cpu {cpu:g} s exceeded (RLIMIT_CPU sent SIGXCPU)"
        try:
            return f"signal {_signal.Signals(signum).name}"
        except ValueError:
            return f"signal {signum}"

    @staticmethod
    def _sample_due(task: _Task, now: float) -> bool:
        """A task with a cpu, memory or open-files quota is sampled on every poll; any other only
        every UNLIMITED_SAMPLE_S, for its figures (reading a process tree's use costs a dozen /proc
        reads per process: at every poll, a daemon with ten busy tasks spent a third of its time
        there). status() samples afresh whenever it is asked."""
        q = task.record.quota
        if q.cpu_seconds is not None or q.memory_bytes is not None or q.open_files is not None:
            return True
        if now - task.sampled_at >= UNLIMITED_SAMPLE_S or now < task.sampled_at:
            task.sampled_at = now
            return True
        return False

    @staticmethod
    def _last_cpu(task: _Task) -> None:
        """(The leader exited, not yet reaped.) Its CPU time as the kernel keeps it for the zombie,
        with what its reaped descendants used: the last sample may be up to a poll old, and the
        usage a task is accounted with is this figure."""
        with contextlib.suppress(psutil.Error, OSError):
            t = psutil.Process(task.record.pid).cpu_times()
            task.cpu_seconds = max(task.cpu_seconds, t.user + t.system + t.children_user + t.children_system)
            task.measured = True

    def usage(self, urn: str) -> dict[str, Any] | None:
        """What a task used, for accounting: CPU seconds (its whole tree), wall seconds from its
        start to its end (or now) and the peak resident memory seen; None when its use was never
        read (it ended while the daemon was down: zeros would be wrong, not just missing)."""
        task = self._task(urn)
        if not task.measured:
            return None
        end = self._clock() if task.ended_at is None else task.ended_at
        return {"cpu_seconds": round(task.cpu_seconds, 3), "wall_seconds": round(end - task.record.started_at, 3),
                "peak_rss_bytes": task.peak_rss_bytes}

    def _sample(self, task: _Task) -> bool:
        """Refresh the task's use from its process tree; False if nothing of it could be read."""
        cpu = 0.0
        rss = files = 0
        seen = False
        for pid in _process_tree(task.record.pid):
            try:
                proc = psutil.Process(pid)
                with proc.oneshot():
                    t = proc.cpu_times()
                    p_cpu = t.user + t.system + t.children_user + t.children_system
                    p_rss = proc.memory_info().rss
                    p_files = proc.num_fds()
            except psutil.Error:  # gone, a zombie, or not ours to read
                continue
            seen = True
            cpu, rss, files = cpu + p_cpu, rss + p_rss, files + p_files
        if seen:
            task.measured = True
            task.cpu_seconds = max(task.cpu_seconds, cpu)
            task.rss_bytes, task.open_files = rss, files
            task.peak_rss_bytes = max(task.peak_rss_bytes, rss)
            task.peak_open_files = max(task.peak_open_files, files)
        return seen

    @staticmethod
    def _breach(task: _Task, now: float) -> str | None:
        q, rec = task.record.quota, task.record
        if q.cpu_seconds is not None and task.cpu_seconds > q.cpu_seconds:
            return f"quota: cpu {q.cpu_seconds:g} s exceeded (used {task.cpu_seconds:.2f} s)"
        if q.memory_bytes is not None and task.rss_bytes > q.memory_bytes:
            return f"quota: memory {q.memory_bytes} bytes exceeded (peak {task.peak_rss_bytes})"
        if q.wall_seconds is not None and now - rec.started_at > q.wall_seconds:
            return f"quota: wall {q.wall_seconds:g} s exceeded (age {now - rec.started_at:.2f} s)"
        if q.open_files is not None and task.open_files > q.open_files:
            return f"quota: open files {q.open_files} exceeded (peak {task.peak_open_files})"
        return None

    def _send(self, task: _Task, signum: int, *, group: bool, tree: bool) -> bool:
        """Signal the task: its group (or leader), and with `tree` its descendants outside the group.

        False, sending nothing, if an adopted leader is gone or its pid now names another process.
        """
        rec = task.record
        if task.popen is None and _same_process(rec.pid, rec.create_time) is None:
            return False
        # Snapshot the tree first: once the group dies, escaped descendants are re-parented away.
        descendants = _process_tree(rec.pid)[1:] if tree else []
        if group:
            _killpg(rec.pid, signum)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(rec.pid, signum)
        for pid in descendants:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.create_time() >= rec.create_time - _CTIME_TOLERANCE_S:
                    proc.send_signal(signum)
        return True

    def _rlimits(self, quota: Quota) -> list[tuple[str, int, int]]:
        """The (RLIMIT_ name, soft, hard) the wrapper sets, capped by our own hard limits."""
        wanted: list[tuple[str, int, int]] = []
        if quota.cpu_seconds is not None:
            soft = max(1, math.ceil(quota.cpu_seconds))
            wanted.append(("CPU", soft, soft + 1))
        if quota.memory_bytes is not None and self._address_space_net:
            net = 4 * quota.memory_bytes + 2 * _GIB
            wanted.append(("AS", net, net))
        if quota.open_files is not None:
            wanted.append(("NOFILE", quota.open_files, quota.open_files))
        limits = []
        for name, soft, hard in wanted:
            _, our_hard = resource.getrlimit(getattr(resource, "RLIMIT_" + name))
            if our_hard != resource.RLIM_INFINITY:
                hard = min(hard, our_hard)
                soft = min(soft, hard)
            elif hard >= _RLIM_MAX:     # more than setrlimit can hold (or any host has): no limit
                continue
            limits.append((name, soft, hard))
        return limits


def _copy(record: TaskRecord) -> TaskRecord:
    return replace(record, argv=list(record.argv))


def _same_process(pid: int, create_time: float) -> psutil.Process | None:
    """The process `pid` if it is still the one created at `create_time` (a zombie counts)."""
    if not isinstance(pid, int) or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        if abs(proc.create_time() - create_time) > _CTIME_TOLERANCE_S:
            return None
    except psutil.Error:
        return None
    return proc


def _killpg(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants. Reads /proc/<pid>/task/<tid>/children, which costs the size of
    the tree, not a scan of every process on the host (psutil's children() reads all of /proc)."""
    if not _PROC_CHILDREN:
        try:
            return [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))]
        except psutil.Error:
            return [pid]
    found, seen = [pid], {pid}
    i = 0
    while i < len(found):
        parent = found[i]
        i += 1
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in seen:
                    seen.add(child)
                    found.append(child)
    return found


def _resolve_program(urn: str, program: str, cwd: Path, env: Mapping[str, str]) -> str:
    """The absolute path exec will run: relative to `cwd` if it names a path, else found on env's PATH."""
    if os.sep in program:
        path = Path(program) if os.path.isabs(program) else cwd / program
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise TaskError(f"cannot start {urn}: {path} is not an executable file")
        return str(path)
    search = env.get("PATH", os.defpath)
    found = shutil.which(program, path=search)
    if found is None:
        raise TaskError(f"cannot start {urn}: program {program!r} not found on PATH {search!r}")
    return os.path.abspath(found)


def _file_stem(urn: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", urn).strip("._")
    return stem[:200] or "task"


def _tail(path: str, n_bytes: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max(0, n_bytes)))
            return f.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return ""
