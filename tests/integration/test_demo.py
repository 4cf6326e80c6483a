"""The main job (`bin/dev demo` = `python -m snipe.demo`), run as a real process, small."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
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
    if phase == "starting":
        _, err = _interrupt_when(proc, lambda: [p for p in _mentioning(folder) if p != proc.pid], 30,
                                 "a replica to start", 60)
    else:
        _, err = _interrupt_when(proc, lambda: "spawned" in out_file.read_text(), 60, "the workers to be spawned", 60)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert re.fullmatch(r"snipe-demo: interrupted; stopped [1-6] process\(es\)", err.strip().splitlines()[-1]), err
    wait_for(lambda: _mentioning(folder) == [], 10, "every process the demo started to end")
    assert list(folder.iterdir()) == []          # its cluster folder removed too


def _interrupt_when(proc: subprocess.Popen[str], ready: Callable[[], object], ready_s: float, what: str,
                    end_s: float) -> tuple[str, str]:
    """Ctrl-C `proc` once `ready` holds (within `ready_s`); its stdout and stderr once it ended
    (within `end_s`). It is killed if anything fails on the way."""
    try:
        wait_for(ready, ready_s, what)
        proc.send_signal(signal.SIGINT)
        return proc.communicate(timeout=end_s)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# sitecustomize for the demo's interpreter: the import of STALL_MODULE waits, after saying so in the
# file STALL_AT, until a SIGINT has reached the process ("signal": Python's C handler wrote to a
# wakeup fd; the Python-level handler runs right after, still inside that import) or is pending,
# blocked ("pending"). So the Ctrl-C lands at a known point of the start, whatever the machine's speed.
STALL = '''
import os, select, signal, sys, time

class _Stall:
    def find_spec(self, name, path=None, target=None):
        if name != os.environ.get("STALL_MODULE"):
            return None
        sys.meta_path.remove(self)
        open(os.environ["STALL_AT"], "w").close()
        deadline = time.monotonic() + 60
        if os.environ["STALL_UNTIL"] == "signal":
            r, w = os.pipe()
            os.set_blocking(w, False)
            signal.set_wakeup_fd(w)
            try:
                select.select([r], [], [], 60)
            finally:
                signal.set_wakeup_fd(-1)
                os.close(r)
                os.close(w)
        else:
            while time.monotonic() < deadline:
                status = open("/proc/self/status").read()
                pending = [int(line.split()[1], 16) for line in status.splitlines() if line[:6] in ("SigPnd", "ShdPnd")]
                if any(p & (1 << (signal.SIGINT - 1)) for p in pending):
                    break
                time.sleep(0.01)
        return None

sys.meta_path.insert(0, _Stall())
'''


def _interrupted_while_importing(tmp_path: Path, module: str, until: str, *launcher: str) -> tuple[int, str, str]:
    """Run the demo, SIGINT it while it imports `module` (see STALL), and return its exit status,
    stdout and stderr."""
    (tmp_path / "hook").mkdir()
    (tmp_path / "hook" / "sitecustomize.py").write_text(STALL)
    folder = tmp_path / "demo"
    folder.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")}
    env |= {"PYTHONUNBUFFERED": "1", "STALL_MODULE": module, "STALL_UNTIL": until, "STALL_AT": str(tmp_path / "at"),
            "PYTHONPATH": os.pathsep.join([str(tmp_path / "hook"), *filter(None, [env.get("PYTHONPATH")])])}
    proc = subprocess.Popen([*launcher, sys.executable, "-m", "snipe.demo", "--dir", str(folder), "--limit", "20000",
                             "--workers", "2"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = _interrupt_when(proc, lambda: (tmp_path / "at").exists(), 60, f"the demo to import {module}", 120)
    wait_for(lambda: _mentioning(folder) == [], 10, "every process the demo started to end")
    return proc.returncode, out, err


def test_ctrl_c_while_the_library_is_imported_ends_the_demo_quietly_with_130(tmp_path: Path) -> None:
    """`python -m snipe.demo` imports the snipe package (most of its start) before a line of the
    demo runs: a Ctrl-C then ends it with status 130 and nothing said, not with a traceback."""
    code, out, err = _interrupted_while_importing(tmp_path, "snipe.messaging.endpoint", "signal")
    assert (code, out, err) == (130, "", ""), (code, out, err[-3000:])


def test_ctrl_c_while_the_demo_imports_its_own_modules_says_it_was_interrupted(tmp_path: Path) -> None:
    code, _, err = _interrupted_while_importing(tmp_path, "rich.progress", "signal")
    assert code == 130 and "Traceback" not in err, err[-3000:]
    assert err.strip().splitlines()[-1] == "snipe-demo: interrupted; stopped 0 process(es)", err


def test_a_ctrl_c_its_launcher_kept_pending_is_taken_when_the_demo_can(tmp_path: Path) -> None:
    """bin/dev starts the demo with SIGINT blocked (`env --block-signal=INT`), so that one that
    comes before Python runs any of the demo waits: the demo takes it as soon as it can."""
    code, out, err = _interrupted_while_importing(tmp_path, "rich.progress", "pending", "env", "--block-signal=INT")
    assert code == 130 and "Traceback" not in err, (code, out[-2000:], err[-3000:])
    assert err.strip().splitlines()[-1] == "snipe-demo: interrupted; stopped 0 process(es)", err
