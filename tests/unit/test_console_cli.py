"""The command-line tools without a cluster: `snipe-console ps` asks every host at once, each on
a daemon client of its own, and keeps the hosts' order; `snipe-netlab --help` says each thing once."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import snipe
from snipe.console import main as console
from snipe.daemonclient import DaemonClient
from snipe.errors import Unreachable
from snipe.identity import Identity
from snipe.netlab.cli import parser as netlab_parser

HOSTS = ("a", "b", "c", "d")          # "b" never answers


def test_ps_asks_the_hosts_at_once_each_on_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    me = Identity.generate()
    addresses = {f"urn:snipe:host:{h}": f"tcp://127.0.0.1:{40000 + i}#{Identity.generate().key_id}"
                 for i, h in enumerate(HOSTS)}
    host_of = {a: u for u, a in addresses.items()}
    # Every call waits here until all the hosts have been asked: asked one after another, the
    # first call would wait alone and the barrier breaks at its deadline.
    everyone_asked = threading.Barrier(len(HOSTS), timeout=20)
    calls: list[tuple[str, int, int]] = []        # (host, client id, thread id)
    closed: list[int] = []

    def call(self: DaemonClient, kind: str, body: Any = None, frames: Any = (),
             timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        host = host_of[self.address]
        calls.append((host, id(self), threading.get_ident()))
        everyone_asked.wait()
        if host.endswith(":b"):
            raise Unreachable(f"daemon {self.endpoint} did not answer {kind!r} within {timeout} s")
        return {"tasks": [{"urn": f"urn:snipe:proc:{host[-1]}{n}", "host": host, "state": "running"}
                          for n in (1, 2)]}, []

    def close(self: DaemonClient) -> None:
        closed.append(id(self))
        self.link.close()

    monkeypatch.setattr(DaemonClient, "call", call)
    monkeypatch.setattr(DaemonClient, "close", close)
    monkeypatch.setattr(snipe, "hosts", lambda catalog=None: {u: {"daemon": a} for u, a in reversed(addresses.items())})
    monkeypatch.setattr(console, "session",
                        lambda: SimpleNamespace(identity=me, daemon=lambda address: DaemonClient(address, me)))

    tasks, unreachable = console._all_tasks(timeout=5.0)

    assert [t["urn"] for t in tasks] == ["urn:snipe:proc:a1", "urn:snipe:proc:a2", "urn:snipe:proc:c1",
                                         "urn:snipe:proc:c2", "urn:snipe:proc:d1", "urn:snipe:proc:d2"]
    assert [u["host"] for u in unreachable] == ["urn:snipe:host:b"]
    assert "did not answer" in unreachable[0]["reason"]
    assert sorted(h for h, _, _ in calls) == sorted(addresses)                       # each host asked once
    assert len({c for _, c, _ in calls}) == len(HOSTS) and len({t for _, _, t in calls}) == len(HOSTS)
    assert sorted(closed) == sorted(c for _, c, _ in calls)                          # and its client closed


def test_netlab_help_says_its_description_once() -> None:
    text = netlab_parser().format_help()
    assert text.count("several SNIPE hosts on this machine as network namespaces") == 1, text
    assert "snipe-netlab fault loss HOST NET PCT" in text and "Needs root." in text, text   # the usage stays


def test_ps_reports_a_host_whose_daemon_address_cannot_be_used_and_lists_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    me = Identity.generate()
    key = Identity.generate().key_id
    hosts = {"urn:snipe:host:bad": {"daemon": f"garbage#{key}"}, "urn:snipe:host:worse": {"daemon": f"tcp://nohost#{key}"},
             "urn:snipe:host:good": {"daemon": f"tcp://127.0.0.1:1#{key}"}}

    def call(self: DaemonClient, kind: str, body: Any = None, frames: Any = (),
             timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        return {"tasks": [{"urn": "urn:snipe:proc:g1", "host": "urn:snipe:host:good", "state": "running"}]}, []

    monkeypatch.setattr(DaemonClient, "call", call)
    monkeypatch.setattr(snipe, "hosts", lambda catalog=None: hosts)
    monkeypatch.setattr(console, "session", lambda: SimpleNamespace(identity=me))
    tasks, unreachable = console._all_tasks(timeout=1.0)
    assert [t["urn"] for t in tasks] == ["urn:snipe:proc:g1"]
    reasons = {u["host"]: u["reason"] for u in unreachable}
    assert "not a tcp:// or ipc:// endpoint" in reasons["urn:snipe:host:bad"]
    assert "cannot connect to 'tcp://nohost'" in reasons["urn:snipe:host:worse"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = console.main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def test_keygen_refuses_a_folder_that_does_not_exist(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nonexistent" / "dir"
    code, out, err = _run(capsys, "keygen", str(missing / "k.key"))
    assert code == 1 and out == "" and f"folder {missing} does not exist" in err and "mkdir -p" in err, err
    code, out, _ = _run(capsys, "--json", "keygen", str(missing / "k.key"))
    assert code == 1 and json.loads(out)["kind"] == "bad-config", out
    assert not missing.exists() and not missing.parent.exists()          # nothing made


def test_cluster_status_prints_a_table_for_people_and_json_with_json(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    desc = {"catalog": ["tcp://127.0.0.1:7001#ab"], "daemons": {"h1": "tcp://127.0.0.2:7101#cd"},
            "admin_key_file": "/x/admin.key", "user_key_file": "/x/user.key", "pids": [1, 2]}
    (tmp_path / "cluster.json").write_text(json.dumps(desc))
    code, out, _ = _run(capsys, "cluster", "status", "--home", str(tmp_path))
    assert code == 0 and not out.lstrip().startswith("{"), out
    assert "replica" in out and "tcp://127.0.0.1:7001#ab" in out and "daemon h1" in out, out
    for argv in (("cluster", "status", "--home", str(tmp_path), "--json"),
                 ("--json", "cluster", "status", "--home", str(tmp_path))):   # --json before the command too
        code, out, _ = _run(capsys, *argv)
        got = json.loads(out)          # cluster.json's keys, and what became of each process
        assert code == 0 and {k: got[k] for k in desc} == desc and got["state"] == "stopped", out
    code, out, _ = _run(capsys, "cluster", "status", "--home", str(tmp_path / "none"))
    assert code == 0 and "no cluster in" in out, out


def test_cluster_down_says_what_it_stopped_and_which_socket_files_it_removed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    report = {"stopped": True, "signalled": [11, 12], "skipped": [], "tasks_killed": [21, 22, 23],
              "sockets_removed": ["/run/snipe/msg-a.sock", "/run/snipe/msg-b.sock"]}
    monkeypatch.setattr(console, "stop_embedded_report", lambda home: report)
    code, out, _ = _run(capsys, "cluster", "down", "--home", str(tmp_path))
    assert code == 0 and f"stopped 2 process(es) of the local cluster in {tmp_path}, and 3 task(s) it ran" in out, out
    assert "removed the 2 ipc socket file(s) they left" in out, out
    code, out, _ = _run(capsys, "cluster", "down", "--home", str(tmp_path), "--json")
    assert code == 0 and json.loads(out) == report, out


def test_spawn_passes_what_follows_the_code_urn_to_the_task() -> None:
    def parsed(*argv: str) -> tuple[list[str], str | None, bool]:
        args = console.build_parser().parse_args(list(argv))
        console.split_spawn_args(args, list(argv))
        return args.args, args.host, args.json

    code = "urn:snipe:code:sha256:" + "a" * 64
    assert parsed("spawn", code, "-n", "5") == (["-n", "5"], None, False)
    assert parsed("spawn", code, "12", "--host", "h2", "--json") == (["12"], "h2", True)
    assert parsed("spawn", "--host", "h1", code, "--", "--host", "x") == (["--host", "x"], "h1", False)
    assert parsed("--json", "spawn", code, "a", "--", "--json") == (["a", "--json"], None, True)
    assert "Everything after CODE goes to the task" in console.build_parser()._subparsers._group_actions[0] \
        .choices["spawn"].format_help()


def test_a_snipe_home_that_is_a_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.write_text("")
    monkeypatch.setenv("SNIPE_HOME", str(home))
    for var in ("SNIPE_CATALOG", "SNIPE_CONFIG", "SNIPE_PROC_URN", "SNIPE_SRV_DOMAIN"):
        monkeypatch.delenv(var, raising=False)
    code, _, err = _run(capsys, "cluster", "status")
    assert code == 1 and f"SNIPE_HOME={home} is a file, not a folder" in err, err


def test_hosts_load_is_rounded() -> None:
    assert console._load(4.4326171875) == "4.43" and console._load(None) == "-" and console._load(2) == "2.00"


def test_netlab_fault_list_prints_lines_for_people(monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    from snipe.netlab import cli as netlab

    faults = {"f1": {"kind": "loss", "host": "h1", "net": "lan", "percent": 20, "direction": "both", "at": 1.0}}
    monkeypatch.setattr(netlab.Lab, "attach", staticmethod(lambda run=None: SimpleNamespace(faults=lambda: faults)))
    netlab.cmd_fault(SimpleNamespace(run=None, kind="list", fault_args=[], json=False))
    assert capsys.readouterr().out.strip() == "fault f1: loss host=h1 net=lan percent=20 direction=both"
    netlab.cmd_fault(SimpleNamespace(run=None, kind="list", fault_args=[], json=True))
    assert json.loads(capsys.readouterr().out) == faults
    monkeypatch.setattr(netlab.Lab, "attach", staticmethod(lambda run=None: SimpleNamespace(faults=dict)))
    netlab.cmd_fault(SimpleNamespace(run=None, kind="list", fault_args=[], json=False))
    assert capsys.readouterr().out.strip() == "no faults"
