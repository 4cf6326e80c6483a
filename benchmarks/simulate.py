"""Run the project's real I/O-free cores in the discrete-event simulator, with thousands of hosts.

    python -m benchmarks.simulate                 # readable summary, 10,000 catalog replicas
    python -m benchmarks.simulate --json          # the figures as JSON
    python -m benchmarks.simulate --quick --json  # a run of seconds (tests use it)
    python benchmarks/simulate.py --seed 7 --hosts 2000 --only catalog

Scenarios (benchmarks/sim/): `catalog` (replication and anti-entropy: how long after a partition
heals until every replica holds the same records), `channel` (msg/1 reliable channel over a
lossy, reordering, duplicating network: delivery ratio, exactly-once in order, retransmissions)
`multicast` (router election and delivery with routers failing) and `placement` (placement by
bids, snipe/bidding.py, from thousands of hosts, some dead). Each reports its own wall
and CPU time; the same seed gives the same figures, wall and CPU times aside.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):                     # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.sim import SCENARIOS

TIMING_KEYS = ("wall_s", "setup_wall_s", "cpu_s", "peak_rss_mb")


def simulate(seed: int = 1, quick: bool = False, hosts: int | None = None,
             only: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the chosen scenarios (default: all) and return their figures."""
    names = list(only) if only else list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(unknown)}; the scenarios are {', '.join(SCENARIOS)}")
    t0 = time.perf_counter()
    results = {n: SCENARIOS[n].run(seed, quick, hosts) for n in names}
    return {"seed": seed, "quick": quick, "hosts": hosts, "scenarios": results,
            "total_wall_s": round(time.perf_counter() - t0, 2)}


def without_timings(result: dict[str, Any]) -> dict[str, Any]:
    """The figures that depend only on the seed (what a determinism check compares)."""
    scenarios = {n: {k: v for k, v in figs.items() if k not in TIMING_KEYS}
                 for n, figs in result["scenarios"].items()}
    return {k: v for k, v in result.items() if k != "total_wall_s"} | {"scenarios": scenarios}


def format_summary(res: dict[str, Any]) -> str:
    lines = [f"simulation, seed {res['seed']}{' (quick)' if res['quick'] else ''}"]
    sc = res["scenarios"]
    if "catalog" in sc:
        c = sc["catalog"]
        lines.append(
            f"  catalog: {c['replicas']} replicas ({c['peers_per_replica']} peers each), "
            f"{c['partitioned_replicas']} partitioned for {c['partition_s'][1] - c['partition_s'][0]:g} s, "
            f"{c['crashed_replicas']} crashed, {c['records_written_during_partition']} records written meanwhile")
        lines.append(
            f"    converged: {c['converged']} in {c['convergence_s']} s after the heal "
            f"({c['convergence_rounds']} anti-entropy rounds); {c['messages']} messages, "
            f"{c['bytes'] / 1e6:.1f} MB ({c['messages_after_heal']} messages, "
            f"{c['bytes_after_heal'] / 1e6:.1f} MB after the heal)")
        lines.append(f"    wall {c['wall_s']} s (setup {c['setup_wall_s']} s), cpu {c['cpu_s']} s, "
                     f"peak RSS {c['peak_rss_mb']} MB, {c['events']} events")
    if "channel" in sc:
        c = sc["channel"]
        lines.append(
            f"  channel: {c['pairs']} pairs x {c['messages_per_pair']} messages, loss {c['loss']}, "
            f"duplicate {c['duplicate']}, {c['cut_pairs']} links cut for {c['cut_s'][1] - c['cut_s'][0]:g} s")
        lines.append(
            f"    delivery ratio {c['delivery_ratio']}, exactly once in order: {c['exactly_once_in_order']}, "
            f"failures {c['delivery_failures']}, retransmissions {c['retransmissions']}, "
            f"duplicates suppressed {c['duplicates_suppressed']}, all acknowledged at {c['completion_s']} s")
        lines.append(f"    wall {c['wall_s']} s, cpu {c['cpu_s']} s, {c['events']} events")
    for name in [n for n in sc if n not in ("catalog", "channel")]:     # no summary of their own
        figs = sc[name]
        if figs.get("simulated") is False:
            lines.append(f"  {name}: not simulated: {figs.get('reason')}")
        else:
            scalars = ", ".join(f"{k} {v}" for k, v in figs.items() if isinstance(v, int | float | str | bool))
            lines.append(f"  {name}: {scalars}")
    lines.append(f"  total wall {res['total_wall_s']} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulate", description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--quick", action="store_true", help="small worlds: a run of seconds")
    ap.add_argument("--seed", type=int, default=1, help="the seed every random draw derives from (default 1)")
    ap.add_argument("--hosts", type=int, help="virtual hosts per scenario (catalog replicas; channel: "
                                              "hosts/2 pairs); default 10,000 replicas and 1,000 pairs")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(SCENARIOS)}")
    args = ap.parse_args(argv)
    res = simulate(args.seed, args.quick, args.hosts, args.only.split(",") if args.only else None)
    print(json.dumps(res, indent=2) if args.json else format_summary(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
