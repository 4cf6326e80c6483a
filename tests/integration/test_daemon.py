"""snipe-daemon with real replicas and daemons: hosts, spawning, control, quotas, crash safety."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import snipe
from snipe.code import CodeCache
from snipe.daemonclient import DaemonClient
from snipe.errors import CodecError, NotAuthorized, NotFound, RequirementError, SnipeError, Unreachable
from snipe.identity import Identity
from snipe.localcluster import LocalCluster, free_port
from snipe.privatedir import default_runtime_dir
from snipe.runtime import now_ms
from tests.support import pose_as_host, wait_for

WORKER = textwrap.dedent('''
    import os, sys, time
    import snipe
    snipe.init()
    me = snipe.me()
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    snipe.catalog().set(me, "result", sum(i * i for i in range(n)))
    print("worker", me, "done", flush=True)
''')

SLEEPER = textwrap.dedent('''
    import signal, sys, time, pathlib
    def on_usr1(*_):
        pathlib.Path("got-usr1").write_text("yes")
    signal.signal(signal.SIGUSR1, on_usr1)
    pathlib.Path("ready").write_text("yes")
    end = time.time() + float(sys.argv[1] if len(sys.argv) > 1 else 600)
    while time.time() < end:
        time.sleep(0.05)
''')

HOG = textwrap.dedent('''
    import time
    blocks = []
    for _ in range(100):
        blocks.append(bytearray(20 * 1024 * 1024))
        time.sleep(0.02)
    time.sleep(60)
''')


LISTENER = textwrap.dedent('''
    import snipe
    snipe.probe()                   # listens (ipc included) from here on
    snipe.catalog().set(snipe.me(), "listening", True)
    snipe.recv(timeout=300)
''')


def publish(tmp_path: Path, name: str, source: str) -> str:
    path = tmp_path / name
    path.write_text(source)
    return snipe.publish(path)


def test_hosts_publish_leased_metadata_and_vanish_when_the_daemon_dies(cluster: LocalCluster) -> None:
    hosts = wait_for(lambda: len(snipe.hosts()) == 3 and snipe.hosts(), 20, "three live hosts")
    for urn, h in hosts.items():
        assert urn.startswith("urn:snipe:host:h")
        assert h["cpus"] >= 1 and h["memory"] > 0 and h["arch"] and isinstance(h["interfaces"], list)
        assert h["daemon"].startswith("tcp://127.0.0.") and h["key"] in h["daemon"]
        assert "rlimits" in h["playground"]
    cluster.kill_daemon(2)
    wait_for(lambda: set(snipe.hosts()) == {"urn:snipe:host:h1", "urn:snipe:host:h2"}, 20,
             "h3 to disappear when its lease runs out")


def test_spawn_runs_verified_code_on_every_host(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "worker.py", WORKER)
    assert code.startswith("urn:snipe:code:sha256:")
    procs = [snipe.spawn(code, 100 + i, host=f"h{i + 1}") for i in range(3)]
    for i, p in enumerate(procs):
        done = p.wait(60)
        assert (done["state"], done["exit_code"]) == ("exited", 0), done
        info = p.info()
        assert info["result"] == sum(k * k for k in range(100 + i))
        assert info["host"] == f"urn:snipe:host:h{i + 1}" and info["state"] == "exited"
        assert info["owner"] == cluster.user.key_id and info["code"] == code
        assert info["supervisor"] == cluster.daemons[i].address
        # where README says a task's output goes: <state dir>/tasks/<id>/<urn with : as _>.stdout
        out = cluster.daemons[i].state_dir / "tasks" / p.urn.rsplit(":", 1)[1] / f"{p.urn.replace(':', '_')}.stdout"
        assert out.read_text() == f"worker {p.urn} done\n"


def test_placement_honours_requirements(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "worker.py", WORKER)
    wait_for(lambda: len(snipe.hosts()) == 3, 20, "three live hosts")
    p = snipe.spawn(code, 5, requires=[f"arch={os.uname().machine}"])
    assert p.wait(60)["exit_code"] == 0
    with pytest.raises(NotFound, match="no live, non-draining host meets"):
        snipe.spawn(code, requires=["arch=sparc64"])
    # a typo is said at the call, not taken for a requirement no host meets
    with pytest.raises(RequirementError, match=r"names 'memroy'.*did you mean 'memory'.*hosts publish: alive"):
        snipe.spawn(code, requires=["memroy>=1"])
    with pytest.raises(RequirementError, match="'memory>>1' cannot be read"):
        snipe.spawn(code, requires=["memory>>1"])
    with pytest.raises(RequirementError, match="names 'memroy'"):
        snipe.spawn(code, requires=["memroy>=1"], placement="bids")
    with pytest.raises(RequirementError, match="names 'cpu'"):
        snipe.hosts({"cpu": 4})


def test_every_attribute_a_live_host_publishes_is_known_to_requirements(cluster: LocalCluster) -> None:
    """snipe.placement.HOST_ATTRIBUTES (what requirements may name) lists what daemons publish."""
    from snipe.placement import HOST_ATTRIBUTES

    kind_of = {int: "number", float: "number", str: "text", bool: "bool", list: "list", dict: "map"}
    hosts = wait_for(lambda: len(h := snipe.hosts()) == 3 and all("comm" in v for v in h.values()) and h, 30,
                     "three live hosts, their messaging endpoints published")
    for urn, values in hosts.items():
        assert set(values) <= set(HOST_ATTRIBUTES), (urn, sorted(set(values) - set(HOST_ATTRIBUTES)))
        for name, value in values.items():
            assert kind_of[type(value)] == HOST_ATTRIBUTES[name], (urn, name, value)


def test_a_tampered_code_blob_is_refused(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "worker.py", WORKER)       # held by h1's daemon and one spare
    holders = [d for d in cluster.daemons if CodeCache(d.state_dir / "code").blob_path(code) is not None]
    assert len(holders) == 2
    for d in holders:                                    # every copy tampered with
        blob_path = CodeCache(d.state_dir / "code").blob_path(code)
        assert blob_path is not None
        data = bytearray(blob_path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        blob_path.write_bytes(bytes(data))
    fetcher = next(d for d in cluster.daemons if d not in holders)
    with pytest.raises(SnipeError, match=r"sha256|hash|does not hold"):
        snipe.spawn(code, host=fetcher.host_id)


def test_a_quota_breach_kills_the_task_and_says_which(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "hog.py", HOG)
    p = snipe.spawn(code, host="h1", quota={"memory_bytes": 100 * 1024 * 1024})
    done = p.wait(60)
    assert done["state"] == "killed" and "memory" in (done["reason"] or ""), done
    kinds = [e.kind for e in p.events(timeout=5)]
    assert kinds[0] == "started" and kinds[-1] == "killed"


def test_a_daemon_killed_and_restarted_readopts_its_running_task(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    long = snipe.spawn(code, 600, host="h1")
    short = snipe.spawn(code, 0.2, host="h1")
    pid, short_pid = long.status()["pid"], short.status()["pid"]
    cluster.kill_daemon(0)
    wait_for(lambda: _ended(short_pid), 10, "the short task to end while the daemon is down")
    assert psutil.pid_exists(pid)                          # the task outlived its daemon
    cluster.start_daemon(0)
    snipe.session()._daemons.clear()
    assert long.status()["state"] == "running" and long.status()["pid"] == pid
    assert short.status()["state"] in ("exited", "lost")
    assert long.kill()["urn"] == long.urn
    assert long.wait(30)["state"] == "killed"
    wait_for(lambda: not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10,
             "the re-adopted task to die")


JOINER = textwrap.dedent('''
    import snipe
    while True:                    # each message names a group to join; the answer: whether it could
        m = snipe.recv(timeout=120)
        if m is None:
            break
        try:
            snipe.join(m.payload.decode())
            snipe.send(m.source, b"joined")
        except snipe.SnipeError as exc:
            snipe.send(m.source, f"failed: {exc}".encode())
''')


def test_a_task_that_outlived_its_daemon_reaches_it_on_the_port_it_restarted_on(cluster: LocalCluster,
                                                                                tmp_path: Path) -> None:
    """A task's SNIPE_DAEMON names the port its daemon had when it started the task; a daemon
    restarted on another port re-adopts the task, and the task's requests to it (a join) find it
    where its host's catalog entry says it is now."""
    p = snipe.spawn(publish(tmp_path, "joiner.py", JOINER), host="h1")

    def ask(group: str) -> bytes:
        snipe.send(p.urn, group.encode())
        m = snipe.recv(source=p.urn, timeout=90)
        assert m is not None and not m.failed, m
        return bytes(m.payload)
    assert ask("urn:snipe:group:before") == b"joined"
    cluster.kill_daemon(0)
    d = cluster.daemons[0]
    ip = d.endpoint.removeprefix("tcp://").rsplit(":", 1)[0]
    d.endpoint = f"tcp://{ip}:{free_port(ip)}"
    cluster.start_daemon(0)                 # this test's own handles keep their clients of the old address
    assert ask("urn:snipe:group:after") == b"joined"
    assert p.urn in snipe.members("urn:snipe:group:after")
    assert p.status()["state"] == "running"                # re-adopted, and still the same task


