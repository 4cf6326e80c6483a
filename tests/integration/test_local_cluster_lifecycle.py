"""`cluster up` / `cluster down` of the embedded local cluster: only its own processes are ever
signalled (a PID in a stale cluster.json may be anybody's), a cluster of another shape than
the one asked for is refused rather than silently reused, and one partly down is never
started over: it is said, and `cluster down` stops what is left of it."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

import snipe
from snipe.errors import ClusterPartlyDown, ClusterShapeMismatch
from snipe.localcluster import remove_sockets_of, wait_ended
from snipe.runtime import _cluster_alive, start_embedded, stop_embedded_report
from snipe.transport import bound_ipc_sockets
from tests.support import wait_for


def console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")}
    env["SNIPE_HOME"] = str(home)
    where = ["--home", str(home)] if args[0] == "cluster" else []    # the others find it by SNIPE_HOME
    return subprocess.run([sys.executable, "-m", "snipe.console.main", *args, *where, "--json"],
                          env=env, capture_output=True, text=True, timeout=120)


def up(home: Path) -> dict[str, Any]:
    r = console(home, "cluster", "up", "--replicas", "1", "--hosts", "1")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return json.loads(r.stdout)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "home"
    try:
        yield root
    finally:
        stop_embedded_report(root)      # whatever a failed test left running
        # and what cluster.json no longer names (a cluster started over another, as once happened)
        left = [psutil.Process(pid) for pid in _processes_in(root) if psutil.pid_exists(pid)]
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(left, timeout=10)


@pytest.fixture
def stranger() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of this user: what a reused PID would belong to. It runs until its
    stdin closes."""
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    try:
        yield p
    finally:
        p.kill()
        p.wait(10)


def _rewrite(home: Path, change: Any) -> dict[str, Any]:
    path = home / "cluster.json"
    desc = json.loads(path.read_text())
    change(desc)
    path.write_text(json.dumps(desc))
    return desc


def test_down_spares_a_process_that_took_a_listed_pid(home: Path, stranger: subprocess.Popen[bytes],
                                                      caplog: pytest.LogCaptureFixture) -> None:
    desc = up(home)
    ours = list(desc["pids"])
    assert len(ours) == 2 and {r["pid"] for r in desc["processes"]} == set(ours)
    assert all(r["create_time"] and r["cmdline"] for r in desc["processes"])

    def pid_reused(d: dict[str, Any]) -> None:
        # as after a reboot: the daemon's record now names a PID the stranger holds
        d["pids"].append(stranger.pid)
        d["processes"].append({**d["processes"][-1], "pid": stranger.pid})
    stale = _rewrite(home, pid_reused)
    assert not _cluster_alive(stale, home)      # nor would `cluster up` take it for a running cluster

    with caplog.at_level(logging.WARNING, "snipe.runtime"):
        report = stop_embedded_report(home)
    assert report["stopped"] is True and sorted(report["signalled"]) == sorted(ours)
    assert [s["pid"] for s in report["skipped"]] == [stranger.pid]
    assert "is now another process" in report["skipped"][0]["reason"]
    assert f"not signalling pid {stranger.pid}" in caplog.text
    wait_for(lambda: not any(_running(p) for p in ours), 20, "the cluster's replica and daemon to end")
    assert stranger.poll() is None and _running(stranger.pid)
    assert not (home / "cluster.json").exists()


def test_down_of_an_old_cluster_json_stops_only_what_is_plainly_this_clusters(
        home: Path, stranger: subprocess.Popen[bytes]) -> None:
    ours = up(home)["pids"]

    def old_format(d: dict[str, Any]) -> None:        # as written before create times were recorded
        del d["processes"]
        d["pids"].append(stranger.pid)
    _rewrite(home, old_format)

    report = stop_embedded_report(home)
    assert sorted(report["signalled"]) == sorted(ours)
    assert [s["pid"] for s in report["skipped"]] == [stranger.pid]
    assert "cannot be verified" in report["skipped"][0]["reason"]
    wait_for(lambda: not any(_running(p) for p in ours), 20, "the cluster's replica and daemon to end")
    assert stranger.poll() is None


def test_a_clock_step_does_not_make_the_clusters_processes_strangers(home: Path) -> None:
    """Create times move with the wall clock (psutil adds the boot time); the boot id and start
    tick recorded with them do not, and a different start tick is another process."""
    desc = up(home)
    assert all(isinstance(r["start_ticks"], int) and r["boot_id"] for r in desc["processes"])
    stepped = _rewrite(home, lambda d: [r.update(create_time=r["create_time"] + 3600) for r in d["processes"]])
    assert _cluster_alive(stepped, home)
    other = _rewrite(home, lambda d: [r.update(start_ticks=r["start_ticks"] + 1) for r in d["processes"]])
    assert not _cluster_alive(other, home)
    _rewrite(home, lambda d: d.update(processes=desc["processes"]))        # so that `down` knows them again
    assert sorted(stop_embedded_report(home)["signalled"]) == sorted(desc["pids"])


