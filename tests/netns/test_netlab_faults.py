"""`snipe-netlab fault ...` as an operator types it, against a lab `snipe-netlab up` built (two
hosts running replicas and daemons, and ctl): each fault does to the traffic what it says, `fault
list` shows exactly the faults in force, `heal` undoes them, `kill` and `restart` end and bring
back a service, and a fault that cannot be applied as asked is refused and not listed. Every probe
runs inside a lab namespace (`snipe-netlab exec`); this process only runs the command and reads
the kernel's tables. The module's lab is taken down at its end, and the test checks that nothing
of it is left."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from snipe.netlab import runs_dir
from snipe.netlab.sh import run
from tests.support import wait_for

CLI = [sys.executable, "-m", "snipe.netlab.cli"]
PROBE = str(Path(__file__).parent / "probe.py")
ROOT = Path(__file__).parents[2]
PORT = 7720                     # the echo listeners' port on h1 and h2
REPLICA_PORT, DAEMON_PORT = 7301, 7400


def _cli(argv: list[str], timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *argv], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@dataclass
class Run:
    """A lab made by `snipe-netlab up`, driven through the command as an operator would."""

    rid: str
    addresses: dict[str, dict[str, str]] = field(default_factory=dict)
    listeners: list[subprocess.Popen[str]] = field(default_factory=list)

    def netlab(self, *args: str) -> Any:
        r = _cli([*args, "--json", "--run", self.rid])
        assert r.returncode == 0, f"snipe-netlab {' '.join(args)}: {r.stderr}{r.stdout}"
        return json.loads(r.stdout)

    def fault(self, *args: str) -> Any:
        return self.netlab("fault", *args)

    def refused(self, *args: str) -> str:
        """Run a fault command that must fail; its error message."""
        r = _cli(["fault", *args, "--json", "--run", self.rid])
        assert r.returncode == 1, f"snipe-netlab fault {' '.join(args)} was not refused: {r.stdout}{r.stderr}"
        return str(json.loads(r.stdout)["error"])

    def addr(self, host: str, net: str = "public", port: int = PORT) -> str:
        return f"{self.addresses[host][net]}:{port}"

    def probe(self, host: str, *args: object, timeout: float = 60.0) -> Any:
        r = _cli(["exec", "--run", self.rid, "--timeout", str(timeout), host, sys.executable, PROBE,
                  *[str(a) for a in args]], timeout=timeout + 30)
        assert r.returncode == 0, f"probe {args} on {host}: {r.stderr}{r.stdout}"
        return json.loads(r.stdout.strip().splitlines()[-1])

    def reach(self, host: str, *targets: str) -> dict[str, bool]:
        """Which of `targets` a TCP connection from inside `host` reaches within 1 s."""
        return self.probe(host, "connect", *targets)

    def reaches_again(self, host: str, *targets: str, timeout: float = 20.0) -> None:
        """Wait (bounded) until `host` reaches every one of `targets`: after a heal, a neighbour
        entry that failed while the link was down takes an ARP round (1 s apart) to resolve."""
        wait_for(lambda: all(self.reach(host, *targets).values()), timeout,
                 f"{host} to reach {', '.join(targets)} again")

    def listen(self, host: str, seconds: float) -> None:
        """An echo listener on PORT inside `host`, in a process group of its own (ended by its id)."""
        p = subprocess.Popen([*CLI, "exec", "--run", self.rid, host, sys.executable, PROBE, "listen", str(PORT),
                              str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                             start_new_session=True)
        self.listeners.append(p)
        assert p.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(p.stdout, selectors.EVENT_READ)
        assert sel.select(30), f"the listener on {host} did not start"
        assert "listening" in p.stdout.readline()

    def processes(self) -> dict[str, dict[str, Any]]:
        return self.netlab("status")["processes"]


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(scope="module")
def lab(stale_cleaned: dict[str, Any]) -> Iterator[Run]:
    rid = f"nf{os.getpid() % 100000}"
    r = Run(rid)
    pids: set[int] = set()
    up: dict[str, Any] = {}
    try:
        up = r.netlab("up", "--hosts", "2")
        r.addresses = up["hosts"]
        for host in ("h1", "h2"):
            r.listen(host, 600)
        yield r
        pids = {p["pid"] for p in r.processes().values()}
    finally:
        for p in r.listeners:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)
        down = _cli(["down", "--run", rid, "--json"])
    assert down.returncode == 0, down.stderr
    left = [n for n in run(["ip", "netns", "list"]).stdout.split() if n.startswith(f"snl-{rid}-")]
    route = up["route"]
    assert left == [], left
    assert f"metric {route['metric']}" not in run(["ip", "route", "show", "type", "unreachable"]).stdout
    assert all(_gone(pid) for pid in pids), pids
    assert not (runs_dir() / rid).exists()


@pytest.fixture
def faults_healed(lab: Run) -> Iterator[Run]:
    """The lab, with every fault a test leaves healed and every service running again after it."""
    try:
        yield lab
    finally:
        lab.fault("heal", "all")
        for name, p in lab.processes().items():
            kind, _, host = name.partition("@")
            if not p["alive"] and kind in ("replica", "daemon"):
                lab.fault("restart", kind, host)


def test_partition_cuts_hosts_off_both_ways_and_heal_restores_them(faults_healed: Run) -> None:
    lab = faults_healed
    h1, h2, h2f = lab.addr("h1"), lab.addr("h2"), lab.addr("h2", "fastnet")
    lab.reaches_again("ctl", h1, h2)
    fid = lab.fault("partition", "h2")["fault"]
    assert lab.fault("list")[fid] | {"at": 0} == {"kind": "partition", "hosts": ["h2"], "at": 0}
    assert lab.reach("ctl", h1, h2) == {h1: True, h2: False}
    assert lab.reach("h1", h2, h2f) == {h2: False, h2f: False}      # on every network
    assert lab.reach("h2", h1, lab.addr("h1", "fastnet")) == {h1: False, lab.addr("h1", "fastnet"): False}
    assert lab.fault("heal", fid) == {"healed": fid}
    assert fid not in lab.fault("list")
    lab.reaches_again("ctl", h1, h2)
    lab.reaches_again("h1", h2, h2f)
    # the hosts named together still reach each other, and nothing else
    fid = lab.fault("partition", "h1", "h2")["fault"]
    assert lab.reach("h1", h2, h2f) == {h2: True, h2f: True}
    assert lab.reach("ctl", h1, h2) == {h1: False, h2: False}
    lab.fault("heal", fid)
    lab.reaches_again("ctl", h1, h2)


@pytest.mark.parametrize("side", ["host", "switch"])
def test_cut_takes_one_link_down_and_heal_brings_it_back(faults_healed: Run, side: str) -> None:
    lab = faults_healed
    h2, h2f, h1f = lab.addr("h2"), lab.addr("h2", "fastnet"), lab.addr("h1", "fastnet")
    lab.reaches_again("h1", h2, h2f)
    fid = lab.fault("cut", "h1", "fastnet", "--side", side)["fault"]
    assert lab.fault("list")[fid] | {"at": 0} == {"kind": "cut", "host": "h1", "net": "fastnet", "side": side,
                                                   "at": 0}
    assert lab.reach("h1", h2, h2f) == {h2: True, h2f: False}       # that link only
    assert lab.reach("h2", h1f) == {h1f: False}                      # seen from its other end too
    lab.fault("heal", fid)
    lab.reaches_again("h1", h2, h2f)
    lab.reaches_again("h2", h1f)


def test_loss_of_every_packet_stops_one_link_and_heal_restores_it(faults_healed: Run) -> None:
    lab = faults_healed
    h2, h2f, h1f = lab.addr("h2"), lab.addr("h2", "fastnet"), lab.addr("h1", "fastnet")
    fid = lab.fault("loss", "h1", "fastnet", "100")["fault"]
    assert lab.fault("list")[fid] | {"at": 0} == {"kind": "loss", "host": "h1", "net": "fastnet", "percent": 100,
                                                   "direction": "both", "at": 0}
    assert lab.reach("h1", h2, h2f) == {h2: True, h2f: False}
    assert lab.reach("h2", h1f) == {h1f: False}                      # dropped as they come in, too
    lab.fault("heal", fid)
    lab.reaches_again("h1", h2, h2f)
    lab.reaches_again("h2", h1f)


def _qdiscs(lab: Run, ns: str, dev: str) -> str:
    return run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", dev]).stdout


def test_rate_puts_a_token_bucket_on_both_ends_of_the_link_until_healed(faults_healed: Run) -> None:
    """(That the bucket holds the bandwidth to the rate is test_harness.py's
    test_rate_caps_the_bandwidth; here: what the command sets up and takes away.)"""
    lab = faults_healed
    ends = ((f"snl-{lab.rid}-h1", "public"), (f"snl-{lab.rid}-sw", "h1-n0"))
    fid = lab.fault("rate", "h1", "public", "8")["fault"]
    assert lab.fault("list")[fid]["kind"] == "rate"
    for ns, dev in ends:
        shown = _qdiscs(lab, ns, dev)
        assert "qdisc tbf" in shown and "rate 8Mbit" in shown, (ns, dev, shown)
    h2 = lab.addr("h2")
    assert lab.reach("h1", h2) == {h2: True}                         # slowed, not stopped
    lab.fault("heal", fid)
    for ns, dev in ends:
        assert "tbf" not in _qdiscs(lab, ns, dev)


def test_faults_stacked_on_one_link_are_healed_one_at_a_time(faults_healed: Run) -> None:
    """Healing one of two rates on a link leaves the other in force (not the link's bare queue),
    and a link cut twice stays down until both cuts are healed."""
    lab = faults_healed
    ends = ((f"snl-{lab.rid}-h1", "public"), (f"snl-{lab.rid}-sw", "h1-n0"))
    slow = lab.fault("rate", "h1", "public", "8")["fault"]
    slower = lab.fault("rate", "h1", "public", "4")["fault"]
    assert all("rate 4Mbit" in _qdiscs(lab, ns, dev) for ns, dev in ends)
    lab.fault("heal", slower)
    for ns, dev in ends:
        shown = _qdiscs(lab, ns, dev)
        assert "qdisc tbf" in shown and "rate 8Mbit" in shown, (ns, dev, shown)
    lab.fault("heal", slow)
    assert not any("tbf" in _qdiscs(lab, ns, dev) for ns, dev in ends)

    h2f = lab.addr("h2", "fastnet")
    lab.reaches_again("h1", h2f)
    first, second = (lab.fault("cut", "h1", "fastnet")["fault"] for _ in range(2))
    lab.fault("heal", first)
    assert lab.reach("h1", h2f) == {h2f: False}                      # still cut by the second
    lab.fault("heal", second)
    lab.reaches_again("h1", h2f)


def test_delay_holds_new_connections_on_the_link_until_healed(faults_healed: Run) -> None:
    """40 ms each way: a round trip on a connection opened after the fault takes at least 80 ms
    (a lower bound: a loaded machine only adds to it). Without netem a relay process inside h1
    carries the connection; healing ends it and its redirect rule."""
    lab = faults_healed
    h2 = lab.addr("h2")
    fid = lab.fault("delay", "h1", "public", "40")["fault"]
    fault = lab.fault("list")[fid]
    assert fault["kind"] == "delay" and fault["ms"] == 40 and fault["mechanism"] in ("netem", "relay"), fault
    rtts = lab.probe("h1", "rtt", h2, 5)["rtt_ms"]
    assert min(rtts) >= 80, rtts
    relay = lab.processes().get(fault.get("relay", ""))
    if fault["mechanism"] == "relay":
        assert relay is not None and relay["alive"], lab.processes()
        stats = json.loads((runs_dir() / lab.rid / "relays" / f"{fid}.stats").read_text())
        assert stats["connections"] >= 1, stats
    lab.fault("heal", fid)
    assert fid not in lab.fault("list")
    if relay is not None:
        assert _gone(relay["pid"]) and fault["relay"] not in lab.processes()
        chains = run(["ip", "netns", "exec", f"snl-{lab.rid}-h1", "nft", "list", "ruleset"]).stdout
        assert f"{fid}_nat" not in chains, chains
    lab.reaches_again("h1", h2)


@pytest.mark.parametrize("kind,port", [("daemon", DAEMON_PORT), ("replica", REPLICA_PORT)])
def test_kill_and_restart_a_service(faults_healed: Run, kind: str, port: int) -> None:
    lab = faults_healed
    name, target = f"{kind}@h2", lab.addr("h2", port=port)
    before = lab.processes()[name]
    assert before["alive"] and lab.reach("ctl", target) == {target: True}
    out = lab.fault("kill", kind, "h2")
    assert out["fault"] == "kill" and out["process"] == name
    assert _gone(before["pid"])
    assert lab.processes()[name]["alive"] is False
    assert lab.reach("ctl", target) == {target: False}                # nothing listens there now
    out = lab.fault("restart", kind, "h2")
    assert out["fault"] == "restart" and out["process"] == name
    after = lab.processes()[name]
    assert after["alive"] and after["pid"] != before["pid"]
    assert lab.reach("ctl", target) == {target: True}
    out = lab.fault("restart", kind, "h2")                           # restart of a running service
    assert lab.processes()[name]["alive"] and _gone(after["pid"])


def test_fault_list_shows_exactly_the_faults_in_force(faults_healed: Run) -> None:
    lab = faults_healed
    assert lab.fault("list") == {}
    loss = lab.fault("loss", "h2", "public", "10", "--direction", "in")["fault"]
    part = lab.fault("partition", "h1")["fault"]
    cut = lab.fault("cut", "h2", "fastnet")["fault"]
    listed = lab.fault("list")
    assert {fid: f["kind"] for fid, f in listed.items()} == {loss: "loss", part: "partition", cut: "cut"}
    assert listed[loss]["direction"] == "in" and listed[loss]["percent"] == 10
    lab.fault("heal", part)
    assert set(lab.fault("list")) == {loss, cut}
    lab.fault("heal", "all")
    assert lab.fault("list") == {}
    lab.reaches_again("ctl", lab.addr("h1"))
    lab.reaches_again("h2", lab.addr("h1", "fastnet"))


def test_a_fault_that_cannot_be_applied_is_refused_and_not_listed(faults_healed: Run) -> None:
    lab = faults_healed
    assert "more than 0 Mbit/s" in lab.refused("rate", "h1", "public", "0")
    assert "names every host" in lab.refused("partition", "h1", "h2", "ctl")
    assert "not on fastnet" in lab.refused("cut", "ctl", "fastnet")
    assert "0-100" in lab.refused("loss", "h1", "public", "150")
    assert "0 or more" in lab.refused("delay", "h1", "public", "-5")
    assert "no process 'replica@ctl'" in lab.refused("kill", "replica", "ctl")
    assert "no fault f999" in lab.refused("heal", "f999")
    assert lab.fault("list") == {}
    # a fault the kernel's tools turn down (tc takes no rate this small) is undone, not listed
    assert "tc qdisc replace" in lab.refused("rate", "h1", "public", "1e-12")
    assert lab.fault("list") == {}
    assert "tbf" not in _qdiscs(lab, f"snl-{lab.rid}-h1", "public")
