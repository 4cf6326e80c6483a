"""etcd baseline for the catalog benchmark.

The SNIPE catalog is a replicated, signed key/value store; to put its figures in
context we measure a stock etcd cluster on the same machine, with the same kind of
client (plain Python, one persistent HTTP connection per client process).

What this module does:

* :class:`EtcdCluster` starts a 3-member (by default) etcd cluster on 127.0.0.1:
  free loopback ports for client and peer URLs, data directories in a fresh
  temporary directory, ``--initial-cluster-state new`` and a unique cluster token.
  It polls ``/health`` on every member until a deadline and always tears the
  cluster down again (processes terminated then killed, temporary directory
  removed).  Use it as a context manager; ``.client_urls`` lists the members.
* :func:`run_etcd_baseline` measures, through etcd's v3 JSON gateway
  (``/v3/kv/put`` and ``/v3/kv/range`` with ``serializable: true``; keys and values
  base64), put and serializable-get throughput and p50/p99 latency for each
  concurrency level.  Every client is a separate process (``multiprocessing``,
  spawn context) so the GIL does not cap the load; clients are spread round-robin
  over the members.  Each phase has a fixed operation count per client and a time
  bound; a phase that hits the bound is reported with ``"truncated": true``.

Command line::

    python benchmarks/etcd_baseline.py [--json] [--ops N] [--concurrency 1,16]

Only loopback traffic is generated.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import http.client
import itertools
import json
import multiprocessing as mp
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from benchmarks.harness import percentile
from benchmarks.measure import cpu_seconds as _cpu_seconds

__all__ = [
    "PHASES",
    "EtcdCluster",
    "EtcdError",
    "LevelRun",
    "etcd_binary",
    "etcd_version",
    "result_header",
    "run_etcd_baseline",
]

LOOPBACK = "127.0.0.1"
DEFAULT_OPS_PER_CLIENT = 1000
DEFAULT_PHASE_TIMEOUT_S = 12.0
DEFAULT_VALUE_SIZE = 100
HTTP_TIMEOUT_S = 5.0
PHASES = ("put", "get_serializable")


class EtcdError(RuntimeError):
    """The etcd cluster could not be started or did not become healthy."""


# --------------------------------------------------------------------------- helpers


def etcd_binary() -> str | None:
    """Path of the ``etcd`` server binary, or ``None`` if it is not installed."""
    return shutil.which("etcd")


def etcd_version(binary: str | None = None) -> str | None:
    """Version string printed by ``etcd --version`` (e.g. ``"3.4.23"``), if any."""
    binary = binary or etcd_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        if line.startswith("etcd Version:"):
            return line.split(":", 1)[1].strip()
    return None


def _free_ports(count: int) -> list[int]:
    """Ask the kernel for ``count`` distinct free TCP ports on the loopback address.

    All sockets are held open until every port is known, so the ports are distinct;
    another process may still grab one before etcd binds it, which
    :class:`EtcdCluster` handles by retrying the start.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.hostname != LOOPBACK or parts.port is None:
        raise ValueError(f"refusing non-loopback etcd URL {url!r}")
    return parts.hostname, parts.port