def test_up_with_another_shape_refuses_and_without_one_reuses(home: Path) -> None:
    desc = up(home)
    with pytest.raises(ClusterShapeMismatch) as caught:
        start_embedded(home, replicas=3, hosts=3)
    message = str(caught.value)
    assert "1 replica and 1 host already runs" in message and "3 replicas and 3 hosts" in message
    assert "cluster down" in message and str(home) in message
    with pytest.raises(ClusterShapeMismatch, match="1 replica and 2 hosts were asked"):
        start_embedded(home, hosts=2)
    assert start_embedded(home)["pids"] == desc["pids"]                          # no shape asked: reused
    assert start_embedded(home, replicas=1, hosts=1)["pids"] == desc["pids"]      # the same shape: reused

    r = console(home, "cluster", "up", "--replicas", "3", "--hosts", "3")       # as a user would meet it
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "3 replicas and 3 hosts were asked" in json.loads(r.stdout)["error"]
    assert json.loads(console(home, "cluster", "status").stdout)["pids"] == desc["pids"]   # left untouched


def _processes_in(home: Path, *, zygotes: bool = True) -> set[int]:
    """Every running process of the cluster in `home`: replicas and daemons name files in it;
    with `zygotes`, also what its daemons started (zygotes, tasks), which run in folders in it."""
    inside = str(home.resolve())
    found = set()
    for p in psutil.process_iter(["cwd", "cmdline", "status"]):
        try:
            if p.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if ((zygotes and (p.info["cwd"] or "").startswith(inside))
                    or any(inside in a for a in p.info["cmdline"] or [])):
                found.add(p.pid)
        except (psutil.Error, TypeError):
            continue
    return found


def _pid_of(desc: dict[str, Any], role: str, ident: str) -> int:
    return next(r["pid"] for r in desc["processes"] if (r["role"], r["id"]) == (role, ident))


