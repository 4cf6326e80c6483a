"""`cluster up` / `cluster down` of the embedded local cluster: only its own processes are ever
signalled (a PID in a stale cluster.json may be anybody's), and a cluster of another shape than
the one asked for is refused rather than silently reused."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from snipe.errors import ClusterShapeMismatch
from snipe.runtime import _cluster_alive, start_embedded, stop_embedded_report
from tests.support import wait_for


def console(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")}
    env["SNIPE_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "snipe.console.main", *args, "--home", str(home), "--json"],
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
