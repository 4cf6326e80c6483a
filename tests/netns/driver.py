"""The netns suite's client side: run by the tests INSIDE a lab namespace (`ip netns exec`), never
in the root namespace. Reads the lab's description from $SNIPE_NETLAB_LAB and joins the lab's
cluster from the environment the harness sets (SNIPE_CATALOG, SNIPE_ADMIN_KEY, SNIPE_KEY_FILE,
SNIPE_DAEMON). Talks to the test through files in --dir (the file system is shared; the network
is not). Every loop is bounded in count and time.

    driver.py catalog-write --dir D --seconds S     sequential catalog writes; progress + acked list
    driver.py catalog-verify --dir D --since T      convergence time, then every acked write on every replica
    driver.py unicast --dir D --n N ...             spawn a receiver and a sender task, wait for both
                                                    (--receiver-urn: the receiver runs already)
    driver.py receiver --dir D --n N --host H       spawn a receiver task on H, say its URN, wait for it
    driver.py migrate-stream --dir D --n N ...      a counter task streamed to by a sender task, moved mid-stream
    driver.py mcast-member --dir D --group G --n N  a plain process (not a task) in a group: counts per sender
    driver.py mcast-sender --dir D --group G --n N  waits for two routers and go.json, then multicasts N
    driver.py host-loss --dir D --host H            spawn a sleeper on H, follow its events to host-lost
    driver.py host-after --dir D --host H ...       after the heal: state, events, duplicates
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from snipe.catalog.client import CatalogClient, now_ms
from snipe.errors import SnipeError
from snipe.identity import Identity

TASKS = Path(__file__).parent / "tasks"


def lab() -> dict[str, Any]:
    return json.loads(Path(os.environ["SNIPE_NETLAB_LAB"]).read_text())


def write(path: Path, value: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(value, default=str))
    tmp.replace(path)


def admin_client(addresses: list[str] | None = None, **kw: Any) -> CatalogClient:
    d = lab()
    admin = Identity.load(d["admin_key_file"])
    return CatalogClient(addresses or d["catalog"], admin, admin.key_id, **kw)


# --- case 1: the catalog ------------------------------------------------------------------------------
def catalog_write(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.dir)
    urn = f"urn:snipe:group:netlab-writes-{lab()['run']}"
    acked: list[int] = []
    failed: list[list[Any]] = []
    latencies: list[float] = []
    with admin_client(timeout=args.put_timeout) as c:
        for _ in range(100):
            try:
                c.claim(urn)
                break
            except SnipeError:
                time.sleep(0.1)
        t0 = time.time()
        end = time.monotonic() + args.seconds
        i = 0
        last_progress = 0.0
        while time.monotonic() < end and i < args.max_writes:
            t = time.monotonic()
            try:
                c.set(urn, f"k{i:06d}", i)
                acked.append(i)
                latencies.append(time.monotonic() - t)
            except SnipeError as exc:
                failed.append([i, exc.__class__.__name__, round(time.time() - t0, 3)])
            i += 1
            if i % 10 == 0 or time.monotonic() - last_progress > 0.1:
                last_progress = time.monotonic()
                write(out / "progress.json", {"sent": i, "acked": len(acked), "failed": len(failed),
                                              "elapsed": time.time() - t0})
    latencies.sort()
    result = {"urn": urn, "sent": i, "acked": acked, "failed": failed, "seconds": round(time.time() - t0, 3),
              "put_p50_ms": round(1000 * latencies[len(latencies) // 2], 2) if latencies else None,
              "put_max_ms": round(1000 * latencies[-1], 2) if latencies else None}
    write(out / "writes.json", result)
    return {k: v for k, v in result.items() if k != "acked"} | {"acked": len(acked)}


def catalog_verify(args: argparse.Namespace) -> dict[str, Any]:
    from snipe.netlab.agent import converge

    d = lab()
    out = Path(args.dir)
    writes = json.loads((out / "writes.json").read_text())
    since = args.since
    if since is None:                 # started before the heal: the test writes healed.json
        from snipe.netlab.agent import replica_status
        replica_status(d, timeout=0.5)           # connections made, imports done
        write(out / "verify-ready.json", {"t": time.time()})
        deadline = time.monotonic() + 60
        while not (out / "healed.json").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        since = json.loads((out / "healed.json").read_text())["at"]
    conv = converge(d, since, args.timeout)
    acked = set(writes["acked"])
    per_replica: dict[str, Any] = {}
    for addr in d["catalog"]:
        with admin_client([addr], timeout=5.0) as c:
            try:
                names = c.get(writes["urn"]).as_dict(now_ms())
            except SnipeError as exc:
                per_replica[addr.split("#")[0]] = {"error": str(exc)}
                continue
        have = {int(k[1:]) for k in names if k.startswith("k") and k[1:].isdigit()}
        per_replica[addr.split("#")[0]] = {"present": len(have), "acked_missing": sorted(acked - have)[:50],
                                           "acked_missing_count": len(acked - have),
                                           "unacked_present": len(have - acked)}
    result = {"converge": conv, "replicas": per_replica}
    write(Path(args.dir) / "verify.json", result)
    return result


# --- case 2: unicast ----------------------------------------------------------------------------------
def _listening(urn: str) -> bool:
    import snipe
    return snipe.catalog().get(urn).value("listening", now_ms()) is True


def unicast(args: argparse.Namespace) -> dict[str, Any]:
    import snipe

    out = Path(args.dir)
    snipe.init()
    rx_code = snipe.publish(TASKS / "receiver.py")
    tx_code = snipe.publish(TASKS / "sender.py")
    t0 = time.time()
    rx = snipe.Process(args.receiver_urn) if args.receiver_urn else \
        snipe.spawn(rx_code, args.n, str(out / "receiver.json"), host=args.receiver_host)
    deadline = time.monotonic() + 60
    while not _listening(rx.urn):
        if time.monotonic() > deadline:
            raise SystemExit("the receiver did not listen within 60 s")
        time.sleep(0.05)
    tx = snipe.spawn(tx_code, rx.urn, args.n, args.interval_ms, str(out / "progress.json"),
                     str(out / "sender.json"), host=args.sender_host)
    write(out / "spawned.json", {"sender": tx.urn, "receiver": rx.urn, "t": time.time()})
    tx_done = tx.wait(args.timeout)
    if args.receiver_urn:               # its daemon is on a host we may not reach: its driver waits for it
        return {"sender_exit": tx_done.get("exit_code"), "sender_stderr": tx_done.get("stderr_tail", "")[-1500:],
                "wall_s": round(time.time() - t0, 3)}
    rx_done = rx.wait(30)
    return {"sender_exit": tx_done.get("exit_code"), "receiver_exit": rx_done.get("exit_code"),
            "sender_stderr": tx_done.get("stderr_tail", "")[-1500:],
            "receiver_stderr": rx_done.get("stderr_tail", "")[-1500:], "wall_s": round(time.time() - t0, 3)}


def receiver(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn the receiver task on this host's daemon (for a host other drivers cannot reach)."""
    import snipe

    out = Path(args.dir)
    snipe.init()
    rx = snipe.spawn(snipe.publish(TASKS / "receiver.py"), args.n, str(out / "receiver.json"), host=args.host)
    write(out / "receiver-spawned.json", {"urn": rx.urn, "t": time.time()})
    done = rx.wait(args.timeout)
    return {"receiver": rx.urn, "receiver_exit": done.get("exit_code"),
            "receiver_stderr": done.get("stderr_tail", "")[-1500:]}


