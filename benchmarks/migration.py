"""Migration benchmark: how long a migrating task is unreachable, against moving the same bytes
with raw pyzmq plus starting a bare Python process, in one run.

Run it from the repository root, as a module::

    python -m benchmarks.migration              # readable lines, then the JSON
    python -m benchmarks.migration --json       # the JSON only
    python -m benchmarks.migration --quick      # a smoke run (1 KiB and 10 MiB, one move each)

What one run measures, all on this machine:

1. **The project.** A ``LocalCluster`` (3 catalog replicas, 2 daemons on 127.0.0.2 and .3).
   An echo task whose application state is S bytes (``snipe.on_checkpoint`` returns them as one
   bytes object) runs on h1. This process ping-pongs with it without pause (send, wait for the
   echo, send the next) while ``Process.migrate`` moves it to the other host and back, ``--moves``
   times. The *blackout* of one move is the longest gap between two consecutive echoes while it
   ran: the time the task could not be reached (it includes one round trip, ~1 ms). The whole
   call (``migrate_s``: clone start, waiting for a safe point, transfer, commit) is given beside
   it. CPU: the seconds of CPU the task's processes (original and clone) and both daemons used
   per move (psutil), since wall times on a loaded machine swing 2x.
2. **The baseline**, per size, in the same run: a raw pyzmq DEALER in this process sends S bytes
   as one message over TCP on loopback to a ROUTER in a subprocess, which answers with one byte
   when it has all of it (``transfer_s``: send to answer), with CurveZMQ on (the project's
   transport: every link is encrypted) and off; and ``subprocess.run([python, "-c", "pass"])``
   (``process_start_s``). baseline = transfer (CurveZMQ) + process start.
3. **Ratio** blackout / baseline (target <= 1.5), also against the plain-TCP baseline.

Every process this benchmark starts is stopped and its temporary folder removed, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import zmq

import snipe
from benchmarks.measure import cpu_seconds
from snipe.identity import Identity
from snipe.localcluster import LocalCluster
from snipe.runtime import now_ms

SIZES = {"1KiB": 1 << 10, "10MiB": 10 << 20, "100MiB": 100 << 20}

ECHO = textwrap.dedent('''
    import sys, snipe
    state = {"blob": bytes(int(sys.argv[1])), "restored": False}
    snipe.on_checkpoint(lambda: state["blob"])                 # one bytes object: one zero-copy frame
    snipe.on_restore(lambda saved: state.update(blob=saved, restored=True))
    snipe.probe()
    if not state["restored"]:                                  # a clone goes straight back to work
        snipe.catalog().set(snipe.me(), "listening", len(state["blob"]))
    while True:
        m = snipe.recv(timeout=600)
        if m is None or m.tag == 99:
            break
        snipe.send(m.source, m.payload, tag=m.tag)
''')

SINK = textwrap.dedent('''
    import sys, zmq
    from snipe.identity import Identity
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    if sys.argv[1] == "curve":
        pub, sec = Identity.from_seed(bytes.fromhex(sys.argv[2])).curve_keypair()
        sock.curve_publickey, sock.curve_secretkey, sock.curve_server = pub, sec, True
    sock.rcvhwm = sock.sndhwm = 0
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    print(port, flush=True)
    while True:
        ident, msg = sock.recv_multipart(copy=False)
        if len(msg) == 0:
            break
        sock.send_multipart([ident.bytes, b"k"])
''')


class Pinger:
    """Ping-pong with the task from a thread; keeps the time of every echo."""

    def __init__(self, urn: str) -> None:
        self.urn = urn
        self.times: list[float] = []
        self.stop = False
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            i = 0
            while not self.stop:
                snipe.send(self.urn, i.to_bytes(8, "big"), tag=1, deadline=300)
                m = snipe.recv(source=self.urn, timeout=300)
                if m is None or m.failed:
                    raise RuntimeError(f"ping {i} failed: {m}")
                self.times.append(time.monotonic())
                i += 1
        except BaseException as exc:
            self.error = exc

    def gap(self, start: float, end: float) -> float:
        """The longest time between two consecutive echoes in [start, end]."""
        t = [x for x in self.times if start <= x <= end]
        before = [x for x in self.times if x < start]
        if before:
            t.insert(0, before[-1])
        return max((b - a for a, b in itertools.pairwise(t)), default=float("nan"))


def _task_pids(urn: str) -> list[int]:
    out = []
    for p in psutil.process_iter(["pid", "environ"]):
        with contextlib.suppress(psutil.Error):
            if (p.info.get("environ") or {}).get("SNIPE_PROC_URN") == urn:
                out.append(p.pid)
    return out


def measure_project(cluster: LocalCluster, root: Path, size: int, moves: int) -> dict[str, Any]:
    path = root / "echo.py"
    path.write_text(ECHO)
    code = snipe.publish(path)
    trace = {"SNIPE_MIGRATION_TRACE": "1"} if os.environ.get("SNIPE_MIGRATION_TRACE") else {}
    task = snipe.spawn(code, size, host="h1", quota={"memory_bytes": 8 << 30}, env=trace)
    deadline = time.monotonic() + 120
    while snipe.catalog().get(task.urn).value("listening", now_ms()) != size:
        if time.monotonic() > deadline:
            raise RuntimeError("the echo task did not start")
        snipe.catalog().invalidate(task.urn)
        time.sleep(0.05)
    pinger = Pinger(task.urn)
    daemons = [d.proc.pid for d in cluster.daemons if d.proc is not None]
    rounds = []
    try:
        hosts = ["h2", "h1"]
        time.sleep(0.5)                          # a steady ping-pong first (its usual gap)
        for i in range(moves):
            start = time.monotonic()
            pids = _task_pids(task.urn)
            cpu0 = cpu_seconds(pids + daemons)
            task.migrate(hosts[i % 2], timeout=300)
            end = time.monotonic()
            time.sleep(0.5)                      # let the echoes after the move come in
            pids = sorted(set(pids + _task_pids(task.urn)))
            rounds.append({"blackout_s": pinger.gap(start, end + 0.5), "migrate_s": end - start,
                           "cpu_s": cpu_seconds(pids + daemons) - cpu0})
            if pinger.error is not None:
                raise RuntimeError(f"the pinger failed: {pinger.error}")
        steady = pinger.gap((rounds and time.monotonic() - 0.4) or 0, time.monotonic())
    finally:
        pinger.stop = True
        pinger.thread.join(30)
        with contextlib.suppress(snipe.SnipeError):
            task.kill()
    blackouts = [r["blackout_s"] for r in rounds]
    return {"moves": rounds, "blackout_s": statistics.median(blackouts), "blackout_max_s": max(blackouts),
            "migrate_s": statistics.median(r["migrate_s"] for r in rounds),
            "cpu_s_per_move": statistics.median(r["cpu_s"] for r in rounds), "echoes": len(pinger.times),
            "steady_gap_s": steady}


def measure_transfer(size: int, curve: bool, reps: int) -> float:
    ident = Identity.generate()
    proc = subprocess.Popen([sys.executable, "-c", SINK, "curve" if curve else "plain", ident.seed.hex()],
                            stdout=subprocess.PIPE, text=True)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        if curve:
            me = Identity.generate()
            pub, sec = me.curve_keypair()
            sock.curve_publickey, sock.curve_secretkey = pub, sec
            sock.curve_serverkey = ident.curve_keypair()[0]
        sock.sndhwm = sock.rcvhwm = 0
        sock.linger = 0
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(b"w")                          # connect and handshake outside the timing
        sock.recv()
        blob = bytes(size)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            sock.send(blob, copy=False)
            sock.recv()
            times.append(time.perf_counter() - t0)
        sock.send(b"")
        return statistics.median(times)
    finally:
        sock.close(0)
        ctx.term()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


def measure_process_start(reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run(sizes: list[str], moves: int, reps: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="snipe-bench-migration-"))
    cluster = LocalCluster(root / "cluster", replicas=3, hosts=2, lease_s=5.0, loopback_hosts=True)
    result: dict[str, Any] = {"sizes": {}, "load_average": list(os.getloadavg()), "cpus": os.cpu_count()}
    try:
        cluster.start()
        snipe.init(catalog=cluster.catalog.addresses, identity=cluster.user, admin_key=cluster.admin.key_id,
                   daemon=cluster.daemons[0].address)
        start = measure_process_start(reps)
        result["process_start_s"] = start
        for name in sizes:
            size = SIZES[name]
            project = measure_project(cluster, root, size, moves)
            curve = measure_transfer(size, True, reps)
            plain = measure_transfer(size, False, reps)
            baseline = curve + start
            result["sizes"][name] = {
                "bytes": size, "project": project,
                "baseline": {"transfer_curve_s": curve, "transfer_plain_s": plain, "process_start_s": start,
                             "total_s": baseline, "total_plain_s": plain + start},
                "ratio": project["blackout_s"] / baseline, "ratio_vs_plain": project["blackout_s"] / (plain + start),
                "target": 1.5, "met": project["blackout_s"] / baseline <= 1.5}
        result["load_average_after"] = list(os.getloadavg())
        return result
    finally:
        snipe.shutdown()
        cluster.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.migration", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    ap.add_argument("--quick", action="store_true", help="1 KiB and 10 MiB, one move each")
    ap.add_argument("--moves", type=int, default=4, help="migrations per size (alternating h1->h2, h2->h1)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions of each baseline measurement")
    args = ap.parse_args(argv)
    sizes = ["1KiB", "10MiB"] if args.quick else list(SIZES)
    result = run(sizes, 1 if args.quick else args.moves, 2 if args.quick else args.reps)
    if not args.json:
        for name, r in result["sizes"].items():
            p, b = r["project"], r["baseline"]
            print(f"{name}: blackout {p['blackout_s'] * 1000:.1f} ms (max {p['blackout_max_s'] * 1000:.1f}), "
                  f"migrate() {p['migrate_s'] * 1000:.0f} ms, {p['cpu_s_per_move']:.2f} CPU s/move; baseline "
                  f"{b['total_s'] * 1000:.1f} ms (zmq+curve {b['transfer_curve_s'] * 1000:.1f}, plain "
                  f"{b['transfer_plain_s'] * 1000:.1f}, process start {b['process_start_s'] * 1000:.1f}); "
                  f"ratio {r['ratio']:.2f} (target <= 1.5), vs plain {r['ratio_vs_plain']:.2f}")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
