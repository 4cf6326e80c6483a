"""The main job (`bin/dev demo` = `python -m snipe.demo`), run as a real process, small."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.support import wait_for

PRIMES_BELOW_20000 = 2262       # known independently of the demo's own check


def demo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")}
    return subprocess.run([sys.executable, "-m", "snipe.demo", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _mentioning(folder: Path) -> list[int]:
    """Live processes whose command line or working folder lies in `folder` (replicas, daemons, tasks)."""
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "cwd"]):
        text = " ".join(p.info.get("cmdline") or []) + " " + (p.info.get("cwd") or "")
        if str(folder) in text and p.pid != os.getpid():
            found.append(p.pid)
    return found


def test_demo_json_counts_the_primes_across_hosts_and_leaves_no_process(tmp_path: Path) -> None:
    r = demo("--json", "--limit", "20000", "--workers", "4", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    report = json.loads(r.stdout)
    rows = report["rows"]
    assert report["ok"] is True and len(rows) == report["workers"] == 4
    # the slices tile [0, limit) exactly, each worker exited 0 and published a count, and they add up
    assert [r_["lo"] for r_ in rows] == [0] + [r_["hi"] for r_ in rows[:-1]] and rows[-1]["hi"] == 20000
    assert all(r_["exit_code"] == 0 and r_["state"] == "exited" and isinstance(r_["primes"], int) for r_ in rows)
    assert sum(r_["primes"] for r_ in rows) == report["total"] == report["expected"] == PRIMES_BELOW_20000
    assert sum(report["workers_by_host"].values()) == 4 and set(report["workers_by_host"]) <= {"h1", "h2", "h3"}
    assert len(set(r_["urn"] for r_ in rows)) == 4
    # 3 replicas + 3 daemons were started and none (nor any task) outlives the demo
    assert len(report["pids"]) == 6 and report["left_running"] == []
    wait_for(lambda: not any(_running(p) for p in report["pids"]), 10, "the demo's replicas and daemons to end")
    assert _mentioning(tmp_path) == [] and not Path(report["dir"]).exists()


def test_demo_that_cannot_make_its_folder_reports_an_error_not_a_traceback(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    r = demo("--json", "--limit", "1000", "--workers", "2", "--dir", str(not_a_folder))
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["kind"] == "bad-config"
    assert str(not_a_folder) in err["error"] and "--dir" in err["error"]
    human = demo("--limit", "1000", "--workers", "2", "--dir", str(not_a_folder))
    assert human.returncode == 2 and "Traceback" not in human.stderr
    assert human.stderr.startswith("snipe-demo: error: cannot make the demo's cluster folder")


@pytest.mark.parametrize("phase", ["starting", "working"])
def test_ctrl_c_stops_the_cluster_and_says_so_without_a_traceback(tmp_path: Path, phase: str) -> None:
    """SIGINT (what Ctrl-C sends) while the cluster starts, or while the workers run: every
    process stops, one line says so, exit 130."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")} | {"PYTHONUNBUFFERED": "1"}
    folder = tmp_path / "demo"
    folder.mkdir()
    out_file = tmp_path / "demo.out"
    with open(out_file, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "snipe.demo", "--dir", str(folder)], env=env,
                                stdout=out, stderr=subprocess.PIPE, text=True)
    try:
        if phase == "starting":
            wait_for(lambda: [p for p in _mentioning(folder) if p != proc.pid], 30, "a replica to start")
        else:
            wait_for(lambda: "spawned" in out_file.read_text(), 60, "the workers to be spawned")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(r"snipe-demo: interrupted; stopped [1-6] process\(es\)", err.strip().splitlines()[-1]), err
    wait_for(lambda: _mentioning(folder) == [], 10, "every process the demo started to end")
    assert list(folder.iterdir()) == []          # its cluster folder removed too
