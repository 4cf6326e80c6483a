"""A request to a daemon that is not there is dropped unsent and said so (NotDelivered), so a
spawner can safely try another host; one that reached a daemon which then went silent is a
plain Unreachable (the daemon may have acted on it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

import snipe
import snipe.runtime as runtime
from snipe.daemonclient import DaemonClient
from snipe.errors import MigrationFailed, NotAuthorized, NotDelivered, NotFound, Unreachable
from snipe.identity import Identity
from snipe.localcluster import LocalCluster, free_port
from snipe.runtime import Process, now_ms
from snipe.transport import server_socket
from snipe.wire import Envelope, decode, encode
from tests.integration.test_daemon import SLEEPER
from tests.support import await_answer, pose_as_host, send_request, wait_for

DAEMON = Identity.from_seed(b"d" * 32)
CLIENT = Identity.from_seed(b"c" * 32)


def _closed_port() -> int:
    """A port nobody listens on, which a fake daemon may bind later: not an ephemeral one, which an
    outgoing connection may take meanwhile, and not one another test worker may hand out."""
    return free_port("127.0.0.1")


class FakeDaemon:
    """A CurveZMQ ROUTER holding the daemon key, in a context of its own (no ZAP handler: it
    admits any key). It records the request ids it gets and answers them unless `silent`; with
    `stall_s`, each only after that long (or once `release` is set), and with an error (a holder
    whose loop is busy); `answered` counts the answers sent."""

    def __init__(self, port: int, *, silent: bool = False, stall_s: float = 0.0) -> None:
        self.ctx = zmq.Context()
        self.sock = server_socket(self.ctx, zmq.ROUTER, DAEMON)
        self.sock.bind(f"tcp://127.0.0.1:{port}")
        self.silent, self.stall_s = silent, stall_s
        self.seen: list[int] = []
        self.answered = 0
        self.stop, self.release = threading.Event(), threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        end = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < end:
            if not self.sock.poll(50):
                continue
            ident, *parts = self.sock.recv_multipart()
            env, _ = decode(parts)
            self.seen.append(env.request_id)
            if self.stall_s:
                self.release.wait(self.stall_s)
                self.sock.send_multipart([ident, *encode(env.error_reply(NotFound("this holder was too busy")))])
                self.answered += 1
            elif not self.silent:
                self.sock.send_multipart([ident, *encode(Envelope(env.protocol, env.version, "ok",
                                                                  env.request_id, {"pong": True}))])
                self.answered += 1

    def close(self) -> None:
        self.stop.set()
        self.release.set()
        self.thread.join(10)
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def quick_connect(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Placement waits half a second, not five, for a chosen host's daemon to take a connection."""
    monkeypatch.setattr(runtime, "PLACEMENT_CONNECT_S", 0.5)
    yield


def test_a_request_to_no_daemon_is_dropped_unsent_and_never_reaches_a_later_one() -> None:
    port = _closed_port()
    with DaemonClient(f"tcp://127.0.0.1:{port}#{DAEMON.key_id}", CLIENT) as client:
        said = rf"127\.0\.0\.1:{port} did not accept a connection .* 'ping' was not sent"
        with pytest.raises(NotDelivered, match=said):
            client.call("ping", timeout=30, connect_wait=0.5)
        daemon = FakeDaemon(port)        # a daemon comes up at that address afterwards
        try:
            body, _ = client.call("ping", timeout=30)
            assert body == {"pong": True}
            assert daemon.seen == [2]    # the first request, given up on, was never delivered
        finally:
            daemon.close()


def test_a_daemon_that_took_the_request_and_went_silent_is_unreachable_not_undelivered() -> None:
    port = _closed_port()
    daemon = FakeDaemon(port, silent=True)
    try:
        with DaemonClient(f"tcp://127.0.0.1:{port}#{DAEMON.key_id}", CLIENT) as client:
            with pytest.raises(Unreachable) as raised:
                client.call("spawn", timeout=2, connect_wait=1)
            assert not isinstance(raised.value, NotDelivered)    # it may have started the task
            assert daemon.seen == [1]
    finally:
        daemon.close()


def test_a_daemon_that_refuses_the_key_says_so_rather_than_not_delivered(cluster: LocalCluster) -> None:
    stranger = Identity.generate()         # admitted nowhere: every handshake is refused
    with DaemonClient(cluster.daemons[0].address, stranger) as client, \
            pytest.raises(NotAuthorized, match="not admitted"):
        client.call("ps", timeout=10, connect_wait=3)