# --- case 4: migration mid-stream --------------------------------------------------------------------------
def migrate_stream(args: argparse.Namespace) -> dict[str, Any]:
    """Spawn a counter task on --task-host and a sender task on --peer-host streaming N numbered
    messages to it; at each fraction of --at, move the counter to the matching host of --to
    (Process.migrate, from here: its caller is in a third namespace); wait for both tasks."""
    import snipe
    from snipe.errors import MigrationFailed

    out = Path(args.dir)
    snipe.init()
    t0 = time.time()
    counter = snipe.spawn(snipe.publish(TASKS / "counter.py"), args.n, str(out / "counter.json"),
                          host=args.task_host)
    deadline = time.monotonic() + 60
    while snipe.catalog().get(counter.urn).value("listening", now_ms()) != 1:
        snipe.catalog().invalidate(counter.urn)
        if time.monotonic() > deadline:
            raise SystemExit("the counter did not listen within 60 s")
        time.sleep(0.05)
    sender = snipe.spawn(snipe.publish(TASKS / "sender.py"), counter.urn, args.n, args.interval_ms,
                         str(out / "progress.json"), str(out / "sender.json"), host=args.peer_host)
    write(out / "spawned.json", {"counter": counter.urn, "sender": sender.urn, "t": time.time()})
    moves: list[dict[str, Any]] = []
    for frac, host in zip(args.at, args.to, strict=True):
        deadline = time.monotonic() + 120
        sent = 0
        while sent < frac * args.n:
            if time.monotonic() > deadline:
                raise SystemExit(f"the sender had sent {sent} of {args.n} after 120 s")
            with contextlib.suppress(OSError, ValueError):
                sent = json.loads((out / "progress.json").read_text())["sent"]
            time.sleep(0.01)
        t = time.monotonic()
        try:
            reply = counter.migrate(host, timeout=60)
            moves.append({"to": reply.get("to"), "from": reply.get("from"), "at_sent": sent,
                          "migrate_call_s": round(time.monotonic() - t, 3)})
        except MigrationFailed as exc:
            moves.append({"to": host, "at_sent": sent, "error": str(exc),
                          "migrate_call_s": round(time.monotonic() - t, 3)})
        write(out / "moves.json", {"moves": moves})
    tx_done = sender.wait(args.timeout)
    rx_done = counter.wait(60)
    return {"counter": counter.urn, "moves": moves, "sender_exit": tx_done.get("exit_code"),
            "counter_exit": rx_done.get("exit_code"), "counter_host": counter.info().get("host"),
            "sender_stderr": tx_done.get("stderr_tail", "")[-1500:],
            "counter_stderr": rx_done.get("stderr_tail", "")[-1500:], "wall_s": round(time.time() - t0, 3)}


