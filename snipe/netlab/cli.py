"""`snipe-netlab`: several SNIPE hosts on this machine as network namespaces, by hand.

    snipe-netlab up [--hosts N] [--far] [--no-services] [--lease S]   build a lab; prints its run id
    snipe-netlab status [--run RID]                           runs, or one run's hosts, processes, faults
    snipe-netlab exec HOST CMD [ARG...]                       run CMD inside HOST, joined to the lab's cluster
    snipe-netlab fault loss HOST NET PCT | delay HOST NET MS [--jitter MS] | rate HOST NET MBIT
                       | cut HOST NET [--side host|switch] | partition HOST [HOST...]
                       | kill replica|daemon HOST | restart replica|daemon HOST
                       | heal FAULT|all | list
    snipe-netlab down [--run RID] [--keep-logs]               remove everything the run made
    snipe-netlab cleanup --all-stale [--everything]           remove what dead runs left behind

Needs root. With one run up, --run may be left out. Every command takes --json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from typing import Any

from snipe.netlab.lab import Lab, LabError, cleanup_stale, list_runs, why_not
from snipe.netlab.sh import ToolError, which
from snipe.netlab.topology import default_topology, simple_topology


def _print(args: argparse.Namespace, value: Any, text: str | None = None) -> None:
    if args.json:
        print(json.dumps(value, indent=1, default=str))
    else:
        print(text if text is not None else json.dumps(value, indent=1, default=str))


def _status_text(st: dict[str, Any]) -> str:
    lines = [f"run {st['run']}: {st['status']}  (folder {st['dir']}; netem: {'yes' if st.get('netem') else 'no'})"]
    r = st.get("route")
    if r:
        lines.append(f"root namespace: unreachable {r['prefix']} metric {r['metric']}")
    for h, addrs in st["hosts"].items():
        lines.append(f"  {h:<6} snl-{st['run']}-{h:<6} " + "  ".join(f"{n}={a}" for n, a in addrs.items()))
    for n, p in st["processes"].items():
        lines.append(f"  {n:<22} pid {p['pid']:<8} {'running' if p['alive'] else 'stopped'}")
    lines += [f"  {line}" for line in _fault_lines(st["faults"])]
    return "\n".join(lines)


def _fault_lines(faults: dict[str, dict[str, Any]]) -> list[str]:
    """One line a fault, for people: `fault f1: loss host=h1 net=lan percent=20 direction=both`."""
    return [f"fault {fid}: {f.get('kind')} " + " ".join(f"{k}={v}" for k, v in f.items() if k not in ("kind", "at"))
            for fid, f in faults.items()]


def cmd_up(args: argparse.Namespace) -> int:
    topo = simple_topology(args.hosts, lease_s=args.lease) if args.hosts else \
        default_topology(lease_s=args.lease, far=args.far)
    lab = Lab(topo, run_id=args.run, detached=True, log_level=args.log_level)
    lab.up(services=not args.no_services)
    st = lab.status()
    _print(args, {**st, "describe": lab.describe()},
           _status_text(st) + f"\n\nnext: snipe-netlab exec {lab.client_host} snipe-console hosts"
                              f"\n      snipe-netlab down --run {lab.rid}")
    return 0


def cmd_down(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.run)
    report = lab.down(keep_logs=args.keep_logs)
    _print(args, report, f"run {report['run']}: removed {len(report.get('namespaces', []))} namespaces, "
                         f"{report.get('processes', 0)} processes, route: {report.get('route')}"
                         + (f"; logs kept in {report['logs']}" if report.get("logs") else ""))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.run is None:
        runs = [{"run": s["rid"], "status": s.get("status"), "detached": s.get("detached"),
                 "hosts": [h["name"] for h in s["topology"]["hosts"]]} for s in list_runs()]
        if len(runs) != 1:
            _print(args, runs, "\n".join(f"{r['run']}  {r['status']}  hosts: {' '.join(r['hosts'])}" for r in runs)
                   or "no runs")
            return 0
        args.run = runs[0]["run"]
    st = Lab.attach(args.run).status()
    _print(args, st, _status_text(st))
    return 0


def cmd_exec(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.run)
    if not args.cmd:
        raise LabError("exec needs a command")
    env = lab.client_env(args.host)
    r = subprocess.run(["ip", "netns", "exec", lab.ns(args.host), *args.cmd], env=env, timeout=args.timeout,
                       executable=which("ip"), check=False)
    return r.returncode


def cmd_fault(args: argparse.Namespace) -> int:
    lab = Lab.attach(args.run)
    a, out = args.fault_args, None
    kind = args.kind

    def need(n: int, usage: str) -> None:
        if len(a) < n:
            raise LabError(f"usage: snipe-netlab fault {kind} {usage}")

    if kind == "list":
        faults = lab.faults()
        _print(args, faults, "\n".join(_fault_lines(faults)) or "no faults")
        return 0
    if kind == "loss":
        need(3, "HOST NET PERCENT")
        out = {"fault": lab.loss(a[0], a[1], float(a[2]), args.direction)}
    elif kind == "delay":
        need(3, "HOST NET MS [--jitter MS]")
        out = {"fault": lab.delay(a[0], a[1], float(a[2]), args.jitter)}
    elif kind == "rate":
        need(3, "HOST NET MBIT")
        out = {"fault": lab.rate(a[0], a[1], float(a[2]))}
    elif kind == "cut":
        need(2, "HOST NET [--side host|switch]")
        out = {"fault": lab.cut(a[0], a[1], args.side)}
    elif kind == "partition":
        need(1, "HOST [HOST...]")
        out = {"fault": lab.partition(a)}
    elif kind in ("kill", "restart"):
        need(2, "replica|daemon HOST")
        name = f"{a[0]}@{a[1]}"
        out = lab.kill(name) if kind == "kill" else lab.restart(name)
    elif kind == "heal":
        need(1, "FAULT|all")
        if a[0] == "all":
            lab.heal_all()
        else:
            lab.heal(a[0])
        out = {"healed": a[0]}
    _print(args, out, " ".join(f"{k}: {v}" for k, v in (out or {}).items()))
    return 0


def cmd_cleanup(args: argparse.Namespace) -> int:
    if not (args.all_stale or args.everything):
        raise LabError("say what to clean up: --all-stale (runs whose owner is gone) or --everything")
    report = cleanup_stale(everything=args.everything)
    _print(args, report, f"removed runs {report['runs'] or 'none'}; namespaces {len(report['namespaces'])}; "
                         f"routes {report['routes'] or 'none'}")
    return 0


def parser() -> argparse.ArgumentParser:
    # The docstring's first line is the description; the rest (the commands' usage) is the epilog,
    # so --help says each once.
    summary, _, usage = __doc__.partition("\n")
    ap = argparse.ArgumentParser(prog="snipe-netlab", description=summary,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=usage.strip("\n"))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON")
    common.add_argument("--run", help="run id (default: the only run that is up)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("up", parents=[common], help="build a lab and start its services")
    p.add_argument("--hosts", type=int, help="N plain hosts h1..hN (+ctl) instead of the default topology")
    p.add_argument("--no-services", action="store_true", help="only the network")
    p.add_argument("--far", action="store_true",
                   help="also run a daemon on far (it reaches the catalog through port forwards on gw, and "
                        "other hosts' processes through gw's relay)")
    p.add_argument("--lease", type=float, default=5.0, help="daemons' host lease in seconds (default 5)")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=cmd_up)
    p = sub.add_parser("down", parents=[common], help="remove a run")
    p.add_argument("--keep-logs", action="store_true")
    p.set_defaults(func=cmd_down)
    p = sub.add_parser("status", parents=[common], help="runs, or one run")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("exec", parents=[common], help="run a command inside a host")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("host")
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_exec)
    p = sub.add_parser("fault", parents=[common], help="inject or heal a fault")
    p.add_argument("kind", choices=["loss", "delay", "rate", "cut", "partition", "kill", "restart", "heal", "list"])
    p.add_argument("fault_args", nargs="*")
    p.add_argument("--direction", default="both", choices=["both", "in", "out"])
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--side", default="host", choices=["host", "switch"])
    p.set_defaults(func=cmd_fault)
    p = sub.add_parser("cleanup", parents=[common], help="remove leftovers of dead runs")
    p.add_argument("--all-stale", action="store_true")
    p.add_argument("--everything", action="store_true", help="also runs that are still up")
    p.set_defaults(func=cmd_cleanup)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.cmd != "status" or args.run:
        reason = why_not()
        if reason:
            print(f"snipe-netlab: {reason}", file=sys.stderr)
            return 2
    try:
        return int(args.func(args))
    except (LabError, ToolError, ValueError, KeyError) as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": str(exc)}))
        else:
            print(f"snipe-netlab: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