def _task_code(tmp_path: Path) -> str:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    return snipe.publish(tmp_path / "sleeper.py")


def test_a_spawn_whose_chosen_host_died_goes_to_another(cluster: LocalCluster, tmp_path: Path,
                                                        quick_connect: None, monkeypatch: pytest.MonkeyPatch) -> None:
    code = _task_code(tmp_path)
    # Bids: the winner's daemon dies between its bid and the spawn; the next best takes the task.
    # (The winner is made h3: h1's daemon holds the published code.)
    real_call_for_bids = runtime._call_for_bids
    killed: list[str] = []

    def winner_dies(*a: Any, **kw: Any) -> list[Any]:
        offers = sorted(real_call_for_bids(*a, **kw), key=lambda o: o.host != "urn:snipe:host:h3")
        if not killed:
            killed.append(offers[0].host)
            cluster.kill_daemon(2)
        return offers

    monkeypatch.setattr(runtime, "_call_for_bids", winner_dies)
    p = snipe.spawn(code, "600", placement="bids")
    assert killed == ["urn:snipe:host:h3"] and p.host != killed[0]
    assert Process(p.urn).status()["state"] == "running"
    # Least-loaded: placement picks the dead host first (as it would while its lease has not
    # lapsed yet: 2 s here, too short to rely on); the spawn finds no daemon there and moves on.
    real_choose = runtime.choose_host
    picked: list[str] = []

    def dead_first(hosts: dict[str, Any], *a: Any) -> str:
        choice = killed[0] if killed[0] in hosts else real_choose(hosts, *a)
        picked.append(choice)
        return choice

    monkeypatch.setattr(runtime, "choose_host", dead_first)
    others = [snipe.spawn(code, "600") for _ in range(2)]
    assert all(o.host != killed[0] for o in others)
    # the first spawn tried the dead host and moved on; the next left it out (for a while)
    assert picked[0] == killed[0] and picked.count(killed[0]) == 1, picked
    for q in (p, *others):
        Process(q.urn).kill()
    wait_for(lambda: all(Process(q.urn).status()["state"] != "running" for q in (p, *others)), 30,
             "the tasks to end")


def test_published_code_outlives_the_publishers_host(cluster: LocalCluster, tmp_path: Path,
                                                     quick_connect: None) -> None:
    code = _task_code(tmp_path)
    locations = snipe.catalog().get(code).values("location", now_ms())
    assert len(set(locations.values())) == 2            # this host's daemon and one spare
    cluster.kill_daemon(0)                              # the publisher's host
    tasks = [snipe.spawn(code, "600", host=h) for h in ("h2", "h3")]   # one holds the spare, one fetches it
    states = [Process(t.urn).status() for t in tasks]
    assert [st["state"] for st in states] == ["running", "running"], states    # (with the reason if not)
    for t in tasks:
        Process(t.urn).kill()


def test_a_holder_that_takes_the_fetch_and_stalls_does_not_cost_the_daemon_its_lease(cluster: LocalCluster,
                                                                                     tmp_path: Path) -> None:
    """A holder took the request for the code and answers only after three of the cluster's
    2 s leases (its own loop busy, say, sending a large checkpoint): the fetching daemon's loop
    waits for it, and its host lease lapsed meanwhile, so it stopped the task it already ran and
    the new one as reported lost. It now keeps its lease while it waits, then fetches the code
    from the next holder."""
    def holders(urn: str) -> set[str]:
        return {str(v) for v in snipe.catalog().get(urn).values("location", now_ms()).values()}
    code = _task_code(tmp_path)
    held = holders(code)
    for variant in range(12):        # another code whose spare copy went where the first's did
        (tmp_path / "other.py").write_text(SLEEPER + f"\n# variant {variant}\n")
        other = snipe.publish(tmp_path / "other.py")
        if holders(other) <= held:
            break
    assert holders(other) <= held
    target = next(d for d in cluster.daemons if d.address not in held)     # it must fetch both
    running = snipe.spawn(code, "600", host=target.host_id)                # there before the fetch
    port = _closed_port()
    busy = f"tcp://127.0.0.1:{port}#{DAEMON.key_id}"
    assert busy < min(held)                               # asked first (holders are tried in order)
    holder = FakeDaemon(port, stall_s=3 * 2.0)
    pose_as_host(cluster.catalog, DAEMON, "busy", busy)   # a live host's daemon (the only kind asked)
    try:
        snipe.catalog().set(other, "location", busy)
        p = snipe.spawn(other, "600", host=target.host_id)
        assert len(holder.seen) == 1                       # it did wait for the busy holder
    finally:
        holder.close()
    for task in (running, p):
        status = Process(task.urn).status()
        assert status["state"] == "running", status       # not stopped by the fence
        Process(task.urn).kill()


