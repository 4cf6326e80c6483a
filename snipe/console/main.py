"""`snipe-console`: look at and steer a SNIPE cluster from a terminal.

Every command prints aligned tables for people, or JSON with --json. It joins the cluster the
way any application does (`snipe.init()`: a task's environment, SNIPE_CATALOG/SNIPE_CONFIG, or
the embedded local cluster).

Exit codes: 0 done; 1 an error (or `drain` left tasks behind); 2 a command line that does not
parse; 3 `events --timeout` ran out before the task ended; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import math
import signal as signals
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn

from rich.console import Console
from rich.table import Table

import snipe
from snipe import authority
from snipe.catalog.client import CatalogClient
from snipe.catalog.entry import Entry
from snipe.daemonclient import DaemonClient
from snipe.errors import ConfigError, NotFound, SignatureError, SnipeError
from snipe.identity import Identity, public_key_from_id
from snipe.multicast.groups import live_members, live_routers
from snipe.runtime import (
    Process,
    cluster_status,
    now_ms,
    runtime_home,
    session,
    start_embedded,
    stop_embedded_report,
)
from snipe.urn import validate_urn

# Piped output is read by scripts and greps: keep each row on one line.
out = Console(width=None if sys.stdout.isatty() else 250)


def _age(start_ms: Any) -> str:
    if not isinstance(start_ms, int):
        return "-"
    s = max(0, (now_ms() - start_ms) // 1000)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _load(v: Any) -> str:
    """A host's load average as people read it: two decimals."""
    return f"{v:.2f}" if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) else "-"


def _as_number(v: Any) -> float:
    """A count or amount from a record: a finite number >= 0, else 0."""
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 else 0.0


def table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    t = Table(title=title, title_justify="left", show_edge=False, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, overflow="fold", no_wrap=i == 0)
    for r in rows:
        t.add_row(*("-" if v is None else str(v) for v in r))
    out.print(t)


def finite(data: Any) -> Any:
    """`data` with every NaN or infinity made None: records tasks write reach this output, and
    JSON has no such numbers (a reader's parser, a browser's among them, refuses the text)."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def to_json(data: Any, indent: int | None = None) -> str:
    """The console's JSON: bytes and other odd values as text, no NaN or infinity."""
    return json.dumps(finite(data), indent=indent, default=str, allow_nan=False)


def emit(args: argparse.Namespace, data: Any, human: Callable[[], None]) -> None:
    if args.json:
        print(to_json(data, indent=2))
    else:
        human()


# --- commands --------------------------------------------------------------------------------------
def cmd_hosts(args: argparse.Namespace) -> int:
    hosts = snipe.hosts()
    rows = [[u.rsplit(":", 1)[1], h.get("arch"), h.get("cpus"), _bytes(h.get("memory")), _load(h.get("load")),
             h.get("tasks"), "draining" if h.get("draining") else "ok", h.get("daemon", "").split("#")[0]]
            for u, h in sorted(hosts.items())]
    emit(args, hosts, lambda: table(f"{len(hosts)} live host(s)",
                                    ["host", "arch", "cpus", "memory", "load", "tasks", "state", "daemon"], rows))
    return 0


PS_WORKERS = 16        # hosts `ps` asks at once: a silent host costs one --timeout, not one each


def _host_tasks(address: str, identity: Identity, timeout: float) -> list[dict[str, Any]]:
    """One host's tasks, asked on a daemon client of its own: a DaemonClient (a zmq socket) is
    one thread's, so the session's shared clients are not used from the pool."""
    with DaemonClient(address, identity) as d:
        reply, _ = d.call("ps", timeout=timeout)
    return list(reply["tasks"])


def _last_seq(row: dict[str, Any]) -> int:
    events = row.get("events")
    last = events[-1] if isinstance(events, list) and events and isinstance(events[-1], dict) else {}
    return last["seq"] if isinstance(last.get("seq"), int) else 0