# --- case 3: multicast -------------------------------------------------------------------------------------
_last_routers: list[str] = []


def _routers(group: str) -> list[str]:
    """The group's live routers (one replica's answer: one may be partitioned away); the last
    answer if no replica answers in time."""
    import snipe
    from snipe.multicast.groups import live_routers

    global _last_routers
    c = snipe.catalog()
    c.invalidate(group)
    with contextlib.suppress(SnipeError):
        _last_routers = sorted(live_routers(c.get(group, r=1, timeout=1.0), now_ms()))
    return _last_routers


def mcast_member(args: argparse.Namespace) -> dict[str, Any]:
    """A member that is a plain process, not a daemon's task, so a daemon whose lease lapses (a
    partitioned host) does not stop it (case 5's fencing): it must catch up after the heal, or
    be told explicitly what it lost. Per sender, payloads carry 0, 1, 2, ...; a reported hole
    advances the expected number by its size."""
    import re

    import snipe

    out = Path(args.dir) / f"member-{args.name}.json"
    from snipe.errors import StaleWrite

    snipe.init()
    trace = _MemberTrace(args.group)
    for attempt in range(50):
        try:
            routers = snipe.join(args.group)
            break
        except StaleWrite:      # members sharing one key raced to claim the group: it is claimed now
            if attempt == 49:
                raise
            time.sleep(0.1)
    state: dict[str, Any] = {"name": args.name, "me": snipe.me(), "joined_routers": routers, "received": 0,
                             "duplicates": 0, "gaps": 0, "lost_reported": 0, "holes": [], "done": False}
    expected: dict[str, int] = {}
    got: dict[str, set[int]] = {}           # sender -> payload numbers received (seq - 1)
    write(out, state)
    t0 = time.monotonic()
    last_write = 0.0
    while time.monotonic() - t0 < args.timeout and state["received"] + state["lost_reported"] < args.n:
        m = snipe.recv(timeout=0.5)
        now = time.monotonic()
        if m is not None:
            if m.failed:
                hit = re.search(r"messages (\d+)\.\.(\d+)", m.reason or "")
                size = int(hit.group(2)) - int(hit.group(1)) + 1 if hit else 0
                state["lost_reported"] += size
                state["holes"].append({"from": m.source, "reason": m.reason, "at_s": round(now - t0, 3)})
                expected[m.source] = expected.get(m.source, 0) + size
            else:
                i = int.from_bytes(bytes(m.payload[:8]), "big")
                got.setdefault(m.source, set()).add(i)
                want = expected.get(m.source, 0)
                state["received"] += 1
                if i < want:
                    state["duplicates"] += 1
                elif i > want:
                    state["gaps"] += i - want
                expected[m.source] = max(want, i + 1)
                state.setdefault("first_at", time.time())
                state["last_at"] = time.time()
        if now - last_write > 0.2:
            last_write = now
            write(out, state)
    state["done"] = True
    state["senders"] = len(expected)
    # each router's first batch: one that starts past seq 1 while another router's seq 1 is late
    # is how a member could start a sender's stream at seq 2 (seen in no run yet; kept as a watch)
    firsts: dict[str, list[Any]] = {}
    for t, router, _, first, last in trace.batches:
        firsts.setdefault(router, [round(t - t0, 3), first, last])
    state["first_batch_by_router"] = firsts
    if state["received"] + state["lost_reported"] < args.n or state["gaps"] or state["duplicates"]:
        # which seqs never came (payload i is seq i + 1), with the member's protocol trace
        state["missing"] = {s: [i + 1 for i in range(args.n) if i not in nums][:20] for s, nums in got.items()}
        state["trace"] = trace.dump(t0)
    write(out, state)
    return state


