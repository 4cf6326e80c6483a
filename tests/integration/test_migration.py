"""Process migration between real daemons (SNIPE 4.6): a task keeps its URN, its state and every
message across moves, its peers only see latency, and a move that fails leaves it running."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

from snipe_daemon.migration import NOTIFY_TAG

import snipe
from snipe.errors import MigrationFailed
from snipe.localcluster import LocalCluster
from snipe.runtime import now_ms
from tests.support import mcast_status, wait_for

COUNTER = textwrap.dedent('''
    import os, sys, snipe
    n = int(sys.argv[1])
    state = {"count": 0, "bad": 0, "source": None, "hosts": []}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.probe()                              # listen (in a clone: take over the process here)
    state["hosts"].append(os.environ["SNIPE_HOST_URN"])
    snipe.catalog().set(snipe.me(), "listening", len(state["hosts"]))
    while state["count"] < n:
        m = snipe.recv(timeout=120)
        if m is None:
            break
        if m.failed or m.tag != 5:
            continue
        state["source"] = m.source
        if int.from_bytes(m.payload, "big") != state["count"]:
            state["bad"] += 1
        state["count"] += 1
    verdict = {"count": state["count"], "bad": state["bad"], "hosts": state["hosts"]}
    snipe.catalog().set_many(snipe.me(), verdict)
    snipe.send_obj(state["source"], verdict, tag=6)
    snipe.recv(timeout=5)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def _value(urn: str, name: str) -> object:
    snipe.catalog().invalidate(urn)
    return snipe.catalog().get(urn).value(name, now_ms())


class Stream:
    """This process streams numbered messages to a task from a thread, paced; it stops at each
    of `holds` until released, so a migration can start with the stream held mid-way and then
    run while the stream goes on."""

    def __init__(self, dest: str, n: int, holds: tuple[int, ...] = (), batch: int = 500, pause: float = 0.01,
                 send: Callable[[int], None] | None = None) -> None:
        self.dest, self.n, self.holds, self.batch, self.pause = dest, n, set(holds), batch, pause
        self.send = send or (lambda i: snipe.send(self.dest, i.to_bytes(8, "big"), tag=5, deadline=120))
        self.sent = 0
        self.error: BaseException | None = None
        self.release = threading.Semaphore(0)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self.sent < self.n:
                if self.sent in self.holds and not self.release.acquire(timeout=600):
                    raise TimeoutError(f"the stream was held at {self.sent} and never released")
                stop = min([h for h in self.holds if h > self.sent] + [self.n, self.sent + self.batch])
                while self.sent < stop:
                    self.send(self.sent)
                    self.sent += 1
                time.sleep(self.pause)          # pacing, not waiting for a condition
        except BaseException as exc:
            self.error = exc


def migrate_mid_stream(task: snipe.Process, host: str, stream: Stream, at: int, during: int = 10_000) -> dict:
    """Start moving `task` while the stream is held at `at`, let `during` more messages go
    while it moves, and the rest once it has moved: so it surely moves mid-stream."""
    wait_for(lambda: stream.sent == at, 120, f"{at:,} messages sent")
    assert at + during < stream.n
    stream.holds.add(at + during)
    result: list[dict | BaseException] = []

    def move() -> None:
        try:
            result.append(task.migrate(host))
        except BaseException as exc:
            result.append(exc)
    mover = threading.Thread(target=move)
    mover.start()
    stream.release.release()                      # the stream goes on while the task moves
    mover.join(180)
    wait_for(lambda: stream.sent == at + during, 120, f"{at + during:,} messages sent")
    stream.release.release()
    assert result and not isinstance(result[0], BaseException), result
    return result[0]  # type: ignore[return-value]


def test_a_counting_task_migrated_twice_mid_stream_gets_every_message_once_in_order(
        cluster: LocalCluster, tmp_path: Path) -> None:
    n = 100_000
    counter = snipe.spawn(publish(tmp_path, "counter.py", COUNTER), n, host="h1")
    wait_for(lambda: _value(counter.urn, "listening") == 1, 30, "the counter to listen")
    stream = Stream(counter.urn, n, holds=(30_000, 65_000))
    moved = migrate_mid_stream(counter, "h2", stream, 30_000)
    assert moved["to"] == "urn:snipe:host:h2" and moved["urn"] == counter.urn
    migrate_mid_stream(counter, "h3", stream, 65_000)
    stream.thread.join(120)
    assert stream.error is None, stream.error
    m = snipe.recv(source=counter.urn, timeout=120)
    assert m is not None and not m.failed, m
    verdict = m.obj()
    assert verdict == {"count": n, "bad": 0, "hosts": ["urn:snipe:host:h1", "urn:snipe:host:h2",
                                                       "urn:snipe:host:h3"]}
    assert snipe.recv(timeout=0) is None          # the peer saw no delivery failure, nothing else
    info = counter.info()
    assert info["host"] == "urn:snipe:host:h3" and info["supervisor"] == cluster.daemons[2].address
    kinds = [e["kind"] for e in info["events"]]
    assert kinds.count("migrated") == 2, kinds
    seen = [e.kind for e in counter.events(timeout=2)]       # what a watcher of the task sees
    assert seen.count("migrated") == 2 and seen[0] == "started", seen
    assert counter.wait(60)["exit_code"] == 0


PINGER = textwrap.dedent('''
    import snipe
    state = {"pings": 0, "ballast": bytes(192 << 20)}     # a big state: the transfer takes a while
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.probe()
    snipe.catalog().set(snipe.me(), "listening", True)
    while True:
        m = snipe.recv(timeout=120)
        if m is None or m.tag == 99:
            break
        state["pings"] += 1
        snipe.send(m.source, state["pings"].to_bytes(4, "big"), tag=m.tag)
''')


def _ping(task: snipe.Process, tag: int) -> int:
    snipe.send(task.urn, b"", tag=tag)
    m = snipe.recv(source=task.urn, timeout=60)
    assert m is not None and not m.failed and m.tag == tag, m
    return int.from_bytes(m.payload, "big")


def test_a_migration_whose_target_dies_during_the_transfer_leaves_the_task_running(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The target host dies (its daemon and the clone killed -9) while the state streams in:
    migrate() raises MigrationFailed saying why, and the task answers where it was, its count
    intact."""
    import psutil

    from snipe.daemonclient import DaemonClient
    task = snipe.spawn(publish(tmp_path, "pinger.py", PINGER), host="h1")
    wait_for(lambda: _value(task.urn, "listening") is True, 60, "the task to listen")
    assert _ping(task, 1) == 1
    errors: list[BaseException] = []

    def move() -> None:
        try:
            task.migrate("h3", timeout=90)
        except BaseException as exc:
            errors.append(exc)
    mover = threading.Thread(target=move)
    mover.start()

    def clone_pid() -> int | None:
        with DaemonClient(cluster.daemons[2].address, cluster.user) as h3:
            tasks = h3.call("ps")[0]["tasks"]
        return next((t["pid"] for t in tasks if t["urn"] == task.urn), None)
    pid = wait_for(clone_pid, 60, "the clone to start on h3")
    clone = psutil.Process(pid)
    base = clone.memory_info().rss
    # The state arriving: the clone's memory grows as the 192 MiB state streams in.
    wait_for(lambda: not clone.is_running() or clone.memory_info().rss - base > 32 << 20 or not mover.is_alive(), 120,
             "the transfer to start")
    cluster.kill_daemon(2)
    clone.kill()
    mover.join(120)
    assert not mover.is_alive()
    assert errors and isinstance(errors[0], MigrationFailed), errors
    why = str(errors[0])
    assert "still runs on urn:snipe:host:h1" in why and ("was cut" in why or "did not confirm" in why), why
    assert _value(task.urn, "host") == "urn:snipe:host:h1"
    assert _ping(task, 2) == 2                    # the same process, its state intact, answering
    snipe.send(task.urn, b"", tag=99)
    assert task.wait(60)["exit_code"] == 0


