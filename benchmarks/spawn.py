"""Spawn benchmark: spawn-to-running latency through snipe-daemon, a bare subprocess, and Ray, in one run.

Run it from the repository root, as a module::

    python -m benchmarks.spawn              # readable table, then the JSON
    python -m benchmarks.spawn --json       # the JSON only
    python -m benchmarks.spawn --quick      # a smoke run (10 spawns per case)

What one run measures, all on this machine:

1. **The project.**  A ``LocalCluster`` (3 catalog replicas, ``--hosts`` daemons, 1 by default)
   started by the benchmark; this process joins it with ``snipe.init`` and publishes the hello
   program once.  The hello program imports snipe and zmq (as tasks do), connects a plain zmq
   PUSH socket (no CURVE) to a PULL socket this benchmark binds on 127.0.0.1, sends
   ``b"hello"`` (plus a tag, its pid and whether a warm interpreter ran it) and exits.  The
   latency of one spawn is the time from calling ``snipe.spawn(code, endpoint, tag)`` until its
   hello arrives.  *Sequential*: ``--spawns`` spawns one after another, each waiting for its
   hello, with ``--gap`` seconds between them so the daemon's warm pool (``DaemonConfig.
   warm_pool``, 2 by default) can refill, which is the realistic case.  *Burst*: ``--burst``
   spawns back to back, then all hellos (the pool refills in the background; "warm" counts the
   spawns a pre-started interpreter served); per-spawn latency and the makespan.
2. **The baseline.**  The same hello program started by ``subprocess.Popen([sys.executable,
   script, endpoint, tag])``, measured the same way: once importing only zmq ("python+zmq"),
   once also importing snipe ("python+snipe+zmq"), sequential and burst.
3. **Ray**, when ``import ray`` works (it is never installed by this benchmark): actor creation
   plus the first result of a method call, ``ray.get(Actor.remote().ping.remote())``.
4. **Ratios and targets**: project/bare p50 (target <= 1.0x, against both baselines) and
   Ray/project p50 (target >= 10x).
5. **Memory** (psutil USS, the pages only that process holds, i.e. what one more such process
   costs; PSS and RSS beside it): the idle daemon after start-up and after all the spawns
   (target < 60 MiB), an idle warm-pool interpreter and the template it was forked from, and
   what a spawned task costs beyond a bare subprocess: a task that imports snipe and zmq and
   sleeps, against bare python+zmq and python+snipe+zmq sleepers.

``--profile DIR`` also records the daemon with py-spy during the sequential spawns and the
client's ``snipe.spawn`` calls with cProfile, and adds the hottest functions of both to the
result (the latencies of that run are then inflated by the sampling).

Every process this benchmark starts is stopped, and its temporary folder removed, also on
errors and on SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import zmq

from benchmarks.harness import mib, percentile, py_spy_exe, run_main, say

__all__ = ["Settings", "main", "run_benchmark"]


HELLO_TIMEOUT_S = 60.0
TARGET_RATIO_BARE = 1.0
TARGET_RATIO_RAY = 10.0
TARGET_DAEMON_USS_MIB = 60.0

# argv: endpoint [tag [hold seconds]]. Sends [b"hello", tag, pid, warm|cold], then exits (or
# sleeps `hold` seconds first, for the memory probes). "warm": a daemon's pre-started
# interpreter ran it (snipe_daemon is imported only there).
_HELLO_BODY = """\
import os
import sys
import time

import zmq

ctx = zmq.Context()
sock = ctx.socket(zmq.PUSH)
sock.setsockopt(zmq.LINGER, 5000)
sock.connect(sys.argv[1])
tag = sys.argv[2] if len(sys.argv) > 2 else ""
warm = b"warm" if "snipe_daemon" in sys.modules else b"cold"
sock.send_multipart([b"hello", tag.encode(), str(os.getpid()).encode(), warm])
if len(sys.argv) > 3:
    time.sleep(float(sys.argv[3]))