def _ended(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_only_the_owner_or_admin_controls_a_task(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, 600, host="h2")
    mallory = Identity.generate()
    cluster.catalog.admit(mallory, "mallory")
    with DaemonClient(cluster.daemons[1].address, mallory) as d, pytest.raises(NotAuthorized, match="ask its owner"):
        d.call("kill", {"urn": p.urn})
    stranger = Identity.generate()
    with DaemonClient(cluster.daemons[1].address, stranger, timeout=3) as d, pytest.raises(NotAuthorized):
        d.call("status", {"urn": p.urn})
    with DaemonClient(cluster.daemons[1].address, cluster.admin) as d:
        d.call("kill", {"urn": p.urn})
    assert p.wait(30)["state"] == "killed"


def test_notify_events_arrive_complete_once_and_in_order(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, 600, host="h3")
    wait_for(lambda: p.status()["state"] == "running", 10, "running")
    workdir = cluster.daemons[2].state_dir / "tasks" / p.urn.rsplit(":", 1)[1]
    wait_for(lambda: (workdir / "ready").exists(), 20, "the task to install its SIGUSR1 handler")
    p.signal(signal.SIGUSR1)
    marker = wait_for(lambda: (workdir / "got-usr1").exists() and workdir / "got-usr1", 20, "the handler to run")
    p.suspend()
    p.resume()
    p.kill()
    events = list(p.events(timeout=20))
    assert [e.kind for e in events] == ["started", "suspended", "resumed", "killed"]
    assert [e.seq for e in events] == [1, 2, 3, 4]
    assert marker.read_text() == "yes"


def test_a_draining_host_takes_no_new_tasks(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "worker.py", WORKER)
    with DaemonClient(cluster.daemons[0].address, cluster.admin) as d:
        d.call("drain", {"on": True})
    with pytest.raises(NotAuthorized, match="draining"):
        snipe.spawn(code, host="h1")
    wait_for(lambda: snipe.hosts()["urn:snipe:host:h1"].get("draining") is True, 10, "h1 to say it drains")
    placed = {snipe.spawn(code, 3).host for _ in range(4)}
    assert "urn:snipe:host:h1" not in placed


def test_console_commands_print_tables_and_json(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, 600, host="h1")
    env = {**os.environ, "SNIPE_CATALOG": ",".join(cluster.catalog.addresses),
           "SNIPE_ADMIN_KEY": cluster.admin.key_id, "SNIPE_KEY_FILE": str(cluster.root / "user.key")}

    def console(*args: str) -> str:
        r = subprocess.run([sys.executable, "-m", "snipe.console.main", *args], env=env, capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return r.stdout

    import json
    hosts = json.loads(console("hosts", "--json"))
    assert sorted(hosts) == ["urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"]
    assert "live host(s)" in console("hosts")
    ps = json.loads(console("ps", "--json"))
    assert [t["urn"] for t in ps] == [p.urn]
    assert p.urn in console("ps")
    shown = json.loads(console("show", p.urn, "--json"))
    assert {r["name"] for r in shown["records"]} >= {"host", "owner", "state", "supervisor", "code"}
    assert "suspended" in console("suspend", p.urn)
    assert "running" in console("resume", p.urn)
    console("kill", p.urn)
    assert p.wait(30)["state"] == "killed"


def test_a_location_serving_forged_code_is_refused_and_a_good_copy_used(cluster: LocalCluster,
                                                                         tmp_path: Path) -> None:
    """A malicious host advertises itself as a location of the code and serves other bytes (a
    valid archive of an evil script). The fetching daemon checks the bytes against the code URN,
    refuses them, and runs the good copy from the honest location."""
    import threading

    import zmq

    from snipe.code import package
    from snipe.transport import server_socket
    from snipe.wire import decode, encode

    code = publish(tmp_path, "worker.py", WORKER)
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "worker.py").write_text(WORKER.replace("sum(i * i for i in range(n))", "'evil'"))
    evil_blob = package(tmp_path / "evil" / "worker.py").blob

    mallory = Identity.generate()
    ctx = zmq.Context.instance()
    sock = server_socket(ctx, zmq.ROUTER, mallory)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    # an admitted host, live (a fetch asks only live hosts' daemons), serving bytes of its own
    pose_as_host(cluster.catalog, mallory, "mallory", f"tcp://127.0.0.1:{port}#{mallory.key_id}")
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            if sock.poll(50):
                ident, *parts = sock.recv_multipart()
                env, _ = decode(parts)
                asked.append(env.kind)
                sock.send_multipart([ident, *encode(env.reply(urn=code), [evil_blob])])

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        from snipe.catalog import CatalogClient
        with CatalogClient(cluster.catalog.addresses, mallory, cluster.admin.key_id) as c:
            c.set(code, "location", f"tcp://127.0.0.1:{port}#{mallory.key_id}")   # sorts before 127.0.0.2
        p = snipe.spawn(code, 7, host="h2")
        assert p.wait(60)["exit_code"] == 0
        assert p.info()["result"] == sum(i * i for i in range(7))
        assert asked == ["get-code"]
    finally:
        stop.set()
        t.join(5)
        sock.close(0)


def test_when_a_hosts_lease_expires_its_tasks_are_reported_lost(cluster: LocalCluster, tmp_path: Path) -> None:
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, 600, host="h3")
    pid = p.status()["pid"]
    cluster.kill_daemon(2)
    try:
        events = list(p.events(timeout=30))
        assert [e.kind for e in events] == ["started", "host-lost"]
        assert "urn:snipe:host:h3" in (events[-1].reason or "") and events[-1].final
    finally:
        os.killpg(pid, signal.SIGKILL)


