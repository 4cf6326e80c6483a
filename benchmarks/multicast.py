"""Multicast benchmark: 1 sender to 30 members over 3 daemons, against repeated unicast and raw PUB/SUB.

Run it from the repository root, as a module::

    python -m benchmarks.multicast              # readable table, then the JSON
    python -m benchmarks.multicast --json       # the JSON only
    python -m benchmarks.multicast --quick      # a smoke run (small counts)
    python -m benchmarks.multicast --profile DIR   # also py-spy the router daemons (and the sender)

What one run measures, all on this machine, every end in a process of its own:

1. **Raw pyzmq PUB/SUB** (no cluster running yet): one PUB process bound on tcp 127.0.0.2, 30
   SUB processes. High-water marks are off (0), so nothing is dropped for want of room; PUB/SUB
   has no acknowledgement, retransmission, ordering across publishers or membership.
2. **The project**: a ``LocalCluster`` (1 catalog replica, to leave CPU to the measurement, and
   3 hosts h1-h3 on 127.0.0.2-4); 30 member tasks (10 per host) that call ``snipe.join`` and
   read with ``snipe.recv``; one sender task on h1. The same sender then does
   - **multicast**: ``snipe.mcast(group, payload)`` per message (the daemons relay), and
   - **repeated unicast**: ``snipe.send(member, payload)`` to each of the 30 members per message.

Each case has the same phases: a warm-up (routes and connections), a **throughput** phase (the
sender sends N messages of 64 B back to back; latency here includes queueing; run ``--rounds``
times, 3 by default, the two cases in turn, and the pair with the median ratio reported, so a
change in the machine's load between the cases does not decide the ratio) and a **paced**
phase (a fixed rate every case sustains; latency without queueing). Every payload carries its
phase, index and the sender's ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
of the machine); a member takes latency = arrival - send time, for every k-th message. After the
last data message the sender sends an end marker along the same path (FIFO per sender), and
each member then reports its count, its out-of-order or duplicate count and its latency samples:
project members in a unicast message back to this benchmark's own process, raw subscribers in a
file. Throughput = N / (last arrival at any member - first send); deliveries/s = messages
delivered to all members together over the same time.

CPU: every phase also reports the CPU seconds its processes spent (members, sender, daemons and
catalog for the project, read with psutil before and after; subscribers and publisher for raw
PUB/SUB, each reporting its own ``time.process_time()`` at the end of each phase) and the CPU
microseconds per delivered message, per role and in all. On a shared 2-CPU machine the wall
rates swing with the other processes' load; CPU per delivery is what the design costs, and
``ratios.deliveries_per_cpu_s`` compares the three by it.

Ratios and the targets of the multicast issue, with honest ``target_met``: multicast throughput
>= 3x the repeated-unicast throughput at 30 members, and >= 30% of raw PUB/SUB. The load average
of the machine is reported before and after; other processes competing for the CPUs distort
every figure, and the JSON says so when the load is above the number of CPUs.

Every process this benchmark starts is stopped, and its temporary folder removed, also on errors
and on SIGINT/SIGTERM. Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks import harness
from benchmarks.harness import fmt, percentile, ratio, run_main, say, wait_json_file
from benchmarks.measure import cpu_seconds

__all__ = ["Settings", "main", "run_benchmark"]

GROUP = "urn:snipe:group:bench-mcast"
TARGET_VS_UNICAST = 3.0          # multicast / repeated-unicast throughput, at least
TARGET_VS_RAW = 0.3              # multicast / raw PUB/SUB throughput, at least
TAG_DATA, TAG_HELLO, TAG_CTRL, TAG_REPORT = 0, 11, 12, 13
SAMPLES_PER_MEMBER = 500         # latency samples a member keeps per phase (every k-th message)

# Payload header, the same for every case: kind (0 data, 1 end of phase, 2 beacon, 3 bye),
# phase, index, messages in the phase, send time (time.monotonic()).
_HEADER = '''
import struct
HDR = struct.Struct(">BHIId")
DATA, END, BEACON, BYE = 0, 1, 2, 3


class Phase:
    """One receiver's view of one phase."""

    def __init__(self, n):
        self.n, self.count, self.bad, self.expect = n, 0, 0, 0
        self.stride = max(1, n // @SAMPLES@)
        self.first_sent = None
        self.last_arrival = None
        self.lat_us = []

    def add(self, index, sent, now):
        if index != self.expect:
            self.bad += 1
        self.expect = index + 1
        self.count += 1
        if self.first_sent is None or sent < self.first_sent:
            self.first_sent = sent
        self.last_arrival = now
        if index % self.stride == 0:
            self.lat_us.append(round((now - sent) * 1e6, 1))

    def report(self, **extra):
        return {"count": self.count, "n": self.n, "bad": self.bad, "first_sent": self.first_sent,
                "last_arrival": self.last_arrival, "lat_us": self.lat_us, "cpu_s": time.process_time(), **extra}
'''

MEMBER = _HEADER + '''
import os, sys, time
import snipe

group, bench = sys.argv[1], sys.argv[2]
snipe.join(group)
snipe.send_obj(bench, {"member": snipe.me(), "pid": os.getpid()}, @TAG_HELLO@)
phases, failed = {}, 0
while True:
    m = snipe.recv(timeout=5)
    if m is None:
        continue
    now = time.monotonic()
    if m.failed:
        failed += 1
        continue
    if m.tag == @TAG_CTRL@:
        cmd = m.obj()
        if cmd["op"] == "report":
            p = phases.get(cmd["phase"]) or Phase(0)
            snipe.send_obj(bench, {"phase": cmd["phase"], **p.report(failed=failed, partial=True)}, @TAG_REPORT@)
        elif cmd["op"] == "bye":
            break
        continue
    kind, phase, index, n, sent = HDR.unpack_from(m.payload)
    p = phases.get(phase)
    if p is None:
        p = phases[phase] = Phase(n)
    if kind == DATA:
        p.add(index, sent, now)
    elif kind == END:
        snipe.send_obj(bench, {"phase": phase, **p.report(failed=failed, partial=False,
                                                         via_group=m.group is not None)}, @TAG_REPORT@)
time.sleep(0.3)            # let the acknowledgements of the reports go out
snipe.shutdown()
'''

SENDER = _HEADER + '''
import os, sys, time
import snipe

group, bench = sys.argv[1], sys.argv[2]
snipe.send_obj(bench, {"sender": snipe.me(), "pid": os.getpid()}, @TAG_HELLO@)
failures = 0
while True:
    m = snipe.recv(timeout=5)
    if m is None:
        continue
    if m.failed:
        failures += 1
        continue
    cmd = m.obj()
    if cmd["op"] == "bye":
        break
    mode, phase, n, rate, size = cmd["mode"], cmd["phase"], cmd["n"], cmd["rate"], cmd["size"]
    pad = b"." * max(0, size - HDR.size)
    members = cmd.get("members", [])
    mcast, send = snipe.mcast, snipe.send

    def out(payload):
        if mode == "mcast":
            mcast(group, payload)
        else:
            for u in members:
                send(u, payload)

    t0 = time.monotonic()
    for i in range(n):
        if rate:
            wait = t0 + i / rate - time.monotonic()
            if wait > 0:
                time.sleep(wait)
        out(HDR.pack(DATA, phase, i, n, time.monotonic()) + pad)
    t_sent = time.monotonic()
    out(HDR.pack(END, phase, n, n, time.monotonic()))
    snipe.send_obj(bench, {"done": phase, "t0": t0, "t_sent": t_sent, "failures": failures}, @TAG_REPORT@)
time.sleep(0.3)
snipe.shutdown()
'''

RAW = _HEADER + '''
import json, os, sys, time
import zmq

role, endpoint, prefix, plan = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])