sock.close()
ctx.term()
"""
HELLO_ZMQ = _HELLO_BODY
HELLO_SNIPE = "import snipe  # noqa: F401  (as tasks do)\n" + _HELLO_BODY


@dataclass
class Settings:
    spawns: int = 100
    warmup: int = 3
    burst: int = 8
    gap_s: float = 0.5
    settle_s: float = 2.0
    hosts: int = 1
    replicas: int = 3
    ray_actors: int = 10
    hold_s: float = 30.0
    profile_dir: str | None = None

    @classmethod
    def quick(cls) -> Settings:
        return cls(spawns=10, warmup=2, burst=8, gap_s=0.5, settle_s=1.5, ray_actors=3)


def _say(msg: str) -> None:
    say("spawn", msg)


def _stats_ms(seconds: Sequence[float]) -> dict[str, Any]:
    ms = [x * 1000 for x in seconds]
    if not ms:
        return {"n": 0}
    return {"n": len(ms), "p50_ms": round(percentile(ms, 50), 2), "p99_ms": round(percentile(ms, 99), 2),
            "mean_ms": round(statistics.fmean(ms), 2), "min_ms": round(min(ms), 2), "max_ms": round(max(ms), 2)}


# --- listening for hellos --------------------------------------------------------------------------
class HelloSink:
    """A PULL socket on 127.0.0.1 that hellos are sent to; records when each tag arrived."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.PULL)
        self.sock.setsockopt(zmq.LINGER, 0)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.arrived: dict[str, tuple[float, int, bool]] = {}      # tag -> (when, pid, warm)

    def wait(self, tags: Sequence[str], timeout: float = HELLO_TIMEOUT_S) -> None:
        deadline = time.perf_counter() + timeout
        missing = [t for t in tags if t not in self.arrived]
        while missing:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"no hello from {', '.join(missing)} within {timeout} s")
            if self.sock.poll(left * 1000):
                parts = self.sock.recv_multipart()
                now = time.perf_counter()
                if len(parts) == 4 and parts[0] == b"hello":
                    self.arrived[parts[1].decode()] = (now, int(parts[2]), parts[3] == b"warm")
            missing = [t for t in tags if t not in self.arrived]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


# --- the runs ---------------------------------------------------------------------------------------
Starter = Callable[[str], Any]          # tag -> a handle (Process or Popen); starts one hello program


@dataclass
class Run:
    latencies: list[float]
    warm: int
    makespan: float | None = None
    call_s: list[float] | None = None      # how long the start call itself took


def sequential(sink: HelloSink, start: Starter, n: int, gap_s: float, prefix: str,
               after: Callable[[Any], None] = lambda h: None) -> Run:
    lat: list[float] = []
    calls: list[float] = []
    warm = 0
    for i in range(n):
        tag = f"{prefix}{i}"
        t0 = time.perf_counter()
        handle = start(tag)
        calls.append(time.perf_counter() - t0)
        sink.wait([tag])
        when, _, was_warm = sink.arrived[tag]
        lat.append(when - t0)
        warm += was_warm
        after(handle)
        time.sleep(gap_s)
    return Run(lat, warm, call_s=calls)


def burst(sink: HelloSink, start: Starter, n: int, prefix: str,
          after: Callable[[Any], None] = lambda h: None) -> Run:
    tags = [f"{prefix}{i}" for i in range(n)]
    t0s: list[float] = []
    handles = []
    for tag in tags:
        t0s.append(time.perf_counter())
        handles.append(start(tag))
    sink.wait(tags)
    lat = [sink.arrived[t][0] - t0 for t, t0 in zip(tags, t0s, strict=True)]
    end = max(sink.arrived[t][0] for t in tags)
    for h in handles:
        after(h)
    return Run(lat, sum(sink.arrived[t][2] for t in tags), makespan=end - t0s[0])


def _summary(run: Run) -> dict[str, Any]:
    out = {**_stats_ms(run.latencies), "warm": run.warm}
    if run.makespan is not None:
        out["makespan_ms"] = round(run.makespan * 1000, 2)
    if run.call_s:
        out["start_call"] = _stats_ms(run.call_s)
    return out


class Bare:
    """Bare subprocesses of a hello script; reaps them all."""

    def __init__(self, script: Path, endpoint: str) -> None:
        self.script = script
        self.endpoint = endpoint
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, tag: str, *extra: str) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, str(self.script), self.endpoint, tag, *extra],
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        return p

    @staticmethod
    def reap(p: subprocess.Popen[bytes]) -> None:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self.procs.clear()


