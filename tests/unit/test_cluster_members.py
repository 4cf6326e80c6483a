"""How cluster.json's processes are named and judged: by the role and id recorded with each,
else (a file written before they were) by their order; "stopped" only when none still runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from snipe.runtime import _members, cluster_status


def _ended_pids(n: int) -> list[int]:
    pids = []
    for _ in range(n):
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait(30)
        pids.append(p.pid)
    return pids


def test_an_old_cluster_json_names_its_processes_by_their_order(tmp_path: Path) -> None:
    pids = _ended_pids(5)
    desc = {"catalog": ["a", "b"], "daemons": {"h1": "c", "h2": "d"}, "pids": [*pids, "x"]}
    names = [(m.role, m.id, m.pid, m.process, m.reason) for m in _members(desc, tmp_path)]
    assert names == [("replica", "r1", pids[0], None, "no longer runs"),
                     ("replica", "r2", pids[1], None, "no longer runs"),
                     ("daemon", "h1", pids[2], None, "no longer runs"),
                     ("daemon", "h2", pids[3], None, "no longer runs"),
                     ("process", "?", pids[4], None, "no longer runs"),
                     ("process", "?", "x", None, "is not a PID")]


def test_recorded_roles_win_and_a_cluster_with_nothing_running_is_stopped(tmp_path: Path) -> None:
    pids = _ended_pids(2)
    desc = {"catalog": ["a"], "daemons": {"h1": "b"}, "pids": pids,
            "processes": [{"pid": pids[0], "role": "daemon", "id": "h1", "create_time": None, "cmdline": []},
                          {"pid": pids[1], "role": "replica", "id": "r1", "create_time": None, "cmdline": []}]}
    (tmp_path / "cluster.json").write_text(json.dumps(desc))
    status = cluster_status(tmp_path)
    assert status is not None and status["state"] == "stopped"
    assert [(m["role"], m["id"], m["alive"]) for m in status["members"]] == [("daemon", "h1", False),
                                                                            ("replica", "r1", False)]
    assert cluster_status(tmp_path / "none") is None
    assert (tmp_path / "cluster.json").exists()        # looking changes nothing
