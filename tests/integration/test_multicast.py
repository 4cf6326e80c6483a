"""Multicast groups on real daemons: election, relay, failover of a minority of routers."""

from __future__ import annotations

import textwrap
from pathlib import Path

import snipe
from snipe.localcluster import LocalCluster
from snipe.runtime import now_ms
from tests.support import wait_for

GROUP = "urn:snipe:group:demo"

MEMBER = textwrap.dedent('''
    import sys, time, snipe
    group, expected = sys.argv[1], int(sys.argv[2])
    snipe.join(group)
    snipe.catalog().set(snipe.me(), "joined", True)
    got, bad, last = {}, 0, {}
    end = time.time() + 240
    while sum(got.values()) < expected and time.time() < end:
        m = snipe.recv(timeout=5)
        if m is None:
            continue
        if m.failed:
            bad += 1
            continue
        n = int.from_bytes(m.payload[:8], "big")
        if n != last.get(m.source, -1) + 1:
            bad += 1
        last[m.source] = n
        got[m.source] = got.get(m.source, 0) + 1
    snipe.catalog().set_many(snipe.me(), {"got": sum(got.values()), "bad": bad, "senders": len(got)})
    time.sleep(1)
''')

SENDER = textwrap.dedent('''
    import sys, snipe
    group, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        snipe.mcast(group, i.to_bytes(8, "big") + b"." * 56)
    snipe.catalog().set(snipe.me(), "sent", n)
    snipe.recv(timeout=600)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def _value(p: snipe.Process, name: str) -> object:
    return snipe.catalog().get(p.urn).value(name, now_ms())


def test_every_member_gets_every_message_once_and_in_order(cluster: LocalCluster, tmp_path: Path) -> None:
    n = 300
    member_code = publish(tmp_path, "member.py", MEMBER)
    members = [snipe.spawn(member_code, GROUP, n, host=f"h{i % 3 + 1}") for i in range(3)]
    wait_for(lambda: all(_value(m, "joined") for m in members), 60, "members to join")
    assert len(snipe.members(GROUP)) == 3
    for i in range(n):
        snipe.mcast(GROUP, i.to_bytes(8, "big"))
    for m in members:
        assert m.wait(120)["exit_code"] == 0
        assert (_value(m, "got"), _value(m, "bad"), _value(m, "senders")) == (n, 0, 1)