# --- memory -----------------------------------------------------------------------------------------
def _uss_rss(pid: int) -> dict[str, float]:
    info = psutil.Process(pid).memory_full_info()
    return {"uss_mib": mib(info.uss), "pss_mib": mib(info.pss), "rss_mib": mib(info.rss)}


def idle_zygotes(daemon_pid: int, tasks_dir: Path) -> list[psutil.Process]:
    """The daemon's pre-started interpreters that have not become a task (named snipe-zygote while idle)."""
    out = []
    for child in psutil.Process(daemon_pid).children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "snipe-zygote" and Path(child.cwd()) == tasks_dir:
                out.append(child)
    return out


def zygote_template(daemon_pid: int) -> psutil.Process | None:
    """The interpreter the daemon forks its zygotes from, if it has one."""
    for child in psutil.Process(daemon_pid).children():
        with contextlib.suppress(psutil.Error):
            if child.name() == "snipe-template":
                return child
    return None


def wait_pool_ready(daemon_pid: int, tasks_dir: Path, size: int, timeout: float = 20.0) -> bool:
    """Until `size` idle zygotes have finished importing (they sleep on stdin, using no CPU)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        zs = idle_zygotes(daemon_pid, tasks_dir)
        if len(zs) >= size:
            try:
                before = [z.cpu_times() for z in zs]
                time.sleep(0.1)
                after = [z.cpu_times() for z in zs]
            except psutil.Error:
                continue
            if all((a.user + a.system) - (b.user + b.system) < 0.005 for a, b in zip(after, before, strict=True)):
                return True
        else:
            time.sleep(0.05)
    return False


# --- Ray --------------------------------------------------------------------------------------------
def ray_actor_latency(n: int) -> dict[str, Any]:
    try:
        import ray  # type: ignore[import-not-found]
    except Exception as exc:      # ImportError, or a broken install
        return {"available": False, "reason": f"import ray failed: {exc.__class__.__name__}: {exc}"}
    try:
        ray.init(num_cpus=max(2, os.cpu_count() or 2), include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True)

        @ray.remote(num_cpus=0)
        class Hello:
            def ping(self) -> str:
                return "hello"

        def one() -> float:
            t0 = time.perf_counter()
            actor = Hello.remote()  # type: ignore[attr-defined]
            ray.get(actor.ping.remote(), timeout=HELLO_TIMEOUT_S)
            dt = time.perf_counter() - t0
            ray.kill(actor)
            return dt

        one()                                    # workers and the cluster warmed up
        lat = [one() for _ in range(n)]
        return {"available": True, "version": ray.__version__, **_stats_ms(lat)}
    except Exception as exc:
        return {"available": False, "reason": f"ray failed: {exc.__class__.__name__}: {exc}"}
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()


# --- profiling --------------------------------------------------------------------------------------
@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Iterator[dict[str, Any]]:
    """py-spy record of `pid` while the block runs; yields a dict filled with the hottest functions."""
    exe = py_spy_exe()
    result: dict[str, Any] = {}
    if exe is None:
        result["error"] = "py-spy is not installed"
        yield result
        return
    raw = out.with_suffix(".txt")
    proc = subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "500",
                             "--output", str(raw), "--nonblocking", "--idle"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(0.5)
    try:
        yield result
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        result.update(_hot_functions(raw) if raw.exists() else {"error": err.decode(errors="replace")[-500:]})


def _hot_functions(raw: Path, top: int = 15) -> dict[str, Any]:
    """From py-spy's raw (collapsed stacks) output: inclusive share of samples per function, idle excluded."""
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not any("serve_forever" in f for f in frames):
            continue          # not the daemon's main thread (e.g. the ZAP authenticator)
        if len(frames) >= 2 and "serve_forever" in frames[-2] and "poll" in frames[-1]:
            continue          # the daemon's loop waiting for work (other waits, e.g. for replicas, count)
        total += count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count
    hot = sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]
    return {"busy_samples": total, "inclusive": [{"function": f, "share": round(c / total, 3)} for f, c in hot]}


def _cprofile_top(prof: cProfile.Profile, top: int = 15) -> list[str]:
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    return [line for line in buf.getvalue().splitlines() if line.strip()][-top:]


