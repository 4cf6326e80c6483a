"""The main job (`bin/dev demo`): a local catalog cluster doing real work, start to finish.

It starts three rcds-server replicas on loopback, admits a user key, has three "hosts" publish
leased metadata, finds hosts by attributes, follows changes with a watch, kills a replica
with SIGKILL while writes continue, restarts it and shows that it converges, then stops every
process. Prints a readable report, or JSON with --json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from snipe.identity import Identity
from snipe.localcluster import LocalCatalog


def now_ms() -> int:
    return int(time.time() * 1000)


def run(writes: int, console: Console | None) -> dict[str, Any]:
    def say(text: str) -> None:
        if console is not None:
            console.print(text)

    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="snipe-demo-") as root, LocalCatalog(root, 3) as cat:
        say(f"started 3 replicas: {', '.join(r.endpoint for r in cat.replicas)}")
        hosts = {f"node{i}": Identity.generate() for i in range(3)}
        for name, ident in hosts.items():
            cat.admit(ident, name, kind="host")
        say("admin admitted 3 host keys")
        specs = {"node0": ("x86_64", 16), "node1": ("aarch64", 32), "node2": ("x86_64", 4)}
        for name, ident in hosts.items():
            arch, gib = specs[name]
            with cat.client(ident) as c:
                c.set_many(f"urn:snipe:host:{name}", {"arch": arch, "memory": gib << 30, "cpus": 2}, ttl=30)
        with cat.client() as reader:
            found = reader.query("urn:snipe:host:", [("arch", "=", "x86_64"), ("memory", ">=", 8 << 30)])
            report["query"] = {"where": "arch=x86_64 and memory>=8GiB", "hosts": list(found)}
            say(f"hosts with arch=x86_64 and memory >= 8 GiB: {', '.join(found)}")

            user = Identity.generate()
            cat.admit(user, "demo")
            watch = reader.watch("urn:snipe:proc:")
            with cat.client(user) as writer:
                writer.claim("urn:snipe:proc:counter")
                acked = []
                for i in range(writes):
                    if i == writes // 3:
                        cat.kill(1)
                        say("killed replica r2 with SIGKILL; writes go on with W=2")
                    writer.set("urn:snipe:proc:counter", "count", i, w=2)
                    acked.append(time.monotonic())
                gap = max(b - a for a, b in itertools.pairwise(acked))
                seen = 0
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    ev = watch.next(0.2)
                    if ev is None:
                        break
                    seen += 1
                report["writes"] = {"acknowledged": len(acked), "longest_gap_ms": round(gap * 1000, 1),
                                    "watch_events": seen}
                say(f"{len(acked)} writes acknowledged; longest gap {gap * 1000:.1f} ms; watcher saw {seen} events")
                cat.start(1)
                target = reader.status(cat.replicas[0].endpoint)["digest"]
                t0 = time.monotonic()
                while reader.status(cat.replicas[1].endpoint)["digest"] != target and time.monotonic() - t0 < 30:
                    time.sleep(0.05)
                report["restart"] = {"converged_s": round(time.monotonic() - t0, 3)}
                say(f"restarted r2; it converged in {time.monotonic() - t0:.2f} s")
            rows = [reader.status(r.endpoint) for r in cat.replicas]
            report["replicas"] = [{k: s[k] for k in ("replica", "rev", "count", "pushed", "received", "repaired")}
                                  for s in rows]
            final = reader.get("urn:snipe:proc:counter").value("count", now_ms())
            report["final_count"] = final
    if console is not None:
        t = Table(title="replicas")
        for col in ("replica", "rev", "count", "pushed", "received", "repaired"):
            t.add_column(col, justify="right" if col != "replica" else "left")
        for r in report["replicas"]:
            t.add_row(*(str(r[c]) for c in ("replica", "rev", "count", "pushed", "received", "repaired")))
        console.print(t)
        console.print(f"final value of count: {report['final_count']} (expected {writes - 1}); all processes stopped")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="snipe-demo", description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--writes", type=int, default=300)
    args = ap.parse_args(argv)
    report = run(args.writes, None if args.json else Console())
    if args.json:
        print(json.dumps(report, indent=2))
    return 0 if report["final_count"] == args.writes - 1 else 1


if __name__ == "__main__":
    sys.exit(main())