class _MemberTrace:
    """Diagnostics for a member that came up short: what its Membership did (registrations,
    Resumes, replay answers, holes) and each batch's router and seq range, with times."""

    def __init__(self, group: str) -> None:
        import snipe
        from snipe.multicast.core import MCAST_DELIVER, MCAST_REPLAYED, origin_urn, unpack_batch, unpack_replayed

        self.group = group
        self.events: list[list[Any]] = []
        self.batches: list[list[Any]] = []
        m = snipe.runtime.session().membership()
        self.membership = m
        handlers = m.endpoint.system_handlers
        on_deliver, on_replayed = handlers[MCAST_DELIVER], handlers[MCAST_REPLAYED]
        resume, register = m._resume, m._register

        def deliver(batches: list[Any]) -> None:
            t = time.monotonic()
            for b in batches:
                with contextlib.suppress(Exception):
                    for origin, first, tags, _ in unpack_batch(b.payload)[1]:
                        self.batches.append([t, b.source, origin_urn(origin)[-8:], first, first + len(tags) - 1])
            on_deliver(batches)

        def replayed(messages: list[Any]) -> None:
            for x in messages:
                with contextlib.suppress(Exception):
                    self.events.append([time.monotonic(), "replayed", x.source, unpack_replayed(x.payload)])
            on_replayed(messages)
            self.events.append([time.monotonic(), "after-replayed", self.reorders()])

        def traced_resume(group: str, routers: Any, send: Any, replay_only: Any = (), new_only: bool = False) -> None:
            resume(group, routers, send, replay_only, new_only)
            self.events.append([time.monotonic(), "resume", list(routers), list(replay_only),
                                m.hold_new_until.get(group), self.reorders()])

        def traced_register(*a: Any, **kw: Any) -> list[str]:
            chosen = register(*a, **kw)
            self.events.append([time.monotonic(), "registered", chosen])
            return chosen

        handlers[MCAST_DELIVER], handlers[MCAST_REPLAYED] = deliver, replayed
        m._resume, m._register = traced_resume, traced_register     # type: ignore[method-assign]

    def reorders(self) -> dict[str, Any]:
        from snipe.multicast.core import origin_urn
        return {origin_urn(o)[-8:]: {"expected": r.expected, "held": len(r.held),
                                     "low": min(r.held) if r.held else None,
                                     "hold_until": r.hold_until, "gap_since": r.gap_since}
                for (g, o), r in list(self.membership.reorder.items()) if g == self.group}

    def dump(self, t0: float) -> dict[str, Any]:
        def rel(rows: list[list[Any]]) -> list[list[Any]]:
            return [[round(r[0] - t0, 3), *r[1:]] for r in rows]
        return {"t0_monotonic": t0, "events": rel(self.events), "first_batches": rel(self.batches[:30]),
                "last_batches": rel(self.batches[-30:]), "batches": len(self.batches), "reorders": self.reorders(),
                "joined": self.membership.joined.get(self.group), "now_monotonic": time.monotonic()}