def _http_get_json(url: str, path: str, timeout: float = 1.0) -> Any:
    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            raise EtcdError(f"GET {path} on {url}: HTTP {resp.status}")
        return json.loads(body)
    finally:
        conn.close()


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child before exec
    """Have the kernel SIGKILL the child if the thread that started it dies."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    except Exception:
        pass


# --------------------------------------------------------------------------- cluster


@dataclass
class _Member:
    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    log_file: Any = field(default=None, repr=False)


class EtcdCluster:
    """A throw-away etcd cluster on 127.0.0.1.

    >>> with EtcdCluster(members=3) as cluster:      # doctest: +SKIP
    ...     print(cluster.client_urls)
    ['http://127.0.0.1:40123', 'http://127.0.0.1:40125', 'http://127.0.0.1:40127']

    ``kill_on_parent_death`` asks the kernel to SIGKILL the members if the *thread*
    that started them dies (Linux ``PR_SET_PDEATHSIG``), so a crashed benchmark does
    not leave etcd running; start the cluster from a thread that outlives its use,
    or pass ``False``.
    """

    def __init__(
        self,
        members: int = 3,
        *,
        binary: str | None = None,
        start_timeout: float = 30.0,
        base_dir: str | os.PathLike[str] | None = None,
        extra_args: Sequence[str] = (),
        start_attempts: int = 3,
        kill_on_parent_death: bool = True,
    ) -> None:
        if members < 1:
            raise ValueError("members must be >= 1")
        self.members = members
        self.binary = binary or etcd_binary()
        self.start_timeout = start_timeout
        self.base_dir = base_dir
        self.extra_args = list(extra_args)
        self.start_attempts = max(1, start_attempts)
        self.kill_on_parent_death = kill_on_parent_death
        self.cluster_token = ""
        self.tmpdir: Path | None = None
        self._members: list[_Member] = []
        self._atexit_registered = False

    # -- public API
    @property
    def client_urls(self) -> list[str]:
        """Client URLs (``http://127.0.0.1:PORT``), one per member, in member order."""
        return [m.client_url for m in self._members]

    @property
    def peer_urls(self) -> list[str]:
        return [m.peer_url for m in self._members]

    @property
    def pids(self) -> list[int]:
        return [m.proc.pid for m in self._members if m.proc is not None]

    def start(self) -> EtcdCluster:
        """Start the members and wait until every one reports healthy."""
        if self.binary is None:
            raise EtcdError("etcd binary not found on PATH")
        if self._members:
            raise EtcdError("cluster already started")
        if not self._atexit_registered:
            atexit.register(self.stop)
            self._atexit_registered = True
        last: Exception | None = None
        for _attempt in range(self.start_attempts):
            try:
                self._start_once()
                return self
            except EtcdError as exc:  # port race, slow start, ...
                last = exc
                self.stop()
        raise EtcdError(f"etcd cluster did not start after {self.start_attempts} attempts: {last}")

    def stop(self) -> None:
        """Terminate (then kill) every member and remove the temporary directory."""
        for m in self._members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.terminate()
        deadline = time.monotonic() + 5.0
        for m in self._members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                m.proc.wait()
        for m in self._members:
            if m.log_file is not None:
                m.log_file.close()
        self._members = []
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def version(self) -> dict[str, str]:
        """``/version`` of the first member: ``{"etcdserver": ..., "etcdcluster": ...}``."""
        return dict(_http_get_json(self.client_urls[0], "/version"))

    def leader_index(self) -> int | None:
        """Index in :attr:`client_urls` of the current Raft leader, if known."""
        ids: list[str] = []
        leader: str | None = None
        for url in self.client_urls:
            try:
                st = _post_json(url, "/v3/maintenance/status", {})
            except (OSError, EtcdError, http.client.HTTPException, ValueError):
                return None
            ids.append(str(st.get("header", {}).get("member_id")))
            leader = str(st.get("leader"))
        return ids.index(leader) if leader in ids else None

    def logs(self) -> dict[str, str]:
        """Tail of every member's log (for error reports)."""
        out: dict[str, str] = {}
        for m in self._members:
            try:
                out[m.name] = m.log_path.read_text(errors="replace")[-4000:]
            except OSError:
                out[m.name] = ""
        return out

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals
    def _start_once(self) -> None:
        assert self.binary is not None
        self.tmpdir = Path(tempfile.mkdtemp(prefix="etcd-baseline-", dir=self.base_dir))
        self.cluster_token = f"snipe-bench-{uuid.uuid4().hex}"
        ports = _free_ports(2 * self.members)
        self._members = [
            _Member(
                name=f"m{i}",
                client_url=f"http://{LOOPBACK}:{ports[2 * i]}",
                peer_url=f"http://{LOOPBACK}:{ports[2 * i + 1]}",
                data_dir=self.tmpdir / f"m{i}.etcd",
                log_path=self.tmpdir / f"m{i}.log",
            )
            for i in range(self.members)
        ]
        initial_cluster = ",".join(f"{m.name}={m.peer_url}" for m in self._members)
        # etcd also reads its flags from ETCD_* variables; do not inherit stray ones.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}
        if "ETCD_UNSUPPORTED_ARCH" in os.environ:
            env["ETCD_UNSUPPORTED_ARCH"] = os.environ["ETCD_UNSUPPORTED_ARCH"]
        for m in self._members:
            argv = [
                self.binary,
                "--name", m.name,
                "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url,
                "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url,
                "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", initial_cluster,
                "--initial-cluster-token", self.cluster_token,
                "--initial-cluster-state", "new",
                "--logger", "zap",
                "--log-outputs", "stderr",
                *self.extra_args,
            ]  # fmt: skip
            m.log_file = open(m.log_path, "wb")  # noqa: SIM115 - closed in stop()
            m.proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=m.log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.tmpdir,
                preexec_fn=_set_pdeathsig if self.kill_on_parent_death else None,
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = list(self._members)
        delay = 0.05
        last_err = "no answer yet"
        while True:
            for m in self._members:
                assert m.proc is not None
                if m.proc.poll() is not None:
                    tail = m.log_path.read_text(errors="replace")[-1500:]
                    raise EtcdError(f"member {m.name} exited with {m.proc.returncode}:\n{tail}")
            still: list[_Member] = []
            for m in pending:
                try:
                    health = _http_get_json(m.client_url, "/health", timeout=1.0)
                    if str(health.get("health")) != "true":
                        last_err = f"{m.name}: {health}"
                        still.append(m)
                except (OSError, EtcdError, http.client.HTTPException, ValueError) as exc:
                    last_err = f"{m.name}: {exc!r}"
                    still.append(m)
            pending = still
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise EtcdError(f"etcd cluster not healthy after {self.start_timeout:.0f}s ({last_err})")
            time.sleep(delay)  # poll interval, bounded by the deadline above
            delay = min(delay * 1.5, 0.5)


# --------------------------------------------------------------------------- client


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _post_json(url: str, path: str, payload: dict[str, Any], timeout: float = 2.0) -> Any:
    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        return _request(conn, path, json.dumps(payload).encode())
    finally:
        conn.close()


def _request(conn: http.client.HTTPConnection, path: str, body: bytes) -> Any:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        raise EtcdError(f"POST {path}: HTTP {resp.status} {data[:200]!r}")
    return json.loads(data)


def _key(level: int, worker: int, i: int) -> bytes:
    return f"/bench/c{level}/w{worker:02d}/{i:08d}".encode()


def _worker(
    url: str,
    level: int,
    worker: int,
    ops: int,
    value_size: int,
    phase_timeout: float,
    ready: Any,
    go: Sequence[Any],
    results: Any,
) -> None:
    """One benchmark client: a put phase then a serializable-get phase.

    Runs in its own process.  Before each phase it reports ``(phase, worker)`` on
    ``ready`` and waits for the parent to set that phase's ``go`` event, so that all
    clients start a phase together.  For each phase it sends ``(phase, worker, t_start, t_end, latencies, errors,
    misses)`` on ``results``; times come from ``time.monotonic`` (system-wide
    CLOCK_MONOTONIC on Linux, hence comparable across processes).
    """
    parent = os.getppid()
    host, port = _host_port(url)
    conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
    value = _b64(os.urandom(value_size))

    def call(path: str, body: bytes) -> Any:
        nonlocal conn
        try:
            return _request(conn, path, body)
        except (OSError, http.client.HTTPException):
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT_S)
            raise

    # Warm-up: open the persistent connection before the clock starts.
    with contextlib.suppress(Exception):
        call("/v3/kv/range", json.dumps({"key": _b64(b"/bench/warmup"), "serializable": True}).encode())

    written = 0
    for phase, start in zip(itertools.cycle(PHASES), go):     # as many rounds of the phases as `go` events
        ready.put((phase, worker))
        give_up = time.monotonic() + 120.0
        while not start.wait(timeout=0.2):
            if os.getppid() != parent or time.monotonic() > give_up:
                return  # the parent died or gave up
        lat: list[float] = []
        errors = 0
        misses = 0
        c0 = time.process_time()
        t0 = time.monotonic()
        deadline = t0 + phase_timeout
        for i in range(ops):
            if phase == "put":
                body = json.dumps({"key": _b64(_key(level, worker, i)), "value": value}).encode()
                path = "/v3/kv/put"
            else:
                k = _key(level, worker, i % written) if written else _key(level, worker, 0)
                body = json.dumps({"key": _b64(k), "serializable": True}).encode()
                path = "/v3/kv/range"
            s = time.perf_counter()
            try:
                reply = call(path, body)
            except (OSError, http.client.HTTPException, EtcdError, ValueError):
                errors += 1
            else:
                lat.append(time.perf_counter() - s)
                if phase == "put":
                    written = i + 1
                elif not reply.get("kvs"):
                    misses += 1
            if time.monotonic() >= deadline:
                break
        t1 = time.monotonic()
        results.put((phase, worker, t0, t1, lat, errors, misses, time.process_time() - c0))
    conn.close()


