"""Multicast groups on real daemons: election, relay, failover of a minority of routers."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import snipe
from snipe.localcluster import LocalCluster
from snipe.runtime import now_ms
from tests.support import mcast_status, wait_for

GROUP = "urn:snipe:group:demo"

MEMBER = textwrap.dedent('''
    import sys, time, snipe
    group, expected = sys.argv[1], int(sys.argv[2])
    for attempt in range(5):       # a catalog that cannot answer in time (a loaded machine): try again
        try:
            snipe.join(group)
            snipe.catalog().set(snipe.me(), "joined", True)
            break
        except snipe.SnipeError as exc:
            print("join failed, trying again:", exc, file=sys.stderr)
            time.sleep(1)
    got, bad, last, holes, failures = {}, 0, {}, [], []
    end = time.time() + 240
    while sum(got.values()) < expected and time.time() < end:
        m = snipe.recv(timeout=5)
        if m is None:
            continue
        if m.failed:
            bad += 1
            failures.append(str(m.reason)[:200])
            continue
        n = int.from_bytes(m.payload[:8], "big")
        if n != last.get(m.source, -1) + 1:
            bad += 1
            holes.append([m.source[-8:], last.get(m.source, -1) + 1, n - 1, round(time.time(), 2)])
        last[m.source] = n
        got[m.source] = got.get(m.source, 0) + 1
    # what a failure needs to be understood: the holes, the loss reports, this member's routers
    snipe.catalog().set_many(snipe.me(), {"got": sum(got.values()), "bad": bad, "senders": len(got),
                                          "holes": holes[:10], "failures": failures[:5]})
    snipe.shutdown()                # sends the acknowledgements still owed, then closes
''')

SENDER = textwrap.dedent('''
    import sys, snipe
    group, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        snipe.mcast(group, i.to_bytes(8, "big") + b"." * 56)
    snipe.catalog().set(snipe.me(), "sent", n)
    snipe.recv(timeout=600)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def _value(p: snipe.Process, name: str) -> object:
    return snipe.catalog().get(p.urn).value(name, now_ms())


def test_every_member_gets_every_message_once_and_in_order(cluster: LocalCluster, tmp_path: Path) -> None:
    n = 300
    member_code = publish(tmp_path, "member.py", MEMBER)
    members = [snipe.spawn(member_code, GROUP, n, host=f"h{i % 3 + 1}") for i in range(3)]
    wait_for(lambda: all(_value(m, "joined") for m in members), 60, "members to join")
    assert len(snipe.members(GROUP)) == 3
    for i in range(n):
        snipe.mcast(GROUP, i.to_bytes(8, "big"))
    for m in members:
        assert m.wait(120)["exit_code"] == 0
        assert (_value(m, "got"), _value(m, "bad"), _value(m, "senders")) == (n, 0, 1)


def _routers() -> set[str]:
    from snipe.multicast.groups import live_routers

    snipe.catalog().invalidate(GROUP)
    return set(live_routers(snipe.catalog().get(GROUP), now_ms()))


def test_losing_a_router_mid_stream_loses_no_message_and_a_new_one_is_elected(cluster: LocalCluster,
                                                                              tmp_path: Path) -> None:
    """3 daemons, 12 members, 3 senders of 10,000 messages each; one router's daemon is killed
    with SIGKILL mid-stream. Every member still gets all 30,000, once each, each sender's in
    order; the third host takes the dead router's place."""
    n, senders_n = 10_000, 3
    member_code = publish(tmp_path, "member.py", MEMBER)
    members = [snipe.spawn(member_code, GROUP, n * senders_n, host=f"h{i % 3 + 1}") for i in range(12)]
    wait_for(lambda: all(_value(m, "joined") for m in members), 120, "members to join")
    routers = wait_for(lambda: len(_routers()) == 2 and _routers(), 20, "two routers")
    sender_code = publish(tmp_path, "sender.py", SENDER)
    senders = [snipe.spawn(sender_code, GROUP, n, host=f"h{i + 1}") for i in range(senders_n)]
    victim = sorted(routers)[0]
    idx = int(victim.rsplit("h", 1)[1]) - 1
    wait_for(lambda: any(_relayed(cluster, i) > n // 2 for i in range(3)), 120, "the stream to be under way")
    cluster.kill_daemon(idx)
    new = wait_for(lambda: (r := _routers()) and victim not in r and len(r) == 2 and r, 30,
                   "a new router to replace the dead one")
    assert len(new - routers) == 1
    for s in senders:
        wait_for(lambda s=s: _value(s, "sent") == n, 240, "senders to finish")
    for m in members:
        wait_for(lambda m=m: _value(m, "got") is not None, 240, "every member's count")
    counts = [(_value(m, "got"), _value(m, "bad"), _value(m, "senders")) for m in members]
    print("per member (got, out of order or failed, senders):", counts)
    if counts != [(n * senders_n, 0, senders_n)] * len(members):    # say enough to understand a failure
        group = snipe.catalog().get(GROUP).as_dict(now_ms())
        detail = [{"member": m.urn[-8:], "host": m.host, "count": c, "holes": _value(m, "holes"),
                   "failures": _value(m, "failures"), "routers": (group.get(f"member.{m.urn}") or {}).get("routers")}
                  for m, c in zip(members, counts, strict=True) if c != (n * senders_n, 0, senders_n)]
        pytest.fail(f"members missed messages; victim {victim} (killed at about {n // 2} relayed), routers "
                    f"before {sorted(routers)}, after {sorted(new)}: {json.dumps(detail)}")


def _relayed(cluster: LocalCluster, i: int) -> int:
    from snipe.daemonclient import DaemonClient

    with DaemonClient(cluster.daemons[i].address, cluster.user, timeout=5) as d:
        return int(d.call("mcast-status")[0]["relayed"])


LEAVER = textwrap.dedent('''
    import sys, time, snipe
    group = sys.argv[1]
    snipe.join(group)
    snipe.catalog().set(snipe.me(), "joined", True)
    first = snipe.recv(timeout=60)
    snipe.leave(group)
    snipe.catalog().set(snipe.me(), "left", True)
    later = 0
    end = time.time() + 3
    while time.time() < end:
        if snipe.recv(timeout=0.2) is not None:
            later += 1
    snipe.catalog().set_many(snipe.me(), {"first": first is not None, "after_leave": later})
''')


def test_a_member_that_leaves_stops_receiving(cluster: LocalCluster, tmp_path: Path) -> None:
    p = snipe.spawn(publish(tmp_path, "leaver.py", LEAVER), GROUP, host="h2")
    wait_for(lambda: _value(p, "joined"), 60, "the member to join")
    snipe.mcast(GROUP, b"before")
    wait_for(lambda: _value(p, "left"), 60, "the member to leave")
    assert p.urn not in snipe.members(GROUP)
    for i in range(20):
        snipe.mcast(GROUP, b"after %d" % i) if snipe.members(GROUP) or True else None
    assert p.wait(60)["exit_code"] == 0
    assert _value(p, "first") is True and _value(p, "after_leave") == 0


JOINER = textwrap.dedent('''
    import sys, snipe
    group, how = sys.argv[1], sys.argv[2]
    snipe.join(group)
    snipe.catalog().set(snipe.me(), "joined", True)
    if how == "stays":
        snipe.recv(timeout=300)           # until it is killed
    # "exits": without leave()
''')


def _member_lease_ms(group: str, urn: str) -> int:
    snipe.catalog().invalidate(group)
    entry = snipe.catalog().get(group)
    return next(a.ttl_ms for a in entry.records if a.name == f"member.{urn}" and not a.deleted)


def test_a_member_that_exits_or_is_killed_without_leaving_stops_being_listed(
        cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member's assertion is a lease its process renews: one that exits without leave(), or is
    killed (SIGKILL), drops out of members() once it runs out; a live member, renewing, stays."""
    group = "urn:snipe:group:leases"
    monkeypatch.setenv("SNIPE_MEMBER_LEASE_S", "2")     # read when this process first joins
    snipe.join(group)
    code = publish(tmp_path, "joiner.py", JOINER)
    env = {"SNIPE_MEMBER_LEASE_S": "2"}
    exits = snipe.spawn(code, group, "exits", host="h2", env=env)
    killed = snipe.spawn(code, group, "stays", host="h3", env=env)
    wait_for(lambda: _value(exits, "joined") and _value(killed, "joined"), 60, "both members to join")
    assert set(snipe.members(group)) >= {killed.urn, snipe.me()}
    assert _member_lease_ms(group, killed.urn) == 2000 and _member_lease_ms(group, snipe.me()) == 2000
    assert exits.wait(60)["exit_code"] == 0
    killed.kill()
    wait_for(lambda: snipe.members(group) == [snipe.me()], 30,
             "the exited and the killed member to drop out of the group, the live one to stay")
    # for three leases the live member (this process, renewing in the background) is listed at
    # every look: a lease that lapsed and was renewed again would show as a look without it
    until = time.monotonic() + 3 * 2.0
    looks = 0
    while time.monotonic() < until:
        assert snipe.members(group) == [snipe.me()], f"this process dropped out of the group after {looks} looks"
        looks += 1
        time.sleep(0.05)
    assert looks >= 20, f"only {looks} looks in three leases: members() too slow to tell a lapse"
    snipe.leave(group)
    assert snipe.members(group) == []


def test_the_daemon_forgets_members_that_exit_or_are_killed_without_leaving(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """Members on h2 that exit without leave(), or are killed with SIGKILL, are no longer local
    members there (so they count against no quota), and with no member left anywhere h2 stops
    routing their groups."""
    code = publish(tmp_path, "joiner.py", JOINER)
    env = {"SNIPE_MEMBER_LEASE_S": "2"}
    groups = {"urn:snipe:group:forgotten-1", "urn:snipe:group:forgotten-2"}
    exits = snipe.spawn(code, "urn:snipe:group:forgotten-1", "exits", host="h2", env=env)
    killed = snipe.spawn(code, "urn:snipe:group:forgotten-2", "stays", host="h2", env=env)
    wait_for(lambda: _value(exits, "joined") and _value(killed, "joined"), 60, "both members to join")
    assert groups <= set(mcast_status(cluster, 1)["routing"])
    assert exits.wait(60)["exit_code"] == 0
    os.killpg(killed.status()["pid"], signal.SIGKILL)

    def forgotten() -> bool:
        status = mcast_status(cluster, 1)
        return not groups & (set(status["local"]) | set(status["routing"]))
    wait_for(forgotten, 30, "h2 to forget the dead members and stop routing their groups")


STAYER = textwrap.dedent('''
    import sys, snipe
    group, expected = sys.argv[1], int(sys.argv[2])
    snipe.join(group)
    snipe.catalog().set(snipe.me(), "joined", True)
    got = 0
    while got < expected:
        m = snipe.recv(timeout=120)
        if m is None:
            break
        got += 1
    snipe.catalog().set(snipe.me(), "got", got)
    snipe.recv(timeout=120)           # stay a member while the console looks
''')


def test_the_console_lists_groups_and_shows_members_routers_and_their_counts(
        cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from snipe.console.main import main as console

    def console_json(*argv: str) -> Any:
        capsys.readouterr()
        assert console([*argv, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    n = 200
    code = publish(tmp_path, "stayer.py", STAYER)
    members = [snipe.spawn(code, GROUP, n, host=f"h{i % 3 + 1}") for i in range(3)]
    wait_for(lambda: all(_value(m, "joined") for m in members), 60, "members to join")
    wait_for(lambda: len(_routers()) == 2, 20, "two routers")
    for i in range(n):
        snipe.mcast(GROUP, i.to_bytes(8, "big"))
    wait_for(lambda: all(_value(m, "got") == n for m in members), 120, "every member's messages")

    def counted() -> Any:
        shown = console_json("show", GROUP)["group"]
        # A member that joined before the second router existed, or while a third one stood
        # (it steps down as surplus), re-registers with the routers there are on its next read.
        routers = {r["router"] for r in shown["routers"]}
        return (all(r["relayed"] == n for r in shown["routers"])
                and all(len(m["routers"]) == 2 and set(m["routers"]) <= routers for m in shown["members"])
                and shown)
    shown = wait_for(counted, 30, "the routers to publish their counts and every member to list both routers")
    assert sorted(m["member"] for m in shown["members"]) == sorted(m.urn for m in members)
    routers = {r["router"] for r in shown["routers"]}
    assert routers == _routers()
    for m in shown["members"]:
        assert set(m["routers"]) <= routers and len(m["routers"]) == 2
    # both routers got every message from the sender (a majority of two is both): none forwarded, none dropped
    assert [(r["duplicates"], r["history"]) for r in shown["routers"]] == [(0, n), (0, n)]
    assert sum(r["members_served"] for r in shown["routers"]) >= 3
    assert sum(r["delivered"] for r in shown["routers"]) >= 3 * n      # each member from each of its routers

    groups = console_json("groups")
    assert {"group": GROUP, "members": 3, "routers": sorted(routers), "relayed": n} in groups

    capsys.readouterr()
    assert console(["show", GROUP]) == 0 and console(["groups"]) == 0
    text = capsys.readouterr().out
    assert "3 member(s)" in text and "2 router(s)" in text and "duplicates dropped" in text
    assert all(m.urn in text for m in members) and "1 multicast group(s)" in text



COLLECTOR = textwrap.dedent('''
    import sys, snipe
    group, expected = sys.argv[1], int(sys.argv[2])
    snipe.join(group)
    snipe.catalog().set(snipe.me(), "joined", True)
    got, sources = [], set()
    while len(got) < expected:
        m = snipe.recv(timeout=120)
        if m is None:
            break
        if m.failed:
            got.append("failed: " + str(m.reason)[:100])
            continue
        got.append(m.payload.decode())
        sources.add(m.source)
        snipe.catalog().set(snipe.me(), "got", got)
    snipe.catalog().set(snipe.me(), "sources", sorted(sources))
    snipe.recv(timeout=120)
''')

RESTARTED_SENDER = textwrap.dedent('''
    import os, sys, snipe
    group, n = sys.argv[1], int(sys.argv[2])
    host = os.environ["SNIPE_HOST_URN"].rsplit(":", 1)[1]
    for i in range(n):
        snipe.mcast(group, f"{host} {i}".encode())
    snipe.catalog().set(snipe.me(), "sent_from", host)
    snipe.recv(timeout=600)
''')


def test_a_sender_restarted_after_its_hosts_loss_is_heard_again(cluster: LocalCluster, tmp_path: Path) -> None:
    """A sender restarted elsewhere (from the beginning: no checkpoint) numbers its messages from 1
    again, as a new incarnation: the routers must not take them for the copies of its first
    incarnation's, which they relayed already (they were dropped as duplicates, silently)."""
    n = 20
    member = snipe.spawn(publish(tmp_path, "collector.py", COLLECTOR), GROUP, 2 * n, host="h1")
    wait_for(lambda: _value(member, "joined"), 60, "the member to join")
    sender = snipe.spawn(publish(tmp_path, "sender.py", RESTARTED_SENDER), GROUP, n, host="h3",
                         restart="on-host-failure")
    _collected(member, n)
    pid = sender.status()["pid"]
    cluster.kill_daemon(2)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: _value(sender, "sent_from") in ("h1", "h2"), 90, "the sender to restart on another host")
    got = _collected(member, 2 * n)
    again = _value(sender, "sent_from")
    assert got == [f"h3 {i}" for i in range(n)] + [f"{again} {i}" for i in range(n)]
    assert wait_for(lambda: _value(member, "sources"), 30, "the member's report") == [sender.urn]


CHECKPOINTED_SENDER = textwrap.dedent('''
    import sys, snipe
    group, n = sys.argv[1], int(sys.argv[2])
    state, restored = {"next": 0}, []
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: (state.update(saved), restored.append(True)))
    snipe.init()
    mark = "again" if restored else "first"
    while state["next"] < n:
        i = state["next"]
        snipe.mcast(group, f"{mark} {i}".encode())
        state["next"] = i + 1
        if i == n // 2 - 1 and not restored:
            snipe.checkpoint()
    snipe.catalog().set(snipe.me(), "done", mark)
    snipe.recv(timeout=600)
''')


def test_a_sender_restored_from_its_checkpoint_is_heard_again(cluster: LocalCluster, tmp_path: Path) -> None:
    """A sender restored from a checkpoint taken halfway sends the second half again, numbered
    from where the checkpoint stood, numbers its lost incarnation had used after it: each of
    those messages must reach the member (they were dropped as copies of the lost ones)."""
    n = 20
    member = snipe.spawn(publish(tmp_path, "collector.py", COLLECTOR), GROUP, n + n // 2, host="h1")
    wait_for(lambda: _value(member, "joined"), 60, "the member to join")
    sender = snipe.spawn(publish(tmp_path, "sender.py", CHECKPOINTED_SENDER), GROUP, n, host="h3",
                         restart="on-host-failure")
    wait_for(lambda: len(_value(member, "got") or []) >= n and _value(sender, "done") == "first", 60,
             "the first incarnation's messages")
    pid = sender.status()["pid"]
    cluster.kill_daemon(2)
    os.killpg(pid, signal.SIGKILL)
    wait_for(lambda: _value(sender, "done") == "again", 90, "the sender to be restored on another host")
    got = _collected(member, n + n // 2)
    assert got == [f"first {i}" for i in range(n)] + [f"again {i}" for i in range(n // 2, n)]


FORGER = textwrap.dedent('''
    import sys, time, snipe
    from snipe.multicast.core import MCAST_DATA, MCAST_DELIVER, Header, batches, origin_of, pack
    from snipe.multicast.groups import live_routers
    from snipe.runtime import now_ms
    group, victim, member = sys.argv[1], sys.argv[2], sys.argv[3]
    endpoint = snipe.session().endpoint()
    for router in sorted(live_routers(snipe.catalog().get(group), now_ms())):      # through the routers
        endpoint.send(router, pack(Header(group, origin_of(victim, 1), 1, 0, ()), b"forged"), MCAST_DATA)
    for batch in batches(group, [(origin_of(victim, 2), 1, 0, b"forged-directly")]):   # past them
        endpoint.send(member, batch, MCAST_DELIVER)
    snipe.mcast(group, b"genuine 1")
    end = time.monotonic() + 60           # the member acknowledged the batch: it took it in, or dropped it
    while snipe.messaging_stats().get(member, {}).get("in_flight", 1) and time.monotonic() < end:
        time.sleep(0.02)
    snipe.mcast(group, b"genuine 2")
    snipe.catalog().set(snipe.me(), "sent", True)
    snipe.recv(timeout=600)
''')


def test_a_process_cannot_multicast_in_anothers_name(cluster: LocalCluster, tmp_path: Path) -> None:
    """A process that hands a router a message claiming another's origin is refused, and so is
    a batch it sends a member directly, past the routers: the members get only what it sends as
    itself (its channel says who it is; only routers, host daemons, pass on others')."""
    from snipe.daemonclient import DaemonClient

    member = snipe.spawn(publish(tmp_path, "collector.py", COLLECTOR), GROUP, 2, host="h1")
    wait_for(lambda: _value(member, "joined"), 60, "the member to join")
    forger = snipe.spawn(publish(tmp_path, "forger.py", FORGER), GROUP, snipe.me(), member.urn, host="h2")
    wait_for(lambda: _value(forger, "sent"), 60, "the forger to send")
    got = _collected(member, 2)
    assert got == ["genuine 1", "genuine 2"]
    assert wait_for(lambda: _value(member, "sources"), 30, "the member's report") == [forger.urn]
    forged = 0
    for d in cluster.daemons:
        with DaemonClient(d.address, cluster.user, timeout=5) as c:
            forged += int(c.call("mcast-status")[0]["forged"])
    assert forged == len(_routers())


MIGRATING_SENDER = textwrap.dedent('''
    import sys, snipe
    group = sys.argv[1]
    state = {"next": 0}
    snipe.on_checkpoint(lambda: state)
    snipe.on_restore(lambda saved: state.update(saved))
    snipe.init()
    while True:
        m = snipe.recv(timeout=300)          # "send up to k"; the migration comes while it waits here
        if m is None:
            break
        while state["next"] < int(m.payload):
            snipe.mcast(group, f"m {state['next']}".encode())
            state["next"] += 1
        snipe.send(m.source, b"sent", tag=7)
''')


def test_a_migrated_sender_goes_on_with_its_stream(cluster: LocalCluster, tmp_path: Path) -> None:
    """A sender that moves to another host mid-stream goes on where it was: the members get its
    messages from both hosts once each and in order, as one stream from one source."""
    n = 20
    member = snipe.spawn(publish(tmp_path, "collector.py", COLLECTOR), GROUP, n, host="h1")
    wait_for(lambda: _value(member, "joined"), 60, "the member to join")
    sender = snipe.spawn(publish(tmp_path, "sender.py", MIGRATING_SENDER), GROUP, host="h3")
    for upto, move_to in ((n // 2, "h2"), (n, None)):
        snipe.send(sender.urn, str(upto).encode())
        done = snipe.recv(source=sender.urn, tag=7, timeout=60)
        assert done is not None and not done.failed, done
        if move_to:
            assert sender.migrate(move_to)["to"] == f"urn:snipe:host:{move_to}"
    assert _collected(member, n) == [f"m {i}" for i in range(n)]
    assert wait_for(lambda: _value(member, "sources"), 30, "the member's report") == [sender.urn]


def _collected(member: snipe.Process, n: int) -> list[str]:
    """What COLLECTOR `member` got, once it has `n` messages."""
    return wait_for(lambda: (g := _value(member, "got") or []) and len(g) >= n and g, 60,  # type: ignore[return-value]
                    f"the member's {n} messages")


ROLLING = textwrap.dedent('''
    import sys, time, snipe
    group, role = sys.argv[1], sys.argv[2]      # "listens", "member-sends" (a member that sends), "sends"
    PACE_S = 0.01                 # between a sender's messages: at least this (a lower bound on time)
    if role != "sends":
        for attempt in range(5):  # a catalog that cannot answer in time (a loaded machine): try again
            try:
                snipe.join(group)
                break
            except snipe.SnipeError as exc:
                print("join failed, trying again:", exc, file=sys.stderr)
                time.sleep(1)
        snipe.catalog().set(snipe.me(), "joined", True)
    got, last, bad, holes, failures, send_errors = {}, {}, 0, [], [], []
    sending, sent, next_send = False, 0, 0.0
    said, said_at = None, 0.0
    end = time.monotonic() + 400
    while time.monotonic() < end:
        now = time.monotonic()
        if sending and now >= next_send:
            next_send = now + PACE_S
            try:                  # an error takes no sequence number: the same message goes again
                snipe.mcast(group, sent.to_bytes(8, "big"))
                sent += 1
            except snipe.SnipeError as exc:
                send_errors.append(f"{round(time.time(), 2)} {exc}"[:200])
        m = snipe.recv(timeout=max(0.0, next_send - now) if sending else 0.2)
        if m is not None and m.group is None and not m.failed:     # the test's word: go, or stop
            sending = m.payload == b"go"
            if not sending:
                snipe.catalog().set(snipe.me(), "sent", sent)
        elif m is not None and m.failed:
            bad += 1
            failures.append(str(m.reason)[:200])
        elif m is not None:
            n = int.from_bytes(m.payload[:8], "big")
            if n != last.get(m.source, -1) + 1:
                bad += 1
                holes.append([m.source[-8:], last.get(m.source, -1) + 1, n - 1])
            last[m.source] = n
            got[m.source] = got.get(m.source, 0) + 1
        state = (dict(got), bad, len(send_errors))
        if state != said and time.monotonic() - said_at >= 0.3:
            try:                  # a catalog slow to answer on a loaded machine: said next time
                snipe.catalog().set_many(snipe.me(), {"got": got, "bad": bad, "holes": holes[:10],
                                                      "failures": failures[:5], "send_errors": send_errors[-5:]})
                said = state
            except snipe.SnipeError as exc:
                print("could not report:", exc, file=sys.stderr)
            said_at = time.monotonic()
''')


def _registered_with_all_routers(members: list[snipe.Process], routers: set[str]) -> bool:
    """The group is back to full strength: `routers` are its live routers, and every member is
    registered with them (what its guarantee against losing a router needs)."""
    from snipe.multicast.groups import live_members

    snipe.catalog().invalidate(GROUP)
    entry = snipe.catalog().get(GROUP)
    listed = live_members(entry, now_ms())
    return _routers() == routers and all(set((listed.get(m.urn) or {}).get("routers") or ()) == routers
                                         for m in members)


def _rolling_report(cluster: LocalCluster, members: list[snipe.Process], senders: list[snipe.Process]) -> Any:
    """What a stalled or failed run needs to be understood: each task's counts and stderr's end,
    the group's entry, each daemon's multicast state."""
    from snipe.multicast.groups import live_members

    def stderr_tail(p: snipe.Process) -> str:
        task = p.urn.rsplit(":", 1)[1]
        found = [f for d in cluster.daemons for f in (d.state_dir / "tasks" / task).glob("*.stderr")]
        return found[0].read_text(errors="replace")[-600:] if found else ""

    def daemon(i: int) -> Any:
        try:
            st = mcast_status(cluster, i)
            return {k: st.get(k) for k in ("routing", "restored", "local", "served")}
        except Exception as exc:            # a report: what it could not learn, it says
            return repr(exc)

    snipe.catalog().invalidate(GROUP)
    entry = snipe.catalog().get(GROUP)
    return {"tasks": {p.urn[-8:]: {"host": p.host, **{k: _value(p, k) for k in ("got", "bad", "holes", "failures",
                                                                                "send_errors", "sent")},
                                   "stderr": stderr_tail(p)} for p in {*members, *senders}},
            "routers": sorted(_routers()),
            "registered": {u[-8:]: v.get("routers") for u, v in live_members(entry, now_ms()).items()},
            "daemons": {d.host_id: daemon(i) for i, d in enumerate(cluster.daemons)}}


def _got_from(member: snipe.Process, sender: snipe.Process) -> int:
    return int((_value(member, "got") or {}).get(sender.urn, 0))        # type: ignore[union-attr]


def test_members_keep_their_group_through_restarts_of_their_hosts_daemons(cluster: LocalCluster,
                                                                          tmp_path: Path) -> None:
    """Members on h1 and h2 (the group's two routers), a member on h1 and a process on h3
    sending throughout. h1's daemon is killed and started again mid-stream, then h2's (down
    past its router lease): each restarted daemon routes the group again for its members, who
    do nothing (so the group survives the second restart), and every member gets every message
    once, each sender's in order, the member on h1 sending all along."""
    code = publish(tmp_path, "rolling.py", ROLLING)
    listeners = [snipe.spawn(code, GROUP, "listens", host=h) for h in ("h1", "h2", "h2")]
    talker = snipe.spawn(code, GROUP, "member-sends", host="h1")
    outsider = snipe.spawn(code, GROUP, "sends", host="h3")
    members, senders = [*listeners, talker], [talker, outsider]
    both = {"urn:snipe:host:h1", "urn:snipe:host:h2"}
    wait_for(lambda: all(_value(m, "joined") for m in members), 60, "members to join")
    wait_for(lambda: _registered_with_all_routers(members, both), 60, "h1 and h2 to route, every member with both")
    for s in senders:
        snipe.send(s.urn, b"go")

    def progressed(by: int) -> None:
        marks = {(m.urn, s.urn): _got_from(m, s) + by for m in members for s in senders}
        try:
            wait_for(lambda: all(_got_from(m, s) >= marks[(m.urn, s.urn)] for m in members for s in senders), 90,
                     f"every member to get {by} more messages from each sender")
        except AssertionError:
            print("stalled:", json.dumps(_rolling_report(cluster, members, senders), default=str))
            raise

    progressed(50)
    # h1 comes back at once (within its router lease), h2 once its lease has run out (every
    # member moved to h1 alone, then back to both)
    for i, host, down_past_lease in ((0, "h1", False), (1, "h2", True)):
        cluster.kill_daemon(i)
        if down_past_lease:
            wait_for(lambda host=host: _routers() == both - {f"urn:snipe:host:{host}"}, 30,
                     f"{host}'s router lease to run out")
        cluster.start_daemon(i)
        members_here = {m.urn for m in members if m.host == f"urn:snipe:host:{host}"}
        wait_for(lambda i=i, here=members_here: here <= set(mcast_status(cluster, i)["local"].get(GROUP, ())), 30,
                 f"{host}'s restarted daemon to know its members again")
        wait_for(lambda: _registered_with_all_routers(members, both), 60,
                 f"{host} to route again after its restart, every member with both routers")
        # 150 more paced messages: at least 1.5 s, so every sender has read the routers again
        progressed(150)
    for s in senders:
        snipe.send(s.urn, b"stop")
    sent = {s.urn: wait_for(lambda s=s: _value(s, "sent"), 60, "the senders to stop") for s in senders}

    def complete() -> bool:
        return all(_got_from(m, s) >= sent[s.urn] for m in members for s in senders)
    try:
        wait_for(complete, 90, "every member to get every message")
    finally:
        print("sent:", sent, json.dumps(_rolling_report(cluster, members, senders), default=str))
    for m in members:
        assert (_value(m, "got"), _value(m, "bad")) == (sent, 0), m.urn