def mcast_sender(args: argparse.Namespace) -> dict[str, Any]:
    """Wait for the group's two routers (written to routers.json), then for the test's go.json,
    then multicast N numbered messages at a steady pace, noting the live routers as it goes."""
    import snipe

    out = Path(args.dir)
    snipe.init()
    deadline = time.monotonic() + 60
    while len(_routers(args.group)) < 2:
        if time.monotonic() > deadline:
            raise SystemExit(f"the group has routers {_routers(args.group)} after 60 s, not two")
        time.sleep(0.1)
    write(out / "routers.json", {"routers": _routers(args.group), "me": snipe.me()})
    while not (out / "go.json").exists():
        if time.monotonic() > deadline + 60:
            raise SystemExit("no go.json from the test")
        time.sleep(0.05)
    t0 = time.time()
    seen: list[list[Any]] = [[0, _routers(args.group), 0.0]]
    pad = b"m" * 56
    due = time.monotonic()
    in_mcast = in_reads = 0.0
    slow: list[list[Any]] = []             # mcast calls that took over 0.2 s: [index, seconds, at]
    membership = snipe.runtime.session().membership()
    # [first seq, the targets for each seq modulo the number of routers, at]: where each seq went
    targets_seen: list[list[Any]] = [[0, [], 0.0]]
    for i in range(args.n):
        t = time.monotonic()
        seq = snipe.mcast(args.group, i.to_bytes(8, "big") + pad)
        took = time.monotonic() - t
        rotations = membership.routers_seen.get(args.group, (0, "", [], None))[2]
        if rotations != targets_seen[-1][1]:
            targets_seen.append([seq, rotations, round(time.time() - t0, 3)])
        in_mcast += took
        if took > 0.2 and len(slow) < 20:
            slow.append([i, round(took, 3), round(time.time() - t0, 3)])
        if i % 50 == 0:
            t = time.monotonic()
            now_routers = _routers(args.group)
            in_reads += time.monotonic() - t
            if now_routers != seen[-1][1]:
                seen.append([i, now_routers, round(time.time() - t0, 3)])
            write(out / "mcast-progress.json", {"sent": i + 1, "t": time.time(), "routers": seen,
                                                "in_mcast_s": round(in_mcast, 3), "in_reads_s": round(in_reads, 3)})
        due += args.interval_ms / 1000.0
        if (wait := due - time.monotonic()) > 0:
            time.sleep(wait)
    result = {"sent": args.n, "send_s": round(time.time() - t0, 3), "routers": seen, "targets": targets_seen[1:],
              "in_mcast_s": round(in_mcast, 3), "in_reads_s": round(in_reads, 3), "slow_mcast_calls": slow,
              "stats": snipe.messaging_stats()}
    # the hops to the routers settle (acknowledged, or given up for a router that died): bounded
    end = time.monotonic() + 30
    while time.monotonic() < end and any(v.get("in_flight") for v in snipe.messaging_stats().values()):
        time.sleep(0.1)
    result["stats"] = snipe.messaging_stats()
    final = _routers(args.group)
    if final != seen[-1][1]:
        seen.append([args.n, final, round(time.time() - t0, 3)])
    write(out / "mcast-sender.json", result)
    return {k: v for k, v in result.items() if k != "stats"}


# --- case 5: a host partitioned away ----------------------------------------------------------------------
def host_loss(args: argparse.Namespace) -> dict[str, Any]:
    import snipe

    out = Path(args.dir)
    snipe.init()
    code = snipe.publish(TASKS / "sleeper.py")
    p = snipe.spawn(code, str(out / "heartbeat.json"), args.task_seconds, host=args.host)
    write(out / "spawned.json", {"urn": p.urn, "code": code, "t": time.time()})
    events = []
    for ev in p.events(timeout=args.timeout):          # ends at host-lost, at the task's end, or at timeout
        events.append({"seq": ev.seq, "kind": ev.kind, "at": time.time(), "reason": ev.reason})
        write(out / "events.json", {"events": events})
        if ev.kind == "host-lost":
            break
    write(out / "events.json", {"events": events, "done": True})
    return {"urn": p.urn, "events": events}