def one_row_per_task(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The hosts' task lists with one row per task where a migration has two hosts list it:
    - the original of a migration under way (its host says `migrating_to`) and the clone on the
      target (which says `clone_from` until it takes over, and runs there as the task from then
      until the original's host hears the move is done): one row, the original's, in its own
      state (running, suspended: the move does not change it), with `migrating: {from, to}`;
    - a clone whose original no host listed (its host did not answer): its row, in the clone's
      state, with `migrating` likewise and the host it comes from as `host`;
    - an original that moved away ("migrated"): left out where a host lists the task as anything
      else, else the latest of them is kept.
    Other rows of one URN (the copies of a task in mode "all") are each a process, and stay. The
    rows keep their order."""
    by_urn: dict[Any, list[dict[str, Any]]] = {}
    for r in rows:
        by_urn.setdefault(r.get("urn"), []).append(r)
    out: list[dict[str, Any]] = []
    for r in rows:
        same = by_urn[r.get("urn")]
        original = next((o for o in same if o is not r and o.get("migrating_to") == r.get("host")), None)
        if r.get("migrating_to"):
            out.append({**r, "migrating": {"from": r.get("host"), "to": r["migrating_to"]}})
        elif original is not None:      # the clone, or the task on the target once the clone took over
            continue
        elif "clone_from" in r:
            out.append({**r, "host": r["clone_from"] or r.get("host"),
                        "migrating": {"from": r["clone_from"], "to": r.get("host")}})
        elif r.get("state") == "migrated":
            moved = [o for o in same if o.get("state") == "migrated"]
            if len(moved) == len(same) and max(moved, key=_last_seq) is r:
                out.append(r)
        else:
            out.append(r)
    return out


def _all_tasks(timeout: float, catalog: CatalogClient | None = None
               ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Every live host's tasks, one row per task (`one_row_per_task`), and the hosts whose daemon
    did not list them ({host, reason}). The hosts are asked concurrently; both lists keep the
    hosts' sorted order. `catalog`: the calling thread's own client, if it is not the session's
    thread (a client is one thread's)."""
    s = session()
    hosts = sorted(snipe.hosts(catalog=catalog).items())
    tasks: list[dict[str, Any]] = []
    unreachable: list[dict[str, Any]] = []
    if not hosts:
        return tasks, unreachable
    with ThreadPoolExecutor(max_workers=min(PS_WORKERS, len(hosts)), thread_name_prefix="snipe-console-ps") as pool:
        asked = [(urn, pool.submit(_host_tasks, str(h.get("daemon")), s.identity, timeout)) for urn, h in hosts]
        for urn, answer in asked:
            try:
                tasks.extend(answer.result())
            except SnipeError as exc:
                unreachable.append({"host": urn, "reason": str(exc)})
            except Exception as exc:    # e.g. a daemon address ZeroMQ cannot parse: that host's, not ps's
                unreachable.append({"host": urn, "reason": f"{type(exc).__name__}: {exc}"})
    return one_row_per_task(tasks), unreachable


def _migration(task: dict[str, Any]) -> dict[str, Any] | None:
    """A task row's migration under way ({from, to}), if it has one."""
    moving = task.get("migrating")
    return moving if isinstance(moving, dict) else None


def _where(task: dict[str, Any]) -> str:
    """A task's host as `ps` shows it: `h1 → h2` while it migrates."""
    moving = _migration(task)
    return f"{_host(moving.get('from'))} → {_host(moving.get('to'))}" if moving else _host(task.get("host"))


def _state_shown(task: dict[str, Any]) -> str:
    """A task's state as `ps` shows it: its own, and `migrating` while it moves."""
    return f"{task.get('state')}, migrating" if _migration(task) else str(task.get("state"))


def cmd_ps(args: argparse.Namespace) -> int:
    found, unreachable = _all_tasks(args.timeout)
    tasks = [t for t in found if args.all or t.get("state") in ("running", "suspended") or _migration(t)]
    # A host that does not answer is reported whatever the filter, never left out: its tasks may
    # be running. Like `kubectl get pods` with a node NotReady, the listing of the hosts that did
    # answer still stands, so exit 0 (scripts and `watch` keep working) but say which hosts are
    # missing, on stderr and as rows: {"urn": null, "host", "state": "unreachable", "unreachable":
    # reason}. Rows rather than a wrapping object keep `ps --json` a list of tasks, as scripts read it.
    missing = [{"urn": None, "host": u["host"], "state": "unreachable", "unreachable": u["reason"]}
               for u in unreachable]
    for u in unreachable:
        print(f"snipe-console: warning: {_host(u['host'])} did not list its tasks (they may be running): "
              f"{u['reason']}", file=sys.stderr)
    rows = [[t["urn"], _where(t), _state_shown(t),
             f"{t['cpu_seconds']:.2f}s" if isinstance(t.get("cpu_seconds"), float) else "-",
             _bytes(t.get("rss_bytes")), f"{t['age_s']:.0f}s" if isinstance(t.get("age_s"), float) else "-"]
            for t in tasks + missing]
    title = f"{len(tasks)} task(s)" + (f"; {len(missing)} host(s) unreachable, their tasks unknown" if missing else "")
    emit(args, tasks + missing, lambda: table(title, ["urn", "host", "state", "cpu", "memory", "age"], rows))
    return 0


ROUTER_COUNTS = ("relayed", "delivered", "duplicates", "replayed", "history")


def group_view(entry: Any, now: int) -> dict[str, Any]:
    """A multicast group's live members and routers, with each router's published counters."""
    members = live_members(entry, now)
    routers = live_routers(entry, now)
    served = {r: sum(1 for m in members.values() if r in m.get("routers", [])) for r in routers}
    return {
        "members": [{"member": u, "host": v.get("host") or None, "routers": v.get("routers", []),
                     } for u, v in sorted(members.items())],
        "routers": [{"router": r, "daemon": v.get("daemon"), "members_served": served[r],
                     **{k: v.get(k) for k in (*ROUTER_COUNTS, "history_bytes", "batches")}}
                    for r, v in sorted(routers.items())],
    }


def _host(urn: Any) -> str:
    return str(urn).rsplit(":", 1)[-1] if urn else "-"


def groups_data(catalog: CatalogClient | None = None) -> list[dict[str, Any]]:
    """Every multicast group: its member count, routers and the most any router relayed."""
    now = now_ms()
    groups = []
    for urn, entry in (catalog or session().catalog).query("urn:snipe:group:").items():
        v = group_view(entry, now)
        groups.append({"group": urn, "members": len(v["members"]), "routers": [r["router"] for r in v["routers"]],
                       "relayed": int(max((_as_number(r["relayed"]) for r in v["routers"]), default=0))})
    return groups


def cmd_groups(args: argparse.Namespace) -> int:
    groups = groups_data()
    rows = [[g["group"], g["members"], ", ".join(_host(r) for r in g["routers"]) or "-", g["relayed"]] for g in groups]
    emit(args, groups, lambda: table(f"{len(groups)} multicast group(s)",
                                     ["group", "members", "routers", "messages relayed (most by a router)"], rows))
    return 0


def show_data(text: str, catalog: CatalogClient | None = None) -> tuple[dict[str, Any], Any]:
    """Every verified assertion about the URN `text` (a group's members and routers too), and
    its catalog entry. Raises the URN's own error when `text` is not one."""
    s = session()
    c = catalog or s.catalog
    urn = validate_urn(text)
    rejected_before = c.rejected_total
    entry = c.get(urn)
    fresh = min(c.rejected_total - rejected_before, len(c.rejected))     # this read's
    now = now_ms()
    records = [{"name": a.name, "value": a.value, "writer": a.signer.hex(), "ts": a.ts, "ttl_ms": a.ttl_ms,
                "live": a.is_live(now), "deleted": a.deleted,
                "expires_in_s": round((a.expires_at_ms - now) / 1000, 1) if a.expires_at_ms else None}
               for a in entry.records]
    data = {"urn": urn, "owner": entry.owner(s.admin_key, now), "verified": True, "records": records,
            "rejected": [r.reason for r in list(c.rejected)[len(c.rejected) - fresh:]]}
    if urn.startswith("urn:snipe:group:"):
        data["group"] = group_view(entry, now)
    return data, entry


def cmd_show(args: argparse.Namespace) -> int:
    data, entry = show_data(args.urn)
    if not data["records"] and not data["rejected"]:
        # an empty table and exit 0 read as "there is such a thing, with nothing on it"
        raise NotFound(f"nothing is known about {data['urn']}: no replica holds a record of it "
                       "(mistyped, never written, or every record has long expired)")
    urn, owner, records, group, now = data["urn"], data["owner"], data["records"], data.get("group"), now_ms()

    def human() -> None:
        out.print(f"[bold]{urn}[/bold]  owner {owner[:16] + '…' if owner else '-'}  "
                  f"(every record's signature verified; {len(data['rejected'])} rejected)")
        if group is not None:
            table(f"{len(group['members'])} member(s)", ["member", "host", "routers (each delivers)"],
                  [[m["member"], _host(m["host"]), ", ".join(_host(r) for r in m["routers"]) or "-"]
                   for m in group["members"]])
            table(f"{len(group['routers'])} router(s), counts since each router started",
                  ["router", "members served", "relayed", "delivered", "duplicates dropped", "replayed",
                   "history", "history bytes"],
                  [[_host(r["router"]), r["members_served"], *(r[k] for k in ROUTER_COUNTS), _bytes(r["history_bytes"])]
                   for r in group["routers"]])
            return
        rows = [[r["name"], _short(r["value"]), r["writer"][:12] + "…",
                 "live" if r["live"] else ("deleted" if r["deleted"] else "expired"),
                 f"{r['expires_in_s']}s" if r["expires_in_s"] is not None else ""] for r in records]
        table("", ["name", "value", "writer", "state", "lease"], rows)
        stats = entry.value("msg_stats", now)
        if isinstance(stats, dict) and stats:
            table("messaging, per peer", ["peer", "sent", "acked", "retransmitted", "received", "bytes out",
                                         "bytes in", "route"],
                  [[peer, s.get("sent"), s.get("acked"), s.get("retransmitted"), s.get("received"),
                    _bytes(s.get("bytes_sent")), _bytes(s.get("bytes_received")), s.get("route")]
                   for peer, s in sorted(stats.items()) if isinstance(s, dict)])
    emit(args, data, human)
    return 0


def _short(v: Any, n: int = 60) -> str:
    text = json.dumps(v, default=lambda b: b.hex() if isinstance(b, bytes) else str(b))
    return text if len(text) <= n else text[: n - 1] + "…"


def signal_number(text: str) -> int:
    """A signal named as `kill` takes it (TERM, sigterm, SIGUSR1) or numbered, as this host numbers them."""
    t = text.strip().upper()
    valid = {s.value for s in signals.Signals}
    if t.isdigit():
        if int(t) in valid:
            return int(t)
        raise argparse.ArgumentTypeError(f"no signal is numbered {text!r} on this host (`kill -l` lists "
                                         "them); or name it (TERM, USR1)")
    try:
        return signals.Signals[t if t.startswith("SIG") else "SIG" + t].value
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a signal; name one as `kill -l` lists them "
                                         "(TERM, INT, HUP, USR1, with or without SIG) or give its number") from None


def key_id_arg(text: str) -> str:
    """A key id (64 hex characters), lower-cased: ownership compares key ids as text."""
    try:
        return public_key_from_id(text.strip()).hex()
    except SignatureError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a key id: it must be the 64 hex characters of an Ed25519 public key, "
            "as `snipe-console keygen` prints") from None