MEMBER = textwrap.dedent('''
    import os, sys, snipe
    g1, g2, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    state = {"next": {g1: 0, g2: 0}, "got": {g1: 0, g2: 0}, "bad": 0, "hosts": [], "joined": False}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.probe()
    state["hosts"].append(os.environ["SNIPE_HOST_URN"])
    if not state["joined"]:                    # a clone is already in the groups: they moved with it
        snipe.join(g1)
        snipe.join(g2)
        state["joined"] = True
    snipe.catalog().set(snipe.me(), "joined", len(state["hosts"]))
    while min(state["got"].values()) < n:
        m = snipe.recv(timeout=120)
        if m is None:
            break
        if m.failed or m.group not in state["next"]:
            state["bad"] += 1
            continue
        k = int.from_bytes(m.payload[:8], "big")
        if k != state["next"][m.group]:
            state["bad"] += 1
        state["next"][m.group] = k + 1
        state["got"][m.group] += 1
    snipe.catalog().set(snipe.me(), "verdict", {"got": state["got"], "bad": state["bad"], "hosts": state["hosts"]})
    snipe.recv(timeout=5)
''')


def test_a_member_of_two_groups_migrated_mid_stream_gets_every_group_message_once_in_order(
        cluster: LocalCluster, tmp_path: Path) -> None:
    g1, g2, n = "urn:snipe:group:mig-a", "urn:snipe:group:mig-b", 3000
    member = snipe.spawn(publish(tmp_path, "member.py", MEMBER), g1, g2, n, host="h1")
    wait_for(lambda: _value(member.urn, "joined") == 1, 60, "the member to join both groups")

    def mcast(i: int) -> None:            # message i: to g1 when even, to g2 when odd
        snipe.mcast(g1 if i % 2 == 0 else g2, (i // 2).to_bytes(8, "big") + b"." * 56)
    stream = Stream(member.urn, 2 * n, holds=(2000,), batch=100, pause=0.01, send=mcast)
    moved = migrate_mid_stream(member, "h2", stream, 2000, during=1000)
    assert moved["to"] == "urn:snipe:host:h2"
    # the old host's daemon forgets it as the original ends there, while the clone (still reading
    # the stream, and renewing the lease) lives: not only once the lease lapses after its end
    wait_for(lambda: not any(member.urn in mcast_status(cluster, 0)["local"].get(g, []) for g in (g1, g2)), 10,
             "h1's daemon to forget the member that moved away")
    stream.thread.join(120)
    assert stream.error is None, stream.error
    verdict = wait_for(lambda: _value(member.urn, "verdict"), 120, "the member's verdict")
    assert verdict == {"got": {g1: n, g2: n}, "bad": 0, "hosts": ["urn:snipe:host:h1", "urn:snipe:host:h2"]}
    assert sorted(snipe.members(g1)) == [member.urn] and sorted(snipe.members(g2)) == [member.urn]
    # the clone re-registers in the background once it runs
    wait_for(lambda: (_value(g1, "member." + member.urn) or {}).get("host") == "urn:snipe:host:h2", 30,
             "the member's entry to name its new host")
    # its new host's daemon counts it as its own member (and stands for election for it)
    wait_for(lambda: all(member.urn in mcast_status(cluster, 1)["local"].get(g, []) for g in (g1, g2)), 30,
             "h2's daemon to count the migrated member as its own")


COMPUTER = textwrap.dedent('''
    import os, time, snipe
    state = {"ticks": 0, "hosts": [os.environ["SNIPE_HOST_URN"]]}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved, hosts=saved["hosts"] + [os.environ["SNIPE_HOST_URN"]]))
    while len(state["hosts"]) < 2:    # computes, offering a safe point ten times a second; never messages
        state["ticks"] += 1
        snipe.safe_point()
        if state["ticks"] == 3:
            snipe.catalog().set(snipe.me(), "computing", True)
        time.sleep(0.1)
    snipe.catalog().set_many(snipe.me(), {"ticks_at_move": state["ticks"], "hosts": state["hosts"]})
''')


def test_a_task_that_only_calls_safe_point_migrates(cluster: LocalCluster, tmp_path: Path) -> None:
    """safe_point() alone makes a task migratable: its first call starts the task's messaging, so
    its daemon's request to move reaches it, and the next call takes its state."""
    task = snipe.spawn(publish(tmp_path, "computer.py", COMPUTER), host="h1")
    wait_for(lambda: _value(task.urn, "computing") is True, 60, "the task to compute")
    moved = task.migrate("h2", timeout=30)       # MigrationFailed if it never reaches a safe point
    assert moved["to"] == "urn:snipe:host:h2", moved
    assert task.wait(60)["exit_code"] == 0
    assert _value(task.urn, "hosts") == ["urn:snipe:host:h1", "urn:snipe:host:h2"]
    assert isinstance(ticks := _value(task.urn, "ticks_at_move"), int) and ticks >= 3     # its state came along


def _console_env(cluster: LocalCluster) -> dict[str, str]:
    return {**os.environ, "SNIPE_CATALOG": ",".join(cluster.catalog.addresses),
            "SNIPE_ADMIN_KEY": cluster.admin.key_id, "SNIPE_KEY_FILE": str(cluster.root / "user.key")}


def _console(cluster: LocalCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "snipe.console.main", *args], env=_console_env(cluster),
                          capture_output=True, text=True, timeout=180)


PLAIN = textwrap.dedent('''
    import snipe
    snipe.probe()
    snipe.catalog().set(snipe.me(), "listening", True)
    snipe.recv(timeout=300)
''')


def test_console_migrate_and_drain(cluster: LocalCluster, tmp_path: Path) -> None:
    """`snipe-console migrate URN HOST` moves a task; `drain HOST` moves every task with hooks
    off the host and leaves one without hooks running there, saying why."""
    pinger = snipe.spawn(publish(tmp_path, "pinger.py", PINGER.replace("bytes(192 << 20)", "b''")), host="h1",
                         notify=[snipe.me()])
    plain = snipe.spawn(publish(tmp_path, "plain.py", PLAIN), host="h2")
    wait_for(lambda: _value(pinger.urn, "listening") is True and _value(plain.urn, "listening") is True, 60,
             "both tasks to listen")
    r = _console(cluster, "migrate", pinger.urn, "h2", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["to"] == "urn:snipe:host:h2"
    told = snipe.recv(tag=NOTIFY_TAG, timeout=30)             # the notify list hears of the move
    assert told is not None and not told.failed, told
    assert told.obj()["urn"] == pinger.urn and told.obj()["kind"] == "migrated", told.obj()
    assert _ping(pinger, 1) == 1
    r = _console(cluster, "drain", "h2", "--timeout", "60", "--json",
                 "--admin-key-file", str(cluster.root / "catalog" / "admin.key"))
    assert r.returncode == 1, r.stdout + r.stderr             # one task could not move
    drained = json.loads(r.stdout)
    assert [m["urn"] for m in drained.get("moved", [])] == [pinger.urn], (drained, r.stderr)
    assert [m["urn"] for m in drained["left"]] == [plain.urn], drained
    assert "no on_checkpoint hook" in drained["left"][0]["reason"], drained
    assert _value(pinger.urn, "host") in ("urn:snipe:host:h1", "urn:snipe:host:h3")
    assert _ping(pinger, 2) == 2                  # moved twice, its count intact
    assert _value(plain.urn, "host") == "urn:snipe:host:h2" and _value(plain.urn, "state") == "running"
    r = _console(cluster, "migrate", plain.urn, "h3")
    assert r.returncode != 0 and "no on_checkpoint hook" in " ".join(r.stderr.split()), r.stderr
    assert snipe.hosts()["urn:snipe:host:h2"]["draining"] is True