# --- the benchmark ----------------------------------------------------------------------------------
def run_benchmark(settings: Settings) -> dict[str, Any]:
    import snipe
    from snipe.localcluster import LocalCluster

    root = Path(tempfile.mkdtemp(prefix="snipe-bench-spawn-"))
    cluster: LocalCluster | None = None
    sink: HelloSink | None = None
    bares: list[Bare] = []
    result: dict[str, Any] = {"benchmark": "spawn", "settings": asdict(settings), "cpus": os.cpu_count(),
                              "python": sys.version.split()[0]}
    try:
        scripts = root / "scripts"
        scripts.mkdir()
        (scripts / "hello_zmq.py").write_text(HELLO_ZMQ)
        (scripts / "hello_snipe.py").write_text(HELLO_SNIPE)
        sink = HelloSink()

        # --- the project
        _say(f"starting a local cluster: {settings.replicas} replicas, {settings.hosts} host(s)")
        cluster = LocalCluster(root / "cluster", replicas=settings.replicas, hosts=settings.hosts,
                               loopback_hosts=settings.hosts > 1)
        cluster.start()
        daemon_pid = cluster.daemons[0].proc.pid  # type: ignore[union-attr]
        tasks_dir = cluster.daemons[0].state_dir / "tasks"
        from snipe_daemon.server import DaemonConfig
        pool_size = DaemonConfig.__dataclass_fields__["warm_pool"].default
        result["warm_pool"] = pool_size
        snipe.init(catalog=cluster.catalog.addresses, identity=cluster.user, admin_key=cluster.admin.key_id,
                   daemon=cluster.daemons[0].address)
        code = snipe.publish(scripts / "hello_snipe.py")
        wait_pool_ready(daemon_pid, tasks_dir, pool_size)
        time.sleep(settings.settle_s)
        memory: dict[str, Any] = {"daemon_after_start": _uss_rss(daemon_pid)}
        zs = idle_zygotes(daemon_pid, tasks_dir)
        memory["idle_zygote"] = _uss_rss(zs[0].pid) if zs else {"error": "no idle zygote found"}
        template = zygote_template(daemon_pid)
        memory["zygote_template"] = _uss_rss(template.pid) if template else {"absent": True}

        def spawn_one(tag: str) -> Any:
            return snipe.spawn(code, sink.endpoint, tag)  # type: ignore[union-attr]

        def refill(_: Any) -> None:
            wait_pool_ready(daemon_pid, tasks_dir, pool_size, timeout=5.0)

        _say("warm-up spawns")
        sequential(sink, spawn_one, settings.warmup * settings.hosts, settings.gap_s, "warmup-")
        _say(f"{settings.spawns} sequential spawns through the daemon")
        prof = cProfile.Profile() if settings.profile_dir else None
        profile: dict[str, Any] = {}
        with contextlib.ExitStack() as stack:
            if settings.profile_dir:
                pdir = Path(settings.profile_dir)
                pdir.mkdir(parents=True, exist_ok=True)
                profile["daemon_py_spy"] = stack.enter_context(py_spy(daemon_pid, pdir / "daemon"))

                def spawn_profiled(tag: str) -> Any:
                    assert prof is not None
                    prof.enable()
                    try:
                        return spawn_one(tag)
                    finally:
                        prof.disable()
                seq = sequential(sink, spawn_profiled, settings.spawns, settings.gap_s, "seq-")
            else:
                seq = sequential(sink, spawn_one, settings.spawns, settings.gap_s, "seq-")
        if prof is not None:
            profile["client_cprofile_cumulative"] = _cprofile_top(prof)
            result["profile"] = profile
        refill(None)
        time.sleep(1.0)
        _say(f"burst of {settings.burst} spawns through the daemon")
        bur = burst(sink, spawn_one, settings.burst, "burst-")
        project = {"sequential": _summary(seq), "burst": _summary(bur)}

        # --- bare subprocesses
        bare_results: dict[str, Any] = {}
        for name, script in (("python+zmq", "hello_zmq.py"), ("python+snipe+zmq", "hello_snipe.py")):
            b = Bare(scripts / script, sink.endpoint)
            bares.append(b)
            _say(f"bare subprocess {name}: warm-up, {settings.spawns} sequential, burst of {settings.burst}")
            sequential(sink, b.start, settings.warmup, settings.gap_s, f"{name}-warmup-", after=b.reap)
            s = sequential(sink, b.start, settings.spawns, settings.gap_s, f"{name}-seq-", after=b.reap)
            time.sleep(1.0)
            u = burst(sink, b.start, settings.burst, f"{name}-burst-", after=b.reap)
            bare_results[name] = {"sequential": _summary(s), "burst": _summary(u)}
            b.close()

        # --- memory: the daemon after the spawns, a task vs bare sleepers
        time.sleep(settings.settle_s)
        wait_pool_ready(daemon_pid, tasks_dir, pool_size)
        memory["daemon_after_spawns"] = _uss_rss(daemon_pid)
        memory["daemon_target_mib"] = TARGET_DAEMON_USS_MIB
        memory["daemon_target_met"] = max(memory["daemon_after_start"]["uss_mib"],
                                          memory["daemon_after_spawns"]["uss_mib"]) < TARGET_DAEMON_USS_MIB
        hold = str(settings.hold_s)
        task = snipe.spawn(code, sink.endpoint, "mem-task", hold)
        sink.wait(["mem-task"])
        sleepers: dict[str, dict[str, float]] = {}
        try:
            mb = Bare(scripts / "hello_zmq.py", sink.endpoint)
            ms = Bare(scripts / "hello_snipe.py", sink.endpoint)
            bares += [mb, ms]
            mb.start("mem-bare-zmq", hold)
            ms.start("mem-bare-snipe", hold)
            sink.wait(["mem-bare-zmq", "mem-bare-snipe"])
            time.sleep(0.5)
            sleepers["task (snipe+zmq, spawned)"] = _uss_rss(sink.arrived["mem-task"][1])
            sleepers["bare python+zmq"] = _uss_rss(sink.arrived["mem-bare-zmq"][1])
            sleepers["bare python+snipe+zmq"] = _uss_rss(sink.arrived["mem-bare-snipe"][1])
        finally:
            with contextlib.suppress(Exception):
                task.kill()
            for b in bares:
                b.close()
        memory["sleepers"] = sleepers
        t = sleepers["task (snipe+zmq, spawned)"]
        memory["task_extra_vs_bare_zmq"] = {
            "uss_mib": round(t["uss_mib"] - sleepers["bare python+zmq"]["uss_mib"], 2),
            "rss_mib": round(t["rss_mib"] - sleepers["bare python+zmq"]["rss_mib"], 2)}
        memory["task_extra_vs_bare_snipe_zmq"] = {
            "uss_mib": round(t["uss_mib"] - sleepers["bare python+snipe+zmq"]["uss_mib"], 2),
            "rss_mib": round(t["rss_mib"] - sleepers["bare python+snipe+zmq"]["rss_mib"], 2)}
        memory["note"] = ("USS: pages only that process holds (what one more task costs); PSS also counts a share of "
                          "the pages it shares, e.g. with the zygote template it was forked from")

        # --- Ray
        _say("Ray actor creation + first result")
        ray = ray_actor_latency(settings.ray_actors)

        # --- ratios
        p50 = project["sequential"]["p50_ms"]
        ratios: dict[str, Any] = {}
        for name, r in bare_results.items():
            ratios[f"project_vs_bare[{name}]"] = {
                "sequential_p50": round(p50 / r["sequential"]["p50_ms"], 3),
                "sequential_p99": round(project["sequential"]["p99_ms"] / r["sequential"]["p99_ms"], 3),
                "burst_p50": round(project["burst"]["p50_ms"] / r["burst"]["p50_ms"], 3),
                "burst_makespan": round(project["burst"]["makespan_ms"] / r["burst"]["makespan_ms"], 3),
                "target": f"<= {TARGET_RATIO_BARE}x (sequential p50)",
                "met": p50 / r["sequential"]["p50_ms"] <= TARGET_RATIO_BARE}
        if ray.get("available"):
            ratios["ray_vs_project"] = {"p50": round(ray["p50_ms"] / p50, 2), "target": f">= {TARGET_RATIO_RAY}x",
                                        "met": ray["p50_ms"] / p50 >= TARGET_RATIO_RAY}
        else:
            ratios["ray_vs_project"] = {"available": False, "reason": ray.get("reason")}
        result.update({"project": project, "bare": bare_results, "ray": ray, "ratios": ratios, "memory": memory})
        result["summary"] = {
            "project_sequential_p50_ms": p50, "project_sequential_p99_ms": project["sequential"]["p99_ms"],
            "project_burst_makespan_ms": project["burst"]["makespan_ms"],
            **{f"bare[{n}]_sequential_p50_ms": r["sequential"]["p50_ms"] for n, r in bare_results.items()},
            **{f"project/bare[{n}]": ratios[f"project_vs_bare[{n}]"]["sequential_p50"] for n in bare_results},
            "ray/project": ratios["ray_vs_project"].get("p50", "n/a (Ray not installed)"),
            "daemon_uss_mib": memory["daemon_after_spawns"]["uss_mib"],
            "task_uss_beyond_bare_zmq_mib": memory["task_extra_vs_bare_zmq"]["uss_mib"],
            "targets_met": {"project <= 1.0x bare python+zmq": ratios["project_vs_bare[python+zmq]"]["met"],
                            "ray >= 10x project": ratios["ray_vs_project"].get("met"),
                            "daemon USS < 60 MiB": memory["daemon_target_met"]}}
        return result
    finally:
        with contextlib.suppress(Exception):
            snipe.shutdown()
        for b in bares:
            with contextlib.suppress(Exception):
                b.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()
        if sink is not None:
            with contextlib.suppress(Exception):
                sink.close()
        shutil.rmtree(root, ignore_errors=True)