KILL_WAIT_S = 5.0      # how long `kill` waits for the task to end before saying only that the kill was sent


def cmd_control(args: argparse.Namespace) -> int:
    p = Process(args.urn)
    # args.signal is already a valid number: the parser checks it with signal_number
    reply = p.signal(args.signal) if args.command == "signal" else getattr(p, args.command)()
    if args.command == "kill":
        # The daemon answers before the task has gone (SIGTERM, then SIGKILL after a grace): wait a
        # little for the end, so "killed" is what happened, or say that only the kill was sent.
        if reply.get("state") in ("running", "suspended"):
            reply = p.wait(KILL_WAIT_S)
        ended = reply.get("state") not in ("running", "suspended")
        reply = {**reply, "kill_sent": True, "ended": ended}
        emit(args, reply, lambda: out.print(
            f"{args.urn}: {reply['state']}" if ended else
            f"{args.urn}: kill sent; still {reply.get('state')} after {KILL_WAIT_S:g} s "
            f"(follow it: snipe-console events {args.urn})"))
        return 0
    emit(args, reply, lambda: out.print(f"{args.urn}: {reply['state']}"))
    return 0


def cmd_drain(args: argparse.Namespace) -> int:
    if args.off:
        s = session()
        host_urn = args.host if args.host.startswith("urn:") else f"urn:snipe:host:{args.host}"
        address = s.catalog.get(host_urn).value("daemon", now_ms())
        if address is None:
            raise NotFound(f"{host_urn} has no daemon in the catalog")
        with DaemonClient(str(address), _admin_identity(args) or s.identity) as d:
            reply, _ = d.call("drain", {"on": False})
        emit(args, reply, lambda: out.print(f"{host_urn}: taking tasks again"))
        return 0
    from snipe.migration.drain import drain
    result = drain(args.host, identity=_admin_identity(args), migrate=not args.no_migrate, timeout=args.timeout)

    def human() -> None:
        out.print(f"{result['host']}: draining, no new tasks; {len(result['moved'])} task(s) moved, "
                  f"{len(result['left'])} left")
        rows = [[m["urn"], "moved", m["to"]] for m in result["moved"]] + \
               [[m["urn"], "left", m["reason"]] for m in result["left"]]
        if rows:
            table("tasks", ["task", "outcome", "to / why"], rows)
    emit(args, result, human)
    return 1 if result["left"] else 0


