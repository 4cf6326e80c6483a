"""The main job (`bin/dev demo`): a fresh local cluster doing real work, then a clean stop.

It starts 3 catalog replicas and 3 host daemons (each host on its own loopback address),
publishes a worker as mobile code, spawns 12 workers that the placement spreads over the hosts,
kills one replica with SIGKILL while they run, collects every worker's result from the
catalog, checks the total against a local computation, and stops every process it started.
The work: counting the primes below 2,000,000, in 12 slices (--limit and --workers make it
smaller). With --json the report (or, when the demo could not run, {"ok": false, "error": message,
"kind"}) is printed as JSON. Exit status: 0 the total matches, 1 it does not, 2 the demo failed,
130 interrupted (Ctrl-C; every process it started is stopped first, and the count said).
"""

from __future__ import annotations

from snipe import interrupts

if __name__ == "__main__":
    # Run as the program: a Ctrl-C while the rest is imported waits for main(), which says it
    # was interrupted as at any later moment (one while the snipe package was imported, before
    # this module, has ended the program quietly: snipe/__init__.py).
    interrupts.hold()

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import snipe
from snipe.errors import ConfigError, SnipeError
from snipe.localcluster import LocalCluster

WORKER = '''\
"""Count the primes in [lo, hi) and publish the count on this task's own URN."""
import sys, time
import snipe

lo, hi = int(sys.argv[1]), int(sys.argv[2])
started = time.perf_counter()
sieve = bytearray([1]) * (hi - lo)
p = 2
while p * p < hi:
    start = max(p * p, (lo + p - 1) // p * p)
    sieve[start - lo:hi - lo:p] = bytes(len(range(start, hi, p)))
    p += 1
count = sum(sieve[max(0, 2 - lo):])
snipe.init()
snipe.catalog().set_many(snipe.me(), {"result": count, "seconds": round(time.perf_counter() - started, 4)})
'''


def primes_below(n: int) -> int:
    sieve = bytearray([1]) * n
    sieve[:2] = b"\x00\x00"
    for p in range(2, int(n ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, n, p)))
    return sum(sieve)


def _running(pid: int) -> bool:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    return False


class DemoInterrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) while the demo ran; every process it had started is stopped by then."""

    def __init__(self, stopped: int) -> None:
        super().__init__(f"interrupted; stopped {stopped} process(es)")
        self.stopped = stopped


def run(limit: int, workers: int, console: Console | None, parent: str | None = None) -> dict[str, Any]:
    """Raises DemoInterrupted, after stopping the cluster, if interrupted."""
    quiet = console is None
    con = console or Console(quiet=True)
    report: dict[str, Any] = {"limit": limit, "workers": workers}
    try:
        folder = tempfile.TemporaryDirectory(prefix="snipe-demo-", dir=parent)
    except OSError as exc:
        raise ConfigError(f"cannot make the demo's cluster folder in {parent or tempfile.gettempdir()}: "
                          f"{exc.strerror or exc}; pass --dir a writable folder") from None
    with folder as root:
        report["dir"] = root
        cluster = LocalCluster(Path(root) / "cluster", replicas=3, hosts=3, lease_s=5.0)
        try:
            t0 = time.perf_counter()
            with con.status("starting 3 replicas and 3 daemons…", spinner="dots"):
                cluster.start()
            report["startup_s"] = round(time.perf_counter() - t0, 3)
            # what "every process stopped" below is checked against
            report["pids"] = [r.proc.pid for r in [*cluster.catalog.replicas, *cluster.daemons] if r.proc]
            con.print(f"cluster up in {report['startup_s']} s: 3 replicas, hosts "
                      + ", ".join(d.endpoint for d in cluster.daemons))
            snipe.init(catalog=cluster.catalog.addresses, identity=cluster.user, admin_key=cluster.admin.key_id,
                       daemon=cluster.daemons[0].address)
            script = Path(root) / "primes.py"
            script.write_text(WORKER)
            code = snipe.publish(script)
            con.print(f"published the worker as {code[:40]}…")

            bounds = [limit * i // workers for i in range(workers + 1)]
            t1 = time.perf_counter()
            procs = []
            # Each spawn returns once its host's daemon has registered the task, so a loaded cluster
            # paces this loop: many workers take longer to start, and the bar shows how far it got.
            spawning = Progress(TextColumn("spawning"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=con, disable=quiet)
            with spawning:
                bar = spawning.add_task("spawn", total=workers)
                for i in range(workers):
                    procs.append(snipe.spawn(code, bounds[i], bounds[i + 1]))
                    spawning.advance(bar)
            report["spawn_s"] = round(time.perf_counter() - t1, 3)
            cluster.catalog.kill(1)
            con.print(f"spawned {workers} workers in {report['spawn_s']} s; killed replica r2 with SIGKILL")

            rows = []
            progress = Progress(TextColumn("collecting"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                                TimeElapsedColumn(), console=con, disable=quiet)
            with progress:
                bar = progress.add_task("collect", total=workers)
                for i, p in enumerate(procs):
                    done = p.wait(120)
                    info = p.info()
                    rows.append({"urn": p.urn, "host": str(p.host).rsplit(":", 1)[-1], "lo": bounds[i],
                                 "hi": bounds[i + 1], "state": done["state"], "exit_code": done["exit_code"],
                                 "primes": info.get("result"), "seconds": info.get("seconds")})
                    progress.advance(bar)
            report["wall_s"] = round(time.perf_counter() - t1, 3)
            report["workers_by_host"] = {h: sum(1 for r in rows if r["host"] == h) for h in sorted({r["host"]
                                                                                                    for r in rows})}
            report["rows"] = rows
            report["total"] = sum(r["primes"] or 0 for r in rows)
            report["expected"] = primes_below(limit)
        except KeyboardInterrupt:
            interrupted = True
        else:
            interrupted = False
        finally:
            started = [p for p in [*cluster.catalog.replicas, *cluster.daemons] if p.proc and p.proc.poll() is None]
            snipe.shutdown()
            with con.status("stopping every process…", spinner="dots"):
                cluster.close()
        if interrupted:
            raise DemoInterrupted(len(started))
    report["left_running"] = [pid for pid in report["pids"] if _running(pid)]
    report["ok"] = (report["total"] == report["expected"] and all(r["exit_code"] == 0 for r in rows)
                    and not report["left_running"])
    if console is not None:
        t = Table(title=f"primes below {limit:,} counted by {workers} tasks", title_justify="left")
        for col in ("task", "host", "range", "primes", "seconds"):
            t.add_column(col, justify="left" if col in ("task", "host", "range") else "right")
        for r in rows:
            t.add_row(r["urn"].rsplit(":", 1)[1][:12], r["host"], f"[{r['lo']:,}, {r['hi']:,})",
                      f"{r['primes']:,}" if r["primes"] is not None else "-", str(r["seconds"]))
        console.print(t)
        console.print(f"tasks per host: {report['workers_by_host']}")
        verdict = "[green]matches[/green]" if report["ok"] else "[red]DOES NOT match[/red]"
        stopped = ("every process stopped" if not report["left_running"]
                   else f"[red]still running: {report['left_running']}[/red]")
        console.print(f"total {report['total']:,} {verdict} the local count {report['expected']:,}; "
                      f"{report['wall_s']} s from first spawn to last result; {stopped}")
    return report


EXIT_INTERRUPTED = 130


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, not {text!r}")
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="snipe-demo", description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--limit", type=_positive, default=2_000_000, help="count primes below this")
    ap.add_argument("--workers", type=_positive, default=12, help="tasks to split the count among")
    ap.add_argument("--dir", help="folder to make the demo's temporary cluster folder in (default: the "
                                  "system's temporary folder); removed when the demo ends")
    args = ap.parse_args(argv)
    try:
        interrupts.release()        # a Ctrl-C held while the program started: taken here like any other,
        interrupts.unblock()        # and one its launcher kept pending since before Python started
        report = run(args.limit, args.workers, None if args.json else Console(), args.dir)
    except KeyboardInterrupt as exc:
        # Ctrl-C: the cluster is already stopped (run's finally); say so, exit 130 as a shell does.
        # Before the cluster was started there was nothing to stop.
        text = str(exc if isinstance(exc, DemoInterrupted) else DemoInterrupted(0))
        if args.json:
            print(json.dumps({"ok": False, "error": text, "kind": "interrupted"}))
        else:
            print(f"snipe-demo: {text}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (SnipeError, OSError) as exc:
        # the cluster is already stopped (run's finally); say what failed instead of a traceback
        kind = exc.code if isinstance(exc, SnipeError) else "os-error"
        if args.json:       # the shape snipe-console's errors have, plus "ok" as in a report
            print(json.dumps({"ok": False, "error": str(exc), "kind": kind}))
        else:
            # plain print, not rich: a message may hold [brackets] rich would take for markup
            print(f"snipe-demo: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
