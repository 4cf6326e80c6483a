"""The harness itself (snipe.netlab): what it builds, that each fault does what it says, and that
nothing is left behind, even when its owner is killed. Probes run inside the lab's namespaces;
this process only reads the kernel's tables (`ip`, `nft`) and files."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from snipe.netlab import Lab, cleanup_stale, default_topology, runs_dir
from snipe.netlab.sh import run, which
from tests.netns.helpers import lab_scope

PROBE = str(Path(__file__).parent / "probe.py")
ROOT = Path(__file__).parents[2]


def probe(lab: Lab, host: str, *args: object, timeout: float = 30.0) -> dict[str, Any]:
    r = lab.exec(host, [sys.executable, PROBE, *[str(a) for a in args]], timeout=timeout, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def background(lab: Lab, host: str, *args: object) -> subprocess.Popen[str]:
    """A probe left running (listen, udp-sink); returns once it said it is listening."""
    p = lab.popen(host, [sys.executable, PROBE, *[str(a) for a in args]])
    assert p.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(p.stdout, selectors.EVENT_READ)
    if not sel.select(20):
        p.kill()
        raise AssertionError(f"probe {args} did not start")
    assert "listening" in p.stdout.readline()
    return p


def finish(p: subprocess.Popen[str], timeout: float = 30) -> dict[str, Any]:
    out, _ = p.communicate(timeout=timeout)
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def net_lab(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any]) -> Iterator[Lab]:
    """The default topology, network only (no services): builds in about a second."""
    with lab_scope(request) as make:
        yield make(default_topology(), services=False)


def _root_links() -> str:
    return run(["ip", "-o", "link", "show"]).stdout


def test_the_lab_lives_in_its_namespaces_and_the_root_holds_only_the_safety_route(net_lab: Lab) -> None:
    lab = net_lab
    route = lab.state["route"]
    shown = run(["ip", "route", "show", "type", "unreachable"]).stdout
    assert f"unreachable {route['prefix']} metric {route['metric']}" in shown
    root = _root_links()
    for net in lab.topo.nets:
        assert f"br-{net.name}" not in root and f" {net.name}@" not in root
    names = run(["ip", "netns", "list"]).stdout
    for h in lab.topo.hosts:
        assert lab.ns(h.name) in names
        addrs = run(["ip", "-n", lab.ns(h.name), "-o", "-4", "addr", "show"]).stdout
        for net, a in lab.topo.addresses(h.name).items():
            assert f"inet {a}/24" in addrs, (h.name, net, addrs)
        routes = run(["ip", "-n", lab.ns(h.name), "route", "show"]).stdout
        assert "default" not in routes, f"{h.name} has a default route: {routes}"
    fwd = lab.exec("gw", [which("sysctl") or "sysctl", "-n", "net.ipv4.ip_forward"], check=True).stdout.strip()
    assert fwd == "0", "IP forwarding on the gateway is off unless asked"
    bridges = run(["ip", "-n", lab.switch_ns, "-o", "link", "show", "type", "bridge"]).stdout
    assert all(f"br-{n.name}" in bridges for n in lab.topo.nets)


def test_far_is_reachable_only_through_the_gateway(net_lab: Lab) -> None:
    lab = net_lab
    listener = background(lab, "far", "listen", 7701, 15)
    try:
        far = lab.address("far", "back")
        assert probe(lab, "gw", "connect", f"{far}:7701")[f"{far}:7701"] is True
        assert probe(lab, "h1", "connect", f"{far}:7701")[f"{far}:7701"] is False
    finally:
        listener.kill()


def test_partition_and_cut_block_traffic_and_heal_restores_it(net_lab: Lab) -> None:
    lab = net_lab
    h3, h2f = lab.address("h3", "public"), lab.address("h2", "fastnet")
    listeners = [background(lab, "h3", "listen", 7702, 30), background(lab, "h2", "listen", 7702, 30)]
    try:
        t3, t2 = f"{h3}:7702", f"{h2f}:7702"
        assert probe(lab, "ctl", "connect", t3)[t3] is True
        fid = lab.partition(["h3"])
        assert probe(lab, "ctl", "connect", t3)[t3] is False
        lab.heal(fid)
        assert probe(lab, "ctl", "connect", t3)[t3] is True
        for side in ("host", "switch"):
            assert probe(lab, "h1", "connect", t2)[t2] is True
            fid = lab.cut("h1", "fastnet", side=side)
            assert probe(lab, "h1", "connect", t2)[t2] is False, side
            lab.heal(fid)
        assert probe(lab, "h1", "connect", t2)[t2] is True
    finally:
        for p in listeners:
            p.kill()


def test_loss_drops_about_the_share_asked(net_lab: Lab) -> None:
    lab = net_lab
    target = f"{lab.address('h2', 'fastnet')}:7703"
    fid = lab.loss("h1", "fastnet", 20, direction="out")
    sink = background(lab, "h2", "udp-sink", 7703, 30)
    blast = probe(lab, "h1", "udp-blast", target, 3000)
    got = finish(sink)["received"]
    lab.heal(fid)
    assert 0.70 * 3000 < got < 0.90 * 3000, f"{got} of 3000 datagrams arrived with 20% loss ({blast})"
    assert got + blast["dropped_on_output"] >= 2990, (got, blast)
    sink = background(lab, "h2", "udp-sink", 7703, 30)
    blast = probe(lab, "h1", "udp-blast", target, 1000)
    assert finish(sink)["received"] >= 990 and blast["dropped_on_output"] == 0


def test_delay_adds_the_delay_each_way(net_lab: Lab) -> None:
    lab = net_lab
    listener = background(lab, "h2", "listen", 7704, 30)
    try:
        target = f"{lab.address('h2', 'public')}:7704"
        base = min(probe(lab, "h1", "rtt", target, 5)["rtt_ms"])
        fid = lab.delay("h1", "public", 40)
        delayed = probe(lab, "h1", "rtt", target, 5)["rtt_ms"]
        mechanism = lab.faults()[fid]["mechanism"]
        lab.heal(fid)
        after = min(probe(lab, "h1", "rtt", target, 5)["rtt_ms"])
    finally:
        listener.kill()
    print(f"rtt without {base} ms, with 40 ms each way ({mechanism}) {delayed}, healed {after}")
    assert min(delayed) >= 80, delayed
    assert sorted(delayed)[2] < 80 + 150, delayed        # the median: no runaway queueing
    assert after < 40


def test_rate_caps_the_bandwidth(net_lab: Lab) -> None:
    lab = net_lab
    listener = background(lab, "h2", "listen", 7705, 60)
    try:
        target = f"{lab.address('h2', 'public')}:7705"
        fid = lab.rate("h1", "public", 8)
        capped = probe(lab, "h1", "push", target, 1_000_000)
        lab.heal(fid)
        free = probe(lab, "h1", "push", target, 1_000_000)
    finally:
        listener.kill()
    print(f"1 MB echoed: {capped['seconds']} s at 8 Mbit/s, {free['seconds']} s uncapped")
    assert capped["bytes"] == 1_000_000 and capped["seconds"] >= 0.8, capped
    assert free["seconds"] < capped["seconds"] / 2, (free, capped)


def test_the_command_builds_injects_and_removes(stale_cleaned: dict[str, Any]) -> None:
    rid = f"t{os.getpid() % 100000}"
    cli = [sys.executable, "-m", "snipe.netlab.cli"]

    def netlab(*args: str) -> Any:
        r = subprocess.run([*cli, *args, "--json", "--run", rid], capture_output=True, text=True, timeout=120,
                           cwd=ROOT)
        assert r.returncode == 0, r.stderr + r.stdout
        return json.loads(r.stdout)

    try:
        up = netlab("up", "--no-services")
        assert up["run"] == rid and up["status"] == "up"
        fid = netlab("fault", "partition", "h3")["fault"]
        assert fid in netlab("fault", "list")
        assert netlab("status")["faults"][fid]["kind"] == "partition"
        netlab("fault", "heal", "all")
        down = netlab("down")
        assert len(down["namespaces"]) == len(up["namespaces"])
    finally:
        subprocess.run([*cli, "down", "--run", rid], capture_output=True, timeout=60, check=False)
    assert f"snl-{rid}-" not in run(["ip", "netns", "list"]).stdout


OWNER = """
import sys, time
from snipe.netlab import Lab, default_topology
lab = Lab(default_topology()).up(services=False)
lab.loss("h1", "public", 10)
print(lab.rid, lab.state["route"]["metric"], flush=True)
time.sleep(120)
"""


@pytest.fixture
def owner() -> Iterator[Callable[[], tuple[subprocess.Popen[str], str, int]]]:
    procs: list[subprocess.Popen[str]] = []

    def start() -> tuple[subprocess.Popen[str], str, int]:
        p = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, cwd=ROOT)
        procs.append(p)
        assert p.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        assert sel.select(60), "the lab owner did not start"
        rid, metric = p.stdout.readline().split()
        return p, rid, int(metric)

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(10)


def _left(rid: str, metric: int) -> dict[str, Any]:
    return {"namespaces": [n for n in run(["ip", "netns", "list"]).stdout.split() if n.startswith(f"snl-{rid}-")],
            "route": f"metric {metric}" in run(["ip", "route", "show", "type", "unreachable"]).stdout,
            "dir": (runs_dir() / rid).exists()}


def test_a_terminated_owner_tears_its_lab_down(owner: Callable[[], tuple[subprocess.Popen[str], str, int]]) -> None:
    p, rid, metric = owner()
    assert _left(rid, metric)["namespaces"]
    p.send_signal(signal.SIGTERM)
    p.wait(60)
    assert _left(rid, metric) == {"namespaces": [], "route": False, "dir": False}


def test_cleanup_removes_what_a_killed_owner_left(owner: Callable[[], tuple[subprocess.Popen[str], str, int]]) -> None:
    p, rid, metric = owner()
    p.kill()                                   # SIGKILL: no handler runs
    p.wait(10)
    assert _left(rid, metric)["namespaces"], "the namespaces outlive a killed owner"
    report = cleanup_stale()
    assert rid in report["runs"]
    assert _left(rid, metric) == {"namespaces": [], "route": False, "dir": False}
