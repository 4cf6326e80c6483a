"""Flow control between real processes: a receiver that falls behind its high-water mark."""

from __future__ import annotations

import textwrap
from pathlib import Path

import snipe
from snipe.localcluster import LocalCluster

LATE_READER = textwrap.dedent('''
    import sys, time, snipe
    n = int(sys.argv[1])
    snipe.recv(timeout=0)
    ep = snipe.session().endpoint()
    snipe.catalog().set(snipe.me(), "listening", True)
    limit = time.monotonic() + 30
    while not ep.paused and time.monotonic() < limit:     # let the inbox fill past the hwm
        time.sleep(0.05)
    was_paused = ep.paused
    got, source = 0, None
    in_order = True
    while got < n:
        m = snipe.recv(timeout=30)
        if m is None:
            break
        source = m.source
        in_order = in_order and int.from_bytes(m.payload, "big") == got
        got += 1
    snipe.send_obj(source, {"received": got, "in_order": in_order, "was_paused": was_paused})
    snipe.recv(timeout=5)
''')


def test_a_receiver_that_read_nothing_until_its_inbox_passed_the_hwm_reads_everything(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The receiver stops reading its socket at the hwm; once the application has read half of
    its inbox it must read again (it used to stay paused: the sender's messages then failed)."""
    from snipe.runtime import now_ms
    from tests.support import wait_for

    path = tmp_path / "late.py"
    path.write_text(LATE_READER)
    hwm = 65536
    n = 2 * hwm + 10_000
    receiver = snipe.spawn(snipe.publish(path), n, host="h2")
    wait_for(lambda: snipe.catalog().get(receiver.urn).value("listening", now_ms()) is True, 30,
             "the receiver to listen")
    for i in range(n):
        snipe.send(receiver.urn, i.to_bytes(8, "big"), timeout=60)   # blocks at our hwm, never for good
    m = snipe.recv(source=receiver.urn, timeout=120)
    assert m is not None and not m.failed, m
    assert m.obj() == {"received": n, "in_order": True, "was_paused": True}