def _summarise(rows: list[tuple[Any, ...]], ops_per_client: int, servers_cpu: float | None = None
               ) -> dict[str, Any]:
    t_start = min(r[2] for r in rows)
    t_end = max(r[3] for r in rows)
    lat = sorted(x for r in rows for x in r[4])
    errors = sum(r[5] for r in rows)
    misses = sum(r[6] for r in rows)
    wall = max(t_end - t_start, 1e-9)
    out: dict[str, Any] = {
        "ops": len(lat),
        "clients": len(rows),
        "seconds": round(wall, 3),
        "ops_per_s": round(len(lat) / wall, 1),
        "p50_ms": round(percentile(lat, 50) * 1e3, 3),
        "p99_ms": round(percentile(lat, 99) * 1e3, 3),
        "errors": errors,
        "truncated": len(lat) + errors < ops_per_client * len(rows),
    }
    if misses:
        out["misses"] = misses
    if servers_cpu is not None:
        n = max(len(lat), 1)
        clients_cpu = sum(r[7] for r in rows)
        out["cpu_per_op"] = {
            "clients_us": round(clients_cpu / n * 1e6, 1),
            "servers_us": round(servers_cpu / n * 1e6, 1),
            "total_us": round((clients_cpu + servers_cpu) / n * 1e6, 1),
            "cores_busy": round((clients_cpu + servers_cpu) / wall, 2),
        }
    return out