def cmd_migrate(args: argparse.Namespace) -> int:
    reply = Process(args.urn).migrate(args.host, timeout=args.timeout)
    emit(args, reply, lambda: out.print(f"{reply['urn']}: moved from {reply['from']} to {reply['to']}"))
    return 0


def _admin_identity(args: argparse.Namespace) -> Identity | None:
    path = getattr(args, "admin_key_file", None)
    if path:
        return Identity.load(path)
    desc = runtime_home() / "cluster.json"
    if desc.exists():
        key_file = json.loads(desc.read_text()).get("admin_key_file")
        if key_file and Path(key_file).exists():
            return Identity.load(key_file)
    return None


def cmd_admit(args: argparse.Namespace) -> int:
    # args.key is a well-formed key id (key_id_arg): replicas would store any other text and admit nobody.
    urn = validate_urn(f"urn:snipe:{args.kind}:{args.name}")
    s = session()
    admin = _admin_identity(args)
    if admin is None:
        raise ConfigError("admitting keys needs the admin key: pass --admin-key-file")
    if admin.public_key != s.admin_key:
        raise ConfigError(f"key {admin.key_id[:16]}… is not this cluster's admin key "
                          f"({s.admin_key.hex()[:16]}…); pass the admin's key file with --admin-key-file")
    with CatalogClient([c.address for c in s.catalog.conns.values()], admin, s.admin_key) as c:
        c.set(urn, authority.OWNER, args.key)
    emit(args, {"urn": urn, "key": args.key}, lambda: out.print(f"admitted key {args.key[:16]}… as {urn}"))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if path.is_dir():
        raise ConfigError(f"{args.path} is a folder; name the key file to write, e.g. {path / 'user.key'}")
    if not path.parent.exists():
        raise ConfigError(f"folder {path.parent} does not exist; make it first (mkdir -p {path.parent}) "
                          "or name a key file in a folder that does")
    if path.exists() and not args.force:
        raise ConfigError(f"{args.path} exists; refusing to overwrite a key (pass --force to replace it: "
                          "the old key is then lost, and whatever it owned with it)")
    ident = Identity.generate()
    ident.save(args.path)
    emit(args, {"path": args.path, "key": ident.key_id}, lambda: out.print(f"{args.path}: key {ident.key_id}"))
    return 0


EXIT_TIMED_OUT = 3


TASK_PREFIX = "urn:snipe:proc:"


def known_task(text: str, catalog: CatalogClient | None = None) -> str:
    """The task URN `text`, if the catalog knows it as a task (its host registered it, so it has
    a supervisor or events); else NotFound, said at once rather than after waiting on a watch that
    would never hear of it."""
    urn = validate_urn(text)
    if not urn.startswith(TASK_PREFIX):
        raise NotFound(f"no such task: {urn} (a task's URN starts {TASK_PREFIX}; `snipe-console ps -a` "
                       "lists them)")
    entry = (catalog or session().catalog).get(urn)
    now = now_ms()
    if entry.value("supervisor", now) is None and entry.value("events", now) is None:
        raise NotFound(f"no such task: {urn} (no host registered it; `snipe-console ps -a` lists the tasks)")
    return urn


def cmd_events(args: argparse.Namespace) -> int:
    known_task(args.urn)
    last = None
    for ev in Process(args.urn).events(timeout=args.timeout):
        last = ev
        if args.json:
            print(json.dumps(ev.__dict__), flush=True)
        else:
            out.print(f"{ev.seq:4d} {time.strftime('%H:%M:%S', time.localtime(ev.at))} {ev.kind}"
                      + (f" exit={ev.exit_code}" if ev.exit_code is not None else "")
                      + (f" ({ev.reason})" if ev.reason else ""))
    if last is not None and last.final:        # it ended (Process.events stopped by itself)
        return 0
    return fail(args.json, f"timed out after {args.timeout:g} s waiting for {args.urn} to end (last event: "
                           f"{last.kind if last else 'none'}); it may still run: follow it longer with a larger "
                           "--timeout", "timed-out", EXIT_TIMED_OUT)


def cmd_publish(args: argparse.Namespace) -> int:
    urn = snipe.publish(args.path, entry=args.entry)
    emit(args, {"urn": urn}, lambda: out.print(urn))
    return 0


SPAWN_VALUED = {"--host": "host", "--max-price": "max_price"}
SPAWN_FLAGS = {"--bids": "bids", "--json": "json"}


