"""The reliability suite on namespace hosts (see snipe/netlab): crashes, partitions, loss, delay
and cut links, with every participant inside a namespace. Each case reports what was sent,
acknowledged, delivered and lost, and how long things took.

Routing through the gateway host is in test_gateway.py.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil
import pytest

from snipe.netlab import Lab, default_topology
from tests.netns.helpers import driver_argv, lab_scope, read_json, wait_file


def _alive(pid: int | None) -> bool:
    """Whether process `pid` still runs (a zombie has ended)."""
    if pid is None:
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _finish(proc: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"the driver did not finish within {timeout} s:\n{err[-4000:]}") from None
    assert proc.returncode == 0, f"the driver failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}"
    lines = [ln for ln in out.splitlines() if ln.strip()]
    return json.loads(lines[-1])


# --- case 1 ---------------------------------------------------------------------------------------------
def test_catalog_acknowledged_writes_survive_crashes_and_a_partition(
        make_lab: Callable[..., Lab], report: Callable[[str, dict[str, Any]], None]) -> None:
    """Sequential writes (W=2 of 3) while r1 is killed -9 and restarted, r3's host is partitioned
    away, and r2 is killed -9 and restarted during that partition (so for a while no quorum
    exists and writes must fail, not be acknowledged). After the heal every replica holds every
    acknowledged write, and all status digests agree: the time from heal to that is reported."""
    lab = make_lab(default_topology(daemons=False))
    work = lab.dir / "case1"
    work.mkdir()
    writer = lab.popen(lab.client_host,
                       driver_argv("catalog-write", "--dir", work, "--seconds", 11, "--put-timeout", 1.0))
    timeline: list[dict[str, Any]] = []
    t0 = time.time()

    def at(seconds: float) -> None:
        wait_file(work / "progress.json", lambda v: v["elapsed"] >= seconds, 60, writer, f"the writer at {seconds} s")

    def mark(what: str, **kw: Any) -> None:
        timeline.append({"t": round(time.time() - t0, 2), "what": what, **kw})

    try:
        at(1.5)
        lab.kill("replica@h1")
        mark("kill -9 r1")
        at(3.0)
        lab.start("replica@h1")
        mark("r1 restarted")
        at(4.5)
        part = lab.partition(["h3"])
        mark("partition h3 (r3)")
        at(6.0)
        lab.kill("replica@h2")
        mark("kill -9 r2 (no quorum: r3 cut off)")
        at(7.5)
        lab.start("replica@h2")
        mark("r2 restarted")
        result = _finish(writer, 60)
        mark("writer done")
        verifier = lab.popen(lab.client_host, driver_argv("catalog-verify", "--dir", work, "--timeout", 60))
        wait_file(work / "verify-ready.json", timeout=60, proc=verifier, what="the verifier")
        lab.heal(part)
        (work / "healed.json").write_text(json.dumps({"at": time.time()}))
        mark("partition healed")
        verify = _finish(verifier, 90)
    finally:
        for p in (writer, locals().get("verifier")):
            if p is not None and p.poll() is None:
                p.kill()
    writes = read_json(work / "writes.json")
    acked = len(writes["acked"])
    lost = {r: v.get("acked_missing_count") for r, v in verify["replicas"].items()}
    facts = {"sent": result["sent"], "acknowledged": acked, "refused_or_timed_out": len(result["failed"]),
             "lost_per_replica": lost, "converged": verify["converge"]["converged"],
             "converge_after_heal_s": verify["converge"]["after_s"], "put_p50_ms": result["put_p50_ms"],
             "put_max_ms": result["put_max_ms"], "timeline": timeline,
             "failures_window_s": [result["failed"][0][2], result["failed"][-1][2]] if result["failed"] else None,
             "replicas": verify["replicas"]}
    report("case1 catalog", facts)
    assert acked > 100, facts
    assert result["failed"], "with r2 down and r3 cut off some writes must have been refused"
    assert verify["converge"]["converged"], facts
    for replica, v in verify["replicas"].items():
        assert "error" not in v, (replica, v)
        assert v["acked_missing_count"] == 0, (replica, v)


# --- case 2 ---------------------------------------------------------------------------------------------
def _on(endpoint: str, cidr: str) -> bool:
    host = endpoint.split("://", 1)[1].rsplit(":", 1)[0]
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(cidr)
    except ValueError:
        return False


CONDITIONS = {
    "clean": {},
    "lossy": {"loss_pct": 5, "delay_ms": 50, "jitter_ms": 20},
}


@pytest.fixture(scope="module", params=sorted(CONDITIONS))
def unicast_run(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any],
                report: Callable[[str, dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """A sender task on h1 streams 3000 numbered 1 KiB messages (one per 2 ms) to a receiver
    task on h2 (both hosts on public and fastnet); a driver in `ctl` spawns both through the
    daemons. "lossy": 5% loss leaving h1 and h2 on both networks (nftables), and 50 ms each way
    plus up to 20 ms per-connection jitter on h1's links (netem where the kernel has it, else
    the harness's relay). A third of the way in, h1's fastnet link is cut (interface down)."""
    with lab_scope(request) as make:
        yield _unicast(make(default_topology()), request.param, report)


def _unicast(lab: Lab, condition: str, report: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    cond = CONDITIONS[condition]
    delays: list[str] = []
    if cond:
        for host in ("h1", "h2"):
            for net in ("fastnet", "public"):
                lab.loss(host, net, cond["loss_pct"], direction="out")
        delays = [lab.delay("h1", net, cond["delay_ms"], jitter_ms=cond["jitter_ms"]) for net in ("fastnet", "public")]
    work = lab.dir / f"case2-{condition}"
    work.mkdir()
    n = 3000
    driver = lab.popen(lab.client_host, driver_argv("unicast", "--dir", work, "--n", n, "--interval-ms", 2,
                                                    "--sender-host", "h1", "--receiver-host", "h2"))
    try:
        wait_file(work / "progress.json", lambda v: v["sent"] >= n // 3, 90, driver, "a third of the stream")
        before = read_json(work / "progress.json")
        lab.cut("h1", "fastnet")
        summary = _finish(driver, 180)
    finally:
        if driver.poll() is None:
            driver.kill()
    tx, rx = read_json(work / "sender.json"), read_json(work / "receiver.json")
    facts = {"condition": condition, **cond, "n": n, "sent": tx.get("sent"), "acknowledged": tx.get("acked"),
             "delivered": rx.get("received"), "lost": (tx.get("sent") or 0) - (rx.get("received") or 0),
             "duplicates": rx.get("duplicates"), "gaps": rx.get("gaps"), "in_order": rx.get("in_order"),
             "retransmitted": tx.get("retransmitted"), "delivery_failures": tx.get("failures"),
             "routes": tx.get("routes", []), "route_before_cut": (before.get("routes") or [[0, None]])[-1][1],
             "cut_after_messages": before["sent"], "send_s": tx.get("send_s"), "all_acked_s": tx.get("all_acked_s"),
             "delay_mechanism": lab.faults()[delays[0]]["mechanism"] if delays else None,
             "relay": {f: lab.relay_stats(f) for f in delays}, "driver": summary,
             "fastnet": lab.topo.net("fastnet").cidr, "public": lab.topo.net("public").cidr}
    report(f"case2 unicast ({condition})", facts)
    return facts


def test_unicast_loses_duplicates_and_reorders_nothing(unicast_run: dict[str, Any]) -> None:
    f = unicast_run
    assert f["driver"]["sender_exit"] == 0 and f["driver"]["receiver_exit"] == 0, f["driver"]
    assert f["delivered"] == f["n"] and f["in_order"] and f["duplicates"] == 0 and f["gaps"] == 0, f
    assert f["acknowledged"] == f["n"] and not f["delivery_failures"], f


def test_unicast_uses_the_private_net_then_falls_back_to_public_when_it_is_cut(unicast_run: dict[str, Any]) -> None:
    f = unicast_run
    routes, fast, public = f["routes"], f["fastnet"], f["public"]
    assert routes and _on(routes[0][1], fast), f"the stream did not start on fastnet: {routes}"
    cut_index = f["cut_after_messages"]
    early = [r for r in routes if r[0] < cut_index - 25 and not _on(r[1], fast)]
    assert not early, f"the sender left fastnet before it was cut: {routes}"
    assert _on(f["route_before_cut"], fast), f
    assert _on(routes[-1][1], public), f"not on public after fastnet was cut: {routes}"


# --- case 3 ---------------------------------------------------------------------------------------------
MCAST_N = 3000
MCAST_HOSTS = ("h1", "h2", "h3", "gw")


@pytest.fixture(scope="module")
def mcast_partition_run(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any],
                        report: Callable[[str, dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """One member on each of h1, h2, h3 and gw (plain processes, so a daemon that fences its
    tasks after its lease lapses leaves them be); the group elects two routers; a sender on h1
    multicasts 3000 numbered messages (one per 2.5 ms). A quarter of the way in, the host of a
    router other than h1 is partitioned away, until the sender sees a new router elected in
    its place; then healed."""
    with lab_scope(request) as make:
        yield _mcast_partition(make(default_topology()), report)


def _mcast_partition(lab: Lab, report: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    work = lab.dir / "case3"
    work.mkdir()
    group, n = f"urn:snipe:group:case3-{lab.rid}", MCAST_N
    procs: dict[str, subprocess.Popen[str]] = {}
    timeline: list[dict[str, Any]] = []
    t0 = time.time()

    def mark(what: str, **kw: Any) -> None:
        timeline.append({"t": round(time.time() - t0, 2), "what": what, **kw})

    try:
        for h in MCAST_HOSTS:
            procs[h] = lab.popen(h, driver_argv("mcast-member", "--dir", work, "--group", group, "--n", n,
                                                "--name", h, "--timeout", 180))
        for h in MCAST_HOSTS:
            wait_file(work / f"member-{h}.json", timeout=90, proc=procs[h], what=f"the member on {h} to join")
        sender = procs["sender"] = lab.popen("h1", driver_argv("mcast-sender", "--dir", work, "--group", group,
                                                               "--n", n, "--interval-ms", 2.5))
        routers = wait_file(work / "routers.json", timeout=90, proc=sender, what="two routers")["routers"]
        victim_urn = next(r for r in routers if r != "urn:snipe:host:h1")
        victim = victim_urn.rsplit(":", 1)[1]
        (work / "go.json").write_text("{}")
        mark("stream starts", routers=routers)
        wait_file(work / "mcast-progress.json", lambda v: v["sent"] >= n // 4, 90, sender, "a quarter sent")
        part = lab.partition([victim])
        part_at = time.time()
        mark(f"partition {victim} (a router's host)")

        def replaced(v: dict[str, Any]) -> bool:
            now = v["routers"][-1][1]
            return (victim_urn not in now and len(now) >= 2) or (work / "mcast-sender.json").exists()

        wait_file(work / "mcast-progress.json", replaced, 60, sender, "a new router")
        elected_at = time.time()
        mark("the sender sees a new router", routers=read_json(work / "mcast-progress.json")["routers"][-1][1])
        at_heal = {"sent": read_json(work / "mcast-progress.json").get("sent"),
                   "inside_member_received": read_json(work / f"member-{victim}.json").get("received")}
        lab.heal(part)
        heal_at = time.time()
        mark("healed", **at_heal)
        sent = _finish(sender, 120)
        got = {h: _finish(procs[h], 200) for h in MCAST_HOSTS}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    tx = read_json(work / "mcast-sender.json")
    hops = {urn: {"sent": v.get("sent"), "acked": v.get("acked")} for urn, v in tx.get("stats", {}).items()
            if "sent" in v}
    members = {h: {"inside_partition": h == victim, "delivered": g["received"], "lost": n - g["received"],
                   "lost_reported": g["lost_reported"], "duplicates": g["duplicates"], "gaps": g["gaps"],
                   "senders": g.get("senders"), "holes": g["holes"][:3],
                   "first_batch_by_router": g.get("first_batch_by_router"),
                   "done_after_heal_s": round(g["last_at"] - heal_at, 3) if g.get("last_at") else None}
               for h, g in got.items()}
    for h, g in got.items():
        if "missing" in g:          # the driver's diagnostics for a member that came up short
            missing = sorted({q for qs in g["missing"].values() for q in qs})
            members[h].update(missing=g["missing"], trace=g.get("trace"),
                              missing_sent_to={q: _sent_to(tx.get("targets", []), q) for q in missing[:5]})
    facts = {"n": n, "sent": sent["sent"], "acknowledged_by_router_hops": hops, "members": members,
             "victim": victim, "routers_seen_by_sender": sent["routers"], "timeline": timeline,
             "new_router_seen_after_s": round(elected_at - part_at, 3), "partition_s": round(heal_at - part_at, 3),
             "send_s": sent["send_s"], "in_mcast_s": tx.get("in_mcast_s"), "in_router_reads_s": tx.get("in_reads_s"),
             "slow_mcast_calls": tx.get("slow_mcast_calls")}
    report("case3 multicast, a router's host partitioned", facts)
    return facts


def _sent_to(targets: list[list[Any]], seq: int) -> list[str] | None:
    """The routers the sender sent `seq` to, from its [first seq, rotations, at] record."""
    rotations = next((rot for first, rot, _ in reversed(targets) if first <= seq), None)
    return rotations[seq % len(rotations)] if rotations else None


def test_members_outside_the_partition_get_everything_once_in_order(mcast_partition_run: dict[str, Any]) -> None:
    f = mcast_partition_run
    for h, m in f["members"].items():
        if not m["inside_partition"]:
            assert (m["delivered"], m["lost_reported"], m["duplicates"], m["gaps"]) == (f["n"], 0, 0, 0), (h, f)


def test_a_new_router_replaces_the_partitioned_one(mcast_partition_run: dict[str, Any]) -> None:
    """After the victim's partition the sender sees at least two routers without it, one of
    them new: new against the routers of just before, not of the very start (hosts that elect
    themselves at once step down to the keepers, and a host that stepped down may be the one
    elected again)."""
    f = mcast_partition_run
    victim, seen = f"urn:snipe:host:{f['victim']}", f["routers_seen_by_sender"]
    assert victim in seen[0][1], f
    lost_at = next((i for i, (_, r, _) in enumerate(seen) if victim not in r), None)
    assert lost_at is not None and lost_at > 0, f
    before, after = set(seen[lost_at - 1][1]), [set(r) for _, r, _ in seen[lost_at:]]
    assert victim in before, f
    assert any(victim not in r and len(r) >= 2 and r - before for r in after), f


def test_members_inside_the_partition_catch_up_or_report_the_loss(mcast_partition_run: dict[str, Any]) -> None:
    f = mcast_partition_run
    inside = f["members"][f["victim"]]
    assert inside["duplicates"] == 0 and inside["gaps"] == 0, f
    assert inside["delivered"] + inside["lost_reported"] == f["n"], f


# --- case 4 ---------------------------------------------------------------------------------------------
MIGRATE_N = 20_000


def test_a_task_migrated_between_namespaces_mid_stream_gets_every_message_once_in_order(
        make_lab: Callable[..., Lab], report: Callable[[str, dict[str, Any]], None]) -> None:
    """A counting task on h1 (state moved by its on_checkpoint/on_restore hooks) receives 20,000
    numbered 1 KiB messages from a sender task on h3 (one per 0.5 ms); a driver in ctl moves it
    to h2 a third of the way in and back to h1 at two thirds. It counts every message once and
    in order, the sender sees every message acknowledged and no delivery failure. The blackout
    reported is what the task saw: from its last message before a move to its first after."""
    lab = make_lab(default_topology())
    work = lab.dir / "case4"
    work.mkdir()
    n = MIGRATE_N
    driver = lab.popen(lab.client_host, driver_argv("migrate-stream", "--dir", work, "--n", n, "--interval-ms", 0.5,
                                                    "--task-host", "h1", "--peer-host", "h3",
                                                    "--at", 1 / 3, 2 / 3, "--to", "h2", "h1"))
    try:
        summary = _finish(driver, 240)
    finally:
        if driver.poll() is None:
            driver.kill()
    tx, rx = read_json(work / "sender.json"), read_json(work / "counter.json")
    facts = {"n": n, "sent": tx.get("sent"), "acknowledged": tx.get("acked"), "delivered": rx.get("count"),
             "lost": (tx.get("sent") or 0) - (rx.get("count") or 0), "duplicates": rx.get("duplicates"),
             "gaps": rx.get("gaps"), "in_order": rx.get("in_order"), "first_bad": rx.get("first_bad"),
             "retransmitted": tx.get("retransmitted"), "delivery_failures": tx.get("failures"),
             "failed_messages_at_task": rx.get("failed"), "task_hosts": rx.get("hosts"),
             "moves_by_driver": summary["moves"], "blackout_seen_by_task": rx.get("moves"),
             "routes": tx.get("routes", []), "send_s": tx.get("send_s"), "all_acked_s": tx.get("all_acked_s"),
             "driver": {k: v for k, v in summary.items() if k != "moves"}}
    report("case4 migration mid-stream", facts)
    assert all("error" not in m for m in summary["moves"]), facts
    assert rx.get("hosts") == ["urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h1"], facts
    assert summary["counter_host"] == "urn:snipe:host:h1", facts
    moved_at = [m["at_message"] for m in rx.get("moves", [])]
    assert len(moved_at) == 2 and all(0 < i < n for i in moved_at), f"the moves were not mid-stream: {facts}"
    assert summary["sender_exit"] == 0 and summary["counter_exit"] == 0, facts
    assert (rx.get("count"), rx.get("duplicates"), rx.get("gaps"), rx.get("in_order")) == (n, 0, 0, True), facts
    assert tx.get("acked") == n and not tx.get("failures"), facts


# --- case 5 ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def partitioned_host_run(request: pytest.FixtureRequest, stale_cleaned: dict[str, Any],
                         report: Callable[[str, dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """A sleeper task on h3, watched from ctl with Process.events(); h3 is partitioned away
    until the watcher sees host-lost, then healed; then the task's state is read again."""
    with lab_scope(request) as make:
        yield _partitioned_host(make(default_topology(lease_s=3.0)), report)