def mark(name, info):
    tmp = f"{prefix}.{name}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    os.replace(tmp, f"{prefix}.{name}")


ctx = zmq.Context()
if role == "sub":
    s = ctx.socket(zmq.SUB)
    s.rcvhwm = 0
    s.connect(endpoint)
    s.setsockopt(zmq.SUBSCRIBE, b"")
    mark("ready", {"pid": os.getpid()})
    phases, warm = {}, False
    while True:
        payload = s.recv()
        now = time.monotonic()
        kind, phase, index, n, sent = HDR.unpack_from(payload)
        if kind == BEACON:
            if not warm:
                warm = True
                mark("warm", {})
            continue
        if kind == BYE:
            break
        p = phases.get(phase)
        if p is None:
            p = phases[phase] = Phase(n)
        if kind == DATA:
            p.add(index, sent, now)
        elif kind == END:
            mark(f"p{phase}", {"phase": phase, **p.report(failed=0, partial=False)})
else:
    subs, timeout = plan["subs"], plan["timeout"]
    s = ctx.socket(zmq.PUB)
    s.sndhwm = 0
    s.bind(endpoint)
    mark("ready", {"pid": os.getpid()})

    def wait_all(suffix, beacon):
        limit = time.monotonic() + timeout
        while not all(os.path.exists(f"{sub}.{suffix}") for sub in subs):
            if time.monotonic() > limit:
                raise SystemExit(f"not every subscriber wrote .{suffix} within {timeout} s")
            if beacon:
                s.send(HDR.pack(BEACON, 0, 0, 0, 0.0))
            time.sleep(0.02)

    wait_all("warm", True)            # every subscription is in place (no slow joiner)
    done = {}
    for phase, n, rate, size in plan["phases"]:
        pad = b"." * max(0, size - HDR.size)
        t0 = time.monotonic()
        for i in range(n):
            if rate:
                wait = t0 + i / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
            s.send(HDR.pack(DATA, phase, i, n, time.monotonic()) + pad)
        t_sent = time.monotonic()
        s.send(HDR.pack(END, phase, n, n, time.monotonic()))
        wait_all(f"p{phase}", False)
        done[phase] = {"t0": t0, "t_sent": t_sent, "cpu_s": time.process_time()}
    s.send(HDR.pack(BYE, 0, 0, 0, 0.0))
    mark("json", done)
    time.sleep(0.5)