def test_a_fetch_past_a_dead_holder_does_not_hold_the_daemon_past_its_lease(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    """A holder of the code whose daemon died stays listed until its lease lapses, and a host
    that fetches the code asks it first (here: a location on a closed port, listed first). The
    fetch holds the daemon's loop: waiting its 5 s for that holder outlasted the cluster's 2 s
    lease, and the daemon then stopped its tasks as reported lost (the new one too)."""
    code = _task_code(tmp_path)
    held = set(snipe.catalog().get(code).values("location", now_ms()).values())
    target = next(d for d in cluster.daemons if d.address not in held)     # it must fetch the code
    dead = f"tcp://127.0.0.1:{_closed_port()}#{DAEMON.key_id}"
    assert dead < min(held)                               # asked first (holders are tried in order)
    pose_as_host(cluster.catalog, DAEMON, "dead", dead)   # its lease has not lapsed yet
    snipe.catalog().set(code, "location", dead)
    p = snipe.spawn(code, "600", host=target.host_id)
    spawned_ms = now_ms()
    host = f"urn:snipe:host:{target.host_id}"

    def renewed_since_spawn() -> bool:                    # the daemon's loop went round once more
        snipe.catalog().invalidate(host)
        return any(a.name == "alive" and a.ts >> 16 > spawned_ms for a in snipe.catalog().get(host).records)
    wait_for(renewed_since_spawn, 30, "the host's lease to be renewed after the spawn")
    status = Process(p.urn).status()
    assert status["state"] == "running", status
    Process(p.urn).kill()


def test_code_stays_spawnable_after_its_holders_restart_on_other_ports(cluster: LocalCluster,
                                                                       tmp_path: Path) -> None:
    """A user walkthrough: publish, `cluster down`, `cluster up` (every daemon on a new port),
    spawn on a host that was given no copy. The code's `location`s named the old ports, so the
    fetch failed ("did not accept a connection"). A daemon that starts on a new address now
    republishes `location` for the code it holds (replacing its stale one), and a fetch asks a
    listed holder where its daemon is now."""
    def locations() -> set[str]:
        snipe.catalog().invalidate(code)
        return {str(v) for v in snipe.catalog().get(code).values("location", now_ms()).values()}
    code = _task_code(tmp_path)
    before = locations()
    holders = [i for i, d in enumerate(cluster.daemons) if d.address in before]
    assert len(holders) == 2                          # the publisher's host and one spare
    fetcher = cluster.daemons[next(i for i in range(len(cluster.daemons)) if i not in holders)]
    for i in holders:
        cluster.stop_daemon(i)
    for i in holders:
        d = cluster.daemons[i]
        ip = d.endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
        d.endpoint = f"tcp://{ip}:{free_port(ip)}"
        cluster.start_daemon(i)
    moved = {cluster.daemons[i].address for i in holders}
    assert not moved & before
    snipe.session()._daemons.clear()
    p = snipe.spawn(code, "600", host=fetcher.host_id)
    status = Process(p.urn).status()
    assert status["state"] == "running", status
    # each holder replaced its own stale location; the fetcher added its own
    wait_for(lambda: locations() == moved | {fetcher.address}, 20, "the locations to name the new addresses")
    Process(p.urn).kill()


def test_a_daemon_keeps_serving_while_a_spawn_waits_for_its_code_to_be_fetched(cluster: LocalCluster,
                                                                              tmp_path: Path) -> None:
    """A holder took the request for the code and stalls (its own loop busy). The fetch held the
    daemon's loop for up to 30 s, and the daemon answered nothing else meanwhile: a status, a
    spawn of code it held. Now the fetch runs off the loop; the spawn waiting on it answers when
    it ends (here: from the next holder, once this one gives up)."""
    def holders(urn: str) -> set[str]:
        return {str(v) for v in snipe.catalog().get(urn).values("location", now_ms()).values()}
    code = _task_code(tmp_path)
    target = next(d for d in cluster.daemons if d.address not in holders(code))
    running = snipe.spawn(code, "600", host=target.host_id)                # the target holds `code` now
    for variant in range(12):        # code the target must fetch
        (tmp_path / "other.py").write_text(SLEEPER + f"\n# variant {variant}\n")
        other = snipe.publish(tmp_path / "other.py")
        if target.address not in holders(other):
            break
    assert target.address not in holders(other)
    port = _closed_port()
    busy = f"tcp://127.0.0.1:{port}#{DAEMON.key_id}"
    assert busy < min(holders(other))                     # asked first (holders are tried in order)
    holder = FakeDaemon(port, stall_s=60)
    pose_as_host(cluster.catalog, DAEMON, "busy", busy)   # a live host's daemon (the only kind asked)
    spawned: list[Any] = []
    spawner = threading.Thread(target=lambda: spawned.append(_spawn_or_error(other, target.host_id)), daemon=True)
    try:
        snipe.catalog().set(other, "location", busy)
        spawner.start()
        wait_for(lambda: holder.seen, 30, "the fetch to ask the busy holder")
        with DaemonClient(target.address, cluster.user, timeout=10) as client:
            status, _ = client.call("status", {"urn": running.urn})
            again, _ = client.call("spawn", {"code": code, "args": ["600"]})
        assert status["state"] == "running" and again["urn"]
        assert holder.answered == 0 and not spawned       # all that while the fetch still waited
        holder.release.set()                              # it gives up: the next holder supplies the code
        spawner.join(60)
        assert spawned and isinstance(spawned[0], Process), spawned
        assert Process(spawned[0].urn).status()["state"] == "running"
    finally:
        holder.close()
        spawner.join(60)
    for urn in (running.urn, again["urn"], *(p.urn for p in spawned if isinstance(p, Process))):
        Process(urn).kill()


def test_a_spawn_whose_code_cannot_be_fetched_says_which_code_and_why(cluster: LocalCluster, tmp_path: Path) -> None:
    """Published code whose only holder fails the fetch: the spawn that waited on it is answered
    with an error naming the code and what each holder said (and the daemon serves on)."""
    from snipe import authority
    from snipe.urn import content_urn
    urn = content_urn("code", b"code nobody here holds")
    c = snipe.catalog()
    c.put([c.sign(urn, authority.OWNER, cluster.user.key_id),
           c.sign(urn, "manifest", {"entry": "main.py", "format": "snipe-code/1"})])
    port = _closed_port()
    busy = f"tcp://127.0.0.1:{port}#{DAEMON.key_id}"
    holder = FakeDaemon(port, stall_s=0.5)
    pose_as_host(cluster.catalog, DAEMON, "busy", busy)
    try:
        c.set(urn, "location", busy)
        with DaemonClient(cluster.daemons[1].address, cluster.user, timeout=60) as client:
            with pytest.raises(NotFound) as raised:
                client.call("spawn", {"code": urn})
            assert urn in str(raised.value) and "this holder was too busy" in str(raised.value), raised.value
            assert client.call("ps")[0]["tasks"] == []
    finally:
        holder.close()


def _spawn_or_error(code: str, host: str) -> Process | Exception:
    try:
        return snipe.spawn(code, "600", host=host)
    except Exception as exc:      # said to the test, which asserts a Process
        return exc


def _holders(urn: str) -> set[str]:
    return {str(v) for v in snipe.catalog().get(urn).values("location", now_ms()).values()}


def _code_to_fetch(tmp_path: Path, target: str) -> str:
    """Published code the daemon at `target` does not hold: it must fetch it to run it."""
    for variant in range(12):
        (tmp_path / "other.py").write_text(SLEEPER + f"\n# variant {variant}\n")
        code = snipe.publish(tmp_path / "other.py")
        if target not in _holders(code):
            return code
    raise AssertionError(f"every variant published is held by {target}")


def _busy_first_holder(cluster: LocalCluster, code: str, stall_s: float) -> FakeDaemon:
    """A live host's daemon listed as holding `code`, asked first, that takes the request and stalls."""
    port = _closed_port()
    busy = f"tcp://127.0.0.1:{port}#{DAEMON.key_id}"
    assert busy < min(_holders(code))                     # asked first (holders are tried in order)
    holder = FakeDaemon(port, stall_s=stall_s)
    pose_as_host(cluster.catalog, DAEMON, "busy", busy)
    snipe.catalog().set(code, "location", busy)
    return holder


def test_a_spawn_whose_client_stopped_waiting_for_its_code_is_answered_and_never_started(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """A spawn parked on a fetch longer than its client waits was started once the code came: a
    task nobody knew of. Past the client's timeout it is answered with an error, and not served."""
    target = cluster.daemons[1]
    code = _code_to_fetch(tmp_path, target.address)
    holder = _busy_first_holder(cluster, code, stall_s=8)
    try:
        with DaemonClient(target.address, cluster.user, timeout=30) as client:
            with pytest.raises(Unreachable, match=r"not fetched .* within the 1 s its client waits"):
                client.call("spawn", {"code": code, "args": ["600"], "timeout": 1})
            holder.release.set()
            wait_for(lambda: target.address in _holders(code), 60, "the fetch to end with the code here")
            assert [t["urn"] for t in client.call("ps")[0]["tasks"] if t["code"] == code] == []
    finally:
        holder.close()


def test_a_clone_dropped_while_it_waits_for_its_code_is_answered_and_never_started(
        cluster: LocalCluster, tmp_path: Path) -> None:
    """The origin gives a clone up (clone-drop) while it is parked on the fetch of its code: the
    drop found nothing to drop, and the clone launched when the fetch ended. Now the drop cancels
    it and answers it."""
    from snipe import authority
    from snipe.urn import new_urn
    target = cluster.daemons[1]
    code = _code_to_fetch(tmp_path, target.address)
    urn, task_key = new_urn("proc"), Identity.generate()
    with cluster.catalog.client() as c:
        c.put([c.sign(urn, authority.OWNER, cluster.admin.key_id), c.sign(urn, "key", task_key.key_id)])
    holder = _busy_first_holder(cluster, code, stall_s=60)
    try:
        with DaemonClient(target.address, cluster.admin, timeout=30) as origin, \
                DaemonClient(target.address, cluster.admin, timeout=30) as dropper:
            rid = send_request(origin, "clone", {"urn": urn, "id": "m1", "seed": task_key.seed.hex(), "code": code,
                                          "args": ["600"], "owner": cluster.user.key_id, "timeout": 60})
            wait_for(lambda: holder.seen, 30, "the clone's fetch to ask the busy holder")
            with DaemonClient(target.address, cluster.user, timeout=30) as stranger, \
                    pytest.raises(NotAuthorized, match="only the key that asked for the clone"):
                stranger.call("clone-drop", {"urn": urn, "id": "m1"})          # not whose clone it is
            dropper.call("clone-drop", {"urn": urn, "id": "m1"})
            dropped = await_answer(origin, rid, 10)
            assert dropped.kind == "error" and dropped.body["code"] == MigrationFailed.code, dropped.body
            assert "abandoned" in dropped.body["message"], dropped.body
            holder.release.set()
            wait_for(lambda: target.address in _holders(code), 60, "the fetch to end with the code here")
            assert [t["urn"] for t in dropper.call("ps")[0]["tasks"]] == []
    finally:
        holder.close()


def test_a_daemon_that_stops_answers_the_spawns_that_wait_for_code(cluster: LocalCluster, tmp_path: Path) -> None:
    """Requests parked on a fetch were never answered when the daemon stopped: their clients
    waited out their timeouts. Now each is told the daemon is shutting down."""
    target = cluster.daemons[1]
    code = _code_to_fetch(tmp_path, target.address)
    holder = _busy_first_holder(cluster, code, stall_s=60)
    try:
        with DaemonClient(target.address, cluster.user, timeout=30) as client:
            rid = send_request(client, "spawn", {"code": code, "args": ["600"]})
            wait_for(lambda: holder.seen, 30, "the spawn's fetch to ask the busy holder")
            # read while it stops, as a client's call does: a connection that closes drops what is unread
            stopper = threading.Thread(target=cluster.stop_daemon, args=(1,), daemon=True)
            stopper.start()
            told = await_answer(client, rid, 15)
            stopper.join(30)
            assert told.kind == "error" and "shutting down" in told.body["message"], told.body
    finally:
        holder.close()
