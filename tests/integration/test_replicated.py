"""Replicated processes on real replicas and daemons: standby mode survives kill -9 of its
primary's host with no acknowledged message lost; mode "all" delivers every message to every
copy and the peer gets each answer once.

The primary runs on h1, the host where the code was published (so the standby must hold the
code itself), checkpointing every 0.5 s to itself and its standby. The test streams numbers to
the task's URN and has every one acknowledged (the task reports them), kills h1's daemon and
the task with SIGKILL, streams more while it is down, and then asks: every number must be
there once and in order, on the promoted standby, and the sender saw no failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import textwrap
from pathlib import Path

import snipe
from snipe.localcluster import LocalCluster
from tests.integration.test_checkpoint import COUNTER, publish, recv_obj, report, running_on
from tests.support import wait_for


def test_a_standby_replica_is_promoted_when_the_primarys_host_is_killed(cluster: LocalCluster,
                                                                        tmp_path: Path) -> None:
    code = publish(tmp_path, "counter.py", COUNTER)
    p = snipe.spawn(code, snipe.me(), host="h1", replicas=2, mode="standby", checkpoint_every=0.5)
    info = p.info()
    assert info["mode"] == "standby" and info["replicas"] == 2 and len(info["standbys"]) == 1
    standby = info["standbys"][0]
    assert standby in ("urn:snipe:host:h2", "urn:snipe:host:h3")
    assert recv_obj(4)["restored"] == 0
    for i in range(150):
        snipe.send(p.urn, str(i).encode(), 1)
    assert report(p.urn, 1) == list(range(150))
    since = snipe.runtime.now_ms()

    def checkpointed() -> bool:
        record = p.info().get("checkpoint") or {}
        return record.get("at", 0) > since and record.get("hosts", [None])[-1] == standby
    wait_for(checkpointed, 30, "a periodic checkpoint, held by the standby, after the first 150 numbers")
    for i in range(150, 300):                         # acknowledged, maybe after the last checkpoint
        snipe.send(p.urn, str(i).encode(), 1)
    assert report(p.urn, 2) == list(range(300))

    pid = p.status()["pid"]
    cluster.kill_daemon(0)                             # kill -9 of the primary's host daemon, then of the task
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    for i in range(300, 400):
        snipe.send(p.urn, str(i).encode(), 1)

    back = recv_obj(4, 60)
    assert back["ready"] == p.urn and back["restored"] >= 150  # from a checkpoint, not from zero
    info = p.info()
    assert info["host"] == standby and info["incarnation"] == 1
    assert report(p.urn, 3) == list(range(400))               # no acknowledged message lost, none twice
    assert running_on(cluster, p.urn) == [standby.rsplit(":", 1)[1]]
    third = {"urn:snipe:host:h2", "urn:snipe:host:h3"} - {standby}
    assert info["standbys"] == sorted(third)                  # a new standby replaces the promoted one
    failures = []
    while (m := snipe.recv(timeout=0)) is not None:
        if m.failed:
            failures.append(m.reason)
    assert failures == []


COPY = textwrap.dedent('''
    import os, sys
    import snipe
    got = []
    snipe.init()
    index = os.environ["SNIPE_REPLICA_INDEX"]
    snipe.send_obj(sys.argv[1], {"ready": snipe.me()}, tag=4)
    while True:
        m = snipe.recv()
        if m.failed:
            continue
        if m.tag == 1:
            got.append(int(m.payload))
        elif m.tag == 2:
            snipe.catalog().set(snipe.me(), "got." + index, {"id": m.obj(), "got": got})
            snipe.send_obj(m.source, {"id": m.obj(), "got": got}, tag=2)
''')


def test_in_mode_all_every_copy_gets_every_message_and_the_peer_each_answer_once(cluster: LocalCluster,
                                                                                 tmp_path: Path) -> None:
    code = publish(tmp_path, "mirror.py", COPY)  # not copy.py: it would shadow the stdlib module
    p = snipe.spawn(code, snipe.me(), replicas=3, mode="all")
    info = p.info()
    assert info["mode"] == "all" and sorted(info["copies"]) == [f"urn:snipe:host:h{i}" for i in (1, 2, 3)]
    assert recv_obj(4)["ready"] == p.urn
    for i in range(100):
        snipe.send(p.urn, str(i).encode(), 1)
    assert report(p.urn, 1) == list(range(100))

    def copies_at(ident: int) -> bool:
        values = p.info()
        return all((values.get(f"got.{i}") or {}).get("id") == ident for i in range(3))
    wait_for(lambda: copies_at(1), 60, "every copy to answer request 1")
    assert all(p.info()[f"got.{i}"]["got"] == list(range(100)) for i in range(3))    # delivered to every copy
    assert report(p.urn, 2) == list(range(100))
    wait_for(lambda: copies_at(2), 60, "every copy to answer request 2")
    ep = snipe.session().endpoint()
    wait_for(lambda: ep.inbound[p.urn].duplicates >= 2, 30, "the other copies' answers to arrive (and be dropped)")
    others = []
    while (m := snipe.recv(timeout=0)) is not None:
        others.append((m.tag, m.failed))
    assert others == []                          # ready, answer 1 and answer 2 arrived once each
    assert ep.received[p.urn] == 3
    def acked() -> list[int]:
        stats = snipe.messaging_stats()
        return [stats[f"{p.urn}#{i}"]["acked"] for i in range(3)]
    # the answers can arrive before the acks of the last request (they wait up to ACK_DELAY_S)
    wait_for(lambda: acked() == [102, 102, 102], 30, "every copy to acknowledge all 102 messages")
