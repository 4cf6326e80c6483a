"""Checkpoint and restart benchmark: what snipe.checkpoint() costs, and how long a task whose
host is killed is gone, against raw pyzmq moving the same bytes, in one run.

    python -m benchmarks.checkpoint            # table, then the JSON
    python -m benchmarks.checkpoint --json     # the JSON only

1. **Checkpoint.** A LocalCluster (3 replicas, 3 daemons, host lease 2 s); a task holding S bytes
   of application state (1 KiB, 1 MiB, 10 MiB) takes --rounds checkpoints; each is timed inside
   the task (wall and the task's CPU): hook, library state, msgpack, SHA-256, the blob stored on
   two daemons over CurveZMQ, the catalog record. **Baseline**, same task, same run: the same
   bytes msgpack-ed and sent over plain pyzmq (REQ, no encryption) to two REP sockets of this
   benchmark, which answer once they hold them: the raw cost of putting the state in two other
   processes. Ratio: checkpoint p50 / baseline p50.
2. **Restart blackout.** The same task (1 MiB state) with restart="on-host-failure" checkpoints
   once; its host's daemon and the task are killed with SIGKILL; the blackout is the time from
   the kill until the restarted task says it is back (restored from the checkpoint), split into
   detection (the host lease, 2 s, is the floor) and takeover + start. Baseline: the lease.

Every process started is stopped, and the temporary folder removed, also on errors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import zmq

import snipe
from snipe.localcluster import LocalCluster

TASK = textwrap.dedent('''
    import os, sys, time
    import msgpack, zmq
    import snipe
    state = {"blob": b""}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.init()
    parent, sinks = sys.argv[1], sys.argv[2].split(",")
    snipe.send_obj(parent, {"back": len(state["blob"])}, tag=4)
    ctx = zmq.Context()
    reqs = []
    for s in sinks:
        r = ctx.socket(zmq.REQ)
        r.connect(s)
        reqs.append(r)
    while True:
        m = snipe.recv()
        if m.failed:
            continue
        cmd = m.obj()
        if cmd["op"] == "size":
            state["blob"] = os.urandom(cmd["n"])
            snipe.send_obj(m.source, {"ok": 1}, tag=3)
        elif cmd["op"] == "ckpt":
            w, c = time.perf_counter(), time.process_time()
            rec = snipe.checkpoint()
            snipe.send_obj(m.source, {"wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                                      "size": rec["size"]}, tag=3)
        elif cmd["op"] == "raw":
            w, c = time.perf_counter(), time.process_time()
            blob = msgpack.packb(state, use_bin_type=True)
            for r in reqs:
                r.send(blob)
            for r in reqs:
                r.recv()
            snipe.send_obj(m.source, {"wall": time.perf_counter() - w, "cpu": time.process_time() - c}, tag=3)
''')

SIZES = {"1KiB": 1 << 10, "1MiB": 1 << 20, "10MiB": 10 << 20}


def _sink(ctx: zmq.Context, stop: threading.Event) -> str:
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")

    def serve() -> None:
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        while not stop.is_set():
            if poller.poll(100):
                sock.recv()
                sock.send(b"ok")
        sock.close(0)
    threading.Thread(target=serve, daemon=True).start()
    return f"tcp://127.0.0.1:{port}"


def _ask(urn: str, cmd: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
    snipe.send_obj(urn, cmd, tag=3)
    m = snipe.recv(source=urn, tag=3, timeout=timeout)
    if m is None or m.failed:
        raise RuntimeError(f"no answer to {cmd['op']}: {m and m.reason}")
    return m.obj()


def _p50(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run(rounds: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="snipe-bench-ckpt-"))
    cluster = LocalCluster(root / "cluster", replicas=3, hosts=3, lease_s=2.0, anti_entropy_s=0.5)
    ctx = zmq.Context()
    stop = threading.Event()
    pids: list[int] = []
    try:
        cluster.start()
        snipe.init(catalog=cluster.catalog.addresses, identity=cluster.user, admin_key=cluster.admin.key_id,
                   daemon=cluster.daemons[0].address)
        sinks = ",".join(_sink(ctx, stop) for _ in range(2))
        path = root / "ckpt_task.py"
        path.write_text(TASK)
        code = snipe.publish(path)
        me = snipe.me()
        out: dict[str, Any] = {"checkpoint": {}, "rounds": rounds}
        p = snipe.spawn(code, me, sinks, host="h2")
        pids.append(p.status()["pid"])
        snipe.recv(source=p.urn, tag=4, timeout=60)
        for name, n in SIZES.items():
            _ask(p.urn, {"op": "size", "n": n})
            ours = [_ask(p.urn, {"op": "ckpt"}) for _ in range(rounds)]
            raw = [_ask(p.urn, {"op": "raw"}) for _ in range(rounds)]
            o, r = _p50([x["wall"] for x in ours]), _p50([x["wall"] for x in raw])
            out["checkpoint"][name] = {
                "blob_bytes": ours[0]["size"], "p50_ms": o * 1e3, "cpu_ms": _p50([x["cpu"] for x in ours]) * 1e3,
                "raw_pyzmq_p50_ms": r * 1e3, "raw_cpu_ms": _p50([x["cpu"] for x in raw]) * 1e3,
                "ratio": o / r if r else None}
        p.kill()
        # restart blackout
        q = snipe.spawn(code, me, sinks, host="h3", restart="on-host-failure")
        pid = q.status()["pid"]
        pids.append(pid)
        snipe.recv(source=q.urn, tag=4, timeout=60)
        _ask(q.urn, {"op": "size", "n": 1 << 20})
        _ask(q.urn, {"op": "ckpt"})
        killed = time.monotonic()
        cluster.kill_daemon(2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        taken = None
        back = None
        deadline = killed + 120
        while time.monotonic() < deadline and back is None:
            if taken is None and snipe.catalog().get(q.urn).value("incarnation", snipe.runtime.now_ms()) == 1:
                taken = time.monotonic()
            m = snipe.recv(source=q.urn, tag=4, timeout=0.05)
            if m is not None and not m.failed:
                back = time.monotonic()
        out["restart"] = {"lease_s": 2.0, "state_bytes": 1 << 20,
                          "takeover_s": (taken - killed) if taken else None,
                          "blackout_s": (back - killed) if back else None,
                          "ratio_to_lease": ((back - killed) / 2.0) if back else None}
        return out
    finally:
        stop.set()
        snipe.shutdown()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        cluster.close()
        ctx.term()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    result = run(args.rounds)
    if not args.json:
        for name, c in result["checkpoint"].items():
            print(f"checkpoint {name:>6}: {c['p50_ms']:8.1f} ms (cpu {c['cpu_ms']:.1f})  raw pyzmq x2 "
                  f"{c['raw_pyzmq_p50_ms']:8.1f} ms (cpu {c['raw_cpu_ms']:.1f})  ratio {c['ratio']:.1f}")
        r = result["restart"]
        print(f"restart: takeover {r['takeover_s']} s, blackout {r['blackout_s']} s (lease {r['lease_s']} s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
