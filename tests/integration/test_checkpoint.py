"""Checkpoint/restart on real replicas and daemons: a host killed -9 under a checkpointed task.

The task (COUNTER) keeps every number it was sent; the test process sends it numbers, has it
checkpoint, sends more, kills its host's daemon and the task with SIGKILL, and sends more while
it is down. The task must come back on another host (one only) from the checkpoint (its state
continues, not from zero), with every number exactly once and in order: those it had received
after the checkpoint are redelivered by the sender, those sent while it was down delivered.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import textwrap
from pathlib import Path
from typing import Any

import snipe
from snipe.daemonclient import DaemonClient
from snipe.localcluster import LocalCluster
from tests.integration.test_daemon import SLEEPER
from tests.support import mcast_status, wait_for

COUNTER = textwrap.dedent('''
    import sys
    import snipe
    state = {"got": [], "joined": False}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.init()
    parent = sys.argv[1]
    group = sys.argv[2] if len(sys.argv) > 2 else None    # given: the numbers come as multicasts to it
    if group and not state["joined"]:                      # joining is part of the state
        snipe.join(group)
        state["joined"] = True
    snipe.send_obj(parent, {"ready": snipe.me(), "restored": len(state["got"])}, tag=4)
    while True:
        m = snipe.recv()
        if m.failed:
            continue
        if (m.group == group) if group else (m.tag == 1):
            state["got"].append(int(m.payload))
        elif m.tag == 2:
            snipe.send_obj(m.source, {"id": m.obj(), "got": state["got"]}, tag=2)
        elif m.tag == 3:
            record = snipe.checkpoint()
            snipe.send_obj(m.source, record, tag=3)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def recv_obj(tag: int, timeout: float = 30.0, match: Any = None) -> dict[str, Any]:
    def got() -> dict[str, Any] | None:
        m = snipe.recv(tag=tag, timeout=0.2)
        if m is None:
            return None
        assert not m.failed, m.reason
        obj = m.obj()
        return obj if match is None or match(obj) else None
    return wait_for(got, timeout, f"a tag {tag} reply")  # type: ignore[return-value]


def report(urn: str, ident: int) -> list[int]:
    snipe.send_obj(urn, ident, tag=2)
    return recv_obj(2, 60, lambda o: o["id"] == ident)["got"]


def running_on(cluster: LocalCluster, urn: str) -> list[str]:
    """The hosts whose daemon runs `urn` now."""
    out = []
    for d in cluster.daemons:
        if not d.alive:
            continue
        with DaemonClient(d.address, cluster.user) as c:
            tasks = c.call("ps", timeout=10)[0]["tasks"]
        out += [d.host_id for t in tasks if t["urn"] == urn and t["state"] == "running"]
    return out


def test_a_task_restarts_elsewhere_from_its_checkpoint_when_its_host_is_killed(cluster: LocalCluster,
                                                                              tmp_path: Path) -> None:
    code = publish(tmp_path, "counter.py", COUNTER)
    me = snipe.me()
    p = snipe.spawn(code, me, host="h2", restart="on-host-failure")
    assert recv_obj(4)["restored"] == 0
    for i in range(100):
        snipe.send(p.urn, str(i).encode(), 1)
    snipe.send(p.urn, b"", 3)
    record = recv_obj(3)
    assert record["seq"] == 1 and len(record["holders"]) == 2 and "urn:snipe:host:h2" in record["hosts"]
    assert snipe.catalog().get(p.urn).value("checkpoint", snipe.runtime.now_ms())["file"] == record["file"]
    for i in range(100, 150):
        snipe.send(p.urn, str(i).encode(), 1)
    assert report(p.urn, 1) == list(range(150))      # 100..149 reached it (acknowledged) after the checkpoint

    pid = p.status()["pid"]
    cluster.kill_daemon(1)                             # kill -9 of h2's daemon, then of its task
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for i in range(150, 200):                          # sent while it is down
        snipe.send(p.urn, str(i).encode(), 1)

    back = recv_obj(4, 60)
    assert back["ready"] == p.urn and back["restored"] == 100      # resumed from the checkpoint, not from zero
    info = p.info()
    assert info["host"] in ("urn:snipe:host:h1", "urn:snipe:host:h3") and info["incarnation"] == 1
    assert report(p.urn, 2) == list(range(200))      # every number once, in order
    assert len(running_on(cluster, p.urn)) == 1      # exactly one survivor took it over
    restarted = [e for e in info["events"] if e["kind"] == "restarted"]
    assert len(restarted) == 1 and "from checkpoint 1" in restarted[0]["reason"]


SENDER = textwrap.dedent('''
    import sys
    import snipe
    snipe.init()
    counter, parent, first, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    for i in range(first, first + n):
        snipe.send(counter, str(i).encode(), 1)
    snipe.send_obj(parent, {"sent": n}, tag=6)
    while True:                              # then idle: sends only when the test asks it to
        m = snipe.recv()
        if m.failed:
            snipe.send_obj(parent, {"failed": m.reason}, tag=6)
        elif m.tag == 8:                     # ask the counter for its numbers ...
            snipe.send_obj(counter, m.obj(), tag=2)
        elif m.tag == 2:                     # ... and pass its answer on
            snipe.send_obj(parent, m.obj(), tag=6)
''')


def via_sender(sender: str, ident: int) -> list[int]:
    """The counter's numbers, asked for by `sender` and passed on by it (tag 6); the sender
    must not have been told of a delivery failure."""
    snipe.send_obj(sender, ident, tag=8)

    def answer(o: dict[str, Any]) -> bool:
        assert "failed" not in o, o["failed"]
        return o.get("id") == ident
    return recv_obj(6, 60, answer)["got"]


def test_a_sender_that_began_after_the_checkpoint_resends_what_the_restored_task_lacks(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The counter checkpoints; only then does another task start sending to it (a channel its
    checkpoint knows nothing of), and goes idle once its numbers are acknowledged. The counter
    is restarted from the checkpoint: the idle sender must learn of it and send those numbers
    again (they are in no checkpoint), once each; and the counter's answers to that sender,
    which its restored state never sent, must reach it (a new channel, not taken for old)."""
    me = snipe.me()
    p = snipe.spawn(publish(tmp_path, "counter.py", COUNTER), me, host="h2", restart="on-host-failure")
    assert recv_obj(4)["restored"] == 0
    for i in range(10):
        snipe.send(p.urn, str(i).encode(), 1)
    snipe.send(p.urn, b"", 3)
    assert recv_obj(3)["seq"] == 1
    # It re-reads the counter's entry every 2 s rather than every 30 s (the default), which is
    # when an idle sender learns of a restore: the test need not wait out the default.
    sender = snipe.spawn(publish(tmp_path, "sender.py", SENDER), p.urn, me, 10, 50, host="h3",
                         env={"SNIPE_RETAINED_RESOLVE_S": "2"})
    assert recv_obj(6, 60) == {"sent": 50}
    ids = itertools.count(1)
    # "sent" means queued: the sender's 10..59 may still be on their way (another channel than
    # this test's report request, so nothing orders the two); this incarnation gets them all
    wait_for(lambda: report(p.urn, next(ids)) == list(range(60)), 60, "the counter to get 10..59")
    assert via_sender(sender.urn, next(ids)) == list(range(60))     # the counter answers the sender

    pid = p.status()["pid"]
    cluster.kill_daemon(1)                                  # kill -9 of h2's daemon, then of its task
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    back = recv_obj(4, 60)
    assert back["ready"] == p.urn and back["restored"] == 10    # from the checkpoint: 10..59 are gone

    def everything() -> list[int] | None:                  # asked by us: the sender stays idle
        got = report(p.urn, next(ids))
        return got if len(got) >= 60 else None
    assert wait_for(everything, 60, "the idle sender's numbers to be sent again") == list(range(60))
    assert via_sender(sender.urn, next(ids)) == list(range(60))


