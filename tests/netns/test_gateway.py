"""Routing through a gateway (after OCEAN's path names), on namespace hosts.

`far` shares no network with h1: it is only on `back`, which it shares with `gw`, and gw is on
public with h1. A receiver task on far and a sender task on h1 exchange a stream through gw's
relaying daemon: the sender's messages and the receiver's acks are sealed end to end, the
channel is end to end, and gw only forwards. Mid-stream gw's daemon is killed -9, then
restarted: the stream stalls while it is down and resumes after, nothing lost, duplicated or
reordered (the sender retransmits what the dead gateway dropped; the receiver drops copies).
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from snipe.netlab import default_topology
from tests.netns.helpers import driver_argv, lab_scope, read_json, wait_file
from tests.netns.test_reliability import _finish

N = 3000


@pytest.fixture(scope="module")
def gateway_run(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any],
                report: Callable[[str, dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    with lab_scope(request) as make:
        lab = make(default_topology(far=True))
        work = lab.dir / "gateway"
        work.mkdir()
        procs: list[subprocess.Popen[str]] = []
        timeline: list[dict[str, Any]] = []
        t0 = time.time()

        def mark(what: str, **kw: Any) -> None:
            timeline.append({"t": round(time.time() - t0, 2), "what": what, **kw})

        try:
            far = lab.popen("far", driver_argv("receiver", "--dir", work, "--n", N, "--host", "far"))
            procs.append(far)
            rx = wait_file(work / "receiver-spawned.json", timeout=90, proc=far, what="the receiver on far")
            tx = lab.popen(lab.client_host, driver_argv("unicast", "--dir", work, "--n", N, "--interval-ms", 2,
                                                        "--sender-host", "h1", "--receiver-urn", rx["urn"]))
            procs.append(tx)
            wait_file(work / "progress.json", lambda v: v["acked"] >= N // 3, 90, tx, "a third acknowledged")
            before = read_json(work / "progress.json")
            lab.kill("daemon@gw")
            mark("kill -9 gw's daemon", sent=before["sent"], acked=before["acked"])
            time.sleep(1.5)                  # the outage itself (not waiting for a condition)
            during = read_json(work / "progress.json")
            lab.start("daemon@gw")
            mark("gw's daemon restarted", sent=during["sent"], acked=during["acked"])
            wait_file(work / "progress.json",
                      lambda v: v["acked"] > during["acked"] + 100 or (work / "sender.json").exists(), 60, tx,
                      "acknowledgements after the restart")
            mark("acknowledgements flow again", acked=read_json(work / "progress.json")["acked"])
            sent = _finish(tx, 180)
            got = _finish(far, 120)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        txr, rxr = read_json(work / "sender.json"), read_json(work / "receiver.json")
        facts = {"n": N, "sent": txr.get("sent"), "acknowledged": txr.get("acked"),
                 "delivered": rxr.get("received"), "lost": (txr.get("sent") or 0) - (rxr.get("received") or 0),
                 "duplicates": rxr.get("duplicates"), "gaps": rxr.get("gaps"), "in_order": rxr.get("in_order"),
                 "retransmitted": txr.get("retransmitted"), "delivery_failures": txr.get("failures"),
                 "routes": txr.get("routes", []), "timeline": timeline, "send_s": txr.get("send_s"),
                 "all_acked_s": txr.get("all_acked_s"), "sender_driver": sent, "receiver_driver": got,
                 "relay_status": _relay_status(lab)}
        report("gateway: h1 -> far through gw, gw's daemon killed and restarted", facts)
        yield facts


def _relay_status(lab: Any) -> Any:
    """gw's relay counters, asked from ctl (its daemon's relay-status request)."""
    daemon = lab.describe()["daemons"]["gw"]
    code = ("import json, os; from snipe.daemonclient import DaemonClient; from snipe.identity import Identity; "
            f"c = DaemonClient({daemon!r}, Identity.load(os.environ['SNIPE_KEY_FILE'])); "
            "print(json.dumps(c.call('relay-status')[0]))")
    r = lab.exec(lab.client_host, [sys.executable, "-c", code], timeout=30)
    return r.stdout.strip()[-3000:] or r.stderr.strip()[-1000:]


def test_far_and_h1_exchange_through_the_gateway_losing_nothing(gateway_run: dict[str, Any]) -> None:
    f = gateway_run
    assert f["sender_driver"]["sender_exit"] == 0 and f["receiver_driver"]["receiver_exit"] == 0, f
    assert f["delivered"] == N and f["in_order"] and f["duplicates"] == 0 and f["gaps"] == 0, f
    assert f["acknowledged"] == N and not f["delivery_failures"], f


def test_the_route_is_named_after_the_gateway(gateway_run: dict[str, Any]) -> None:
    routes = gateway_run["routes"]
    assert routes and routes[0][3] == "via gw/back", routes
    assert routes[-1][3] == "via gw/back", f"the stream did not come back to the gateway: {routes}"