def test_only_the_keys_that_stored_a_file_or_the_admin_drop_it(cluster: LocalCluster) -> None:
    from snipe.urn import content_urn

    blob = os.urandom(1000)
    urn = content_urn("file", blob)
    other = Identity.generate()
    cluster.catalog.admit(other, "other")
    address = cluster.daemons[1].address
    with DaemonClient(address, cluster.user) as mine, DaemonClient(address, other) as theirs:
        mine.call("put-file", {"urn": urn}, (blob,))
        with pytest.raises(NotAuthorized, match="not stored here by this key"):
            theirs.call("drop-file", {"urn": urn})
        assert mine.call("get-file", {"urn": urn})[1] == [blob]          # still there
        mine.call("drop-file", {"urn": urn})
        with pytest.raises(NotFound):
            mine.call("get-file", {"urn": urn})
        mine.call("drop-file", {"urn": urn})                             # gone: dropping it again is no error
        theirs.call("put-file", {"urn": urn}, (blob,))
    with DaemonClient(address, cluster.admin) as admin:
        admin.call("drop-file", {"urn": urn})                            # the admin's word drops it for all
        with pytest.raises(NotFound):
            admin.call("get-file", {"urn": urn})


def _ipc_folder(urn: str) -> Path:
    comm = snipe.catalog().get(urn).value("comm", now_ms())
    return Path(next(c["endpoint"] for c in comm if c.get("transport") == "ipc")[len("ipc://"):]).parent