class LevelRun:
    """The client processes of one concurrency level, started together and kept waiting between
    phases, which run one at a time in `PHASES` order: a caller may run another system's phases
    in between, so that both are measured under the same load from the rest of the machine."""

    def __init__(self, client_urls: Sequence[str], member_pids: Sequence[int], level: int, ops_per_client: int,
                 value_size: int, phase_timeout: float, rounds: int = 1) -> None:
        self.member_pids = list(member_pids)
        self.level = level
        self.ops_per_client = ops_per_client
        self.phase_timeout = phase_timeout
        # spawn, not fork: the caller may hold threads (zmq, loggers) whose locks a fork
        # would copy.  The price: the caller's main module is re-imported in each client,
        # so it must guard its entry point with ``if __name__ == "__main__":``.
        ctx = mp.get_context("spawn")
        self.ready = ctx.Queue()
        self.go = [ctx.Event() for _ in range(rounds) for _ in PHASES]
        self.results = ctx.Queue()
        self.procs = [
            ctx.Process(target=_worker,
                        args=(client_urls[w % len(client_urls)], level, w, ops_per_client, value_size, phase_timeout,
                              self.ready, self.go, self.results),
                        name=f"etcd-bench-c{level}-w{w}", daemon=True)
            for w in range(level)
        ]
        self._next = 0

    def __enter__(self) -> LevelRun:
        for p in self.procs:
            p.start()
        return self

    def run_phase(self, phase: str) -> dict[str, Any]:
        """Run the next phase (they come in `PHASES` order, round after round) and summarise it."""
        if PHASES[self._next % len(PHASES)] != phase:
            raise ValueError(f"phase {phase!r} asked for; the next is {PHASES[self._next % len(PHASES)]!r}")
        start = self.go[self._next]
        self._next += 1
        # Spawning 16 interpreters on 2 cores takes a few seconds: generous bound.
        _collect(self.ready, self.level, 60.0, self.procs, f"{phase} clients ready")
        cpu0 = _cpu_seconds(self.member_pids)
        start.set()
        bound = self.phase_timeout + 2 * HTTP_TIMEOUT_S + 10.0
        rows = _collect(self.results, self.level, bound, self.procs, f"{phase} results")
        return _summarise(rows, self.ops_per_client, _cpu_seconds(self.member_pids) - cpu0)

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.join(timeout=10.0 if exc[0] is None else 0.1)
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join()
        for q in (self.ready, self.results):
            q.close()
            q.cancel_join_thread()