def test_a_task_without_hooks_restarts_from_the_beginning(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "plain.py", textwrap.dedent('''
        import os, sys
        import snipe
        snipe.init()
        snipe.send(sys.argv[1], os.environ["SNIPE_HOST_URN"].encode(), tag=5)
        while True:
            snipe.recv()
    '''))
    # on h1, where the code was published: the host that dies must not take the only copy of the code along
    p = snipe.spawn(code, snipe.me(), host="h1", restart="on-host-failure")
    first = snipe.recv(tag=5, timeout=30)
    assert first is not None and first.payload == b"urn:snipe:host:h1"
    pid = p.status()["pid"]
    cluster.kill_daemon(0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    # Following its events: the host's loss does not end them, for the task is restarted.
    kinds = []
    for ev in p.events(timeout=90):
        kinds.append(ev.kind)
        if ev.kind == "restarted":
            break
    assert kinds[0] == "started" and kinds[-1] == "restarted", kinds
    again = snipe.recv(tag=5, timeout=60)
    assert again is not None and again.payload in (b"urn:snipe:host:h2", b"urn:snipe:host:h3")
    events = p.info()["events"]
    assert "from the beginning" in next(e for e in events if e["kind"] == "restarted")["reason"]


def test_following_a_restartable_task_ends_when_no_host_can_restart_it(cluster: LocalCluster,
                                                                       tmp_path: Path) -> None:
    """Its host is lost after every host that could restart it: Process.events does not wait
    for a restart that cannot come (it would follow the task forever)."""
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, "600", host="h3", restart="on-host-failure")
    pid = p.status()["pid"]
    try:
        for i in (0, 1):
            cluster.kill_daemon(i)
        wait_for(lambda: not any(snipe.hosts().get(f"urn:snipe:host:h{i}", {}).get("alive") for i in (1, 2)), 30,
                 "h1's and h2's leases to lapse")
        cluster.kill_daemon(2)
        events = list(p.events(timeout=60))
        assert [e.kind for e in events] == ["started", "host-lost"] and events[-1].final, events
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def test_a_task_that_cannot_be_restarted_is_reported_lost_with_the_reason(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    code = publish(tmp_path, "idle.py", textwrap.dedent('''
        import sys
        import snipe
        snipe.init()
        snipe.send(sys.argv[1], b"up", tag=5)
        while True:
            snipe.recv()
    '''))
    p = snipe.spawn(code, snipe.me(), host="h1", restart="on-host-failure")
    up = snipe.recv(tag=5, timeout=30)
    assert up is not None and up.payload == b"up"
    holder = p.info()["on_call"][0]                 # the host given the code at spawn
    assert holder in ("urn:snipe:host:h2", "urn:snipe:host:h3")
    for d in cluster.daemons[1:]:                    # its copy and publish's spare are lost too (disks replaced)
        code_dir = d.state_dir / "code"
        shutil.rmtree(code_dir)
        code_dir.mkdir()
    pid = p.status()["pid"]
    cluster.kill_daemon(0)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)

    def lost() -> dict[str, Any] | None:
        info = p.info()
        return info if info.get("state") == "lost" else None
    info = wait_for(lost, 90, "the task to be reported lost after the failed restarts")
    event = info["events"][-1]
    assert event["kind"] == "lost" and "could not restart the task" in event["reason"]
    assert code in event["reason"]                   # names what was missing
    assert running_on(cluster, p.urn) == []


