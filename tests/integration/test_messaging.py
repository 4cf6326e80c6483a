"""URN-addressed unicast between real processes: reliability, order, failures, big messages."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import snipe
from snipe.localcluster import LocalCluster

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