def test_tasks_keep_their_ipc_sockets_in_their_own_hosts_folder(cluster: LocalCluster, tmp_path: Path) -> None:
    """Not in the user's default runtime folder, which every cluster's processes share (and
    sweep of stale sockets), whatever runtime folder the spawn's env names."""
    code = publish(tmp_path, "listener.py", LISTENER)
    elsewhere = {"XDG_RUNTIME_DIR": str(tmp_path / "xdg"), "SNIPE_HOME": str(tmp_path / "home")}
    tasks = {h: snipe.spawn(code, host=h, env=elsewhere) for h in ("h1", "h2")}
    try:
        folders = {}
        for h, task in tasks.items():
            def listening(urn: str = task.urn) -> bool:
                snipe.catalog().invalidate(urn)
                return snipe.catalog().get(urn).value("listening", now_ms()) is True
            wait_for(listening, 60, f"the task on {h} to listen")
            folders[h] = _ipc_folder(task.urn)
            assert folders[h] == _ipc_folder(f"urn:snipe:host:{h}"), (h, folders[h])
            assert folders[h].stat().st_mode & 0o777 == 0o700
        assert folders["h1"] != folders["h2"]
        assert default_runtime_dir() not in {f for p in folders.values() for f in (p, *p.parents)}
        with pytest.raises(CodecError, match="SNIPE_IPC_DIR"):        # said, not dropped without a word
            snipe.spawn(code, host="h1", env={"SNIPE_IPC_DIR": str(tmp_path / "mine")})
    finally:
        for task in tasks.values():
            with contextlib.suppress(SnipeError):       # (ended already)
                task.kill()


