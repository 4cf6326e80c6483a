"""The task runner against real child processes: exits, signals, suspension, quotas, re-adoption.

Every wait is a deadline over `runner.poll()`; every test kills what it started, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import msgpack
import psutil
import pytest
from snipe_daemon.tasks import Quota, TaskEvent, TaskRecord, TaskRunner

from snipe.errors import BadQuota, CodecError, TaskError, TaskTimeout, UnknownTask
from tests.support import wait_for

PY = sys.executable
ENV = dict(os.environ)
URN = "urn:snipe:proc:t1"
SLEEP_FOREVER = "import time; time.sleep(600)"


def _kill_records(records: list[TaskRecord]) -> None:
    """SIGKILL the groups of live records whose pid still names the same process."""
    for rec in records:
        if not rec.live:
            continue
        try:
            if abs(psutil.Process(rec.pid).create_time() - rec.create_time) < 1.0:
                os.killpg(rec.pid, signal.SIGKILL)
        except (psutil.Error, ProcessLookupError, PermissionError):
            pass


@pytest.fixture
def runner() -> Iterator[TaskRunner]:
    r = TaskRunner()
    try:
        yield r
    finally:
        for rec in r.records():
            if rec.live:
                r.kill(rec.urn)
                with contextlib.suppress(TaskTimeout):
                    r.wait(rec.urn, timeout=5)  # reaps it
        _kill_records(r.records())


class Events:
    """Everything poll() returned, and a way to wait for the event a test expects."""

    def __init__(self, runner: TaskRunner) -> None:
        self.runner = runner
        self.seen: list[TaskEvent] = []

    def wait(self, urn: str, *kinds: str, timeout: float = 10.0) -> TaskEvent:
        def found() -> TaskEvent | None:
            self.seen.extend(self.runner.poll())
            return next((e for e in self.seen if e.urn == urn and e.kind in kinds), None)

        return wait_for(found, timeout, what=f"{'/'.join(kinds)} event of {urn}")  # type: ignore[return-value]

    def poll_for(self, seconds: float) -> None:
        """Keep polling (as the daemon would) for a while; used where time must pass."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.seen.extend(self.runner.poll())
            time.sleep(0.02)