def host_after(args: argparse.Namespace) -> dict[str, Any]:
    """After the partition healed: wait for the host to be back, watch the task for a while, then
    report its catalog state, its events, what its daemon says, and how many tasks run its code."""
    import snipe

    out = Path(args.dir)
    snipe.init()
    spawned = json.loads((out / "spawned.json").read_text())
    urn, code = spawned["urn"], spawned["code"]
    host_urn = f"urn:snipe:host:{args.host}"
    t0 = time.time()
    back_after = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        try:
            if snipe.catalog().get(host_urn).value("alive", now_ms()) is True:
                back_after = round(time.time() - t0, 3)
                break
        except SnipeError:
            pass
        time.sleep(0.1)
    time.sleep(args.settle)              # give the daemon time to republish whatever it would
    c = snipe.catalog()
    values = c.get(urn).as_dict(now_ms())
    tasks = c.query("urn:snipe:proc:")
    same_code = sorted(u for u, e in tasks.items() if e.value("code", now_ms()) == code)
    try:
        status = snipe.Process(urn).status()
        daemon_state = status.get("state")
    except SnipeError as exc:
        daemon_state = f"error: {exc}"
    return {"host_back_after_s": back_after, "state": values.get("state"), "reason": values.get("reason"),
            "events": [e.get("kind") for e in values.get("events", []) if isinstance(e, dict)],
            "daemon_state": daemon_state, "tasks_with_this_code": same_code}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="driver.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("catalog-write")
    p.add_argument("--dir", required=True)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--max-writes", type=int, default=200_000)
    p.add_argument("--put-timeout", type=float, default=2.0)
    p.set_defaults(func=catalog_write)
    p = sub.add_parser("catalog-verify")
    p.add_argument("--dir", required=True)
    p.add_argument("--since", type=float)
    p.add_argument("--timeout", type=float, default=60.0)
    p.set_defaults(func=catalog_verify)
    p = sub.add_parser("unicast")
    p.add_argument("--dir", required=True)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--interval-ms", type=float, default=2.0)
    p.add_argument("--sender-host", default="h1")
    p.add_argument("--receiver-host", default="h2")
    p.add_argument("--receiver-urn")
    p.add_argument("--timeout", type=float, default=180.0)
    p.set_defaults(func=unicast)
    p = sub.add_parser("receiver")
    p.add_argument("--dir", required=True)
    p.add_argument("--n", type=int, default=3000)
    p.add_argument("--host", required=True)
    p.add_argument("--timeout", type=float, default=240.0)
    p.set_defaults(func=receiver)
    p = sub.add_parser("migrate-stream")
    p.add_argument("--dir", required=True)
    p.add_argument("--n", type=int, default=20_000)
    p.add_argument("--interval-ms", type=float, default=0.5)
    p.add_argument("--task-host", default="h1")
    p.add_argument("--peer-host", default="h3")
    p.add_argument("--at", type=float, nargs="+", default=[1 / 3, 2 / 3], help="fractions of the stream sent")
    p.add_argument("--to", nargs="+", default=["h2", "h1"], help="the hosts to move to, one per --at")
    p.add_argument("--timeout", type=float, default=180.0)
    p.set_defaults(func=migrate_stream)
    p = sub.add_parser("mcast-member")
    p.add_argument("--dir", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--timeout", type=float, default=120.0)
    p.set_defaults(func=mcast_member)
    p = sub.add_parser("mcast-sender")
    p.add_argument("--dir", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--n", type=int, required=True)
    p.add_argument("--interval-ms", type=float, default=2.5)
    p.set_defaults(func=mcast_sender)
    p = sub.add_parser("host-loss")
    p.add_argument("--dir", required=True)
    p.add_argument("--host", default="h3")
    p.add_argument("--task-seconds", type=float, default=240.0)
    p.add_argument("--timeout", type=float, default=90.0)
    p.set_defaults(func=host_loss)
    p = sub.add_parser("host-after")
    p.add_argument("--dir", required=True)
    p.add_argument("--host", default="h3")
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--settle", type=float, default=4.0)
    p.set_defaults(func=host_after)
    args = ap.parse_args(argv)
    result = args.func(args)
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