def split_spawn_args(args: argparse.Namespace, argv: list[str]) -> None:
    """Take `spawn`'s own options out of what follows the code URN (argparse hands all of it to
    the task, REMAINDER); the rest, in order, is the task's, and all of it after `--`. (argparse
    drops a `--` right after the code URN, so that one is looked for in `argv`.)"""
    tail = argv[argv.index("spawn") + 1:]
    at = tail.index(args.code) if args.code in tail else -1
    if 0 <= at < len(tail) - 1 and tail[at + 1] == "--":
        return
    rest, task = list(args.args), []
    while rest:
        word = rest.pop(0)
        name, eq, value = word.partition("=")
        if word == "--":
            task += rest
            break
        if name in SPAWN_VALUED:
            if not eq:
                if not rest:
                    raise BadArguments(f"argument {name}: expected one argument", "")
                value = rest.pop(0)
            if name == "--max-price":
                try:
                    args.max_price = float(value)
                except ValueError:
                    raise BadArguments(f"argument --max-price: invalid float value: {value!r}", "") from None
            else:
                setattr(args, SPAWN_VALUED[name], value)
        elif word in SPAWN_FLAGS:
            setattr(args, SPAWN_FLAGS[word], True)
        else:
            task.append(word)
    args.args = task


def cmd_spawn(args: argparse.Namespace) -> int:
    bids = args.bids or args.max_price is not None
    p = snipe.spawn(args.code, *args.args, host=args.host, placement="bids" if bids else "least-loaded",
                    max_price=args.max_price)
    emit(args, {"urn": p.urn, "host": p.host}, lambda: out.print(f"{p.urn} on {p.host}"))
    return 0


USAGE_BY = ("owner", "host", "code")
MIGRATED = "migrated"       # the state in the record of a host a task moved away from: not an end
LOST = "lost"               # a task's state once its host is gone, whether or not it had moved there
LIVE_TASK_STATES = ("running", "suspended")


def host_keys_of(catalog: CatalogClient, admin_key: bytes, now: int,
                 hosts: dict[str, Entry] | None = None) -> dict[str, str]:
    """Every host URN's key, as the admin assigned it (`_owner`), by URN; from `hosts` (the
    catalog's host entries) if the caller has them already."""
    entries = catalog.query("urn:snipe:host:") if hosts is None else hosts
    return {urn: owner for urn, entry in entries.items() if (owner := entry.owner(admin_key, now)) is not None}


def vouching_host_key(entry: Any, host_keys: dict[str, str], admin_key: bytes, now: int) -> str | None:
    """The key of the host that started the task `entry` is about, if that host's daemon claimed
    the task's URN (as it does when it spawns one) and names itself as its host; else None.
    What a task's URN says of itself is otherwise anybody's word: any admitted key may claim a
    new proc URN and write a host, an owner and figures there."""
    claimant = entry.owner(admin_key, now)
    if claimant is None:
        return None
    host = entry.values("host", now).get(claimant)
    return claimant if isinstance(host, str) and host_keys.get(host) == claimant else None


def _accounted_runs(c: CatalogClient, host_keys: dict[str, str], admin_key: bytes,
                    now: int) -> tuple[list[dict[str, Any]], set[str]]:
    """Every run a host accounted for (a `usage` record in its own word), and the tasks whose
    end one of them records (any state but "migrated")."""
    runs = []
    ended_tasks: set[str] = set()
    for urn, entry in c.query("urn:snipe:proc:", [("usage", "exists", None)]).items():
        host_key = vouching_host_key(entry, host_keys, admin_key, now)
        if host_key is None:
            continue

        def stated(name: str, entry: Any = entry, host_key: Any = host_key) -> Any:
            return entry.values(name, now).get(host_key)

        used = stated("usage")
        started = stated("started")
        if not isinstance(used, dict) or not isinstance(started, int):
            continue
        task = stated("task")       # an incarnation's own record (restarted, migrated, a copy): its task
        task = task if isinstance(task, str) else urn
        if stated("state") != MIGRATED:
            ended_tasks.add(task)
        runs.append({"urn": task, "record": urn,
                     "owner": stated("owner"), "host": stated("host"), "code": stated("code"),
                     "state": stated("state"), "started_ms": started,
                     "ended_ms": started + int(_as_number(used.get("wall_seconds")) * 1000),
                     "cpu_seconds": _as_number(used.get("cpu_seconds")),
                     "wall_seconds": _as_number(used.get("wall_seconds")),
                     "peak_rss_bytes": int(_as_number(used.get("peak_rss_bytes")))})
    return runs, ended_tasks


def _lease_lapsed_at(host: Entry | None) -> int | None:
    """When a dead host's lease ran out: the latest expiry of the `alive` records still held."""
    expiries = [a.expires_at_ms for a in (host.records if host else []) if a.name == "alive" and a.expires_at_ms]
    return max(expiries, default=None)


def _runs_lost_with_their_host(c: CatalogClient, hosts: dict[str, Entry], host_keys: dict[str, str],
                               admin_key: bytes, now: int, runs: list[dict[str, Any]],
                               ended_tasks: set[str]) -> list[dict[str, Any]]:
    """A run for each task that no record ends and whose host is dead per the catalog (its lease
    lapsed): it was lost there, with what it used there unknown (no host measured it), whether
    it had moved there (its records are then all "migrated") or ran there from its start.
    Where a task runs now is the newest `host` on its URN, as its handle reads it (after a move
    its new host writes there with the task's key, so the task's own word may be in it: it
    decides only running or lost, never a figure)."""
    live_hosts = {u for u, e in hosts.items() if e.value("alive", now) is True}
    entries: dict[str, Entry] = {}
    for state in LIVE_TASK_STATES:
        entries.update(c.query("urn:snipe:proc:", [("state", "=", state)]))
    moved_on = {r["urn"] for r in runs} - ended_tasks
    for task in sorted(moved_on - entries.keys()):
        entries[task] = c.get(task)
    lost = []
    for task, entry in entries.items():
        where = entry.value("host", now)
        if task in ended_tasks or not isinstance(where, str) or where in live_hosts:
            continue
        copies = entry.value("copies", now) if entry.value("mode", now) == "all" else None
        if isinstance(copies, list) and live_hosts.intersection(h for h in copies if isinstance(h, str)):
            continue                    # replicated in mode "all": `host` names copy 0; the others run on
        if task not in moved_on and entry.value("state", now) not in LIVE_TASK_STATES:
            continue                    # it ended there (a record names it as ended, or it had no figures)
        host_key = vouching_host_key(entry, host_keys, admin_key, now)
        if host_key is None:
            continue
        left = [r["ended_ms"] for r in runs if r["urn"] == task]       # it came to `where` when it left the last
        started = max(left) if left else entry.values("started", now).get(host_key)
        lost.append({"urn": task, "record": None, "owner": entry.values("owner", now).get(host_key),
                     "host": where, "code": entry.values("code", now).get(host_key), "state": LOST,
                     "started_ms": started if isinstance(started, int) else None,
                     "ended_ms": _lease_lapsed_at(hosts.get(where)),
                     "cpu_seconds": None, "wall_seconds": None, "peak_rss_bytes": None})
    return lost


