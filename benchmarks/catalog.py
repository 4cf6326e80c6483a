"""Catalog benchmark: quorum puts and gets, the LMDB ceiling, etcd, memory and fail-over, in one run.

Run it from the repository root, as a module (client processes are started with the ``spawn``
method, which re-imports this module: the entry point is guarded)::

    python -m benchmarks.catalog            # readable table, about 6 to 9 minutes
    python -m benchmarks.catalog --json     # the same figures as JSON
    python -m benchmarks.catalog --quick    # a smoke run of a few seconds (tests use it)

What one run measures, all on 127.0.0.1:

1. **The project.**  Three ``rcds-server`` replicas (``snipe.localcluster.LocalCatalog``).  For
   each concurrency level (1 and 16) that many client *processes* start together, each with its
   own ``CatalogClient`` and its own user key, which the admin admits (an admin-signed ``_owner``
   of ``urn:snipe:user:...``).  Before the clock starts each client claims its own proc URNs
   (``urn:snipe:proc:<key>.c<level>.<j>``) and then, timed, writes ``--names-per-urn`` names
   under each (100-byte values, like the etcd baseline): ``client.set(urn, name, value, w=2)``.
   Then it reads back what it wrote, one name at a time, as etcd's baseline reads one key:
   ``client.get(urn, name, r=1)`` and ``r=2`` return that name's assertion with the claim that
   authorizes it, verified and authorized by the client.  A third read phase, ``get_entry_r1``,
   reads whole entries (``client.get(urn, r=1)``: the claim and all its names) for reference.
   Each client's replica list is rotated so that R=1 reads spread over the replicas as the etcd
   baseline's clients spread over its members.  Fixed operation count per client, a time bound
   per phase (``truncated`` when it hit it).
2. **The ceiling.**  ``rcds.replica.Replica.ingest`` on an ``rcds.store.LmdbStorage`` in this
   process, of pre-signed encoded assertions (decode, verify, authorize, store, commit), one
   record per transaction and 100 per transaction.
3. **etcd** (``benchmarks.etcd_baseline``), same operation counts and value size, when the
   ``etcd`` binary is installed, on the same loopback, with the same kind of load generator: one
   process per client (etcd: one HTTP connection to one member; ours: one CurveZMQ connection to
   each replica). Its phases run right after ours of the same kind and concurrency, in rounds
   (``--rounds``, default 2): project put, etcd put, project get R=1, etcd get, project get R=2;
   each figure is the phase's median round and each ratio the median of the rounds' ratios
   (ours over etcd's in the same round), so both systems meet the same load from the rest of a
   shared machine. Every phase also reports the CPU time per operation of the client processes
   and of the servers (replicas or etcd members, all threads), which varies far less with that
   load than the rates do, and the messages the replicas received per operation. Targets:
   put at W=2 >= etcd put, get at R=1 >= 2 x etcd serializable get (16 clients).
4. **Memory.**  A fresh 3-replica set holding ``--assertions`` assertions.  They are signed in
   worker processes and ingested through ``Replica.ingest`` (every check, batches of
   ``MAX_BATCH_RECORDS``) into the first replica's LMDB store while the replicas are stopped,
   then that store is copied to the other two (replicas that converged hold exactly the same
   records) and the replicas are started; over the wire, three replicas would each have to
   ingest every record on this machine's cores, several minutes for a million.  Reported per
   replica: USS (``psutil``) right after start and after some random gets, how much of it is
   pages of the LMDB map, and the 150 MiB target.
5. **Fail-over.**  One client writing every 5 ms with W=2 while replica 0 is killed (-9) one
   second in; the longest gap between consecutive acknowledgements, against the 100 ms target
   (etcd needs about a second to elect a new leader after its leader is killed).

``--py-spy DIR`` samples the replicas and one client with py-spy during the 16-client put and
R=1 get phases and adds each process role's hottest functions to the result.

Every process this benchmark starts is stopped, and every temporary directory removed, also on
errors and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import math
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import percentile, say
from benchmarks.measure import cpu_seconds as _cpu_seconds

__all__ = ["Settings", "main", "run_benchmark"]

LOOPBACK = "127.0.0.1"
N_REPLICAS = 3
DEFAULT_OPS_PER_CLIENT = 1000
DEFAULT_LEVELS = (1, 16)
DEFAULT_PHASE_TIMEOUT_S = 15.0
DEFAULT_VALUE_SIZE = 100
DEFAULT_NAMES_PER_URN = 10
DEFAULT_ASSERTIONS = 1_000_000
DEFAULT_CEILING_OPS = 3000
PHASES = ("put", "get_r1", "get_r2", "get_entry_r1")
PHASE_R = {"get_r1": 1, "get_r2": 2, "get_entry_r1": 1}
# get_r1 and get_r2 read one (URN, name), as etcd's baseline reads one key; get_entry_r1 reads the
# whole entry (the claim and every name under the URN), reported beside them.
WHOLE_ENTRY = frozenset({"get_entry_r1"})
PUT_W = 2
TARGET_MEMORY_MIB = 150.0
TARGET_GAP_MS = 100.0
ETCD_LEADER_KILL_GAP_MS = 1000.0     # etcd's election after a leader kill, for reference
READY_TIMEOUT_S = 120.0


@dataclass
class Settings:
    """What to run; `quick()` gives the smoke-test sizes."""

    ops: int = DEFAULT_OPS_PER_CLIENT
    levels: tuple[int, ...] = DEFAULT_LEVELS
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT_S
    value_size: int = DEFAULT_VALUE_SIZE
    names_per_urn: int = DEFAULT_NAMES_PER_URN
    assertions: int = DEFAULT_ASSERTIONS
    ceiling_ops: int = DEFAULT_CEILING_OPS
    memory_reads: int = 1000
    one_urn_names: int = 1000
    failover_s: float = 3.0
    failover_kill_at_s: float = 1.0
    failover_interval_s: float = 0.005
    etcd: bool = True
    rounds: int = 2                  # rounds of the quorum phases (and etcd's, interleaved); medians are reported
    sections: tuple[str, ...] = ("ceiling", "project", "etcd", "memory")
    py_spy_dir: str | None = None
    quick: bool = False

    @classmethod
    def quick_settings(cls) -> Settings:
        return cls(ops=30, levels=(1, 2), phase_timeout=5.0, rounds=1, assertions=3000, ceiling_ops=300,
                   memory_reads=50, one_urn_names=50, failover_s=1.5, failover_kill_at_s=0.5, etcd=False, quick=True)


# --------------------------------------------------------------------------- small helpers


def _say(msg: str) -> None:
    say("catalog", msg)


def _loadavg() -> float:
    return round(os.getloadavg()[0], 2)


def _ms(seconds: float) -> float | None:
    return None if math.isnan(seconds) else round(seconds * 1e3, 3)


def _mib(n: float) -> float:
    return round(n / (1 << 20), 1)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _rotated(items: Sequence[str], k: int) -> list[str]:
    k %= len(items)
    return [*items[k:], *items[:k]]


def _pool(key_id: str, level: int, count: int) -> list[str]:
    """The proc URNs one client claims (and so owns) for one concurrency level."""
    return [f"urn:snipe:proc:{key_id[:16]}.c{level}.{j}" for j in range(count)]


@dataclass
class _Row:
    phase: str
    worker: int
    t0: float
    t1: float
    lat: list[float]
    errors: int
    misses: int
    first_error: str | None = None
    records_per_get: float | None = None
    cpu_s: float = 0.0               # the client process's own CPU time in the phase
    spares_asked: int = 0            # puts that went to a replica beyond the first W (slow or down)
    relayed: int = 0                 # puts sent to one replica to relay (the replicas were busy)



def cpu_per_op(ops: int, wall: float, clients_cpu: float, servers_cpu: float) -> dict[str, Any]:
    """CPU microseconds per completed operation, split into the client processes' and the
    servers' (replicas or etcd members), and how many of the machine's cores they kept busy."""
    n = max(ops, 1)
    return {
        "clients_us": round(clients_cpu / n * 1e6, 1),
        "servers_us": round(servers_cpu / n * 1e6, 1),
        "total_us": round((clients_cpu + servers_cpu) / n * 1e6, 1),
        "cores_busy": round((clients_cpu + servers_cpu) / max(wall, 1e-9), 2),
    }


def _summarise(rows: Sequence[_Row], ops_per_client: int, servers_cpu: float | None = None) -> dict[str, Any]:
    t_start = min(r.t0 for r in rows)
    t_end = max(r.t1 for r in rows)
    lat = sorted(x for r in rows for x in r.lat)
    errors = sum(r.errors for r in rows)
    wall = max(t_end - t_start, 1e-9)
    out: dict[str, Any] = {
        "ops": len(lat),
        "clients": len(rows),
        "seconds": round(wall, 3),
        "ops_per_s": round(len(lat) / wall, 1),
        "p50_ms": _ms(percentile(lat, 50)),
        "p99_ms": _ms(percentile(lat, 99)),
        "errors": errors,
        "truncated": len(lat) + errors < ops_per_client * len(rows),
    }
    misses = sum(r.misses for r in rows)
    if misses:
        out["misses"] = misses
    first = next((r.first_error for r in rows if r.first_error), None)
    if first:
        out["first_error"] = first
    per_get = [r.records_per_get for r in rows if r.records_per_get is not None]
    if per_get:
        out["records_per_get"] = round(sum(per_get) / len(per_get), 2)
    if servers_cpu is not None:
        out["cpu_per_op"] = cpu_per_op(len(lat), wall, sum(r.cpu_s for r in rows), servers_cpu)
    spares = sum(r.spares_asked for r in rows)
    if spares:
        out["requests_to_a_spare_replica"] = spares
    if any(r.relayed for r in rows):
        out["relayed_puts"] = sum(r.relayed for r in rows)
    return out


def _collect(q: Any, n: int, timeout: float, procs: Sequence[Any], what: str) -> list[Any]:
    """Read `n` items from `q` within `timeout` seconds, failing fast if a client died."""
    deadline = time.monotonic() + timeout
    items: list[Any] = []
    while len(items) < n:
        try:
            items.append(q.get(timeout=0.2))
            continue
        except queue.Empty:
            pass
        dead = [p for p in procs if p.exitcode not in (None, 0)]
        if dead:
            raise RuntimeError(
                f"benchmark process {dead[0].name} died (exit code {dead[0].exitcode}) while waiting for {what}; "
                'run as `python -m benchmarks.catalog` (the spawn start method needs the `if __name__ == "__main__":` '
                "guard)")
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} ({len(items)}/{n})")
    return items


@contextlib.contextmanager
def _processes(procs: list[Any]) -> Iterator[list[Any]]:
    """Start processes; on leaving, give them a moment to exit, then kill what is left."""
    try:
        for p in procs:
            p.start()
        yield procs
    finally:
        deadline = time.monotonic() + 5.0
        for p in procs:
            if p.pid is not None:
                p.join(timeout=max(0.0, deadline - time.monotonic()))
        for p in procs:
            if p.pid is not None and p.is_alive():
                p.kill()
                p.join()


# --------------------------------------------------------------------------- py-spy


class _Profiler:
    """py-spy `record` attached to running processes for one phase (optional)."""

    def __init__(self, out_dir: str | None) -> None:
        self.out_dir = Path(out_dir) if out_dir else None
        self.binary = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        if self.out_dir is not None and not Path(self.binary).exists():
            _say("py-spy not found: profiling skipped (pip install py-spy)")
            self.out_dir = None
        self.rate = 200
        self.procs: list[tuple[str, Path, subprocess.Popen[bytes], float]] = []
        self.results: dict[str, Any] = {}

    def start(self, tag: str, targets: dict[str, int]) -> None:
        if self.out_dir is None:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        for role, pid in targets.items():
            out = self.out_dir / f"{tag}.{role}.txt"
            argv = [self.binary, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
                    "--nonblocking", "--output", str(out)]
            p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.procs.append((f"{tag}.{role}", out, p, time.monotonic()))
        time.sleep(0.5)   # let py-spy attach before the clock starts

    def stop(self) -> None:
        for name, out, p, t0 in self.procs:
            seconds = time.monotonic() - t0
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if out.exists():
                self.results[name] = _hotspots(out, seconds * self.rate)
        self.procs = []

    def close(self) -> None:
        for _, _, p, _ in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        self.procs = []


def _hotspots(raw: Path, possible_samples: float, top: int = 12) -> dict[str, Any]:
    """Self and inclusive time per function from a py-spy raw (collapsed stacks) file."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [f.split(":")[0] + ")" if ":" in f else f for f in stack.split(";")]  # drop line numbers
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if total == 0:
        return {"samples": 0}

    def pct(c: collections.Counter[str]) -> list[list[Any]]:
        return [[name, round(100.0 * n / total, 1)] for name, n in c.most_common(top)]

    return {
        "samples": total,
        "busy_fraction": round(total / max(possible_samples, 1.0), 2),
        "self_pct": pct(own),
        "inclusive_pct": pct(incl),
    }