def test_a_wait_longer_than_the_daemons_hold_is_asked_again_until_the_task_ends(cluster: LocalCluster,
                                                                                 tmp_path: Path) -> None:
    """A daemon answers a wait after its hold (`wait_hold_s`) with renew; Process.wait asks again."""
    cluster.stop_daemon(1)
    cluster.daemons[1].settings["wait_hold_s"] = 0.5
    cluster.start_daemon(1)
    code = publish(tmp_path, "sleeper.py", SLEEPER)
    p = snipe.spawn(code, 3, host="h2")
    done = p.wait(60)
    assert (done["state"], done["exit_code"]) == ("exited", 0), done


def test_only_a_wait_that_asks_for_renew_is_answered_when_the_daemons_hold_ends(cluster: LocalCluster,
                                                                               tmp_path: Path) -> None:
    """daemon/1's `wait` meant: answered when the task ends or the timeout passes. An older client
    takes any other answer as its timeout, so the hold (answered early, with renew) applies only
    to a wait that asks for it."""
    cluster.stop_daemon(1)
    cluster.daemons[1].settings["wait_hold_s"] = 0.5
    cluster.start_daemon(1)
    p = snipe.spawn(publish(tmp_path, "sleeper.py", SLEEPER), 600, host="h2")
    try:
        with DaemonClient(cluster.daemons[1].address, cluster.user, timeout=10) as client:
            renewed, _ = client.call("wait", {"urn": p.urn, "timeout": 600, "renew": True})
            assert (renewed["state"], renewed.get("renew")) == ("running", True), renewed
            with pytest.raises(Unreachable):        # held to its timeout, well past the hold
                client.call("wait", {"urn": p.urn, "timeout": 600}, timeout=3)
    finally:
        p.kill()