def _gone(pid: int) -> bool:
    """Not running any more: no such pid, or a zombie nobody reaps (pid 1 may not)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _cpu(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


# ----- plain values, no processes


def test_quota_validation_names_the_field() -> None:
    for bad in ({"cpu_seconds": -1}, {"cpu_seconds": 0}, {"memory_bytes": 1.5}, {"wall_seconds": "1"},
                {"open_files": True}, {"wall_seconds": float("inf")}, {"memory_bytes": 0}):
        (name,) = bad
        with pytest.raises(BadQuota, match=name) as info:
            Quota(**bad)
        assert isinstance(info.value, ValueError)
    with pytest.raises(BadQuota, match="cpu"):
        Quota.from_value({"cpu": 1})
    with pytest.raises(BadQuota):
        Quota.from_value([1, 2])  # type: ignore[arg-type]
    q = Quota(cpu_seconds=1.5, memory_bytes=1 << 20, wall_seconds=2, open_files=64)
    assert Quota.from_value(msgpack.unpackb(msgpack.packb(q.to_value()))) == q
    assert Quota().to_value() == {} and Quota.from_value(None) == Quota() == Quota.from_value({})


def test_record_round_trips_through_msgpack_and_refuses_garbage(runner: TaskRunner, tmp_path: Path) -> None:
    rec = runner.start(URN, [PY, "-c", "pass"], cwd=tmp_path, env=ENV, quota=Quota(wall_seconds=30))
    again = TaskRecord.from_value(msgpack.unpackb(msgpack.packb(rec.to_value())))
    assert again == rec
    broken = rec.to_value()
    del broken["pid"]
    with pytest.raises(CodecError, match="pid"):
        TaskRecord.from_value(broken)
    with pytest.raises(CodecError, match="state"):
        TaskRecord.from_value({**rec.to_value(), "state": "dancing"})
    runner.wait(URN, timeout=10)


def test_unknown_urn_and_bad_starts_are_specific_errors(runner: TaskRunner, tmp_path: Path) -> None:
    ghost = "urn:snipe:proc:nobody"
    for call in (runner.status, runner.kill, runner.suspend, runner.resume, runner.stderr_tail, runner.record,
                 lambda u: runner.signal(u, signal.SIGUSR1), lambda u: runner.wait(u, 1)):
        with pytest.raises(UnknownTask, match=ghost) as info:
            call(ghost)
        assert isinstance(info.value, KeyError)
    with pytest.raises(TaskError, match="no-such-program-here"):
        runner.start(URN, ["no-such-program-here"], cwd=tmp_path, env=ENV)
    with pytest.raises(TaskError, match="does not exist"):
        runner.start(URN, [PY, "-c", "pass"], cwd=tmp_path / "missing", env=ENV)
    runner.start(URN, [PY, "-c", SLEEP_FOREVER], cwd=tmp_path, env=ENV)
    with pytest.raises(TaskError, match="already running"):
        runner.start(URN, [PY, "-c", "pass"], cwd=tmp_path, env=ENV)
    with pytest.raises(TaskTimeout, match=URN):
        runner.wait(URN, timeout=0.1)
    with pytest.raises(TaskError, match="still running"):
        runner.forget(URN)


# ----- life and death


def test_exit_code_and_stderr_tail(runner: TaskRunner, tmp_path: Path) -> None:
    code = "import sys; print('out'); sys.stderr.write('x' * 10000 + 'END'); sys.exit(3)"
    runner.start(URN, [PY, "-c", code], cwd=tmp_path, env=ENV)
    done = runner.wait(URN, timeout=10)
    assert (done.state, done.exit_code, done.reason) == ("exited", 3, "exit code 3")
    tail = runner.stderr_tail(URN)
    assert len(tail) == 4096 and tail.endswith("xEND")
    assert runner.stdout_tail(URN) == "out\n"
    assert Path(done.stdout_path).parent == tmp_path
    [ev] = runner.poll()  # wait() drove the checks; the event still comes out of poll()
    assert (ev.urn, ev.kind, ev.exit_code, ev.reason) == (URN, "exited", 3, "exit code 3")
    assert runner.poll() == []
    with pytest.raises(TaskError, match="already ended"):
        runner.suspend(URN)
    runner.kill(URN)  # killing an ended task does nothing
    runner.forget(URN)
    assert runner.records() == []


def test_clean_exit_has_no_reason(runner: TaskRunner, tmp_path: Path) -> None:
    runner.start(URN, [PY, "-c", "pass"], cwd=tmp_path, env=ENV)
    done = runner.wait(URN, timeout=10)
    assert (done.state, done.exit_code, done.reason) == ("exited", 0, None)


def test_kill_takes_the_whole_process_group(runner: TaskRunner, tmp_path: Path) -> None:
    code = ("import subprocess, sys, time\n"
            f"child = subprocess.Popen([sys.executable, '-c', {SLEEP_FOREVER!r}])\n"
            "print(child.pid, flush=True)\n"
            "time.sleep(600)\n")
    rec = runner.start(URN, [PY, "-c", code], cwd=tmp_path, env=ENV)
    grandchild = int(wait_for(lambda: runner.stdout_tail(URN).strip(), what="grandchild pid"))  # type: ignore[arg-type]
    assert grandchild in [p.pid for p in psutil.Process(rec.pid).children()]
    runner.kill(URN)
    ev = Events(runner).wait(URN, "killed", "exited")
    assert (ev.kind, ev.exit_code, ev.reason) == ("killed", -signal.SIGKILL, "signal SIGKILL")
    assert runner.record(URN).state == "killed"
    wait_for(lambda: _gone(grandchild), what="the grandchild to die with its group")


def test_signal_reaches_the_handler(runner: TaskRunner, tmp_path: Path) -> None:
    code = ("import pathlib, signal, time\n"
            "signal.signal(signal.SIGUSR1, lambda *_: pathlib.Path('got-usr1').write_text('yes'))\n"
            "pathlib.Path('ready').touch()\n"
            "while True: time.sleep(0.01)\n")
    runner.start(URN, [PY, "-c", code], cwd=tmp_path, env=ENV)
    wait_for((tmp_path / "ready").exists, what="the handler to be installed")
    runner.signal(URN, signal.SIGUSR1)
    wait_for((tmp_path / "got-usr1").exists, what="the SIGUSR1 handler to run")
    assert runner.status(URN)["state"] == "running"
    runner.signal(URN, signal.SIGTERM)
    ev = Events(runner).wait(URN, "killed", "exited")
    assert (ev.kind, ev.exit_code, ev.reason) == ("killed", -signal.SIGTERM, "signal SIGTERM")


def test_suspend_stops_cpu_time_and_resume_restarts_it(runner: TaskRunner, tmp_path: Path) -> None:
    rec = runner.start(URN, [PY, "-c", "while True: pass"], cwd=tmp_path, env=ENV, quota=Quota(wall_seconds=60))
    events = Events(runner)
    wait_for(lambda: _cpu(rec.pid) > 0.05, what="the busy loop to burn some cpu")
    runner.suspend(URN)
    assert events.wait(URN, "suspended").reason is None
    wait_for(lambda: psutil.Process(rec.pid).status() == psutil.STATUS_STOPPED, what="the kernel to stop it")
    assert runner.status(URN)["state"] == "suspended"
    frozen = _cpu(rec.pid)
    events.poll_for(0.3)
    assert _cpu(rec.pid) == frozen
    assert runner.status(URN)["cpu_seconds"] >= frozen
    runner.suspend(URN)  # already suspended: nothing happens, no second event
    runner.resume(URN)
    events.wait(URN, "resumed")
    wait_for(lambda: _cpu(rec.pid) > frozen, what="cpu time to advance again")
    assert psutil.Process(rec.pid).status() != psutil.STATUS_STOPPED
    assert [e.kind for e in events.seen] == ["suspended", "resumed"]
    # SIGSTOP / SIGCONT through signal() keep the state right too
    runner.signal(URN, signal.SIGSTOP)
    assert runner.status(URN)["state"] == "suspended"
    runner.signal(URN, signal.SIGCONT)
    assert runner.status(URN)["state"] == "running"


# ----- quotas

OPEN_FILES = """\
import os, time
files = []
try:
    for _ in range(100):
        files.append(open(os.devnull))