# --------------------------------------------------------------------------- 1. the project, quorum phases


def _client_worker(addresses: list[str], admin_key: str, seed: bytes, level: int, worker: int, ops: int,
                   names_per_urn: int, value_size: int, phase_timeout: float, ready: Any, go: Sequence[Any],
                   results: Any) -> None:
    """One benchmark client process: claim its URNs, then put, get R=1, get R=2 phases.

    Before each phase it reports `(phase, worker)` on `ready` and waits for the parent to set
    that phase's `go` event, so that all clients start together.
    """
    from snipe.catalog.client import CatalogClient
    from snipe.errors import SnipeError
    from snipe.identity import Identity

    parent = os.getppid()
    ident = Identity.from_seed(seed)
    pool = _pool(ident.key_id, level, max(1, math.ceil(ops / names_per_urn)))
    value = os.urandom(value_size)
    with CatalogClient(addresses, ident, admin_key) as client:
        # Untimed: own the URNs (on every replica), and open all connections.
        for i in range(0, len(pool), 1000):
            client.put([client.sign(u, "_owner", ident.key_id) for u in pool[i:i + 1000]], w=N_REPLICAS,
                       timeout=30.0)
        written = 0
        for phase, start in zip(itertools.cycle(PHASES), go):     # as many rounds of the phases as `go` events
            ready.put((phase, worker, os.getpid()))
            give_up = time.monotonic() + READY_TIMEOUT_S
            while not start.wait(timeout=0.2):
                if os.getppid() != parent or time.monotonic() > give_up:
                    return    # the parent died or gave up
            lat: list[float] = []
            errors = misses = got_records = gets = 0
            first_error: str | None = None
            r = PHASE_R.get(phase)
            urns_written = max(1, math.ceil(written / names_per_urn))
            c0 = time.process_time()
            spares0, relayed0 = getattr(client, "spares_asked", 0), getattr(client, "relayed", 0)
            t0 = time.monotonic()
            deadline = t0 + phase_timeout
            for i in range(ops):
                s = time.perf_counter()
                try:
                    if r is None:
                        client.set(pool[i // names_per_urn], f"k{i % names_per_urn}", value, w=PUT_W)
                        written = i + 1
                    elif phase in WHOLE_ENTRY:
                        entry = client.get(pool[i % urns_written], r=r)
                        gets += 1
                        got_records += len(entry.records)
                        if not any(a.name != "_owner" for a in entry.records):
                            misses += 1
                    else:
                        j = i % max(written, 1)
                        name = f"k{j % names_per_urn}"
                        entry = client.get(pool[j // names_per_urn], name, r=r)
                        gets += 1
                        got_records += len(entry.records)
                        if not any(a.name == name and a.value == value for a in entry.records):
                            misses += 1
                except SnipeError as exc:
                    errors += 1
                    first_error = first_error or f"{type(exc).__name__}: {exc}"[:300]
                else:
                    lat.append(time.perf_counter() - s)
                if time.monotonic() >= deadline:
                    break
            # a plain tuple: a class defined here would pickle as __mp_main__._Row in this process
            t1 = time.monotonic()
            results.put((phase, worker, t0, t1, lat, errors, misses, first_error,
                         round(got_records / gets, 2) if gets else None, time.process_time() - c0,
                         getattr(client, "spares_asked", 0) - spares0, getattr(client, "relayed", 0) - relayed0))


class _ProjectLevel:
    """The client processes of one concurrency level, started together and kept waiting between
    phases, which run one at a time in `PHASES` order (etcd's phases run in between, when it is
    measured, so both systems meet the same load from the rest of the machine)."""

    def __init__(self, cat: Any, seeds: Sequence[bytes], level: int, s: Settings, profiler: _Profiler,
                 profile: bool) -> None:
        self.cat, self.level, self.s, self.profiler, self.profile = cat, level, s, profiler, profile
        ctx = mp.get_context("spawn")
        self.ready = ctx.Queue()
        self.results = ctx.Queue()
        self.go = [ctx.Event() for _ in range(s.rounds) for _ in PHASES]
        self.procs = [
            ctx.Process(target=_client_worker,
                        args=(_rotated(cat.addresses, w), cat.admin.key_id, seeds[w], level, w, s.ops, s.names_per_urn,
                              s.value_size, s.phase_timeout, self.ready, self.go, self.results),
                        name=f"catalog-bench-c{level}-w{w}", daemon=True)
            for w in range(level)
        ]
        self._stack = contextlib.ExitStack()
        self._next = 0

    def __enter__(self) -> _ProjectLevel:
        self._stack.enter_context(_processes(self.procs))
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stack.close()
        finally:
            self.profiler.close()
            for q in (self.ready, self.results):
                q.close()
                q.cancel_join_thread()

    def run_phase(self, phase: str) -> dict[str, Any]:
        if PHASES[self._next % len(PHASES)] != phase:
            raise ValueError(f"phase {phase!r} asked for; the next is {PHASES[self._next % len(PHASES)]!r}")
        start = self.go[self._next]
        self._next += 1
        cat, level, s = self.cat, self.level, self.s
        ready_rows = _collect(self.ready, level, READY_TIMEOUT_S, self.procs, f"{level} clients ready to {phase}")
        if self.profile and phase in ("put", "get_r1"):
            targets = {r.id: r.proc.pid for r in cat.replicas if r.proc is not None}
            targets["client0"] = next(pid for ph, w, pid in ready_rows if w == 0)
            self.profiler.start(f"{phase}.c{level}", targets)
        server_pids = [r.proc.pid for r in cat.replicas if r.proc is not None]
        msgs0 = _replica_requests(cat)
        cpu0 = _cpu_seconds(server_pids)
        start.set()
        got = _collect(self.results, level, s.phase_timeout + 60.0, self.procs, f"{phase} results")
        cpu1 = _cpu_seconds(server_pids)
        msgs1 = _replica_requests(cat)
        rows = [_Row(*t) for t in got]
        self.profiler.stop()
        summary = _summarise(rows, s.ops, cpu1 - cpu0)
        if msgs0 is not None and msgs1 is not None:
            summary["replica_messages_in_per_op"] = round((msgs1 - msgs0) / max(summary["ops"], 1), 2)
        _say(f"  {phase:<7} {level:>2} clients: {summary['ops_per_s']:>8.0f} ops/s  p50 {summary['p50_ms']} ms  "
             f"p99 {summary['p99_ms']} ms  errors {summary['errors']}  cpu/op {summary['cpu_per_op']}")
        return summary


def _median_round(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median throughput (the lower of the middle two), and every round's."""
    pick = sorted(runs, key=lambda r: r["ops_per_s"])[(len(runs) - 1) // 2]
    return {**pick, "rounds_ops_per_s": [r["ops_per_s"] for r in runs]} if len(runs) > 1 else pick


def _replica_requests(cat: Any) -> int | None:
    """Messages the replicas have received in all (clients' requests and peers' messages)."""
    from snipe.catalog.client import CatalogClient

    try:
        with CatalogClient(cat.addresses, cat.admin, cat.admin.key_id, timeout=5.0) as admin:
            return sum(int(admin.status(r.endpoint)["requests"]) - 1 for r in cat.replicas)  # not this status
    except Exception:  # the figure is optional; the phase is not
        return None


def _failover(cat: Any, seed: bytes, s: Settings) -> dict[str, Any]:
    """One client writes every `failover_interval_s` with W=2; replica 0 is killed -9 meanwhile."""
    from snipe.errors import SnipeError
    from snipe.identity import Identity

    ident = Identity.from_seed(seed)
    urn = f"urn:snipe:proc:{ident.key_id[:16]}.failover"
    acks: list[float] = []
    lat: list[float] = []
    errors: list[str] = []
    started = threading.Event()
    t_start = [0.0]

    def writer() -> None:
        with cat.client(ident) as client:
            client.claim(urn, w=N_REPLICAS)
            t0 = time.monotonic()
            t_start[0] = t0
            started.set()
            nxt = t0
            i = 0
            while time.monotonic() < t0 + s.failover_s:
                nxt += s.failover_interval_s
                time.sleep(max(0.0, nxt - time.monotonic()))
                b = time.monotonic()
                try:
                    client.set(urn, f"n{i % 50}", i, w=PUT_W)
                except SnipeError as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:200])
                else:
                    e = time.monotonic()
                    acks.append(e)
                    lat.append(e - b)
                i += 1

    th = threading.Thread(target=writer, name="failover-writer", daemon=True)
    th.start()
    if not started.wait(30.0):
        raise RuntimeError("fail-over writer did not start")
    time.sleep(max(0.0, t_start[0] + s.failover_kill_at_s - time.monotonic()))
    t_kill = time.monotonic()
    cat.kill(0)
    th.join(s.failover_s + 30.0)
    if th.is_alive():
        raise RuntimeError("fail-over writer did not finish")
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(acks)]
    worst = max(gaps, default=(float("nan"), 0.0, 0.0))
    around = [g for g, a, b in gaps if a <= t_kill + 0.5 and b >= t_kill]   # acks around the kill
    before = [g for g, _, b in gaps if b < t_kill]
    lat.sort()
    out = {
        "writes_acked": len(acks),
        "errors": len(errors),
        "interval_ms": s.failover_interval_s * 1e3,
        "duration_s": s.failover_s,
        "killed": f"replica 0 ({cat.replicas[0].id}, first in the client's list), kill -9 at "
                  f"{s.failover_kill_at_s:.1f} s",
        "max_gap_ms": _ms(worst[0]),
        "max_gap_at_s_after_kill": round(worst[1] - t_kill, 3) if gaps else None,
        "max_gap_around_kill_ms": _ms(max(around, default=float("nan"))),
        "max_gap_before_kill_ms": _ms(max(before, default=float("nan"))),
        "put_p50_ms": _ms(percentile(lat, 50)),
        "put_p99_ms": _ms(percentile(lat, 99)),
        "target_gap_ms": TARGET_GAP_MS,
        "target_met": bool(gaps) and not errors and worst[0] * 1e3 <= TARGET_GAP_MS,
        "etcd_leader_kill_gap_ms_reference": ETCD_LEADER_KILL_GAP_MS,
    }
    if errors:
        out["first_error"] = errors[0]
    return out


def _one_urn(cat: Any, seed: bytes, s: Settings) -> dict[str, Any]:
    """One client writes up to `one_urn_names` names under a single URN: how a put's cost grows with
    what the URN already holds (the replica reads the URN's ownership and delegations to check a write)."""
    from snipe.identity import Identity

    ident = Identity.from_seed(seed)
    urn = f"urn:snipe:proc:{ident.key_id[:16]}.one"
    value = os.urandom(s.value_size)
    lat: list[float] = []
    with cat.client(ident) as client:
        client.claim(urn, w=N_REPLICAS)
        deadline = time.monotonic() + s.phase_timeout
        for i in range(s.one_urn_names):
            t = time.perf_counter()
            client.set(urn, f"k{i}", value, w=PUT_W)
            lat.append(time.perf_counter() - t)
            if time.monotonic() >= deadline:
                break
    k = max(1, len(lat) // 10)
    return {
        "names_written": len(lat),
        "truncated": len(lat) < s.one_urn_names,
        "first_10pct_ops_per_s": round(k / sum(lat[:k]), 1),
        "last_10pct_ops_per_s": round(k / sum(lat[-k:]), 1),
        "last_10pct_held_names": [len(lat) - k, len(lat)],
        "what": "1 client, W=2, every name under one URN; compare with put at names_per_urn",
    }


# the order phases run in when etcd is measured too: each of etcd's right after ours
INTERLEAVED = (("project", "put"), ("etcd", "put"), ("project", "get_r1"), ("etcd", "get_serializable"),
               ("project", "get_r2"), ("project", "get_entry_r1"))


def run_project(s: Settings, root: Path, profiler: _Profiler, etcd: Any = None) -> dict[str, Any]:
    """The project's quorum phases, the one-URN run and fail-over; with `etcd` (a started
    ``benchmarks.etcd_baseline.EtcdCluster``) etcd's phases too, each run right after ours
    at the same concurrency (`INTERLEAVED`), so that both meet the same load from the rest of
    the machine."""
    from benchmarks import etcd_baseline as eb
    from snipe.catalog.client import CatalogClient
    from snipe.identity import Identity
    from snipe.localcluster import LocalCatalog

    _say(f"project: starting {N_REPLICAS} replicas")
    cat = LocalCatalog(root / "quorum", N_REPLICAS)
    try:
        cat.start()
        users = [Identity.generate() for _ in range(max(s.levels) + 2)]
        # Admit every client key on all replicas at once (W=3), so no handshake is refused.
        with CatalogClient(cat.addresses, cat.admin, cat.admin.key_id) as admin:
            admin.put([admin.sign(f"urn:snipe:user:bench-{u.key_id[:16]}", "_owner", u.key_id) for u in users],
                      w=N_REPLICAS)
        seeds = [u.seed for u in users]
        out: dict[str, Any] = {
            "replicas": N_REPLICAS,
            "w": PUT_W,
            "value_size": s.value_size,
            "ops_per_client": s.ops,
            "names_per_urn": s.names_per_urn,
            "phase_timeout_s": s.phase_timeout,
            "clients": "1 process per client, own CatalogClient and own admitted user key; replica list "
                       "rotated per client so R=1 reads spread over the replicas",
            "get": "get_r1, get_r2: client.get(urn, name, r=R), one name written in the put phase (the "
                   "assertion and the _owner claim that authorizes it), as etcd's baseline gets one key; "
                   "get_entry_r1: client.get(urn, r=1), the whole entry (the claim and every name under it)",
            "loadavg_1m_before": _loadavg(),
            "put": {}, "get_r1": {}, "get_r2": {}, "get_entry_r1": {},
        }
        etcd_out: dict[str, Any] | None = None
        if etcd is not None:
            etcd_out = eb.result_header(etcd, eb.etcd_version(etcd.binary) or "unknown", s.value_size, s.ops,
                                        s.phase_timeout)
            etcd_out["interleaved"] = ("each etcd phase ran right after the project's phase of the same kind and "
                                       "concurrency, in one run: " + ", ".join(f"{a} {b}" for a, b in INTERLEAVED))
        t0 = time.monotonic()
        for level in s.levels:
            _say(f"project{' and etcd' if etcd else ''}: {level} client(s), {s.ops} ops each per phase, "
                 f"{s.rounds} round(s)")
            rounds: dict[tuple[str, str], list[dict[str, Any]]] = collections.defaultdict(list)
            with contextlib.ExitStack() as stack:
                ours = stack.enter_context(_ProjectLevel(cat, seeds, level, s, profiler,
                                                         profile=level == max(s.levels)))
                theirs = (stack.enter_context(eb.LevelRun(etcd.client_urls, etcd.pids, level, s.ops, s.value_size,
                                                          s.phase_timeout, s.rounds)) if etcd is not None else None)
                for _ in range(s.rounds):
                    for system, phase in INTERLEAVED:
                        if system == "project":
                            rounds[system, phase].append(ours.run_phase(phase))
                        elif theirs is not None:
                            st = theirs.run_phase(phase)
                            rounds[system, phase].append(st)
                            _say(f"  etcd {phase:<16} {level:>2} clients: {st['ops_per_s']:>8.0f} ops/s  "
                                 f"cpu/op {st['cpu_per_op']}")
            for (system, phase), runs in rounds.items():
                target = out if system == "project" else etcd_out
                if target is not None:
                    target[phase][str(level)] = _median_round(runs)
        out["bench_seconds"] = round(time.monotonic() - t0, 2)
        if etcd_out is not None:
            etcd_out["loadavg_1m_after"] = _loadavg()
        out["loadavg_1m_after"] = _loadavg()
        _say(f"project: 1 client, up to {s.one_urn_names} names under one URN")
        out["one_urn"] = _one_urn(cat, seeds[-2], s)
        _say(f"  put rate {out['one_urn']['first_10pct_ops_per_s']}/s for the first names, "
             f"{out['one_urn']['last_10pct_ops_per_s']}/s for the last")
        _say("fail-over: writing every 5 ms while replica 0 is killed")
        failover = _failover(cat, seeds[-1], s)
        _say(f"  longest gap between acknowledgements: {failover['max_gap_ms']} ms")
        return {"project": out, "failover": failover, "etcd": etcd_out}
    finally:
        cat.close()


# --------------------------------------------------------------------------- 2. the LMDB ceiling


def run_ceiling(s: Settings, root: Path) -> dict[str, Any]:
    """Replica.ingest into LmdbStorage in-process: pre-signed records, batch of 1 and of 100."""
    from rcds.replica import Accepted, Replica
    from rcds.store import LmdbStorage
    from snipe.assertion import forget_verified, make_assertion
    from snipe.hlc import HybridClock
    from snipe.identity import Identity

    admin, user = Identity.generate(), Identity.generate()
    clock = HybridClock()
    value = os.urandom(s.value_size)

    def sign(ident: Identity, urn: str, name: str, v: Any) -> bytes:
        return make_assertion(ident, urn, name, v, clock.now(_now_ms())).encode()

    def records(tag: str) -> tuple[list[bytes], list[bytes]]:
        urns = [f"urn:snipe:proc:{user.key_id[:16]}.{tag}.{j}"
                for j in range(math.ceil(s.ceiling_ops / s.names_per_urn))]
        claims = [sign(user, u, "_owner", user.key_id) for u in urns]
        names = [sign(user, urns[i // s.names_per_urn], f"k{i % s.names_per_urn}", value)
                 for i in range(s.ceiling_ops)]
        return claims, names

    storage = LmdbStorage(root / "ceiling")
    try:
        replica = Replica(storage, admin.public_key)
        res = replica.ingest([sign(admin, "urn:snipe:user:bench", "_owner", user.key_id)], _now_ms())
        out: dict[str, Any] = {
            "what": "rcds.replica.Replica.ingest of pre-signed encoded assertions into rcds.store.LmdbStorage "
                    "(sync=False, as the replicas run), in-process: decode, verify, authorize, store, commit",
            "records": s.ceiling_ops, "names_per_urn": s.names_per_urn,
        }
        for batch in (1, 100):
            claims, names = records(f"b{batch}")
            replica.ingest(claims, _now_ms())  # untimed: own the URNs first
            forget_verified()        # signed here, so known good: the replica must verify them as received ones
            t0 = time.perf_counter()
            refused = 0
            for i in range(0, len(names), batch):
                res = replica.ingest(names[i:i + batch], _now_ms())
                refused += sum(not isinstance(r, Accepted) for r in res)
            dt = time.perf_counter() - t0
            out[f"batch_{batch}"] = {"ops_per_s": round(len(names) / dt, 1), "seconds": round(dt, 3),
                                     "refused": refused}
            _say(f"ceiling: batch {batch:>3}: {len(names) / dt:,.0f} assertions/s")
        return out
    finally:
        storage.close()


# --------------------------------------------------------------------------- 4. memory at 1,000,000 assertions


def _sign_worker(seed: bytes, urn_prefix: str, first_urn: int, last_urn: int, total: int, names_per_urn: int,
                 value_size: int, chunk: int, out: Any) -> None:
    """Sign the records of URNs [first_urn, last_urn): each a claim then its names; send encoded chunks."""
    from snipe.assertion import make_assertion
    from snipe.hlc import HybridClock
    from snipe.identity import Identity

    ident = Identity.from_seed(seed)
    clock = HybridClock()
    value = os.urandom(value_size)
    per_urn = names_per_urn + 1
    buf: list[bytes] = []
    for j in range(first_urn, last_urn):
        urn = f"{urn_prefix}.{j}"
        n = min(per_urn, total - j * per_urn)
        for k in range(n):
            ms = _now_ms()
            a = (make_assertion(ident, urn, "_owner", ident.key_id, clock.now(ms)) if k == 0
                 else make_assertion(ident, urn, f"k{k - 1}", value, clock.now(ms)))
            buf.append(a.encode())
            if len(buf) >= chunk:
                out.put(buf)
                buf = []
    if buf:
        out.put(buf)
    out.put(None)


def _load_store(data_dir: Path, admin: Any, user: Any, s: Settings) -> dict[str, Any]:
    """Sign `s.assertions` records in worker processes and ingest them into one LMDB store."""
    from rcds.replica import Accepted, Replica
    from rcds.store import LmdbStorage
    from snipe.assertion import make_assertion
    from snipe.catalog.protocol import MAX_BATCH_RECORDS
    from snipe.hlc import HybridClock

    per_urn = s.names_per_urn + 1
    n_urns = math.ceil(s.assertions / per_urn)
    n_workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    bounds = [n_urns * i // n_workers for i in range(n_workers + 1)]
    ctx = mp.get_context("spawn")
    chunks = ctx.Queue(maxsize=2 * n_workers + 2)
    prefix = f"urn:snipe:proc:{user.key_id[:16]}.mem"
    procs = [ctx.Process(target=_sign_worker,
                         args=(user.seed, prefix, bounds[i], bounds[i + 1], s.assertions, s.names_per_urn,
                               s.value_size, MAX_BATCH_RECORDS, chunks),
                         name=f"catalog-bench-signer{i}", daemon=True)
             for i in range(n_workers)]
    storage = LmdbStorage(data_dir)
    loaded = refused = 0
    t0 = time.monotonic()
    try:
        replica = Replica(storage, admin.public_key)
        admit = make_assertion(admin, "urn:snipe:user:bench-memory", "_owner", user.key_id,
                               HybridClock().now(_now_ms()))
        if not isinstance(replica.ingest([admit.encode()], _now_ms())[0], Accepted):
            raise RuntimeError("the admission of the memory benchmark's user key was refused")
        with _processes(procs):
            done = 0
            next_report = 0.0
            while done < n_workers:
                try:
                    batch = chunks.get(timeout=1.0)
                except queue.Empty:
                    if any(p.exitcode not in (None, 0) for p in procs):
                        raise RuntimeError("a signing worker died") from None
                    continue
                if batch is None:
                    done += 1
                    continue
                res = replica.ingest(batch, _now_ms())
                loaded += sum(isinstance(r, Accepted) for r in res)
                refused += sum(not isinstance(r, Accepted) for r in res)
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + 10.0
                    rate = loaded / max(now - t0, 1e-9)
                    eta = (s.assertions - loaded) / rate if rate else float("nan")
                    _say(f"memory: loaded {loaded:,}/{s.assertions:,} ({rate:,.0f}/s, about {eta:.0f} s to go)")
        count = storage.count()
    finally:
        storage.close()
        chunks.close()
        chunks.cancel_join_thread()
    seconds = time.monotonic() - t0
    if refused:
        raise RuntimeError(f"{refused} assertions were refused while loading the memory benchmark")
    return {"loaded": loaded, "admission_records": 1, "store_count": count, "load_seconds": round(seconds, 1),
            "load_per_s": round(loaded / max(seconds, 1e-9), 1), "signing_processes": n_workers}


def _memory_of(pid: int) -> dict[str, Any]:
    import psutil

    proc = psutil.Process(pid)
    full = proc.memory_full_info()
    mapped = 0
    with contextlib.suppress(psutil.Error):
        for m in proc.memory_maps(grouped=True):
            if m.path.endswith("data.mdb"):
                mapped += getattr(m, "private_clean", 0) + getattr(m, "private_dirty", 0)
    return {"uss_mib": _mib(full.uss), "rss_mib": _mib(full.rss), "lmdb_map_private_mib": _mib(mapped),
            "uss_without_lmdb_map_mib": _mib(full.uss - mapped)}


def _copy_store(source: Path, targets: Sequence[Path]) -> None:
    """Copy a stopped replica's store to others: LMDB's copy writes the pages in use only (a
    file copy of the sparse, map-sized data.mdb would write all of it out)."""
    from rcds.store import LmdbStorage

    storage = LmdbStorage(source)
    try:
        for target in targets:
            storage.copy_to(target)
    finally:
        storage.close()


def run_memory(s: Settings, root: Path) -> dict[str, Any]:
    from snipe.catalog.client import CatalogClient
    from snipe.catalog.protocol import MAX_BATCH_RECORDS
    from snipe.identity import Identity
    from snipe.localcluster import LocalCatalog

    cat = LocalCatalog(root / "memory", N_REPLICAS)
    try:
        user = Identity.generate()
        first = cat.replicas[0].data_dir
        _say(f"memory: signing and ingesting {s.assertions:,} assertions into {cat.replicas[0].id}'s store "
             "(replicas stopped)")
        load = _load_store(first, cat.admin, user, s)
        _copy_store(first, [r.data_dir for r in cat.replicas[1:]])
        _say("memory: starting the replicas on the loaded stores")
        cat.start(timeout=120.0)
        time.sleep(1.0)
        statuses = []
        with CatalogClient(cat.addresses, cat.admin, cat.admin.key_id, timeout=30.0) as admin:
            for r in cat.replicas:
                statuses.append(admin.status(r.endpoint, timeout=30.0))
        idle = {r.id: _memory_of(r.proc.pid) for r in cat.replicas if r.proc is not None}
        # Some random whole-entry gets from every replica, then measure again.
        per_urn = s.names_per_urn + 1
        n_urns = math.ceil(s.assertions / per_urn)
        prefix = f"urn:snipe:proc:{user.key_id[:16]}.mem"
        rng = random.Random(1)
        misses = 0
        t0 = time.monotonic()
        for r in cat.replicas:
            with CatalogClient([r.address], user, cat.admin.key_id, timeout=10.0) as c:
                for _ in range(s.memory_reads):
                    e = c.get(f"{prefix}.{rng.randrange(n_urns)}", r=1)
                    misses += len(e.records) == 0
        reads_s = time.monotonic() - t0
        after = {r.id: _memory_of(r.proc.pid) for r in cat.replicas if r.proc is not None}
        worst = max(m["uss_mib"] for m in after.values())
        worst_heap = max(m["uss_without_lmdb_map_mib"] for m in after.values())
        digests = {st["digest"] for st in statuses}
        return {
            "assertions": s.assertions,
            "names_per_urn": s.names_per_urn,
            "method": "direct LMDB ingest with the replicas stopped: signed in worker processes, "
                      f"Replica.ingest (all checks) in batches of {MAX_BATCH_RECORDS}, into "
                      f"{cat.replicas[0].id}'s store, "
                      "then copied (LMDB's copy) to the other replicas (identical content, as after convergence), "
                      "replicas started",
            "why_not_over_the_wire": "every replica would ingest every record (decode, verify, authorize, "
                                     "store) on the same 2 cores: several minutes for 1,000,000",
            **load,
            "data_mdb_mib": _mib((first / "data.mdb").stat().st_blocks * 512),   # on disk: the file is sparse
            "replica_counts": {st["replica"]: st["count"] for st in statuses},
            "replicas_identical": len(digests) == 1,
            "uss_after_start": idle,
            "reads_per_replica": s.memory_reads,
            "read_misses": misses,
            "reads_seconds": round(reads_s, 2),
            "uss_after_reads": after,
            "max_uss_mib": worst,
            "max_uss_without_lmdb_map_mib": worst_heap,
            "note": "USS counts the pages of the LMDB map a replica has faulted in (clean page-cache pages only it "
                    "maps, reclaimable); the kernel maps cached neighbours of each faulting page too, so a few "
                    "random reads map far more than they read. A replica drops them (madvise) when they pass its "
                    "map budget (map_budget_mib, 64 by default; checked every 0.5 s, rcds/mapbudget.py)",
            "target_mib": TARGET_MEMORY_MIB,
            "target_met": worst <= TARGET_MEMORY_MIB,
            "target_met_without_lmdb_map": worst_heap <= TARGET_MEMORY_MIB,
        }
    finally:
        cat.close()


# --------------------------------------------------------------------------- 3. etcd and the comparison


def run_etcd(s: Settings) -> dict[str, Any]:
    from benchmarks.etcd_baseline import etcd_binary, run_etcd_baseline

    if not s.etcd:
        return {"available": False, "reason": "skipped (--quick or --no-etcd)"}
    if etcd_binary() is None:
        return {"available": False, "reason": "etcd binary not found on PATH"}
    _say("etcd: 3 members, same op counts")
    res = run_etcd_baseline(s.levels, ops_per_client=s.ops, value_size=s.value_size,
                            phase_timeout=s.phase_timeout)
    if res.get("available"):
        for phase in ("put", "get_serializable"):
            for level, st in res[phase].items():
                _say(f"  etcd {phase:<16} {level:>2} clients: {st['ops_per_s']:>8.0f} ops/s")
    return res


@contextlib.contextmanager
def _etcd_cluster(s: Settings) -> Iterator[tuple[Any, str | None]]:
    """A started etcd cluster to interleave with the project's phases, or (None, why not)."""
    from benchmarks.etcd_baseline import EtcdCluster, EtcdError, etcd_binary

    if "etcd" not in s.sections or not s.etcd:
        yield None, None if "etcd" not in s.sections else "skipped (--quick or --no-etcd)"
        return
    if etcd_binary() is None:
        yield None, "etcd binary not found on PATH"
        return
    cluster = EtcdCluster(members=N_REPLICAS)
    try:
        cluster.start()
    except EtcdError as exc:
        yield None, f"{exc}"[:2000]
        return
    _say(f"etcd: {N_REPLICAS} members up, its phases run between the project's")
    try:
        yield cluster, None
    finally:
        cluster.stop()


def compare(project: dict[str, Any], etcd: dict[str, Any], levels: Sequence[int]) -> dict[str, Any]:
    """Project/etcd throughput ratios and the issue's targets (16 clients, or the top level)."""
    if not etcd.get("available"):
        return {"available": False, "target_put_w2_ge_etcd_put": None, "target_get_r1_ge_2x_etcd_get": None,
                "target_met": None}

    def ratio(phase: str, etcd_phase: str, level: int) -> float | None:
        """Median over rounds of ours / etcd's in the same round (each etcd phase ran right after ours)."""
        a = project.get(phase, {}).get(str(level), {})
        b = etcd.get(etcd_phase, {}).get(str(level), {})
        ours = a.get("rounds_ops_per_s") or [a.get("ops_per_s")]
        theirs = b.get("rounds_ops_per_s") or [b.get("ops_per_s")]
        pairs = sorted(x / y for x, y in zip(ours, theirs, strict=False) if x and y)
        return round(pairs[(len(pairs) - 1) // 2], 3) if pairs else None

    def cpu_ratio(phase: str, etcd_phase: str, level: int) -> float | None:
        """etcd's CPU per operation (clients and servers) over ours: how many times cheaper ours is."""
        a = project.get(phase, {}).get(str(level), {}).get("cpu_per_op", {}).get("total_us")
        b = etcd.get(etcd_phase, {}).get(str(level), {}).get("cpu_per_op", {}).get("total_us")
        return round(b / a, 3) if a and b else None

    out: dict[str, Any] = {"available": True}
    for level in levels:
        out[f"put_w2_over_etcd_put_c{level}"] = ratio("put", "put", level)
        out[f"get_r1_over_etcd_serializable_get_c{level}"] = ratio("get_r1", "get_serializable", level)
        out[f"get_r2_over_etcd_serializable_get_c{level}"] = ratio("get_r2", "get_serializable", level)
        out[f"get_entry_r1_over_etcd_serializable_get_c{level}"] = ratio("get_entry_r1", "get_serializable", level)
        out[f"by_cpu_put_w2_over_etcd_put_c{level}"] = cpu_ratio("put", "put", level)
        out[f"by_cpu_get_r1_over_etcd_serializable_get_c{level}"] = cpu_ratio("get_r1", "get_serializable", level)
    top = max(levels)
    put_r = out[f"put_w2_over_etcd_put_c{top}"]
    get_r = out[f"get_r1_over_etcd_serializable_get_c{top}"]
    out["by_cpu"] = ("etcd's CPU time per operation (its client processes and members) over ours (client processes "
                     "and replicas), same rounds: the throughput a machine of our own would give each, which a "
                     "shared machine's other load moves less than it moves the rates")
    out["target_clients"] = top
    out["target_put_w2_ge_etcd_put"] = None if put_r is None else put_r >= 1.0
    out["target_get_r1_ge_2x_etcd_get"] = None if get_r is None else get_r >= 2.0
    out["target_met"] = (None if put_r is None or get_r is None
                         else bool(out["target_put_w2_ge_etcd_put"] and out["target_get_r1_ge_2x_etcd_get"]))
    return out


# --------------------------------------------------------------------------- the run


def _safe(name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run one section; a failure is reported in the result instead of losing the others."""
    try:
        return fn()
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        _say(f"{name} failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}


def run_benchmark(s: Settings) -> dict[str, Any]:
    """Run every section; return one JSON-able dict."""
    t0 = time.monotonic()
    result: dict[str, Any] = {
        "benchmark": "catalog",
        "settings": {k: v for k, v in asdict(s).items() if k != "py_spy_dir"},
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_1m_start": _loadavg(),
    }
    profiler = _Profiler(s.py_spy_dir)
    root = Path(tempfile.mkdtemp(prefix="catalog-bench-"))
    skipped = {"skipped": "not in --sections"}
    try:
        if "ceiling" in s.sections:
            result["ceiling"] = _safe("ceiling", lambda: run_ceiling(s, root))
        if "project" in s.sections:
            with _etcd_cluster(s) as (etcd, why_not):
                both = _safe("project", lambda: run_project(s, root, profiler, etcd))
            result["project"] = both.get("project", both)
            result["failover"] = both.get("failover", both)
            if both.get("etcd") is not None:
                result["etcd"] = both["etcd"]
            elif why_not is not None:
                result["etcd"] = {"available": False, "reason": why_not}
        if "etcd" not in result:
            result["etcd"] = (_safe("etcd", lambda: run_etcd(s)) if "etcd" in s.sections
                              else {"available": False, "reason": "not in --sections"})
        result["comparison"] = compare(result.get("project", {}), result["etcd"], s.levels)
        if "memory" in s.sections:
            result["memory"] = _safe("memory", lambda: run_memory(s, root))
        for name in ("ceiling", "project", "failover", "memory"):
            result.setdefault(name, skipped)
        if profiler.results:
            result["profile"] = profiler.results
    finally:
        profiler.close()
        shutil.rmtree(root, ignore_errors=True)
    result["loadavg_1m_end"] = _loadavg()
    result["total_seconds"] = round(time.monotonic() - t0, 1)
    return result


# --------------------------------------------------------------------------- output


def _not_run(name: str, section: dict[str, Any], lines: list[str]) -> bool:
    if "error" in section:
        lines.append(f"\n{name}: FAILED {section['error']}")
        return True
    if "skipped" in section:
        lines.append(f"\n{name}: skipped ({section['skipped']})")
        return True
    return False


def format_table(res: dict[str, Any]) -> str:
    lines = [f"catalog benchmark: {res['cpus']} CPUs, Python {res['python']}, load avg "
             f"{res['loadavg_1m_start']} -> {res.get('loadavg_1m_end')}, {res.get('total_seconds')} s"]
    proj, etcd = res.get("project", {}), res.get("etcd", {})
    if not _not_run("project", proj, lines):
        lines.append(f"\nproject: {proj['replicas']} replicas, W={proj['w']}, value {proj['value_size']} B, "
                     f"{proj['names_per_urn']} names per URN, {proj['ops_per_client']} ops/client/phase")
        lines.append(f"{'system':<8}{'operation':<18}{'clients':>8}{'ops/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
                     f"{'errors':>8}{'cpu us/op':>11}")
        rows = [("snipe", "put W=2", "put", proj), ("snipe", "get R=1", "get_r1", proj),
                ("snipe", "get R=2", "get_r2", proj), ("snipe", "get entry R=1", "get_entry_r1", proj)]
        if etcd.get("available"):
            rows += [("etcd", "put", "put", etcd), ("etcd", "get serializable", "get_serializable", etcd)]
        for system, label, phase, src in rows:
            for level, st in src.get(phase, {}).items():
                flag = "  (time-bounded)" if st.get("truncated") else ""
                cpu = st.get("cpu_per_op", {}).get("total_us")
                lines.append(f"{system:<8}{label:<18}{level:>8}{st['ops_per_s']:>10.0f}{st['p50_ms'] or 0:>9.2f}"
                             f"{st['p99_ms'] or 0:>9.2f}{st['errors']:>8}{cpu or 0:>11.0f}{flag}")
        one = proj.get("one_urn")
        if one:
            lines.append(f"put W=2, all names under one URN: {one['first_10pct_ops_per_s']:.0f} ops/s for the first "
                         f"names, {one['last_10pct_ops_per_s']:.0f} ops/s with {one['last_10pct_held_names'][0]}+ held")
    if not etcd.get("available"):
        lines.append(f"etcd: not measured ({etcd.get('reason') or etcd.get('error')})")
    cmp_ = res.get("comparison", {})
    if cmp_.get("available"):
        lines.append("\nratios to etcd (same run): " + ", ".join(
            f"{k} {v}" for k, v in cmp_.items() if k.endswith(tuple(f"_c{lv}" for lv in res["settings"]["levels"]))
            and not k.startswith("by_cpu")))
        lines.append("by CPU per operation (etcd's over ours): " + ", ".join(
            f"{k[7:]} {v}" for k, v in cmp_.items() if k.startswith("by_cpu_")))
        lines.append(f"targets ({cmp_['target_clients']} clients): put W=2 >= etcd put: "
                     f"{cmp_['target_put_w2_ge_etcd_put']}; get R=1 >= 2x etcd serializable get: "
                     f"{cmp_['target_get_r1_ge_2x_etcd_get']}")
    ceil_ = res.get("ceiling", {})
    if not _not_run("ceiling", ceil_, lines):
        lines.append(f"\nceiling (Replica.ingest into LMDB, in-process): batch 1 "
                     f"{ceil_['batch_1']['ops_per_s']:,.0f}/s, batch 100 {ceil_['batch_100']['ops_per_s']:,.0f}/s")
    mem = res.get("memory", {})
    if not _not_run("memory", mem, lines):
        lines.append(f"\nmemory: {mem['assertions']:,} assertions ({mem['data_mdb_mib']} MiB data.mdb), loaded "
                     f"in {mem['load_seconds']} s by direct LMDB ingest; USS per replica (target "
                     f"{mem['target_mib']:.0f} MiB):")
        for rid, m in mem["uss_after_reads"].items():
            lines.append(f"  {rid}: {mem['uss_after_start'][rid]['uss_mib']} MiB after start, {m['uss_mib']} MiB "
                         f"after {mem['reads_per_replica']} gets ({m['lmdb_map_private_mib']} MiB of it LMDB map)")
        lines.append(f"  target met: {mem['target_met']} (without the LMDB map pages: "
                     f"{mem['target_met_without_lmdb_map']})")
    fo = res.get("failover", {})
    if not _not_run("fail-over", fo, lines):
        lines.append(f"\nfail-over: {fo['killed']}: longest gap between acks {fo['max_gap_ms']} ms "
                     f"(before the kill {fo['max_gap_before_kill_ms']} ms), {fo['writes_acked']} writes acked, "
                     f"{fo['errors']} errors; target {fo['target_gap_ms']:.0f} ms met: {fo['target_met']} "
                     f"(etcd leader kill: about {fo['etcd_leader_kill_gap_ms_reference']:.0f} ms)")
    for name, prof in res.get("profile", {}).items():
        top = ", ".join(f"{f} {p}%" for f, p in prof.get("self_pct", [])[:5])
        lines.append(f"profile {name}: busy {prof.get('busy_fraction')}; self: {top}")
    return "\n".join(lines)


def _parse_args(argv: Sequence[str] | None) -> tuple[Settings, bool]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.catalog",
                                 description="Benchmark the SNIPE catalog against its LMDB ceiling and etcd.")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    ap.add_argument("--quick", action="store_true", help="a smoke run of a few seconds (small sizes, no etcd)")
    ap.add_argument("--ops", type=int, help=f"operations per client per phase (default {DEFAULT_OPS_PER_CLIENT})")
    ap.add_argument("--concurrency", help="comma-separated client counts (default 1,16)")
    ap.add_argument("--phase-timeout", type=float, help="time bound per phase in seconds")
    ap.add_argument("--rounds", type=int, help="rounds of the quorum phases, etcd's interleaved (default 2); "
                                               "figures are each phase's median round")
    ap.add_argument("--names-per-urn", type=int, help=f"names written under each claimed URN "
                                                      f"(default {DEFAULT_NAMES_PER_URN})")
    ap.add_argument("--assertions", type=int, help=f"assertions held for the memory figure "
                                                   f"(default {DEFAULT_ASSERTIONS:,})")
    ap.add_argument("--etcd", action=argparse.BooleanOptionalAction, default=None,
                    help="run the etcd baseline (default: yes, except with --quick)")
    ap.add_argument("--sections", help="comma-separated subset of ceiling,project,etcd,memory (project includes "
                                       "the fail-over test; default: all)")
    ap.add_argument("--py-spy", metavar="DIR", help="sample replicas and a client with py-spy into DIR")
    args = ap.parse_args(argv)
    s = Settings.quick_settings() if args.quick else Settings()
    if args.ops is not None:
        s.ops = args.ops
    if args.concurrency:
        s.levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    if args.phase_timeout is not None:
        s.phase_timeout = args.phase_timeout
    if args.names_per_urn is not None:
        s.names_per_urn = args.names_per_urn
    if args.rounds is not None:
        s.rounds = max(1, args.rounds)
    if args.assertions is not None:
        s.assertions = args.assertions
    if args.etcd is not None:
        s.etcd = args.etcd
    s.py_spy_dir = args.py_spy
    if args.sections:
        s.sections = tuple(x.strip() for x in args.sections.split(",") if x.strip())
        unknown = set(s.sections) - {"ceiling", "project", "etcd", "memory"}
        if unknown:
            ap.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if s.ops < 1 or s.names_per_urn < 1 or s.assertions < 1 or not s.levels or min(s.levels) < 1:
        ap.error("--ops, --names-per-urn, --assertions and client counts must be positive")
    return s, args.json


def main(argv: Sequence[str] | None = None) -> int:
    s, as_json = _parse_args(argv)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    res = run_benchmark(s)
    print(json.dumps(res, indent=2) if as_json else format_table(res))
    failed = [k for k in ("ceiling", "project", "failover", "memory") if "error" in res.get(k, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
