"""snipe-console subcommands against a real cluster, run in this process (`main([...])`) for
speed: publish, spawn, signal, events (to the task's end, or timed out), ps (with hosts that do not
answer), keygen, admit, drain --off, and how each reports a bad argument or a failure, for people
and with --json."""

from __future__ import annotations

import json
import re
import socket
import stat
import threading
from pathlib import Path
from typing import Any

import pytest

import snipe
from snipe.catalog.client import CatalogClient
from snipe.console.main import main as console
from snipe.identity import Identity
from snipe.localcluster import LocalCluster, free_port
from snipe.runtime import Process, now_ms
from tests.integration.test_daemon import SLEEPER, WORKER
from tests.support import wait_for

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    """(exit code, stdout, stderr) of one console command."""
    capsys.readouterr()
    code = console(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, (argv, out, err)
    return json.loads(out)


def assert_clean_error(result: Run, code: int, *words: str) -> None:
    """A failure said in one `snipe-console: error:` line on stderr (after argparse's usage), no traceback."""
    got, out, err = result
    assert got == code, result
    assert "Traceback" not in out + err and out == "", result
    last = err.strip().splitlines()[-1]
    assert last.startswith("snipe-console: error: ") and all(w in last for w in words), result


def assert_json_error(result: Run, code: int, kind: str, *words: str) -> None:
    got, out, err = result
    assert got == code and "Traceback" not in err, result
    reply = json.loads(out)
    assert reply["kind"] == kind and all(w in reply["error"] for w in words), reply


def test_publish_spawn_signal_events_and_ps(cluster: LocalCluster, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "worker.py").write_text(WORKER)
    sleeper_code = run_json(capsys, "publish", str(tmp_path / "sleeper.py"))["urn"]
    code, out, _ = run(capsys, "publish", str(tmp_path / "worker.py"))
    worker_code = out.strip()
    assert code == 0 and worker_code.startswith("urn:snipe:code:sha256:") and sleeper_code != worker_code
    assert_json_error(run(capsys, "publish", str(tmp_path / "missing.py"), "--json"), 1, "bad-code", "missing.py")

    worker = run_json(capsys, "spawn", worker_code, "12", "--host", "h2")
    assert worker["host"] == "urn:snipe:host:h2"
    assert Process(worker["urn"]).wait(60)["exit_code"] == 0
    assert Process(worker["urn"]).info()["result"] == sum(i * i for i in range(12))    # it ran, with its argument
    code, out, _ = run(capsys, "spawn", sleeper_code, "600", "--host", "h1")
    assert code == 0 and out.split()[1:] == ["on", "urn:snipe:host:h1"], out
    sleeper = Process(out.split()[0])

    workdir = cluster.daemons[0].state_dir / "tasks" / sleeper.urn.rsplit(":", 1)[1]
    wait_for(lambda: (workdir / "ready").exists(), 20, "the sleeper to install its SIGUSR1 handler")
    code, out, _ = run(capsys, "signal", sleeper.urn, "usr1")       # any case, no SIG prefix
    assert code == 0 and f"{sleeper.urn}: running" in out, out
    wait_for(lambda: (workdir / "got-usr1").exists(), 20, "the sleeper's SIGUSR1 handler to run")
    assert_json_error(run(capsys, "signal", sleeper.urn, "FOO", "--json"), 2, "usage", "'FOO'", "not a signal")
    assert_clean_error(run(capsys, "signal", sleeper.urn, "SIGFOO"), 2, "'SIGFOO'", "not a signal")
    assert_clean_error(run(capsys, "signal", sleeper.urn, "999"), 2, "'999'")

    running = run_json(capsys, "ps")
    assert [t["urn"] for t in running] == [sleeper.urn] and running[0]["state"] == "running"
    everything = {t["urn"]: t["state"] for t in run_json(capsys, "ps", "-a")}
    assert everything == {sleeper.urn: "running", worker["urn"]: "exited"}

    assert run_json(capsys, "signal", sleeper.urn, "SIGTERM")["urn"] == sleeper.urn
    code, out, _ = run(capsys, "events", sleeper.urn, "--json", "--timeout", "30")
    events = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and [(e["seq"], e["kind"]) for e in events] == [(1, "started"), (2, "killed")], events
    assert events[-1]["reason"] == "signal SIGTERM", events
    code, out, _ = run(capsys, "events", sleeper.urn, "--timeout", "30")      # ended: replays and stops
    lines = out.splitlines()
    assert code == 0 and len(lines) == 2 and "started" in lines[0], out
    assert "killed exit=-15 (signal SIGTERM)" in lines[1], out

    # A task that outlives --timeout: the events so far, then exit 3 and "timed out", not 0 as if it had ended.
    lasting = Process(run_json(capsys, "spawn", sleeper_code, "600", "--host", "h3")["urn"])
    wait_for(lambda: lasting.status()["state"] == "running", 20, "the second sleeper to run")
    code, out, err = run(capsys, "events", lasting.urn, "--timeout", "0.5")
    assert code == 3 and "Traceback" not in err, (code, out, err)
    assert err.strip().splitlines()[-1].startswith(f"snipe-console: error: timed out after 0.5 s waiting for "
                                                   f"{lasting.urn} to end"), err
    code, out, err = run(capsys, "events", lasting.urn, "--timeout", "0.5", "--json")
    *events, error = [json.loads(line) for line in out.splitlines()]
    assert code == 3 and all("seq" in e and e["kind"] != "killed" for e in events), (out, err)
    assert error["kind"] == "timed-out" and "waiting for " + lasting.urn in error["error"], error

    # Hosts whose daemon does not answer (none listening; one listening that never speaks) are listed
    # with why, even without -a, and on stderr, after the tasks of the hosts that answered, all in
    # host order; ps still exits 0.
    ghost, silent = "urn:snipe:host:ghost", "urn:snipe:host:silent"
    with socket.create_server(("127.0.0.1", 0)) as mute, \
            CatalogClient(cluster.catalog.addresses, cluster.admin, cluster.admin.key_id) as admin:
        for urn, port in ((silent, mute.getsockname()[1]), (ghost, free_port())):
            admin.set_many(urn, {"alive": True, "draining": True,       # draining: placement leaves it alone
                                 "daemon": f"tcp://127.0.0.1:{port}#{Identity.generate().key_id}"})
        wait_for(lambda: {ghost, silent} <= set(snipe.hosts()), 10, "the ghost and silent hosts to be listed")
        code, out, err = run(capsys, "ps", "--timeout", "1", "--json")
        rows = json.loads(out)
        assert code == 0 and [(r["urn"], r["host"], r["state"]) for r in rows] == [
            (lasting.urn, "urn:snipe:host:h3", "running"), (None, ghost, "unreachable"),
            (None, silent, "unreachable")], rows                                  # the first sleeper ended
        # neither completed a handshake, so neither got the request (snipe.errors.NotDelivered)
        assert all("did not accept a connection" in r["unreachable"] for r in rows[1:]), rows
        assert "snipe-console: warning: ghost did not list its tasks" in err, err
        assert "snipe-console: warning: silent did not list its tasks" in err, err
        code, out, err = run(capsys, "ps", "-a", "--timeout", "1")
        assert code == 0 and "ghost" in out and "silent" in out and "2 host(s) unreachable" in out, out
        assert all(t in out for t in (sleeper.urn, worker["urn"], lasting.urn)), out
        assert "warning: ghost" in err and "warning: silent" in err, err


def test_keygen_admit_and_drain_off(cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SNIPE_HOME", str(tmp_path / "home"))    # no local cluster's admin key to fall back on
    admin_key = str(cluster.root / "catalog" / "admin.key")
    path = tmp_path / "keys" / "bob.key"
    assert_clean_error(run(capsys, "keygen", str(path)), 1, f"folder {path.parent} does not exist")
    path.parent.mkdir()
    made = run_json(capsys, "keygen", str(path))
    bob = Identity.load(path)
    assert made == {"path": str(path), "key": bob.key_id}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert_clean_error(run(capsys, "keygen", str(path)), 1, "exists", "--force")
    assert_json_error(run(capsys, "keygen", str(path), "--json"), 1, "bad-config", "refusing to overwrite")
    assert Identity.load(path).key_id == bob.key_id                        # refused: untouched
    code, out, _ = run(capsys, "keygen", str(path), "--force")
    replaced = Identity.load(path)
    assert code == 0 and replaced.key_id != bob.key_id and replaced.key_id in out.replace("\n", "")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (tmp_path / "plain").write_text("not a folder")
    assert_clean_error(run(capsys, "keygen", str(tmp_path / "plain" / "x.key")), 1, "File exists", "plain")
    assert_json_error(run(capsys, "keygen", str(tmp_path / "plain" / "x.key"), "--json"), 1, "file-exists")

    def write_as(ident: Identity, urn: str) -> bool:
        with CatalogClient(cluster.catalog.addresses, ident, cluster.admin.key_id) as c:
            c.set(urn, "note", "hello")
        return True

    assert not snipe.catalog().is_admitted(bob.public_key)
    assert run_json(capsys, "admit", "user", "bob", bob.key_id.upper(), "--admin-key-file", admin_key) == \
        {"urn": "urn:snipe:user:bob", "key": bob.key_id}                 # stored lower-case, as ownership compares
    wait_for(lambda: write_as(bob, "urn:snipe:user:bob"), 20, "bob's admitted key to write")

    carol = Identity.generate()
    for bad in ("nothex", carol.key_id[:-2]):
        assert_json_error(run(capsys, "admit", "user", "carol", bad, "--admin-key-file", admin_key, "--json"),
                          2, "usage", repr(bad), "not a key id")
        assert_clean_error(run(capsys, "admit", "user", "carol", bad, "--admin-key-file", admin_key), 2,
                           repr(bad), "64 hex characters")
    assert_clean_error(run(capsys, "admit", "user", "carol", carol.key_id, "--admin-key-file",
                           str(cluster.root / "user.key")), 1, "not this cluster's admin key")
    assert_json_error(run(capsys, "admit", "user", "carol", carol.key_id, "--admin-key-file",
                          str(tmp_path / "none.key"), "--json"), 1, "bad-config", "does not exist")
    assert snipe.catalog().get("urn:snipe:user:carol").records == []        # nothing written
    assert not snipe.catalog().is_admitted(carol.public_key)

    drained = run_json(capsys, "drain", "h1", "--no-migrate", "--admin-key-file", admin_key)
    assert drained["draining"] is True
    wait_for(lambda: snipe.hosts()["urn:snipe:host:h1"].get("draining") is True, 10, "h1 to say it drains")
    code, out, _ = run(capsys, "drain", "h1", "--off", "--admin-key-file", admin_key)
    assert code == 0 and "urn:snipe:host:h1: taking tasks again" in out, out
    wait_for(lambda: snipe.hosts()["urn:snipe:host:h1"].get("draining") is False, 10, "h1 to take tasks again")
    assert run_json(capsys, "drain", "h1", "--off", "--admin-key-file", admin_key)["draining"] is False
    assert_clean_error(run(capsys, "drain", "h1", "--off"), 1, "only the admin key")    # the user's may not
    assert snipe.hosts()["urn:snipe:host:h1"].get("draining") is False


BURNER = '''
import sys, time
import snipe
snipe.init()
if sys.argv[2:] == ["forge"]:      # a task may write any name on its own URN: accounting must not believe it
    snipe.catalog().set_many(snipe.me(), {"usage": {"cpu_seconds": 1e9, "wall_seconds": 1.0, "peak_rss_bytes": 1},
                                          "owner": "f" * 64, "host": "urn:snipe:host:nowhere"})
end = time.process_time() + float(sys.argv[1])
while time.process_time() < end:
    pass
'''


def test_usage_accounts_what_ended_tasks_used_as_their_hosts_measured_it(
        cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "burner.py").write_text(BURNER)
    code = snipe.publish(tmp_path / "burner.py")
    honest = snipe.spawn(code, "0.3", host="h2")
    forger = snipe.spawn(code, "0.3", "forge", host="h3")
    for p in (honest, forger):
        assert Process(p.urn).wait(60)["exit_code"] == 0
    # ... and so may anyone holding its key, after it ended: newer than what its host published
    task_key = Identity.load(cluster.daemons[2].state_dir / "tasks" / forger.urn.rsplit(":", 1)[1] / "task.key")
    with CatalogClient(cluster.catalog.addresses, task_key, cluster.admin.key_id) as as_task:
        as_task.set_many(forger.urn, {"usage": {"cpu_seconds": 2e9, "wall_seconds": 1.0, "peak_rss_bytes": 1},
                                      "owner": "e" * 64})
    # ... and any admitted key may claim a URN of its own and call itself a task of h1 there
    with CatalogClient(cluster.catalog.addresses, cluster.user, cluster.admin.key_id) as user:
        user.claim("urn:snipe:proc:not-a-task")
        user.set_many("urn:snipe:proc:not-a-task", {
            "usage": {"cpu_seconds": 3e9, "wall_seconds": 1.0, "peak_rss_bytes": 1}, "started": 1,
            "owner": "d" * 64, "host": "urn:snipe:host:h1", "state": "exited"})

    def accounted() -> Any:
        got = run_json(capsys, "usage")
        return got if len(got["tasks"]) == 2 else None

    data = wait_for(accounted, 30, "both ended tasks to be accounted")
    assert data["by"] == "owner" and len(data["groups"]) == 1
    mine = data["groups"][0]
    assert mine["owner"] == cluster.user.key_id and mine["tasks"] == 2        # not the forged owner
    assert 0.6 <= mine["cpu_seconds"] < 60, mine                              # each burnt >= 0.3 s; not 1e9
    tasks = {t["urn"]: t for t in data["tasks"]}
    assert tasks[forger.urn]["host"] == "urn:snipe:host:h3" and tasks[forger.urn]["state"] == "exited"
    assert all(t["wall_seconds"] >= t["cpu_seconds"] * 0.5 and t["peak_rss_bytes"] > 0 for t in tasks.values())

    by_host = run_json(capsys, "usage", "--by", "host")
    assert sorted(g["host"] for g in by_host["groups"]) == ["urn:snipe:host:h2", "urn:snipe:host:h3"]
    assert run_json(capsys, "usage", "--since", "3600")["groups"][0]["tasks"] == 2
    code_, out, _ = run(capsys, "usage", "--by", "host")
    assert code_ == 0 and "2 ended task(s)" in out and "h2" in out and "h3" in out, out
    assert_clean_error(run(capsys, "usage", "--by", "colour"), 2, "--by")


def test_usage_counts_every_host_a_migrated_task_ran_on(cluster: LocalCluster, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """A task that moved from h1 to h2: each host accounts, with its own key, for what the task
    used there (h2 writes on the task's URN with the task's key, which accounting does not
    believe, so its figures go to a record of its own); the task counts once. Moved, it is not
    ended: until it ends on h2 it counts as running, with what it used on h1."""
    from tests.integration.test_migration import PINGER, _ping

    (tmp_path / "pinger.py").write_text(PINGER.replace("bytes(192 << 20)", "b''"))
    code = snipe.publish(tmp_path / "pinger.py")
    task = snipe.spawn(code, host="h1", env={"SNIPE_MIGRATION_GRACE_S": "0.5"})
    wait_for(lambda: snipe.catalog().get(task.urn).value("listening", now_ms()) is True, 60, "the task to listen")
    assert _ping(task, 1) == 1
    assert task.migrate("h2")["to"] == "urn:snipe:host:h2"
    assert _ping(task, 2) == 2

    def left_h1() -> Any:       # the original lingers 0.5 s for stragglers, then h1 accounts for it
        got = run_json(capsys, "usage")
        return got if any(t["urn"] == task.urn for t in got["tasks"]) else None

    moved = wait_for(left_h1, 60, "h1 to account for what the task used there")
    assert [(t["host"], t["state"], t["task_running"]) for t in moved["tasks"]] == [
        ("urn:snipe:host:h1", "migrated", True)], moved
    assert [(g["tasks"], g["running"]) for g in moved["groups"]] == [(1, 1)], moved
    _, out, _ = run(capsys, "usage")
    assert "0 ended task(s), 1 still running after a migration:" in out and "1 (1 running)" in out, out
    assert _ping(task, 3) == 3                    # it does run on
    snipe.send(task.urn, b"", tag=99)
    assert task.wait(60)["exit_code"] == 0

    def accounted() -> Any:
        got = run_json(capsys, "usage", "--by", "host")
        return got if {t["host"] for t in got["tasks"] if t["urn"] == task.urn} == {
            "urn:snipe:host:h1", "urn:snipe:host:h2"} else None

    by_host = wait_for(accounted, 60, "both hosts to account for the task")
    mine = [t for t in by_host["tasks"] if t["urn"] == task.urn]
    assert len(mine) == 2 and all(t["wall_seconds"] > 0 for t in mine), mine
    assert {t["state"] for t in mine} == {"migrated", "exited"}, mine
    assert not any(t["task_running"] for t in mine), mine
    by_owner = run_json(capsys, "usage")
    assert (by_owner["groups"][0]["tasks"], by_owner["groups"][0]["running"]) == (1, 0)   # one task, two runs
    _, out, _ = run(capsys, "usage")
    assert "1 ended task(s) (2 runs)" in out, out



def test_usage_shows_a_task_lost_with_its_host_whether_it_had_moved_there_or_not(
        cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """h2's daemon dies (killed -9, its lease lapses) and nobody records an end of its tasks: a
    task that had moved there from h1 is no longer "still running" but lost, and so is one that
    ran there from its start; what they used on h2 is unknown (null), what the moved one used on
    h1 stays. A task on a live host is not listed (it has not ended), nor one replicated in mode
    "all" whose other copy runs on."""
    from tests.integration.test_migration import PINGER, _ping

    (tmp_path / "pinger.py").write_text(PINGER.replace("bytes(192 << 20)", "b''"))
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    moved = snipe.spawn(snipe.publish(tmp_path / "pinger.py"), host="h1", env={"SNIPE_MIGRATION_GRACE_S": "0.5"})
    sleeper = snipe.publish(tmp_path / "sleeper.py")
    stayed, elsewhere = snipe.spawn(sleeper, "600", host="h2"), snipe.spawn(sleeper, "600", host="h3")
    # replicated in mode "all", copy 0 on h2 (its `host`) and one more that runs on elsewhere: not lost
    copied = snipe.spawn(sleeper, "600", host="h2", replicas=2, mode="all")
    wait_for(lambda: snipe.catalog().get(moved.urn).value("listening", now_ms()) is True, 60, "the task to listen")
    assert moved.migrate("h2")["to"] == "urn:snipe:host:h2"
    assert _ping(moved, 1) == 1
    wait_for(lambda: any(t["urn"] == moved.urn for t in run_json(capsys, "usage")["tasks"]), 60,
             "h1 to account for what the moved task used there")

    cluster.kill_daemon(1)

    def lost() -> Any:
        got = run_json(capsys, "usage")
        return got if {t["urn"] for t in got["tasks"] if t.get("task_lost")} == {moved.urn, stayed.urn} else None

    data = wait_for(lost, 30, "usage to call h2's tasks lost once its lease lapsed")
    rows = {(t["urn"], t["host"], t["state"], t["task_running"], t["task_lost"], t["cpu_seconds"])
            for t in data["tasks"] if t["state"] == "lost"}
    assert rows == {(moved.urn, "urn:snipe:host:h2", "lost", False, True, None),
                    (stayed.urn, "urn:snipe:host:h2", "lost", False, True, None)}, data
    on_h1 = [t for t in data["tasks"] if t["urn"] == moved.urn and t["state"] == "migrated"]
    assert len(on_h1) == 1 and not on_h1[0]["task_running"] and on_h1[0]["cpu_seconds"] > 0, data
    assert elsewhere.urn not in {t["urn"] for t in data["tasks"]}, data          # it runs on, on h3
    assert copied.urn not in {t["urn"] for t in data["tasks"]}, data             # its other copy runs on
    assert all(isinstance(t["ended_ms"], int) for t in data["tasks"]), data     # when h2's lease ran out
    assert [(g["tasks"], g["running"], g["lost"]) for g in data["groups"]] == [(2, 0, 2)], data
    by_host = {g["host"]: (g["tasks"], g["lost"]) for g in run_json(capsys, "usage", "--by", "host")["groups"]}
    assert by_host == {"urn:snipe:host:h1": (1, 1), "urn:snipe:host:h2": (2, 2)}, by_host   # each host's tasks
    assert len(run_json(capsys, "usage", "--since", "3600")["tasks"]) == 3
    _, out, _ = run(capsys, "usage")
    assert "2 ended task(s) (2 lost with their host" in out and "still running" not in out, out
    assert "(3 runs)" in out and "2 (2 lost)" in out, out


HELD = '''
import os, time
import snipe
state = {"held": False}
snipe.on_checkpoint(lambda: state)
snipe.on_restore(lambda saved: state.update(saved))
snipe.probe()                              # listen (in a clone: take the process over here)
snipe.catalog().set(snipe.me(), "listening", True)
if not state["held"]:                      # the original reaches no safe point until a file "go" appears
    state["held"] = True
    for _ in range(6000):                  # 5 minutes at most
        if os.path.exists("go"):
            break
        time.sleep(0.05)
while True:
    m = snipe.recv(timeout=120)
    if m is None or m.tag == 99:
        break
'''


def _rows_of(capsys: pytest.CaptureFixture[str], urn: str, *argv: str) -> list[tuple[str, str]]:
    return [(r["host"], r["state"]) for r in run_json(capsys, "ps", *argv) if r["urn"] == urn]


def _listed_by(cluster: LocalCluster, i: int, urn: str) -> list[dict[str, Any]]:
    """What host i's daemon itself lists for `urn` (`ps` asked of it alone)."""
    from snipe.daemonclient import DaemonClient

    with DaemonClient(cluster.daemons[i].address, cluster.user) as d:
        return [t for t in d.call("ps")[0]["tasks"] if t["urn"] == urn]


def _ps_line(capsys: pytest.CaptureFixture[str], urn: str, host: str) -> str:
    """`ps`'s table line of task `urn`, which must show `host` (e.g. "h1 → h2")."""
    code, out, _ = run(capsys, "ps")
    line = next(x for x in out.splitlines() if urn in x)
    assert code == 0 and host in line, out
    return line


def _moving(capsys: pytest.CaptureFixture[str], urn: str) -> list[tuple[str, str, Any]]:
    return [(r["host"], r["state"], r.get("migrating")) for r in run_json(capsys, "ps") if r["urn"] == urn]


def test_ps_shows_a_migrating_task_once_from_its_host_to_the_target(
        cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """While a task moves from h1 to h2 both daemons list it (the original, and the clone waiting
    for its state): `ps` shows it once, migrating h1 → h2, in its own state (suspended while it is
    suspended, not "migrating"); once moved, once on h2 (`-a` too)."""
    task = snipe.spawn(snipe.publish(_write(tmp_path / "held.py", HELD)), host="h1",
                       env={"SNIPE_MIGRATION_GRACE_S": "0.5"})
    wait_for(lambda: snipe.catalog().get(task.urn).value("listening", now_ms()) is True, 60, "the task to listen")
    moved: list[Any] = []
    mover = threading.Thread(target=lambda: moved.append(task.migrate("h2", timeout=120)))
    mover.start()
    try:
        wait_for(lambda: _listed_by(cluster, 1, task.urn), 60, "the clone to start on h2")
        assert _listed_by(cluster, 0, task.urn)[0]["state"] == "running"        # the original, not yet moved
        h1_to_h2 = {"from": "urn:snipe:host:h1", "to": "urn:snipe:host:h2"}
        assert _moving(capsys, task.urn) == [("urn:snipe:host:h1", "running", h1_to_h2)]
        assert _rows_of(capsys, task.urn, "-a") == [("urn:snipe:host:h1", "running")]
        assert "running, migrating" in _ps_line(capsys, task.urn, "h1 → h2")

        assert run(capsys, "suspend", task.urn)[0] == 0
        wait_for(lambda: _moving(capsys, task.urn) == [("urn:snipe:host:h1", "suspended", h1_to_h2)], 30,
                 "ps --json to list the moving task as suspended, migrating h1 → h2")
        assert "suspended, migrating" in _ps_line(capsys, task.urn, "h1 → h2")
        assert run(capsys, "resume", task.urn)[0] == 0
        wait_for(lambda: _moving(capsys, task.urn) == [("urn:snipe:host:h1", "running", h1_to_h2)], 30,
                 "the moving task to run again")
    finally:
        (cluster.daemons[0].state_dir / "tasks" / task.urn.rsplit(":", 1)[1] / "go").touch()
        mover.join(180)
    assert moved and moved[0]["to"] == "urn:snipe:host:h2", moved
    wait_for(lambda: _rows_of(capsys, task.urn, "-a") == [("urn:snipe:host:h2", "running")], 30,
             "ps -a to list the task once, on h2")
    assert _rows_of(capsys, task.urn) == [("urn:snipe:host:h2", "running")]
    snipe.send(task.urn, b"", tag=99)
    assert task.wait(60)["exit_code"] == 0


def test_a_failed_migration_leaves_no_row_for_its_clone_and_is_an_event_of_the_task(
        cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A task without hooks cannot move: its clone on h2 is dropped, and is no task of h2 (no
    "lost" row in `ps -a`); the task runs on on h1, and its events (and its notify list) say the
    move failed and why."""
    from snipe_daemon.migration import NOTIFY_TAG

    from snipe.errors import MigrationFailed
    from tests.integration.test_migration import PLAIN

    task = snipe.spawn(snipe.publish(_write(tmp_path / "plain.py", PLAIN)), host="h1", notify=[snipe.me()])
    wait_for(lambda: snipe.catalog().get(task.urn).value("listening", now_ms()) is True, 60, "the task to listen")
    with pytest.raises(MigrationFailed, match="no on_checkpoint hook"):
        task.migrate("h2", timeout=60)
    wait_for(lambda: not _listed_by(cluster, 1, task.urn), 30, "h2 to forget the clone")
    assert _rows_of(capsys, task.urn, "-a") == [("urn:snipe:host:h1", "running")]
    info = task.info()
    assert info["host"] == "urn:snipe:host:h1" and info["state"] == "running", info
    assert info.get("reason") is None, info         # a failed move is not why the task is in its state
    last = info["events"][-1]
    assert last["kind"] == "migration-failed" and "not moved to urn:snipe:host:h2" in last["reason"], last
    assert "no on_checkpoint hook" in last["reason"], last
    code, out, _ = run(capsys, "events", task.urn, "--timeout", "1")
    assert code == 3 and "migration-failed" in out and "no on_checkpoint hook" in out, out   # still runs
    told = snipe.recv(tag=NOTIFY_TAG, timeout=30)
    assert told is not None and not told.failed, told
    assert told.obj()["kind"] == "migration-failed" and told.obj()["seq"] == last["seq"], told.obj()
    task.kill()


ECHO = '''
import sys
import snipe
snipe.init()
snipe.catalog().set(snipe.me(), "argv", sys.argv[1:])
'''


def test_unknown_urns_kill_spawn_arguments_and_global_json(cluster: LocalCluster, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """What a user walkthrough tripped on: URNs nothing knows, a kill's outcome, task arguments
    that look like options, a folder with no main.py, --json before the command."""
    missing = "urn:snipe:proc:doesnotexist"
    for urn in (missing, "urn:snipe:host:h9"):          # said at once, not a wait that never ends
        assert_clean_error(run(capsys, "events", urn), 1, "no such task", urn)
        assert_json_error(run(capsys, "events", urn, "--json"), 1, "not-found", "no such task", urn)
    assert_clean_error(run(capsys, "show", missing), 1, f"nothing is known about {missing}")
    assert_json_error(run(capsys, "show", missing, "--json"), 1, "not-found", f"nothing is known about {missing}")
    assert run_json(capsys, "show", "urn:snipe:host:h1")["records"]          # a known URN still shows

    code, out, _ = run(capsys, "--json", "hosts")                              # --json before the command too
    assert code == 0 and set(json.loads(out)) == set(run_json(capsys, "hosts")) == {
        f"urn:snipe:host:h{i}" for i in (1, 2, 3)}, out
    code, out, _ = run(capsys, "hosts")
    assert code == 0 and re.search(r" \d+\.\d\d ", out) and not re.search(r"\d\.\d{3,}", out), out  # load rounded

    (tmp_path / "echo.py").write_text(ECHO)
    echo = run_json(capsys, "publish", str(tmp_path / "echo.py"))["urn"]
    task = run_json(capsys, "spawn", echo, "-n", "5", "--host", "h2")          # -n 5 is the task's
    assert task["host"] == "urn:snipe:host:h2"
    assert Process(task["urn"]).wait(60)["exit_code"] == 0
    assert Process(task["urn"]).info()["argv"] == ["-n", "5"]
    task = json.loads(run(capsys, "--json", "spawn", echo, "--", "--host", "x")[1])
    assert Process(task["urn"]).wait(60)["exit_code"] == 0
    assert Process(task["urn"]).info()["argv"] == ["--host", "x"]

    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "run.py").write_text(ECHO)
    assert_clean_error(run(capsys, "publish", str(tmp_path / "pkg")), 1, "no entry point", "--entry")
    assert run_json(capsys, "publish", str(tmp_path / "pkg"), "--entry", "run.py")["urn"].startswith(
        "urn:snipe:code:sha256:")

    mistyped = echo[:-4] + ("0000" if not echo.endswith("0000") else "1111")
    assert_clean_error(run(capsys, "spawn", mistyped), 1, f"no code published at {mistyped}")
    assert_clean_error(run(capsys, "spawn", "urn:snipe:proc:abc"), 1, "urn:snipe:proc:abc is not a code URN")

    sleeper = snipe.publish(_write(tmp_path / "sleeper.py", SLEEPER))
    p = snipe.spawn(sleeper, "600", host="h1")
    wait_for(lambda: p.status()["state"] == "running", 20, "the sleeper to run")
    code, out, _ = run(capsys, "kill", p.urn)
    assert code == 0 and out.strip() == f"{p.urn}: killed", out          # what happened, not "running"
    p2 = snipe.spawn(sleeper, "600", host="h1")
    wait_for(lambda: p2.status()["state"] == "running", 20, "the second sleeper to run")
    killed = run_json(capsys, "kill", p2.urn)
    assert killed["state"] == "killed" and killed["ended"] is True, killed


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path