def test_a_cluster_partly_down_is_said_never_started_over_and_down_stops_the_rest(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    desc = console(home, "cluster", "up").stdout      # the walkthrough's: 3 replicas, 3 daemons
    desc = json.loads(desc)
    assert [(r["role"], r["id"]) for r in desc["processes"]] == [
        ("replica", "r1"), ("replica", "r2"), ("replica", "r3"), ("daemon", "h1"), ("daemon", "h2"), ("daemon", "h3")]
    tasks = [home / "hosts" / h / "tasks" for h in ("h1", "h2", "h3")]
    wait_for(lambda: all(any(psutil.Process(p).cwd().startswith(str(t.resolve())) for p in _processes_in(home))
                         for t in tasks), 30, "every daemon's warm pool (its zygotes)")
    h2 = _pid_of(desc, "daemon", "h2")
    os.kill(h2, 9)
    wait_for(lambda: not _running(h2), 20, "the h2 daemon to end")
    recorded = (home / "cluster.json").read_text()
    before = _processes_in(home, zygotes=False)      # (the warm pools may still be filling)
    assert len(before) == 5

    r = console(home, "hosts")                          # any command that joins the embedded cluster
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    error = json.loads(r.stdout)
    assert error["kind"] == "cluster-partly-down"
    assert f"daemon h2 (pid {h2}) no longer runs" in error["error"] and "5 of its 6 processes" in error["error"]
    assert f"snipe-console cluster down --home {home}" in error["error"]
    for k in [k for k in os.environ if k.startswith("SNIPE_")]:
        monkeypatch.delenv(k)                           # so that init() looks for the embedded cluster
    try:
        with pytest.raises(ClusterPartlyDown, match="daemon h2"):
            snipe.init(home=home)
    finally:
        snipe.shutdown()
    assert (home / "cluster.json").read_text() == recorded
    assert _processes_in(home, zygotes=False) == before, "a replica or daemon was started over the partly-down cluster"

    status = json.loads(console(home, "cluster", "status").stdout)
    assert status["state"] == "partly down" and status["pids"] == desc["pids"]
    assert [(m["id"], m["alive"]) for m in status["members"]] == [
        ("r1", True), ("r2", True), ("r3", True), ("h1", True), ("h2", False), ("h3", True)]
    assert status["members"][4]["reason"] == "no longer runs"

    report = json.loads(console(home, "cluster", "down").stdout)
    assert report["stopped"] is True and sorted(report["signalled"]) == sorted(set(desc["pids"]) - {h2})
    assert report["skipped"] == [{"pid": h2, "role": "daemon", "id": "h2", "reason": "no longer runs"}]
    wait_for(lambda: not _processes_in(home), 20, "every replica, daemon and zygote of the cluster to end")
    assert not (home / "cluster.json").exists()
    assert json.loads(console(home, "cluster", "status").stdout) is None


def test_a_cluster_whose_every_process_ended_is_started_anew(home: Path) -> None:
    """As after a reboot: nothing of it runs, so nothing is shared, and starting fresh is right."""
    desc = up(home)
    for pid in desc["pids"]:
        os.kill(pid, 9)
    wait_for(lambda: not any(_running(p) for p in desc["pids"]), 20, "the cluster's processes to end")
    status = json.loads(console(home, "cluster", "status").stdout)
    assert status["state"] == "stopped" and not any(m["alive"] for m in status["members"])
    again = up(home)
    assert set(again["pids"]).isdisjoint(desc["pids"]) and all(_running(p) for p in again["pids"])
    assert json.loads(console(home, "cluster", "status").stdout)["state"] == "running"


SPAWNER = textwrap.dedent('''
    import json, sys, time
    import snipe
    from snipe.runtime import now_ms
    snipe.init()
    code = snipe.publish(sys.argv[1])
    tasks = [snipe.spawn(code) for _ in range(2)]
    found = []
    deadline = time.monotonic() + 60
    for t in tasks:               # each listens (ipc included) once it says so
        while snipe.catalog().get(t.urn).value("listening", now_ms()) is not True:
            if time.monotonic() > deadline:
                sys.exit(f"{t.urn} did not listen within 60 s")
            snipe.catalog().invalidate(t.urn)
            time.sleep(0.05)
        comm = snipe.catalog().get(t.urn).value("comm", now_ms())
        ipc = [c["endpoint"][len("ipc://"):] for c in comm if c.get("transport") == "ipc"]
        found.append({"urn": t.urn, "pid": t.status()["pid"], "ipc": ipc})
    print(json.dumps(found))
''')

LISTENER = '''
import snipe
snipe.probe()
snipe.catalog().set(snipe.me(), "listening", True)
snipe.recv(timeout=300)
'''


def test_down_removes_the_ipc_socket_files_of_the_tasks_it_killed(home: Path, tmp_path: Path) -> None:
    """Killed, a task cannot remove its ipc socket file: `cluster down`, which killed it, does
    (they were left in the runtime folder until over a minute old)."""
    up(home)
    (tmp_path / "listener.py").write_text(LISTENER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")} | {"SNIPE_HOME": str(home)}
    r = subprocess.run([sys.executable, "-c", SPAWNER, str(tmp_path / "listener.py")], env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    tasks = json.loads(r.stdout)
    sockets = [Path(path) for t in tasks for path in t["ipc"]]
    assert len(sockets) == 2 and all(p.is_socket() for p in sockets), tasks
    report = json.loads(console(home, "cluster", "down").stdout)
    assert {t["pid"] for t in tasks} <= set(report["tasks_killed"]), report
    # tasks keep their sockets in their host's own folder, which no other cluster's process
    # sweeps: `cluster down` removes each
    assert {str(p) for p in sockets} <= set(report["sockets_removed"]), report
    assert not any(p.exists() for p in sockets), report


BINDER = '''
import socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
s.listen()
print("listening", flush=True)
time.sleep(300)
'''


def test_only_socket_files_of_processes_confirmed_ended_that_nobody_listens_on_are_removed(tmp_path: Path) -> None:
    left, listened, plain = tmp_path / "left.sock", tmp_path / "listened.sock", tmp_path / "plain.sock"
    child = subprocess.Popen([sys.executable, "-c", BINDER, str(left)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "listening\n"
        proc = psutil.Process(child.pid)
        assert bound_ipc_sockets(proc) == [left]        # read while it runs
        plain.write_text("")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(listened))
            listener.listen()
            recorded = {child.pid: [left, listened, plain]}
            assert remove_sockets_of(wait_ended([proc], 0), recorded) == []     # it runs: nothing of it goes
            child.kill()
            child.wait(10)
            assert remove_sockets_of(wait_ended([proc], 5), recorded) == [str(left)]
            assert not left.exists() and listened.is_socket() and plain.is_file()
    finally:
        child.kill()
        child.wait(10)