def usage_data(by: str = "owner", since_s: float | None = None,
               catalog: CatalogClient | None = None) -> dict[str, Any]:
    """Accounting: what ended tasks used (the `usage` their host's daemon published when each
    ended), per task and summed per owner, host or code. Only a host's own statements count
    (`vouching_host_key`): a task may write any name on its own URN (it is delegated them), and
    any admitted key may claim a URN and call itself a host there. A task that ran on several
    hosts (restarted, migrated, copies in mode "all") has a record from each other host,
    `<task URN>.usage.<host>.<ms>` naming it as `task`: each is a row, the task counts once.
    A migration is not an end: a task whose only records are of hosts it moved away from (state
    "migrated") runs on elsewhere, and is counted as running (`task_running` on its rows, `running`
    in its group), with what it used on those hosts. A task on a host whose lease lapsed (dead
    per the catalog), moved there or not, was lost with it: an ended task, with a row of state
    "lost" whose figures are null (no host measured them), `task_lost` on its rows and `lost` in
    its group."""
    if by not in USAGE_BY:
        raise ConfigError(f"usage --by {by!r}: one of {', '.join(USAGE_BY)}")
    s = session()
    c = catalog or s.catalog
    now = now_ms()
    since_ms = None if since_s is None else now - int(since_s * 1000)
    hosts = c.query("urn:snipe:host:")
    host_keys = host_keys_of(c, s.admin_key, now, hosts)
    runs, ended_tasks = _accounted_runs(c, host_keys, s.admin_key, now)
    runs += _runs_lost_with_their_host(c, hosts, host_keys, s.admin_key, now, runs, ended_tasks)
    lost_tasks = {r["urn"] for r in runs if r["state"] == LOST and r["record"] is None}
    ended_tasks |= lost_tasks          # whatever --since says: a task ends after every move it made
    tasks = [r for r in runs if since_ms is None or (r["ended_ms"] is not None and r["ended_ms"] >= since_ms)]
    groups: dict[str, dict[str, Any]] = {}
    counted: dict[str, set[str]] = {}
    for t in tasks:
        t["task_running"] = t["urn"] not in ended_tasks
        t["task_lost"] = t["urn"] in lost_tasks
        g = groups.setdefault(str(t[by]), {by: t[by], "tasks": 0, "running": 0, "lost": 0, "cpu_seconds": 0.0,
                                           "wall_seconds": 0.0, "peak_rss_bytes": 0})
        counted.setdefault(str(t[by]), set()).add(t["urn"])
        g["tasks"] = len(counted[str(t[by])])
        g["running"] = len(counted[str(t[by])] - ended_tasks)
        g["lost"] = len(counted[str(t[by])] & lost_tasks)
        g["cpu_seconds"] += _as_number(t["cpu_seconds"])
        g["wall_seconds"] += _as_number(t["wall_seconds"])
        g["peak_rss_bytes"] = max(g["peak_rss_bytes"], int(_as_number(t["peak_rss_bytes"])))
    rows = sorted(groups.values(), key=lambda g: -g["cpu_seconds"])
    for g in rows:
        g["cpu_seconds"], g["wall_seconds"] = round(g["cpu_seconds"], 3), round(g["wall_seconds"], 3)
    in_order = sorted(tasks, key=lambda t: (t["ended_ms"] is None, t["ended_ms"] or 0))
    return {"by": by, "since_s": since_s, "groups": rows, "tasks": in_order}


def _tasks_cell(group: dict[str, Any]) -> str:
    """A usage group's task count, with how many of them run on and how many were lost."""
    notes = [f"{group[k]} {k}" for k in ("running", "lost") if group.get(k)]
    return f"{group['tasks']} ({', '.join(notes)})" if notes else str(group["tasks"])


def cmd_usage(args: argparse.Namespace) -> int:
    data = usage_data(args.by, args.since)
    total_cpu = sum(g["cpu_seconds"] for g in data["groups"])

    def human() -> None:
        since = f" in the last {args.since:g} s" if args.since is not None else ""
        label = {"owner": "owner (key)", "host": "host", "code": "code"}[args.by]
        ran = len({t["urn"] for t in data["tasks"]})
        running = len({t["urn"] for t in data["tasks"] if t["task_running"]})
        lost = len({t["urn"] for t in data["tasks"] if t["task_lost"]})
        runs = f" ({len(data['tasks'])} runs)" if len(data["tasks"]) != ran else ""
        gone = f" ({lost} lost with their host: what they used there is unknown)" if lost else ""
        still = f", {running} still running after a migration" if running else ""
        table(f"{ran - running} ended task(s){gone}{still}{runs}{since}: {total_cpu:.2f} CPU seconds",
              [label, "tasks", "cpu", "wall", "peak memory"],
              [[_short(g[args.by], 70).strip('"') if args.by != "host" else _host(g["host"]),
                _tasks_cell(g), f"{g['cpu_seconds']:.2f}s", f"{g['wall_seconds']:.1f}s", _bytes(g["peak_rss_bytes"])]
               for g in data["groups"]])
    emit(args, data, human)
    return 0