def _run_level(
    client_urls: Sequence[str],
    member_pids: Sequence[int],
    level: int,
    ops_per_client: int,
    value_size: int,
    phase_timeout: float,
) -> dict[str, dict[str, Any]]:
    with LevelRun(client_urls, member_pids, level, ops_per_client, value_size, phase_timeout) as run:
        return {phase: run.run_phase(phase) for phase in PHASES}


def _collect(q: Any, n: int, timeout: float, procs: Sequence[Any], what: str) -> list[Any]:
    """Read ``n`` items from ``q`` within ``timeout`` s, failing fast if a client dies."""
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
                f"benchmark client {dead[0].name} died (exit code {dead[0].exitcode}) while waiting "
                f"for {what}; with the spawn start method the calling script must guard its "
                'entry point with `if __name__ == "__main__":`'
            )
        if time.monotonic() >= deadline:
            raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what} ({len(items)}/{n})")
    return items


def result_header(cluster: EtcdCluster, version: str, value_size: int, ops_per_client: int,
                  phase_timeout: float) -> dict[str, Any]:
    """What a result says about the cluster and the clients, before the figures."""
    return {
        "available": True,
        "version": version,
        "members": len(cluster.client_urls),
        "leader_member": cluster.leader_index(),
        "transport": "HTTP/1.1 JSON gateway (/v3/kv/*), http.client, 1 process per client",
        "clients": "1 process per client, each with one persistent HTTP connection to one member (round-robin)",
        "durability": "etcd fsyncs its WAL at every commit (many puts share one); the catalog's replicas write "
                      "to the page cache (sync=false: an acknowledged write survives kill -9 of the replica, "
                      "which is what the issue asks, not a power cut)",
        "value_size": value_size,
        "ops_per_client": ops_per_client,
        "phase_timeout_s": phase_timeout,
        "data_dir_parent": str(cluster.tmpdir.parent) if cluster.tmpdir else None,
        "cpus": os.cpu_count(),
        # Other load on the machine skews every figure: record it.
        "loadavg_1m_before": round(os.getloadavg()[0], 2),
        "put": {},
        "get_serializable": {},
    }