except OSError as exc:
    print(len(files), exc.errno, flush=True)
os.fork()  # the per-process rlimit held; the tree now holds twice as many descriptors
time.sleep(600)
"""

QUOTA_CASES = {
    "cpu": ("while True: pass", Quota(cpu_seconds=1), "quota: cpu 1 s exceeded"),
    "memory": ("import time; b = b'x' * (300 << 20); time.sleep(600)", Quota(memory_bytes=100 << 20),
               f"quota: memory {100 << 20} bytes exceeded (peak "),
    "wall": (SLEEP_FOREVER, Quota(wall_seconds=1), "quota: wall 1 s exceeded"),
    "open files": (OPEN_FILES, Quota(open_files=20), "quota: open files 20 exceeded (peak "),
}


@pytest.mark.parametrize("which", list(QUOTA_CASES))
def test_quota_breach_kills_and_names_the_quota(runner: TaskRunner, tmp_path: Path, which: str) -> None:
    code, quota, reason = QUOTA_CASES[which]
    runner.start(URN, [PY, "-c", code], cwd=tmp_path, env=ENV, quota=quota)
    ev = Events(runner).wait(URN, "killed", "exited", timeout=15)
    assert ev.kind == "killed", ev
    assert ev.reason is not None and ev.reason.startswith(reason), ev.reason
    # the runner's SIGKILL, or for cpu possibly the kernel's RLIMIT_CPU SIGXCPU, whichever came first
    assert ev.exit_code in (-signal.SIGKILL, -signal.SIGXCPU)
    rec = runner.record(URN)
    assert (rec.state, rec.reason) == ("killed", ev.reason)
    if which == "memory":
        assert int(ev.reason.rsplit(" ", 1)[1].rstrip(")")) > 100 << 20
    if which == "open files":
        assert int(ev.reason.rsplit(" ", 1)[1].rstrip(")")) > 20
        opened, errno = map(int, runner.stdout_tail(URN).split())
        assert opened < 20 and errno == 24  # EMFILE: RLIMIT_NOFILE stopped each process at the quota


def test_memory_safety_net_is_generous(runner: TaskRunner, tmp_path: Path) -> None:
    """RLIMIT_AS is far above the quota: threads and reservations of an honest program still work."""
    code = ("import resource, threading\n"
            "ts = [threading.Thread(target=lambda: bytearray(1 << 20)) for _ in range(8)]\n"
            "[t.start() for t in ts]; [t.join() for t in ts]\n"
            "print(resource.getrlimit(resource.RLIMIT_AS)[0])\n")
    runner.start(URN, [PY, "-c", code], cwd=tmp_path, env=ENV, quota=Quota(memory_bytes=64 << 20))
    done = runner.wait(URN, timeout=10)
    assert (done.state, done.exit_code) == ("exited", 0), runner.stderr_tail(URN)
    assert int(runner.stdout_tail(URN)) >= 4 * (64 << 20)


# ----- adoption after a daemon restart

DAEMON_A = """\
import os, sys, time
import msgpack
from snipe_daemon.tasks import Quota, TaskRunner
cwd, go, leaves = sys.argv[1:4]
runner = TaskRunner()
env = dict(os.environ)
runner.start("urn:snipe:proc:stays", [sys.executable, "-c", "import time; time.sleep(600)"], cwd=cwd, env=env,
             quota=Quota(wall_seconds=300))