def cmd_web(args: argparse.Namespace) -> int:
    from snipe.console import web

    session()                        # join the cluster first: a cluster that cannot be reached is said at once

    def ready(url: str, token: str | None) -> None:
        if args.json:
            print(json.dumps({"url": url, "token": token}), flush=True)
        else:
            out.print(f"the console's page: {url}  (read-only; Ctrl-C stops it)")
            sys.stdout.flush()

    web.serve(args.listen, token=args.token, interval=args.interval, ready=ready)
    return 0


CLUSTER_UP_SHAPE = (3, 3)          # (replicas, daemons) of a cluster `cluster up` starts


def cmd_cluster(args: argparse.Namespace) -> int:
    home = Path(args.home) if args.home else runtime_home()
    if args.action == "up":
        with out.status(f"starting the local cluster in {home}…", spinner="dots") if not args.json else _null():
            desc = start_embedded(home, replicas=args.replicas, hosts=args.hosts,
                                  default_shape=CLUSTER_UP_SHAPE)
        emit(args, desc, lambda: table(f"local cluster in {home}", ["part", "address"],
                                        [["replica", a] for a in desc["catalog"]]
                                        + [[f"daemon {h}", a] for h, a in desc["daemons"].items()]))
    elif args.action == "down":
        report = stop_embedded_report(home)

        def human() -> None:
            if not report["stopped"]:
                out.print(f"no cluster in {home}")
                return
            tasks = len(report["tasks_killed"])
            out.print(f"stopped {len(report['signalled'])} process(es) of the local cluster in {home}"
                      + (f", and {tasks} task(s) it ran" if tasks else ""))
            if report["sockets_removed"]:
                out.print(f"removed the {len(report['sockets_removed'])} ipc socket file(s) they left")
            gone = [s for s in report["skipped"] if s["reason"] == "no longer runs"]
            if gone:
                out.print("already gone: " + ", ".join(f"{s['role']} {s['id']} (pid {s['pid']})" for s in gone))
            for s in report["skipped"]:
                if s["reason"] != "no longer runs":
                    out.print(f"[yellow]left pid {s['pid']} ({s['role']} {s['id']}) alone: it {s['reason']}[/]")
        emit(args, report, human)
    else:
        status = cluster_status(home)
        emit(args, status, lambda: _print_status(home, status))
    return 0


def _print_status(home: Path, status: dict[str, Any] | None) -> None:
    if status is None:
        out.print(f"no cluster in {home}")
        return
    members = status["members"]
    alive = sum(m["alive"] for m in members)
    addresses = {f"replica r{i + 1}": a for i, a in enumerate(status.get("catalog", []))}
    addresses.update((f"daemon {h}", a) for h, a in status.get("daemons", {}).items())
    table(f"local cluster in {home}: {status['state']} ({alive} of {len(members)} processes run)",
          ["part", "pid", "state", "address"],
          [[f"{m['role']} {m['id']}", m["pid"], "running" if m["alive"] else f"gone: {m['reason']}",
            addresses.get(f"{m['role']} {m['id']}", "")] for m in members])
    if status["state"] == "partly down":
        out.print(f"stop what is left with `snipe-console cluster down --home {home}`, then `cluster up` again")
    elif status["state"] == "stopped":
        out.print("every process has ended (as after a reboot); the next `cluster up` or snipe.init() starts anew")
    for key in ("admin_key_file", "user_key_file"):
        if status.get(key):
            out.print(f"{key.replace('_', ' ')}: {status[key]}")