def run_etcd_baseline(
    concurrency_levels: Iterable[int] = (1, 16),
    ops_per_client: int = DEFAULT_OPS_PER_CLIENT,
    value_size: int = DEFAULT_VALUE_SIZE,
    *,
    members: int = 3,
    phase_timeout: float = DEFAULT_PHASE_TIMEOUT_S,
    cluster: EtcdCluster | None = None,
) -> dict[str, Any]:
    """Benchmark a fresh loopback etcd cluster; return a JSON-able dict.

    Shape::

        {"available": True, "version": "3.4.23", "members": 3, ...,
         "put": {"1": {"ops_per_s": ..., "p50_ms": ..., "p99_ms": ..., ...},
                 "16": {...}},
         "get_serializable": {"1": {...}, "16": {...}}}

    or ``{"available": False, "reason": "..."}`` when etcd is not installed or the
    cluster cannot be started.  Each phase performs ``ops_per_client`` operations
    per client, stopping early after ``phase_timeout`` seconds (``truncated``).
    ``ops_per_s`` is total successful operations over the phase's wall time (first
    client start to last client end).  Pass ``cluster`` to reuse a running
    :class:`EtcdCluster` (it is left running).
    """
    levels = [int(c) for c in concurrency_levels]
    if any(c < 1 for c in levels):
        raise ValueError("concurrency levels must be >= 1")
    binary = etcd_binary()
    if cluster is None and binary is None:
        return {"available": False, "reason": "etcd binary not found on PATH"}
    version = etcd_version(cluster.binary if cluster is not None else binary) or "unknown"
    owned = cluster is None
    try:
        if cluster is None:
            cluster = EtcdCluster(members=members, binary=binary).start()
    except EtcdError as exc:
        return {"available": False, "reason": str(exc), "version": version}
    try:
        t0 = time.monotonic()
        result = result_header(cluster, version, value_size, ops_per_client, phase_timeout)
        for level in levels:
            summary = _run_level(cluster.client_urls, cluster.pids, level, ops_per_client, value_size, phase_timeout)
            for phase, stats in summary.items():
                result[phase][str(level)] = stats
        result["bench_seconds"] = round(time.monotonic() - t0, 2)
        result["loadavg_1m_after"] = round(os.getloadavg()[0], 2)
        return result
    finally:
        if owned:
            cluster.stop()


# --------------------------------------------------------------------------- CLI


def _format_table(res: dict[str, Any]) -> str:
    if not res.get("available"):
        return f"etcd baseline unavailable: {res.get('reason')}"
    lines = [
        f"etcd {res['version']}, {res['members']} members on 127.0.0.1, "
        f"value {res['value_size']} B, {res['ops_per_client']} ops/client, "
        f"leader = member {res.get('leader_member')}, "
        f"load avg {res.get('loadavg_1m_before')} -> {res.get('loadavg_1m_after')} on {res.get('cpus')} CPUs",
        f"{'operation':<18}{'clients':>8}{'ops/s':>11}{'p50 ms':>10}{'p99 ms':>10}{'errors':>8}",
    ]
    for phase in ("put", "get_serializable"):
        for level, st in res[phase].items():
            flag = "  (time-bounded)" if st.get("truncated") else ""
            lines.append(
                f"{phase:<18}{level:>8}{st['ops_per_s']:>11.0f}{st['p50_ms']:>10.2f}"
                f"{st['p99_ms']:>10.2f}{st['errors']:>8}{flag}"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print the result dict as JSON")
    ap.add_argument("--ops", type=int, default=DEFAULT_OPS_PER_CLIENT, help="operations per client per phase")
    ap.add_argument("--value-size", type=int, default=DEFAULT_VALUE_SIZE, help="value size in bytes")
    ap.add_argument("--concurrency", default="1,16", help="comma-separated client counts (default: 1,16)")
    ap.add_argument("--phase-timeout", type=float, default=DEFAULT_PHASE_TIMEOUT_S, help="time bound per phase (s)")
    args = ap.parse_args(argv)
    levels = tuple(int(x) for x in args.concurrency.split(",") if x.strip())
    res = run_etcd_baseline(
        levels, ops_per_client=args.ops, value_size=args.value_size, phase_timeout=args.phase_timeout
    )
    print(json.dumps(res, indent=2) if args.json else _format_table(res))
    return 0 if res.get("available") else 1


if __name__ == "__main__":
    sys.exit(main())