GROUP = "urn:snipe:group:checkpointed"

STAY = textwrap.dedent('''
    import sys
    import snipe
    snipe.join(sys.argv[2])
    snipe.send(sys.argv[1], b"", tag=5)
    while True:
        snipe.recv()
''')


def test_a_member_restarted_from_its_checkpoint_is_still_in_its_group_and_misses_nothing(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The counter above, its numbers multicast: after its host is killed it comes back from the
    checkpoint still a member, and gets every group message after the checkpoint (those it had
    and lost with its state, and those sent while it was down) once and in order."""
    from snipe.multicast.groups import live_routers

    me = snipe.me()
    stay = snipe.spawn(publish(tmp_path, "stay.py", STAY), me, GROUP, host="h1")    # h1 stands as a router
    assert snipe.recv(tag=5, timeout=60) is not None
    p = snipe.spawn(publish(tmp_path, "counter.py", COUNTER), me, GROUP, host="h2", restart="on-host-failure")
    assert recv_obj(4, 60)["restored"] == 0
    ids = itertools.count(1)

    def routers() -> set[str]:
        snipe.catalog().invalidate(GROUP)
        return set(live_routers(snipe.catalog().get(GROUP), snipe.runtime.now_ms()))
    wait_for(lambda: len(routers()) == 2, 30, "two routers for the group")
    for i in range(100):
        snipe.mcast(GROUP, str(i).encode())
    wait_for(lambda: len(report(p.urn, next(ids))) == 100, 60, "the first 100 multicasts")
    snipe.send(p.urn, b"", 3)
    assert recv_obj(3)["seq"] == 1
    for i in range(100, 150):
        snipe.mcast(GROUP, str(i).encode())
    wait_for(lambda: len(report(p.urn, next(ids))) == 150, 60, "50 more after the checkpoint")

    pid = p.status()["pid"]
    cluster.kill_daemon(1)                             # kill -9 of h2's daemon (a router), then of its task
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for i in range(150, 200):                          # sent while it is down
        snipe.mcast(GROUP, str(i).encode())

    back = recv_obj(4, 90)
    assert back["ready"] == p.urn and back["restored"] == 100

    def all_of_them() -> list[int] | None:
        got = report(p.urn, next(ids))
        return got if len(got) >= 200 else None
    got = wait_for(all_of_them, 90, "every multicast after the restart")
    assert got == list(range(200))                     # once each, in order
    host = p.info()["host"]
    assert host in ("urn:snipe:host:h1", "urn:snipe:host:h3")
    assert stay.status()["state"] == "running"
    # its new host's daemon counts it as its own member, as if it had joined there
    now_on = 0 if host == "urn:snipe:host:h1" else 2
    wait_for(lambda: p.urn in mcast_status(cluster, now_on)["local"].get(GROUP, []), 30,
             f"{host}'s daemon to count the restored member as its own")