class BadArguments(ValueError):
    """A command line that does not parse; main() reports it (in JSON with --json) instead of argparse exiting."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise BadArguments(message, self.format_usage())


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="snipe-console", description="Look at and steer a SNIPE cluster.")
    ap.add_argument("--json", action="store_true", help="print JSON instead of tables (also taken after the command)")
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: unset unless given here, so a subcommand does not reset a --json given before it
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON instead of tables")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("hosts", parents=[common], help="live hosts").set_defaults(fn=cmd_hosts)
    p = sub.add_parser("ps", parents=[common], help="tasks on every host",
                       epilog="With --json, a list of tasks: each row as its host's daemon lists it (urn, host, "
                              "state, cpu_seconds, rss_bytes, age_s, ...). A task that is migrating keeps its own "
                              "state and has \"migrating\": {\"from\": HOST, \"to\": HOST}; other rows have "
                              "no \"migrating\". A host that did not answer is a row {\"urn\": null, \"host\", "
                              "\"state\": \"unreachable\", \"unreachable\": REASON}.")
    p.add_argument("-a", "--all", action="store_true", help="include ended tasks")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each host's daemon")
    p.set_defaults(fn=cmd_ps)
    p = sub.add_parser("show", parents=[common], help="every verified assertion about a URN (a group: its members "
                                                       "and routers, with each router's message counts)")
    p.add_argument("urn")
    p.set_defaults(fn=cmd_show)
    sub.add_parser("groups", parents=[common], help="multicast groups: members and routers").set_defaults(fn=cmd_groups)
    for name in ("kill", "suspend", "resume"):
        p = sub.add_parser(name, parents=[common], help=f"{name} a task (its owner or the admin)")
        p.add_argument("urn")
        p.set_defaults(fn=cmd_control)
    p = sub.add_parser("signal", parents=[common], help="send a signal to a task")
    p.add_argument("urn")
    p.add_argument("signal", type=signal_number, help="name (TERM, usr1, SIGUSR1) or number")
    p.set_defaults(fn=cmd_control)
    p = sub.add_parser("drain", parents=[common], help="stop new placements on a host and migrate its tasks off")
    p.add_argument("host")
    p.add_argument("--off", action="store_true", help="take tasks again")
    p.add_argument("--no-migrate", action="store_true", help="only stop new placements; tasks stay")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds each migration may take")
    p.add_argument("--admin-key-file")
    p.set_defaults(fn=cmd_drain)
    p = sub.add_parser("migrate", parents=[common], help="move a task to another host, keeping its URN and state")
    p.add_argument("urn")
    p.add_argument("host")
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(fn=cmd_migrate)
    p = sub.add_parser("admit", parents=[common], help="admit a host or user key (admin)")
    p.add_argument("kind", choices=["host", "user"])
    p.add_argument("name")
    p.add_argument("key", type=key_id_arg, help="the key id (64 hex characters) to admit")
    p.add_argument("--admin-key-file")
    p.set_defaults(fn=cmd_admit)
    p = sub.add_parser("keygen", parents=[common], help="make a new Ed25519 key file")
    p.add_argument("path")
    p.add_argument("--force", action="store_true", help="replace an existing key file (its key is lost)")
    p.set_defaults(fn=cmd_keygen)
    p = sub.add_parser("events", parents=[common], help="follow a task's state changes")
    p.add_argument("urn")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop after this many seconds, exiting 3 if the task has not ended by then "
                        "(it stops by itself, exiting 0, when the task ends, or its host is lost and no "
                        "other host is to restart it)")
    p.set_defaults(fn=cmd_events)
    p = sub.add_parser("publish", parents=[common], help="publish a script or folder as mobile code")
    p.add_argument("path")
    p.add_argument("--entry", help="what a folder runs, if not its __main__.py or main.py: a script in it "
                                   "(path/to/script.py) or module:function")
    p.set_defaults(fn=cmd_publish)
    p = sub.add_parser("spawn", parents=[common], help="start published code as a task",
                       epilog="Everything after CODE goes to the task, in order (`spawn URN -n 5`), except this "
                              "command's own options (--host, --bids, --max-price, --json); after `--` "
                              "everything goes to the task (`spawn URN -- --host x`).")
    p.add_argument("code")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the task's arguments")
    p.add_argument("--host")
    p.add_argument("--bids", action="store_true", help="ask the hosts for bids and take the cheapest (rather than "
                                                       "the least loaded by what they published)")
    p.add_argument("--max-price", type=float, help="with bids: none above this (implies --bids)")
    p.set_defaults(fn=cmd_spawn)
    p = sub.add_parser("usage", parents=[common], help="accounting: CPU, wall time and memory ended tasks used "
                                                        "(and migrated ones on the hosts they left), per owner, "
                                                        "host or code")
    p.add_argument("--by", choices=USAGE_BY, default="owner", help="sum per task owner (default), host or code")
    p.add_argument("--since", type=float, help="only tasks that ended in the last this many seconds")
    p.set_defaults(fn=cmd_usage)
    p = sub.add_parser("web", parents=[common], help="serve a read-only web page of the cluster: hosts, tasks, "
                                                      "groups and message traffic over time")
    p.add_argument("--listen", default="127.0.0.1:8470",
                   help="HOST:PORT to serve on (default 127.0.0.1:8470; port 0 picks one); off loopback the "
                        "page wants a token, made at start and printed in its URL")
    p.add_argument("--token", help="the token the page wants (default: none on loopback, a random one elsewhere)")
    p.add_argument("--interval", type=float, default=5.0, help="seconds between the page's snapshots (default 5)")
    p.set_defaults(fn=cmd_web)
    p = sub.add_parser("cluster", parents=[common], help="a local cluster on this machine")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--replicas", type=int, help="replicas of a new cluster (default 3); a running cluster of "
                                                "another size is an error, not reused")
    p.add_argument("--hosts", type=int, help="daemons of a new cluster (default 3); likewise")
    p.add_argument("--home", help="runtime folder (default: this user's)")
    p.set_defaults(fn=cmd_cluster)
    return ap


OS_ERROR_KINDS: tuple[tuple[type[OSError], str], ...] = (
    (FileNotFoundError, "file-not-found"), (PermissionError, "permission-denied"),
    (FileExistsError, "file-exists"), (NotADirectoryError, "not-a-folder"), (IsADirectoryError, "is-a-folder"))


def fail(as_json: bool, message: str, kind: str, code: int = 1, usage: str = "") -> int:
    """Report an error as one line on stderr, or as {"error": message, "kind": kind} on stdout with --json."""
    if as_json:
        print(json.dumps({"error": message, "kind": kind}))
    else:
        # plain print, not rich: a message may hold [brackets] rich would take for markup, and one
        # line is what a script's `2>&1 | grep` expects
        print(f"{usage}snipe-console: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = build_parser().parse_args(argv)
    except BadArguments as exc:
        return fail("--json" in argv, str(exc), "usage", 2, exc.usage)   # 2, as argparse exits
    if args.command == "spawn":
        try:
            split_spawn_args(args, argv)
        except BadArguments as exc:
            return fail("--json" in argv, str(exc), "usage", 2, build_parser().format_usage())
    as_json = bool(getattr(args, "json", False))
    try:
        return int(args.fn(args))
    except SnipeError as exc:
        return fail(as_json, str(exc), exc.code)
    # The user's files and arguments, not bugs in here: say what and where in one line. Any other
    # exception is a bug and keeps its traceback.
    except OSError as exc:
        kind = next((k for cls, k in OS_ERROR_KINDS if isinstance(exc, cls)), "os-error")
        where = f": {exc.filename}" if exc.filename else ""
        return fail(as_json, f"{exc.strerror or exc}{where}", kind)
    except ValueError as exc:
        return fail(as_json, str(exc), "bad-value")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