def _table(r: dict[str, Any]) -> str:
    lines = [f"spawn-to-running latency (hello over zmq), {r['cpus']} CPUs, Python {r['python']}, "
             f"warm pool {r['warm_pool']}", ""]
    head = f"{'case':<34}{'n':>5}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'warm':>6}{'makespan':>11}"
    lines += [head, "-" * len(head)]
    rows = [("project sequential", r["project"]["sequential"]), ("project burst", r["project"]["burst"])]
    for name, b in r["bare"].items():
        rows += [(f"bare {name} sequential", b["sequential"]), (f"bare {name} burst", b["burst"])]
    if r["ray"].get("available"):
        rows.append(("ray actor + first result", r["ray"]))
    for name, s in rows:
        mk = f"{s['makespan_ms']:.1f}" if "makespan_ms" in s else ""
        lines.append(f"{name:<34}{s['n']:>5}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['mean_ms']:>10.2f}"
                     f"{s.get('warm', ''):>6}{mk:>11}")
    if not r["ray"].get("available"):
        lines.append(f"ray: not available ({r['ray'].get('reason')})")
    lines += ["", "ratios:"]
    for name, v in r["ratios"].items():
        lines.append(f"  {name}: {json.dumps(v)}")
    m = r["memory"]
    lines += ["", "memory (MiB):",
              f"  daemon USS after start {m['daemon_after_start']['uss_mib']}, after spawns "
              f"{m['daemon_after_spawns']['uss_mib']} (target < {m['daemon_target_mib']}: "
              f"{'met' if m['daemon_target_met'] else 'NOT met'})",
              f"  idle zygote {json.dumps(m['idle_zygote'])}, zygote template {json.dumps(m['zygote_template'])}"]
    for name, v in m["sleepers"].items():
        lines.append(f"  {name}: USS {v['uss_mib']} PSS {v['pss_mib']} RSS {v['rss_mib']}")
    lines.append(f"  task beyond bare python+zmq: {json.dumps(m['task_extra_vs_bare_zmq'])}; "
                 f"beyond bare python+snipe+zmq: {json.dumps(m['task_extra_vs_bare_snipe_zmq'])}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.spawn", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print only the JSON result")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 10 spawns per case")
    ap.add_argument("--spawns", type=int, help="sequential spawns per case (default 100)")
    ap.add_argument("--burst", type=int, help="spawns in the burst case (default 8)")
    ap.add_argument("--gap", type=float, help="seconds between sequential spawns (default 0.5)")
    ap.add_argument("--hosts", type=int, help="daemons in the local cluster (default 1)")
    ap.add_argument("--profile", metavar="DIR", help="py-spy the daemon and cProfile the client (sequential case)")
    args = ap.parse_args(argv)
    settings = Settings.quick() if args.quick else Settings()
    for name, value in (("spawns", args.spawns), ("burst", args.burst), ("gap_s", args.gap),
                        ("hosts", args.hosts), ("profile_dir", args.profile)):
        if value is not None:
            setattr(settings, name, value)
    return run_main(args, lambda: run_benchmark(settings), _table)


if __name__ == "__main__":
    sys.exit(main())