def _partitioned_host(lab: Lab, report: Callable[[str, dict[str, Any]], None]) -> dict[str, Any]:
    work = lab.dir / "case5"
    work.mkdir()
    watcher = lab.popen(lab.client_host, driver_argv("host-loss", "--dir", work, "--host", "h3"))
    try:
        wait_file(work / "events.json", lambda v: any(e["kind"] == "started" for e in v["events"]), 90, watcher,
                  "the task to start")
        beat = wait_file(work / "heartbeat.json", lambda v: v["beat"] >= 1, 30, None, "the task's heartbeat")
        part_at = time.time()
        part = lab.partition(["h3"])
        loss = _finish(watcher, 60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    lost = [e for e in loss["events"] if e["kind"] == "host-lost"]
    heal_at = time.time()
    lab.heal(part)
    after = _finish(lab.popen(lab.client_host, driver_argv("host-after", "--dir", work, "--host", "h3",
                                                           "--settle", 2 * lab.topo.lease_s)), 90)
    running = _alive(beat.get("pid"))                  # pids are global: the namespace does not hide it
    facts = {"task": loss["urn"], "lease_s": lab.topo.lease_s, "events_during_partition": loss["events"],
             "host_lost_after_partition_s": round(lost[0]["at"] - part_at, 3) if lost else None,
             "healed_after_s": round(heal_at - part_at, 3), "after_heal": after,
             "task_process_still_running_after_heal": running,
             "task_pid": beat.get("pid")}
    report("case5 partitioned host", facts)
    return facts


def test_a_partitioned_hosts_tasks_are_reported_lost_after_its_lease(partitioned_host_run: dict[str, Any]) -> None:
    facts = partitioned_host_run
    kinds = [e["kind"] for e in facts["events_during_partition"]]
    assert kinds[-1:] == ["host-lost"], facts
    assert facts["host_lost_after_partition_s"] <= facts["lease_s"] + 10, facts


def test_after_the_heal_nothing_is_duplicated_or_resurrected(partitioned_host_run: dict[str, Any]) -> None:
    facts = partitioned_host_run
    after = facts["after_heal"]
    assert after["host_back_after_s"] is not None, f"h3 did not come back after the heal: {facts}"
    assert len(after["tasks_with_this_code"]) == 1, f"a duplicate task appeared: {facts}"
    assert "started" not in after["events"][1:], f"the task was started again: {facts}"
    assert after["state"] in ("lost", "killed", "exited"), facts
    assert not facts["task_process_still_running_after_heal"], facts