s.close(linger=2000)
ctx.term()
'''




def _script(text: str) -> str:
    """A worker's source with this module's constants filled in."""
    for name, value in (("SAMPLES", SAMPLES_PER_MEMBER), ("TAG_HELLO", TAG_HELLO), ("TAG_CTRL", TAG_CTRL),
                        ("TAG_REPORT", TAG_REPORT)):
        text = text.replace(f"@{name}@", str(value))
    return text


@dataclass
class Settings:
    members: int = 30
    hosts: int = 3
    size: int = 64
    warmup_n: int = 300
    mcast_n: int = 10_000
    unicast_n: int = 6_000
    raw_n: int = 100_000
    paced_rate: float = 100.0         # messages/s in the paced phase (every case sustains it here)
    paced_n: int = 300
    settle_s: float = 1.0
    phase_timeout_s: float = 120.0
    profile_dir: str | None = None
    profile_n: int = 3_000
    rounds: int = 3                   # throughput rounds, multicast and unicast in turn (the median pair counts)

    @classmethod
    def quick(cls) -> Settings:
        return cls(warmup_n=100, mcast_n=500, unicast_n=300, raw_n=5_000, paced_n=100, settle_s=0.5,
                   phase_timeout_s=60.0, profile_n=500, rounds=1)


def _say(msg: str) -> None:
    say("multicast", msg)


def summarize_phase(n: int, members: int, reports: Sequence[dict[str, Any]], t0: float | None = None
                    ) -> dict[str, Any]:
    """Members' reports of one phase, reduced: throughput, deliveries, latency percentiles."""
    got = [r for r in reports if r]
    deliveries = sum(r["count"] for r in got)
    lat = [x for r in got for x in r["lat_us"]]
    firsts = [r["first_sent"] for r in got if r.get("first_sent") is not None]
    lasts = [r["last_arrival"] for r in got if r.get("last_arrival") is not None]
    start = t0 if t0 is not None else (min(firsts) if firsts else None)
    seconds = (max(lasts) - start) if lasts and start is not None else None
    complete = [r for r in got if r["count"] == n]
    return {
        "n": n, "members": members, "members_reporting": len(got),
        "members_with_all": len(complete),
        "deliveries": deliveries, "expected_deliveries": n * members,
        "missing": n * members - deliveries,
        "out_of_order_or_duplicate": sum(r["bad"] for r in got),
        "failure_notices": max((r.get("failed", 0) for r in got), default=0),
        "seconds": round(seconds, 4) if seconds else None,
        "msgs_per_s": round(n / seconds, 1) if seconds else None,
        "deliveries_per_s": round(deliveries / seconds, 1) if seconds else None,
        "latency_us": {"samples": len(lat), "p50": percentile(lat, 50, None), "p99": percentile(lat, 99, None),
                       "mean": round(statistics.fmean(lat), 1) if lat else None},
    }


def cpu_figures(cpu_s: dict[str, float], deliveries: int) -> dict[str, Any]:
    """CPU seconds per role in one phase, and microseconds of CPU per delivered message (per role
    and in all): the figure that does not swing with the load other processes put on the machine."""
    total = sum(cpu_s.values())
    per = {role: round(v / deliveries * 1e6, 2) if deliveries else None for role, v in cpu_s.items()}
    per["total"] = round(total / deliveries * 1e6, 2) if deliveries else None
    return {"cpu_s": {**{k: round(v, 3) for k, v in cpu_s.items()}, "total": round(total, 3)},
            "cpu_us_per_delivery": per,
            "deliveries_per_cpu_s": round(deliveries / total, 1) if total else None}



# --- process bookkeeping --------------------------------------------------------------------------
class Procs(harness.Procs):
    """Every subprocess and task this benchmark starts; `close` stops them all."""

    def close(self) -> None:
        super().close()
        # Tasks are asked to end first (Project.close); those still running are killed through
        # their daemon while the session lives (LocalCluster.close kills any left by their cwd).
        from snipe import runtime

        sess = runtime._session          # never snipe.session(): with none it would start one
        dead: set[str] = set()
        for t in self.tasks if sess is not None else ():
            sup = getattr(t, "_supervisor", None)
            if sup is None or sup in dead:
                continue
            try:
                sess.daemon(sup).call("kill", {"urn": t.urn}, timeout=3)
            except Exception as exc:  # already ended (refused) or the daemon is gone (skip its others)
                if exc.__class__.__name__ == "Unreachable":
                    dead.add(sup)
        self.tasks.clear()


# --- raw pyzmq PUB/SUB -----------------------------------------------------------------------------
def run_raw(root: Path, procs: Procs, settings: Settings) -> dict[str, Any]:
    """One PUB to `members` SUB processes: warm-up, throughput, paced."""
    script = root / "raw_worker.py"
    script.write_text(_script(RAW))
    phases = [[1, settings.warmup_n, 0, settings.size], [2, settings.raw_n, 0, settings.size],
              [3, settings.paced_n, settings.paced_rate, settings.size]]
    subs = [root / f"raw-sub{i}" for i in range(settings.members)]
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))
        endpoint = f"tcp://127.0.0.2:{s.getsockname()[1]}"
    pub_prefix = root / "raw-pub"
    plan = {"subs": [str(p) for p in subs], "phases": phases, "timeout": settings.phase_timeout_s}
    pub = procs.start([sys.executable, str(script), "pub", endpoint, str(pub_prefix), json.dumps(plan)],
                      root / "raw-pub.log")
    wait_json_file(Path(f"{pub_prefix}.ready"), 30, lambda: pub.poll() is None)
    sub_procs = [procs.start([sys.executable, str(script), "sub", endpoint, str(p), "{}"], Path(f"{p}.log"))
                 for p in subs]
    try:
        pub.wait(settings.phase_timeout_s * 4)
    except subprocess.TimeoutExpired:
        raise TimeoutError("raw PUB/SUB: the publisher did not finish in time") from None
    if pub.returncode != 0:
        raise RuntimeError(f"raw PUB/SUB: the publisher exited with {pub.returncode}: "
                           f"{(root / 'raw-pub.log').read_text(errors='replace')[-1500:]}")
    done = json.loads(Path(f"{pub_prefix}.json").read_text())
    for p in sub_procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(10)
    out: dict[str, Any] = {"transport": "tcp 127.0.0.2", "hwm": "none (0)", "subscribers": settings.members}
    cpu_before: dict[str, float] = {}        # worker -> its process_time at the end of the previous phase
    for phase, n, _rate, _size in phases:
        reports = []
        cpu: dict[str, float] = {"members": 0.0, "sender": 0.0}
        for p in subs:
            f = Path(f"{p}.p{phase}")
            r = json.loads(f.read_text()) if f.exists() else {}
            reports.append(r)
            if "cpu_s" in r:
                cpu["members"] += r["cpu_s"] - cpu_before.get(str(p), 0.0)
                cpu_before[str(p)] = r["cpu_s"]
        d = done[str(phase)]
        cpu["sender"] = d["cpu_s"] - cpu_before.get("pub", 0.0)
        cpu_before["pub"] = d["cpu_s"]
        summary = out[{1: "warmup", 2: "throughput", 3: "paced"}[phase]] = summarize_phase(
            n, settings.members, reports, d["t0"])
        summary.update(cpu_figures(cpu, summary["deliveries"]))
    out["paced"]["rate"] = settings.paced_rate
    return out


# --- the project -----------------------------------------------------------------------------------
class Project:
    """Member tasks and a sender task on a LocalCluster, driven from this process."""

    def __init__(self, root: Path, procs: Procs, settings: Settings) -> None:
        self.root, self.procs, self.settings = root, procs, settings
        self.env = {"XDG_RUNTIME_DIR": str(root / "run")}
        (root / "run").mkdir(exist_ok=True, mode=0o700)
        self.members: list[str] = []
        self.member_pids: dict[str, int] = {}
        self.sender: str | None = None
        self.sender_pid: int | None = None
        self.next_phase = 10
        self.role_pids: dict[str, list[int]] = {}      # members, sender, daemons, catalog: whose CPU a phase costs

    def start(self, bench: str) -> None:
        import snipe

        s = self.settings
        (self.root / "member.py").write_text(_script(MEMBER))
        (self.root / "sender.py").write_text(_script(SENDER))
        member_code = snipe.publish(self.root / "member.py")
        sender_code = snipe.publish(self.root / "sender.py")
        for i in range(s.members):
            self.procs.tasks.append(snipe.spawn(member_code, GROUP, bench, host=f"h{i % s.hosts + 1}",
                                                env=self.env))
        hellos = self._collect(TAG_HELLO, s.members, 180, "members to join")
        self.members = sorted(h["member"] for h in hellos)
        self.member_pids = {h["member"]: h["pid"] for h in hellos}
        self.procs.tasks.append(snipe.spawn(sender_code, GROUP, bench, host="h1", env=self.env))
        hello = self._collect(TAG_HELLO, 1, 60, "the sender to start")[0]
        self.sender, self.sender_pid = hello["sender"], hello["pid"]

    def _collect(self, tag: int, count: int, timeout: float, what: str) -> list[dict[str, Any]]:
        import snipe

        out: list[dict[str, Any]] = []
        limit = time.monotonic() + timeout
        while len(out) < count:
            left = limit - time.monotonic()
            if left <= 0:
                self._explain(f"timed out after {timeout} s waiting for {what} ({len(out)}/{count})")
            m = snipe.recv(tag=tag, timeout=min(left, 5.0)) if left > 0 else None
            if m is not None and not m.failed:
                out.append(m.obj())
        return out

    def _explain(self, why: str) -> None:
        """Raise with the state of any task that ended early."""
        notes = []
        for t in self.procs.tasks:
            with contextlib.suppress(Exception):
                st = t.status()
                if st.get("state") != "running":
                    notes.append(f"{t.urn}: {st.get('state')} {st.get('exit_code')} "
                                 f"{str(t.wait(1).get('stderr_tail', ''))[-600:]}")
        raise TimeoutError(why + ("\n" + "\n".join(notes[:3]) if notes else ""))

    def phase(self, mode: str, n: int, rate: float = 0.0) -> dict[str, Any]:
        """One phase: the sender sends `n` messages (`mode` mcast or unicast); every member reports."""
        import snipe

        assert self.sender is not None
        s = self.settings
        k = self.next_phase
        self.next_phase += 1
        cmd = {"op": "run", "mode": mode, "phase": k, "n": n, "rate": rate, "size": s.size}
        if mode == "unicast":
            cmd["members"] = self.members
        cpu_before = {role: cpu_seconds(pids) for role, pids in self.role_pids.items()}
        snipe.send_obj(self.sender, cmd, TAG_CTRL)
        timeout = s.phase_timeout_s + (n / rate if rate else 0)
        reports: dict[str, dict[str, Any]] = {}
        done: dict[str, Any] | None = None
        limit = time.monotonic() + timeout
        asked = False
        while len(reports) < len(self.members) or done is None:
            m = snipe.recv(tag=TAG_REPORT, timeout=1.0)
            if m is not None and not m.failed:
                r = m.obj()
                if "done" in r and r["done"] == k:
                    done = r
                elif r.get("phase") == k:
                    reports[m.source] = r
            if time.monotonic() > limit:
                if asked or done is None:
                    break
                asked = True          # the end marker did not reach some: ask for what they have
                for u in set(self.members) - set(reports):
                    snipe.send_obj(u, {"op": "report", "phase": k}, TAG_CTRL)
                limit = time.monotonic() + 15
        if done is None:
            self._explain(f"{mode} phase {k}: the sender did not finish within {timeout} s")
        assert done is not None
        cpu = {role: cpu_seconds(pids) - cpu_before[role] for role, pids in self.role_pids.items()}
        out = summarize_phase(n, len(self.members), [reports.get(u, {}) for u in self.members], done["t0"])
        out.update(cpu_figures(cpu, out["deliveries"]))
        out["send_seconds"] = round(done["t_sent"] - done["t0"], 4)
        out["sender_failure_notices"] = done["failures"]
        if rate:
            out["rate"] = rate
        return out

    def close(self) -> None:
        import snipe

        for u in [*self.members, *([self.sender] if self.sender else [])]:
            with contextlib.suppress(Exception):
                snipe.send_obj(u, {"op": "bye"}, TAG_CTRL)


def _daemon_status(cluster: Any) -> dict[str, Any]:
    from snipe.daemonclient import DaemonClient

    out = {}
    for d in cluster.daemons:
        try:
            with DaemonClient(d.address, cluster.user, timeout=5) as c:
                st = c.call("mcast-status")[0]
            out[d.host_id] = {"routing": GROUP in st.get("routing", []),
                              "local_members": len(st.get("local", {}).get(GROUP, [])),
                              **st.get("groups", {}).get(GROUP, {})}
        except Exception as exc:  # a status is a nicety: report why it is missing
            out[d.host_id] = {"error": f"{exc.__class__.__name__}: {exc}"}
    return out


def _registrations() -> dict[str, Any]:
    """Routers in the group's entry and how many members registered with each."""
    import snipe
    from snipe.multicast.groups import live_members, live_routers
    from snipe.runtime import now_ms

    c = snipe.catalog()
    c.invalidate(GROUP)
    entry = c.get(GROUP)
    routers = sorted(live_routers(entry, now_ms()))
    members = live_members(entry, now_ms())
    per = {r: sum(1 for v in members.values() if r in v.get("routers", [])) for r in routers}
    # every router a member registered with relays each message to it: the copies each member receives
    copies = round(sum(per.values()) / len(members), 2) if members else None
    return {"routers": routers, "members": len(members), "members_per_router": per,
            "copies_received_per_member": copies}


# --- the benchmark ---------------------------------------------------------------------------------
def median_round(rounds: Sequence[tuple[dict[str, Any], dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The (multicast, unicast) throughput pair whose ratio is the median. The two cases run in
    turn, round after round, so the machine's load (it swings by the minute on a shared VM) weighs
    on both alike; each pair's ratio is taken within the pair."""
    def ratio(pair: tuple[dict[str, Any], dict[str, Any]]) -> float:
        return (pair[0]["msgs_per_s"] or 0.0) / (pair[1]["msgs_per_s"] or float("inf"))
    return sorted(rounds, key=ratio)[len(rounds) // 2]


def ratios(mc: dict[str, Any], uni: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    t_m = mc["throughput"]["msgs_per_s"]
    vs_uni = ratio(t_m, uni["throughput"]["msgs_per_s"])
    vs_raw = ratio(t_m, raw["throughput"]["msgs_per_s"])
    lat = {}
    for case in ("throughput", "paced"):
        for q in ("p50", "p99"):
            lat[f"{case}_{q}"] = {"multicast_vs_unicast": ratio(mc[case]["latency_us"][q], uni[case]["latency_us"][q]),
                                  "multicast_vs_raw": ratio(mc[case]["latency_us"][q], raw[case]["latency_us"][q])}
    return {
        "throughput_vs_repeated_unicast": {"ratio": vs_uni, "target": f">= {TARGET_VS_UNICAST}x",
                                           "target_met": vs_uni is not None and vs_uni >= TARGET_VS_UNICAST},
        "throughput_vs_raw_pubsub": {"ratio": vs_raw, "target": f">= {TARGET_VS_RAW}x",
                                     "target_met": vs_raw is not None and vs_raw >= TARGET_VS_RAW},
        "latency": lat,
        # Deliveries per CPU-second of every process involved: what the machine's 2 CPUs allow when
        # the other processes on it leave none spare (wall rates swing with their load, this less).
        "deliveries_per_cpu_s": {
            "multicast_vs_unicast": ratio(mc["throughput"].get("deliveries_per_cpu_s"),
                                           uni["throughput"].get("deliveries_per_cpu_s")),
            "multicast_vs_raw": ratio(mc["throughput"].get("deliveries_per_cpu_s"),
                                       raw["throughput"].get("deliveries_per_cpu_s"))},
    }


def _guarantees(*phases: dict[str, Any]) -> dict[str, Any]:
    ok = all(p["missing"] == 0 and p["out_of_order_or_duplicate"] == 0 for p in phases)
    return {"every_member_got_every_message_once_in_order": ok,
            "missing": sum(p["missing"] for p in phases),
            "out_of_order_or_duplicate": sum(p["out_of_order_or_duplicate"] for p in phases)}


def _load_note(before: Sequence[float], after: Sequence[float]) -> str | None:
    cpus = os.cpu_count() or 1
    worst = max(before[0], after[0])
    if worst > cpus:
        return (f"load average {worst:.1f} on {cpus} CPUs: other processes competed for the CPUs during this "
                f"run, so every figure (and most of all the 30-process cases) is lower and noisier than on an "
                f"idle machine")
    return None


def run_benchmark(settings: Settings) -> dict[str, Any]:
    import snipe
    from snipe.localcluster import LocalCluster

    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="snipe-bench-mcast-"))
    procs = Procs()
    cluster: LocalCluster | None = None
    project: Project | None = None
    result: dict[str, Any] = {"benchmark": "multicast", "settings": asdict(settings), "cpus": os.cpu_count(),
                              "python": sys.version.split()[0], "loadavg_before": os.getloadavg()}
    try:
        import zmq
        result["zmq"] = {"pyzmq": zmq.__version__, "libzmq": zmq.zmq_version()}

        _say(f"raw pyzmq PUB/SUB: 1 PUB, {settings.members} SUB processes")
        raw = run_raw(root, procs, settings)
        procs.close()

        _say(f"starting a local cluster: 1 replica, {settings.hosts} hosts")
        cluster = LocalCluster(root / "cluster", replicas=1, hosts=settings.hosts, loopback_hosts=True)
        cluster.start()
        snipe.init(catalog=cluster.catalog.addresses, identity=cluster.user, admin_key=cluster.admin.key_id,
                   daemon=cluster.daemons[0].address)
        bench = snipe.me()
        project = Project(root, procs, settings)
        _say(f"spawning {settings.members} members ({settings.members // settings.hosts} per host) and a sender")
        project.start(bench)
        project.role_pids = {
            "members": list(project.member_pids.values()),
            "sender": [project.sender_pid] if project.sender_pid else [],
            "daemons": [d.proc.pid for d in cluster.daemons if d.proc is not None],
            "catalog": [r.proc.pid for r in cluster.catalog.replicas if r.proc is not None]}
        time.sleep(settings.settle_s)
        topology = _registrations()
        _say(f"routers: {topology['routers']}")

        _say("multicast and repeated unicast: warm-up each, then "
             f"{settings.rounds} throughput round(s) of each in turn, then paced each")
        mc = {"warmup": project.phase("mcast", settings.warmup_n)}
        uni = {"warmup": project.phase("unicast", settings.warmup_n)}
        rounds = [(project.phase("mcast", settings.mcast_n), project.phase("unicast", settings.unicast_n))
                  for _ in range(settings.rounds)]
        mc["throughput"], uni["throughput"] = median_round(rounds)
        mc["paced"] = project.phase("mcast", settings.paced_n, settings.paced_rate)
        uni["paced"] = project.phase("unicast", settings.paced_n, settings.paced_rate)
        routers_after = _daemon_status(cluster)

        if settings.profile_dir:
            _say(f"profile: py-spy on the router daemons and the sender, {settings.profile_n} multicasts")
            host_ids = {f"urn:snipe:host:{d.host_id}": d for d in cluster.daemons}
            pids = {f"router-{host_ids[r].host_id}": host_ids[r].proc.pid for r in topology["routers"]
                    if r in host_ids and host_ids[r].proc is not None}
            if project.sender_pid:
                pids["sender"] = project.sender_pid
            if project.members:
                pids["member"] = project.member_pids[project.members[0]]
            with harness.py_spy(pids, Path(settings.profile_dir), procs) as prof:
                under = project.phase("mcast", settings.profile_n)
            result["profile"] = {"case": f"{settings.profile_n} multicasts flat out, sampled at 200 Hz", **prof,
                                 "throughput_under_profiler": under["msgs_per_s"]}

        result.update({
            "topology": {**topology, "member_tasks": len(project.members), "hosts": settings.hosts,
                         "catalog_replicas": 1, "daemons": routers_after},
            "multicast": mc, "unicast_x30": uni, "raw_pubsub": raw,
            "ratios": ratios(mc, uni, raw),
            "rounds": [{"multicast_msgs_per_s": m["msgs_per_s"], "unicast_msgs_per_s": u["msgs_per_s"],
                        "ratio": ratio(m["msgs_per_s"], u["msgs_per_s"])} for m, u in rounds],
            "guarantees": {"multicast": _guarantees(mc["warmup"], mc["paced"], *(m for m, _ in rounds)),
                           "unicast": _guarantees(uni["warmup"], uni["paced"], *(u for _, u in rounds))},
        })
        return result
    finally:
        if project is not None:
            with contextlib.suppress(Exception):
                project.close()
                time.sleep(0.5)
        procs.close()                      # before the session goes: tasks are killed through it
        with contextlib.suppress(Exception):
            snipe.shutdown()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        shutil.rmtree(root, ignore_errors=True)
        result["elapsed_s"] = round(time.monotonic() - started, 1)
        result["loadavg_after"] = os.getloadavg()
        result["load_note"] = _load_note(result["loadavg_before"], result["loadavg_after"])


def table(r: dict[str, Any]) -> str:
    lines = [f"multicast: 1 sender to {r['settings']['members']} members, {r['cpus']} CPUs, Python {r['python']}, "
             f"pyzmq {r['zmq']['pyzmq']} / libzmq {r['zmq']['libzmq']}",
             f"routers {r['topology']['routers']}, members per router {r['topology']['members_per_router']}", ""]
    head = (f"{'case':<22}{'phase':<11}{'n':>7}{'msg/s':>10}{'deliv/s':>11}{'p50 us':>10}{'p99 us':>10}"
            f"{'missing':>9}{'bad':>6}{'cpu us/deliv':>14}")
    lines += [head, "-" * len(head)]
    for name, key in (("snipe.mcast", "multicast"), ("snipe.send x30", "unicast_x30"), ("raw PUB/SUB", "raw_pubsub")):
        for phase in ("throughput", "paced"):
            p = r[key][phase]
            lines.append(f"{name:<22}{phase:<11}{p['n']:>7}{fmt(p['msgs_per_s'], ',.0f'):>10}"
                         f"{fmt(p['deliveries_per_s'], ',.0f'):>11}{fmt(p['latency_us']['p50'], ',.0f'):>10}"
                         f"{fmt(p['latency_us']['p99'], ',.0f'):>10}{p['missing']:>9}"
                         f"{p['out_of_order_or_duplicate']:>6}"
                         f"{fmt(p.get('cpu_us_per_delivery', {}).get('total'), ',.2f'):>14}")
    lines.append("")
    if len(r.get("rounds", [])) > 1:
        lines.append("throughput rounds (multicast / unicast msg/s, ratio): " + ", ".join(
            f"{fmt(x['multicast_msgs_per_s'], ',.0f')} / {fmt(x['unicast_msgs_per_s'], ',.0f')} = {fmt(x['ratio'])}"
            for x in r["rounds"]) + "; the median pair is in the table")
    for name, v in r["ratios"].items():
        if "target" in v:
            met = "met" if v["target_met"] else "NOT met"
            lines.append(f"{name:<34} {fmt(v['ratio'])}x   target {v['target']}: {met}")
    if "profile" in r:
        for side, v in r["profile"].items():
            if isinstance(v, dict) and "self" in v:
                lines += ["", f"profile, {side} (self time share of busy samples; busy by thread "
                              f"{[(t['function'], t['share']) for t in v.get('busy_by_thread', [])][:3]}):"]
                for item in v["self"][:10]:
                    lines.append(f"  {item['share']:>6.1%}  {item['function']}")
    lines.append(f"\nelapsed {r['elapsed_s']} s; load average before {r['loadavg_before'][0]:.1f}, "
                 f"after {r['loadavg_after'][0]:.1f}")
    if r.get("load_note"):
        lines.append(f"NOTE: {r['load_note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multicast", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small counts")
    ap.add_argument("--profile", metavar="DIR", help="also py-spy the router daemons, the sender and a member")
    ap.add_argument("--rounds", type=int, help="throughput rounds of each case, in turn (default 3; the median "
                                                 "pair's ratio is reported)")
    args = ap.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    if args.rounds is not None:
        if args.rounds < 1:
            ap.error("--rounds must be at least 1")
        settings.rounds = args.rounds
    if args.profile:
        settings.profile_dir = args.profile

    return run_main(args, lambda: run_benchmark(settings), table)


if __name__ == "__main__":
    sys.exit(main())