runner.start("urn:snipe:proc:leaves", [sys.executable, "-c", leaves, go], cwd=cwd, env=env)
sys.stdout.write(msgpack.packb([r.to_value() for r in runner.records()]).hex() + "\\n")
sys.stdout.flush()
time.sleep(600)
"""

LEAVES = """\
import os, sys, time
while not os.path.exists(sys.argv[1]):
    time.sleep(0.01)
sys.stderr.write("leaving")
sys.exit(3)
"""


def _unused_pid() -> int:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(pid for pid in range(pid_max - 1, 300, -1) if not psutil.pid_exists(pid))


def test_adopt_after_the_daemon_was_killed(tmp_path: Path) -> None:
    go = tmp_path / "go"
    daemon_a = subprocess.Popen([PY, "-c", DAEMON_A, str(tmp_path), str(go), LEAVES], stdout=subprocess.PIPE)
    records: list[TaskRecord] = []
    runner_b = TaskRunner()
    try:
        assert daemon_a.stdout is not None
        ready, _, _ = select.select([daemon_a.stdout], [], [], 20)
        assert ready, "daemon A did not report its records"
        values = msgpack.unpackb(bytes.fromhex(daemon_a.stdout.readline().decode().strip()))
        records = [TaskRecord.from_value(v) for v in values]
        by_urn = {r.urn: r for r in records}
        stays, leaves = by_urn["urn:snipe:proc:stays"], by_urn["urn:snipe:proc:leaves"]

        daemon_a.kill()  # the daemon dies; its tasks, orphaned, carry on
        daemon_a.wait()
        go.touch()
        wait_for(lambda: _gone(leaves.pid), what="the task to exit while no daemon watches")
        zombie = psutil.pid_exists(leaves.pid)  # whether this host's init reaps orphans decides what is knowable

        ghost = replace(stays, urn="urn:snipe:proc:ghost", pid=_unused_pid())
        imposter = replace(stays, urn="urn:snipe:proc:imposter", pid=os.getpid(),
                           create_time=stays.create_time - 1000)  # a live pid, but not the process recorded
        events = {e.urn: e for e in runner_b.adopt([*records, ghost, imposter])}

        assert stays.urn not in events
        left = events[leaves.urn]
        if zombie:
            assert (left.kind, left.exit_code, left.reason) == ("exited", None, "exited while the daemon was down")
        else:
            assert (left.kind, left.exit_code, left.reason) == ("lost", None, "vanished while the daemon was down")
        for fake in (ghost, imposter):
            ev = events[fake.urn]
            assert (ev.kind, ev.exit_code, ev.reason) == ("lost", None, "vanished while the daemon was down")
            assert runner_b.record(fake.urn).state == "lost"
        assert runner_b.stderr_tail(leaves.urn) == "leaving"
        assert psutil.pid_exists(os.getpid())  # the imposter's pid (ours) was never signalled

        status = runner_b.status(stays.urn)
        assert (status["state"], status["pid"]) == ("running", stays.pid)
        assert runner_b.record(stays.urn).quota == Quota(wall_seconds=300)
        assert runner_b.poll() == []
        runner_b.kill(stays.urn)
        ev = Events(runner_b).wait(stays.urn, "killed", "exited")
        assert (ev.kind, ev.exit_code, ev.reason) == ("killed", None, "signal SIGKILL")  # not our child: no code
        assert _gone(stays.pid)
    finally:
        if daemon_a.poll() is None:
            daemon_a.kill()
            daemon_a.wait()
        if daemon_a.stdout is not None:
            daemon_a.stdout.close()
        _kill_records(records)
        _kill_records(runner_b.records())


def test_wall_quota_is_checked_on_every_poll_though_use_is_read_less_often(tmp_path: Path) -> None:
    """A task with only a wall-time quota is sampled every UNLIMITED_SAMPLE_S, but its age is
    judged on each poll (driven here by the runner's clock, so no waiting is involved)."""
    clock = [1000.0]
    runner = TaskRunner(clock=lambda: clock[0])
    runner.start(URN, [PY, "-c", SLEEP_FOREVER], cwd=tmp_path, env=ENV, quota=Quota(wall_seconds=1))
    try:
        assert runner.poll(clock[0] + 0.5) == []           # sampled now; the next sample is 2 s away
        runner.poll(clock[0] + 1.5)                        # over the quota before that: killed now
        done = runner.wait(URN, timeout=10)                # (its clock stays put: only the kill ends it)
        assert done.state == "killed" and (done.reason or "").startswith("quota: wall 1 s exceeded"), done
    finally:
        _kill_records(runner.records())
