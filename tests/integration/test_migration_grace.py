"""After a migration commits, the original process stays SNIPE_MIGRATION_GRACE_S seconds (5 by
default) answering stragglers with redirects, then exits (snipe/migration/origin.py). Checked on
real tasks moved between real daemons: which original is still running and which has gone, and
what one answers a straggler that still writes to its old address."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import zmq

import snipe
from snipe.daemonclient import DaemonClient
from snipe.identity import public_key_from_id
from snipe.localcluster import LocalCluster
from snipe.messaging.channel import PROTOCOL, VERSION
from snipe.transport import client_socket
from snipe.wire import Envelope, decode, encode
from tests.integration.test_migration import PINGER, _ping, _value, publish
from tests.support import wait_for

LIGHT_PINGER = PINGER.replace("bytes(192 << 20)", "b''")


@dataclass
class Origin:
    """Where a task ran before it moved: its process, and the address and instance it published."""

    urn: str
    process: psutil.Process
    endpoint: str
    key: str
    instance: str

    @property
    def running(self) -> bool:
        try:
            return self.process.is_running() and self.process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False


def _origin(cluster: LocalCluster, task: snipe.Process) -> Origin:
    """The task's process on h1 and the TCP address it published there (read before it moves)."""
    with DaemonClient(cluster.daemons[0].address, cluster.user) as h1:
        tasks = h1.call("ps")[0]["tasks"]
    pid = next(t["pid"] for t in tasks if t["urn"] == task.urn)
    comm = _value(task.urn, "comm")
    assert isinstance(comm, list), comm
    endpoint = next(c["endpoint"] for c in comm if c.get("transport") == "tcp")
    key, instance = _value(task.urn, "key"), _value(task.urn, "instance")
    assert isinstance(key, str) and isinstance(instance, str)
    return Origin(task.urn, psutil.Process(pid), endpoint, key, instance)


def _straggle(cluster: LocalCluster, origin: Origin, timeout: float = 20.0) -> Envelope | None:
    """Send one data message to the task's old address, as a peer that missed the move would;
    the answer that comes back (None if none comes within `timeout`)."""
    ctx = zmq.Context()
    sock = client_socket(ctx, zmq.DEALER, cluster.user, public_key_from_id(origin.key))
    try:
        sock.connect(origin.endpoint)
        sock.send_multipart(encode(Envelope(PROTOCOL, VERSION, "data", 0, {"f": snipe.me()})))
        if not sock.poll(int(timeout * 1000)):
            return None
        env, _ = decode(sock.recv_multipart())
        return env
    finally:
        sock.close(0)
        ctx.term()


@pytest.fixture
def origins() -> Iterator[list[Origin]]:
    """Origins a test records; any still running at its end (a long grace) is killed by pid."""
    made: list[Origin] = []
    yield made
    for o in made:
        if o.running:
            with contextlib.suppress(psutil.Error):
                o.process.kill()
                o.process.wait(10)


def _spawn_listening(code: str, env: dict[str, str] | None = None) -> snipe.Process:
    task = snipe.spawn(code, host="h1", env=env)
    wait_for(lambda: _value(task.urn, "listening") is True, 60, "the task to listen")
    return task


def test_the_origin_lingers_as_long_as_SNIPE_MIGRATION_GRACE_S_says(
        cluster: LocalCluster, tmp_path: Path, origins: list[Origin]) -> None:
    """Two tasks, one told to linger 120 s and one 0.5 s, moved one after the other (the long
    one first): once the short one's original has exited, the long one's still runs and still
    redirects. Were the variable ignored, both would linger 5 s and the one moved first would
    be gone first."""
    code = publish(tmp_path, "pinger.py", LIGHT_PINGER)
    long = _spawn_listening(code, {"SNIPE_MIGRATION_GRACE_S": "120"})
    short = _spawn_listening(code, {"SNIPE_MIGRATION_GRACE_S": "0.5"})
    long_origin, short_origin = _origin(cluster, long), _origin(cluster, short)
    origins += [long_origin, short_origin]
    assert long.migrate("h2")["to"] == "urn:snipe:host:h2"
    assert short.migrate("h2")["to"] == "urn:snipe:host:h2"
    wait_for(lambda: not short_origin.running, 60, "the original of the task with a 0.5 s grace to exit")
    assert long_origin.running, "the original of the task with a 120 s grace exited"
    redirect = _straggle(cluster, long_origin)
    assert redirect is not None and redirect.kind == "redirect", redirect
    assert redirect.body["from"] == long_origin.instance
    assert redirect.body["to"]["instance"] == _value(long.urn, "instance") != long_origin.instance
    assert redirect.body["to"]["host"] == "urn:snipe:host:h2"
    assert _straggle(cluster, short_origin, timeout=2) is None          # nobody is left there to answer
    assert _ping(long, 1) == 1 and _ping(short, 1) == 1         # both answer from h2
    for task in (long, short):
        snipe.send(task.urn, b"", tag=99)
        assert task.wait(60)["exit_code"] == 0


def test_by_default_the_origin_redirects_stragglers_and_then_exits(
        cluster: LocalCluster, tmp_path: Path, origins: list[Origin]) -> None:
    """No SNIPE_MIGRATION_GRACE_S: the original answers a straggler just after the move (it
    lingers 5 s), and then exits by itself."""
    task = _spawn_listening(publish(tmp_path, "pinger.py", LIGHT_PINGER))
    origin = _origin(cluster, task)
    origins.append(origin)
    task.migrate("h2")
    redirect = _straggle(cluster, origin)
    assert redirect is not None and redirect.kind == "redirect", redirect
    assert redirect.body["to"]["instance"] == _value(task.urn, "instance") != origin.instance
    wait_for(lambda: not origin.running, 60, "the original to exit after its grace")
    assert _ping(task, 1) == 1
    snipe.send(task.urn, b"", tag=99)
    assert task.wait(60)["exit_code"] == 0

