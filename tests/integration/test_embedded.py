"""The embedded default: `snipe.init()` with nothing configured starts or joins a local cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.support import wait_for

PROBE = textwrap.dedent('''
    import json, sys, pathlib
    import snipe
    s = snipe.init()
    script = pathlib.Path(sys.argv[1])
    script.write_text("import snipe\\nsnipe.init()\\nsnipe.catalog().set(snipe.me(), 'answer', 42)\\n")
    p = snipe.spawn(snipe.publish(script))
    done = p.wait(60)
    desc = json.loads((s.home / "cluster.json").read_text())
    print(json.dumps({"pids": desc["pids"], "exit": done["exit_code"], "answer": p.info().get("answer")}))
''')


def run(home: Path, *args: str, code: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNIPE_")}
    env["SNIPE_HOME"] = str(home)
    argv = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "snipe.console.main", *args]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_init_starts_a_local_cluster_that_later_processes_reuse(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        first = json.loads(run(home, str(tmp_path / "a.py"), code=PROBE).stdout)
        second = json.loads(run(home, str(tmp_path / "b.py"), code=PROBE).stdout)
        assert first["exit"] == second["exit"] == 0 and first["answer"] == second["answer"] == 42
        assert first["pids"] == second["pids"] and len(first["pids"]) == 2      # one replica, one daemon
        assert all(psutil.pid_exists(p) for p in first["pids"])
    finally:
        run(home, "cluster", "down", "--home", str(home))
    wait_for(lambda: not any(_alive(p) for p in first["pids"]), 20, "the cluster's processes to end")


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_cluster_up_runs_several_hosts_and_down_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "multi"
    desc = json.loads(run(home, "cluster", "up", "--replicas", "3", "--hosts", "3", "--home", str(home),
                          "--json").stdout)
    try:
        assert len(desc["catalog"]) == 3 and sorted(desc["daemons"]) == ["h1", "h2", "h3"]
        addresses = {a.split("#")[0].rsplit(":", 1)[0] for a in desc["daemons"].values()}
        assert addresses == {"tcp://127.0.0.2", "tcp://127.0.0.3", "tcp://127.0.0.4"}   # a host each
        hosts = json.loads(run(home, "hosts", "--json").stdout)
        assert sorted(hosts) == ["urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"]
        status = json.loads(run(home, "cluster", "status", "--home", str(home), "--json").stdout)
        assert status["pids"] == desc["pids"]
    finally:
        out = json.loads(run(home, "cluster", "down", "--home", str(home), "--json").stdout)
    assert out["stopped"] is True and sorted(out["signalled"]) == sorted(desc["pids"]) and out["skipped"] == []
    wait_for(lambda: not any(_alive(p) for p in desc["pids"]), 20, "every replica and daemon to end")
    assert not (home / "cluster.json").exists()
