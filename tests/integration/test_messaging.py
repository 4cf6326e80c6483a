"""URN-addressed unicast between real processes: reliability, order, failures, big messages."""

from __future__ import annotations

import asyncio
import hashlib
import textwrap
import threading
import time
from pathlib import Path

import pytest

import snipe
from snipe.localcluster import LocalCluster
from snipe.messaging.endpoint import Message

ECHO = textwrap.dedent('''
    import snipe
    while True:
        m = snipe.recv(timeout=60)
        if m is None or m.tag == 99:
            break
        snipe.send(m.source, bytes(m.payload), m.tag)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def test_an_application_and_a_task_exchange_messages_in_order(cluster: LocalCluster, tmp_path: Path) -> None:
    echo = snipe.spawn(publish(tmp_path, "echo.py", ECHO), host="h2")
    for i in range(500):
        snipe.send(echo.urn, i.to_bytes(4, "big"), tag=1)
    got = []
    for _ in range(500):
        m = snipe.recv(source=echo.urn, timeout=30)
        assert m is not None and not m.failed, m
        got.append(int.from_bytes(m.payload, "big"))
    assert got == list(range(500))
    snipe.send(echo.urn, b"", tag=99)
    assert echo.wait(30)["exit_code"] == 0
    stats = snipe.messaging_stats()[echo.urn]
    assert stats["sent"] == 501 and stats["received"] == 500 and stats["route"].startswith("tcp://")


def test_asyncio_receivers_cancelled_midway_lose_no_message(cluster: LocalCluster, tmp_path: Path) -> None:
    """recv_async under asyncio.wait_for: a call cancelled while its worker thread waits must not
    keep (and so lose) what arrives next; each echo arrives once and in order."""
    echo = snipe.spawn(publish(tmp_path, "echo.py", ECHO), host="h2")
    n = 200

    async def main() -> list[int]:
        for _ in range(5):               # callers that give up before anything came
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(snipe.recv_async(source=echo.urn), 0.05)
        for i in range(n):
            await snipe.send_async(echo.urn, i.to_bytes(4, "big"), tag=1)
        got: list[int] = []
        give_up = time.monotonic() + 60
        while len(got) < n and time.monotonic() < give_up:
            try:                         # short waits: many are cancelled while a thread waits
                m = await asyncio.wait_for(snipe.recv_async(source=echo.urn), 0.01)
            except TimeoutError:
                continue
            assert m is not None and not m.failed, m
            got.append(int.from_bytes(m.payload, "big"))
        return got

    assert asyncio.run(main()) == list(range(n))
    snipe.send(echo.urn, b"", tag=99)
    assert echo.wait(30)["exit_code"] == 0


SINK = textwrap.dedent('''
    import hashlib, snipe
    m = snipe.recv(timeout=120)
    snipe.catalog().set_many(snipe.me(), {"size": len(m.payload),
                                          "sha256": hashlib.sha256(m.payload).hexdigest()})
''')


def test_a_256_mib_message_arrives_intact(cluster: LocalCluster, tmp_path: Path) -> None:
    sink = snipe.spawn(publish(tmp_path, "sink.py", SINK), host="h3", quota={"memory_bytes": 2 << 30})
    blob = hashlib.sha256(b"seed").digest() * (256 * 1024 * 1024 // 32)
    snipe.send(sink.urn, blob, deadline=120)
    done = sink.wait(120)
    assert done["exit_code"] == 0, done
    info = sink.info()
    assert info["size"] == len(blob) == 256 * 1024 * 1024
    assert info["sha256"] == hashlib.sha256(blob).hexdigest()


def test_a_dead_receiver_gives_a_delivery_failure(cluster: LocalCluster, tmp_path: Path) -> None:
    echo = snipe.spawn(publish(tmp_path, "echo.py", ECHO), host="h2")
    snipe.send(echo.urn, b"ping", tag=1)
    assert snipe.recv(source=echo.urn, timeout=30).payload == b"ping"
    echo.kill()
    assert echo.wait(30)["state"] == "killed"
    snipe.send(echo.urn, b"anyone?", tag=7, deadline=10)
    m = snipe.recv(source=echo.urn, timeout=30)
    assert m is not None and m.failed and m.tag == 7
    assert "killed" in (m.reason or "") or "deadline" in (m.reason or ""), m.reason


def test_messages_to_a_process_that_never_listens_fail_at_their_deadline(cluster: LocalCluster) -> None:
    ghost = "urn:snipe:proc:0123456789abcdef"
    snipe.send(ghost, b"hello?", tag=3, deadline=1.0)
    m = snipe.recv(source=ghost, timeout=20)
    assert m is not None and m.failed and m.tag == 3 and "no messaging endpoint" in (m.reason or "")


def test_messages_to_a_urn_nobody_claimed_fail_soon_saying_so(cluster: LocalCluster) -> None:
    """Not at their deadline (30 s by default): the catalog, read at a quorum, has no such URN."""
    ghost = "urn:snipe:proc:fedcba9876543210"
    snipe.send(ghost, b"hello?", tag=3)
    m = snipe.recv(source=ghost, timeout=20)
    assert m is not None and m.failed and m.tag == 3, m
    assert f"{ghost} is not in the catalog" in (m.reason or ""), m.reason


def test_a_stranger_key_cannot_deliver(cluster: LocalCluster, tmp_path: Path) -> None:
    import zmq

    from snipe.identity import Identity
    from snipe.runtime import now_ms
    from snipe.transport import Link
    from snipe.wire import Envelope, encode

    snipe.recv(timeout=0)                         # start our endpoint
    me = snipe.me()
    values = snipe.catalog().get(me).as_dict(now_ms())
    tcp = next(c["endpoint"] for c in values["comm"] if c.get("transport") == "tcp")
    link = Link(zmq.Context.instance(), Identity.generate(), tcp, bytes.fromhex(values["key"]), immediate=False)
    try:
        link.sock.send_multipart(encode(Envelope("msg", 1, "data", 0, {"s": 1, "b": 1, "q": 1, "t": [0],
                                                                       "f": me}), [b"forged"]))
        assert snipe.recv(timeout=2) is None      # the handshake was refused: nothing delivered
    finally:
        link.close()


COUNTER_SENDER = textwrap.dedent('''
    import sys, snipe
    peer, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        snipe.send(peer, i.to_bytes(8, "big"), tag=5)
    m = snipe.recv(source=peer, timeout=300)          # the receiver's verdict ends the run
    snipe.catalog().set(snipe.me(), "verdict", m.obj() if m and not m.failed else repr(m))
''')

COUNTER_RECEIVER = textwrap.dedent('''
    import sys, snipe
    n = int(sys.argv[1])
    snipe.recv(timeout=0)                              # listen before the sender starts
    snipe.catalog().set(snipe.me(), "listening", True)
    expected, dup_or_gap, source = 0, 0, None
    while expected < n:
        m = snipe.recv(timeout=120)
        if m is None:
            break
        source = m.source
        if int.from_bytes(m.payload, "big") != expected:
            dup_or_gap += 1
        expected += 1
    verdict = {"received": expected, "out_of_order": dup_or_gap}
    snipe.catalog().set_many(snipe.me(), verdict)
    snipe.send_obj(source, verdict)
    snipe.recv(timeout=5)
''')


def _listening(p: snipe.Process) -> bool:
    from snipe.runtime import now_ms
    return snipe.catalog().get(p.urn).value("listening", now_ms()) is True


def test_two_tasks_on_different_daemons_exchange_a_million_messages(cluster: LocalCluster, tmp_path: Path) -> None:
    from tests.support import wait_for

    n = 1_000_000
    receiver = snipe.spawn(publish(tmp_path, "rx.py", COUNTER_RECEIVER), n, host="h3")
    wait_for(lambda: _listening(receiver), 30, "the receiver to listen")
    sender = snipe.spawn(publish(tmp_path, "tx.py", COUNTER_SENDER), receiver.urn, n, host="h2")
    assert sender.wait(300)["exit_code"] == 0
    assert receiver.wait(60)["exit_code"] == 0
    assert receiver.info()["received"] == n and receiver.info()["out_of_order"] == 0
    assert sender.info()["verdict"] == {"received": n, "out_of_order": 0}


WITHDRAWING_RECEIVER = textwrap.dedent('''
    import snipe
    snipe.recv(timeout=0)
    snipe.catalog().set(snipe.me(), "listening", True)
    got, source = [], None
    while True:
        m = snipe.recv(timeout=60)
        if m is None or m.tag == 9:
            break
        source = m.source
        got.append(int.from_bytes(m.payload, "big"))
        if len(got) == 1000:
            snipe.session().endpoint().withdraw("ipc")     # the route in use goes away mid-stream
            snipe.catalog().set(snipe.me(), "withdrawn", True)
    snipe.send_obj(source, {"in_order": got == list(range(len(got))), "count": len(got)})
    snipe.recv(timeout=5)
''')


def _route(p: snipe.Process) -> str | None:
    return snipe.messaging_stats().get(p.urn, {}).get("route_kind")


def test_a_route_withdrawn_mid_stream_loses_and_reorders_nothing(cluster: LocalCluster, tmp_path: Path) -> None:
    """The receiver stops offering ipc (the route in use) after 1,000 messages; the sender moves
    to tcp when it next reads the catalog, and the stream stays whole and in order."""
    import time

    from snipe.runtime import now_ms
    from tests.support import wait_for

    receiver = snipe.spawn(publish(tmp_path, "wrx.py", WITHDRAWING_RECEIVER), host="h1")   # our host: ipc
    wait_for(lambda: _listening(receiver), 30, "the receiver to listen")
    sent = 0

    def send_one() -> None:
        nonlocal sent
        snipe.send(receiver.urn, sent.to_bytes(8, "big"))
        sent += 1

    for _ in range(1000):
        send_one()
    wait_for(lambda: _route(receiver) == "ipc", 30, "the stream to run over ipc")
    wait_for(lambda: snipe.catalog().get(receiver.urn).value("withdrawn", now_ms()), 30, "the withdrawal")
    deadline = time.monotonic() + 30
    while _route(receiver) != "tcp" and time.monotonic() < deadline:
        send_one()
        snipe.recv(source="urn:snipe:proc:nobody", timeout=0.01)    # pace the stream a little
    assert _route(receiver) == "tcp"
    for _ in range(1000):
        send_one()
    snipe.send(receiver.urn, b"", tag=9)
    m = snipe.recv(source=receiver.urn, timeout=120)
    assert m is not None and not m.failed, m
    assert m.obj() == {"in_order": True, "count": sent}


def _can_block() -> str | None:
    import os
    import shutil
    if os.geteuid() != 0:
        return "cutting a connection needs root (nftables)"
    if shutil.which("nft") is None:
        return "cutting a connection needs nft (Debian package nftables)"
    return None


def test_the_receivers_connection_cut_and_restored_mid_stream(cluster: LocalCluster, tmp_path: Path) -> None:
    from snipe.runtime import now_ms
    from tests.support import PortBlock, wait_for

    if (why := _can_block()) is not None:
        pytest.skip(why)
    n = 30_000
    receiver = snipe.spawn(publish(tmp_path, "crx.py", COUNTER_RECEIVER), n, host="h3")
    wait_for(lambda: _listening(receiver), 30, "the receiver to listen")
    comm = snipe.catalog().get(receiver.urn).value("comm", now_ms())
    port = int(next(c for c in comm if c["transport"] == "tcp")["endpoint"].rsplit(":", 1)[1])
    for i in range(n // 3):
        snipe.send(receiver.urn, i.to_bytes(8, "big"))
    with PortBlock(port):
        for i in range(n // 3, 2 * n // 3):
            snipe.send(receiver.urn, i.to_bytes(8, "big"))
        wait_for(lambda: snipe.messaging_stats()[receiver.urn]["retransmitted"] > 0, 30,
                 "retransmissions while the link is cut")
    for i in range(2 * n // 3, n):
        snipe.send(receiver.urn, i.to_bytes(8, "big"))
    m = snipe.recv(source=receiver.urn, timeout=120)
    assert m is not None and not m.failed, m
    assert m.obj() == {"received": n, "out_of_order": 0}


def test_a_peer_speaking_another_version_is_told_which_versions_exist(cluster: LocalCluster) -> None:
    import zmq

    from snipe.runtime import now_ms
    from snipe.transport import Link
    from snipe.wire import Envelope, decode, encode

    snipe.recv(timeout=0)
    me = snipe.me()
    values = snipe.catalog().get(me).as_dict(now_ms())
    tcp = next(c["endpoint"] for c in values["comm"] if c.get("transport") == "tcp")
    link = Link(zmq.Context.instance(), cluster.user, tcp, bytes.fromhex(values["key"]), immediate=False)
    try:
        link.sock.send_multipart(encode(Envelope("msg", 2, "data", 0, {"f": me}), [b"x"]))
        assert link.sock.poll(10_000), "no answer"
        env, _ = decode(link.sock.recv_multipart())
        assert env.kind == "error" and env.body["code"] == "bad-version"
        assert "versions on offer: 1" in env.body["message"]
    finally:
        link.close()


def test_per_peer_counters_are_readable_and_shown_by_the_console(cluster: LocalCluster, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.support import wait_for

    echo = snipe.spawn(publish(tmp_path, "echo.py", ECHO), host="h2")
    for i in range(10):
        snipe.send(echo.urn, b"x" * 100, tag=i)
    for _ in range(10):
        assert snipe.recv(source=echo.urn, timeout=30) is not None
    mine = snipe.messaging_stats()[echo.urn]
    assert (mine["sent"], mine["received"], mine["bytes_sent"]) == (10, 10, 1000)
    env = {**os.environ, "SNIPE_CATALOG": ",".join(cluster.catalog.addresses),
           "SNIPE_ADMIN_KEY": cluster.admin.key_id, "SNIPE_KEY_FILE": str(cluster.root / "user.key")}

    def shown() -> dict:
        r = subprocess.run([sys.executable, "-m", "snipe.console.main", "show", snipe.me(), "--json"], env=env,
                           capture_output=True, text=True, timeout=60)
        return next((rec["value"] for rec in json.loads(r.stdout)["records"] if rec["name"] == "msg_stats"), {})

    published = wait_for(lambda: shown().get(echo.urn, {}).get("sent") == 10 and shown(), 30,
                         "the counters to be published")
    assert published[echo.urn]["route"].startswith("tcp://")
    r = subprocess.run([sys.executable, "-m", "snipe.console.main", "show", snipe.me()], env=env,
                       capture_output=True, text=True, timeout=60)
    assert "messaging, per peer" in r.stdout and echo.urn in r.stdout
    snipe.send(echo.urn, b"", tag=99)


def test_a_safe_point_asked_while_recv_reads_the_sockets_itself_is_taken(cluster: LocalCluster) -> None:
    """A migration asks for a safe point from a handler, and the application's own thread runs
    handlers while it reads the sockets in recv, before it waits: recv must take the safe point
    then, not sleep through it (a migration once timed out so). The ask is made right after
    that read here; the safe point queues the message recv is waiting for."""
    ep = snipe.runtime.session().endpoint()
    read_directly, at_safe_point = ep._recv_direct, ep.at_safe_point

    def read_then_ask(*args: object) -> Message | None:
        got = read_directly(*args)        # type: ignore[arg-type]
        ep.ask_safe_point()
        return got

    ep._recv_direct = read_then_ask       # type: ignore[method-assign]
    ep.at_safe_point = lambda: ep.deliver_local([Message(ep.me, 7, b"after the safe point")])
    got: list[Message | None] = []
    try:
        waiter = threading.Thread(target=lambda: got.append(snipe.recv(tag=7)), daemon=True)
        waiter.start()
        waiter.join(30)
        assert got and got[0] is not None and got[0].payload == b"after the safe point"
    finally:
        ep._recv_direct, ep.at_safe_point = read_directly, at_safe_point   # type: ignore[method-assign]
