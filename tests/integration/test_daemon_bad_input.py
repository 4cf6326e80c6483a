"""snipe-daemon against bad input: every malformed request gets a specific error, and it keeps serving.

A real daemon (the `cluster` fixture's h1) is sent, for every request kind it has, bodies that
hypothesis builds from arbitrary msgpack-able values (wrong types, missing fields, huge strings,
negative, NaN and infinite numbers, nested garbage, bad URNs, bytes for text) and random frames,
then raw garbage on a bare CurveZMQ socket. After each batch it still answers, its process is
alive, and its log holds no traceback.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import snipe
from snipe.daemonclient import PROTOCOL, VERSION, DaemonClient, parse_daemon_address
from snipe.identity import Identity
from snipe.localcluster import LocalCluster
from snipe.transport import Link
from snipe.wire import Envelope, decode, encode
from tests.integration.test_daemon import SLEEPER
from tests.support import await_answer, send_request, wait_for

QUICK = "print('done')\n"

# Every request kind the daemon serves, and the body fields it reads.
FIELDS: dict[str, tuple[str, ...]] = {
    "hello": (),
    "spawn": ("code", "args", "env", "quota", "notify", "restart", "checkpoint_every", "replicas", "mode", "timeout"),
    "status": ("urn",),
    "wait": ("urn", "timeout"),
    "kill": ("urn",),
    "suspend": ("urn",),
    "resume": ("urn",),
    "signal": ("urn", "signum"),
    "ps": (),
    "bid": ("requires", "max_price"),
    "put-code": ("urn",),
    "get-code": ("urn",),
    "put-file": ("urn",),
    "get-file": ("urn",),
    "drop-file": ("urn",),
    "mcast-join": ("group", "member"),
    "mcast-leave": ("group", "member"),
    "mcast-status": (),
    "relay-status": (),
    "migrate": ("urn", "host", "timeout"),
    "migrate-done": ("urn", "id", "ok", "reason"),
    "clone": ("urn", "id", "seed", "code", "args", "env", "quota", "every", "owner", "events", "seq", "notify",
              "from", "restart"),
    "clone-ready": ("urn", "id", "endpoints"),
    "clone-running": ("urn", "id"),
    "clone-drop": ("urn", "id"),
    "drain": ("on",),
}

# Errors that say the daemon failed on its own account (or did not say what was wrong).
EXAMPLES = 100            # per request kind: the whole file runs in well under a minute
AS_ADMIN = ("clone", "clone-drop", "drain", "migrate", "kill")    # past the key checks (any other key is refused)
GENERIC = ("server-error", "error")

scalars = (st.none() | st.booleans() | st.integers(-(2 ** 63), 2 ** 64 - 1)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40) | st.binary(max_size=40)
           | st.sampled_from(["", "x" * 100_000, "urn:snipe:", "urn:snipe:proc:", "urn:snipe:code:sha256:zz",
                              "urn:snipe:proc:../../etc", "\x00", "-1", "nan"]))
garbage = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)


MISSING = object()


class Target:
    """What the fuzzed daemon holds that a body may name, so some requests get past the first check."""

    def __init__(self, cluster: LocalCluster, sleeper: str, quick: str, task: str) -> None:
        self.cluster, self.sleeper, self.quick, self.task = cluster, sleeper, quick, task
        self.daemon = cluster.daemons[0]

    def plausible(self, kind: str, name: str) -> st.SearchStrategy[Any]:
        """Values of the right type, often right: with `garbage`, the fuzz reaches past each field."""
        urns = [self.task, "urn:snipe:proc:nobody-here", "urn:snipe:host:h9", "urn:snipe:group:g",
                f"urn:snipe:file:sha256:{'0' * 64}", self.quick, self.sleeper]
        if kind == "kill":              # the one request that would end the task the rest aim at
            urns.remove(self.task)
        match name:
            case "urn" | "member" | "group" | "host" | "from":
                return st.sampled_from(urns)
            case "code":
                return st.sampled_from([self.quick, f"urn:snipe:code:sha256:{'1' * 64}"])
            case "args" | "notify" | "endpoints" | "events" | "requires":
                return st.lists(st.sampled_from(urns) | st.text(max_size=8), max_size=3)
            case "env" | "quota":
                return st.dictionaries(st.sampled_from(["cpu_seconds", "memory_bytes", "HOME", "X"]),
                                       st.integers(-5, 10) | st.floats() | st.text(max_size=5), max_size=2)
            case "replicas" | "seq" | "signum":
                return st.integers(-3, 4)
            case "timeout" | "checkpoint_every" | "every" | "max_price":
                return st.floats(-10, 10) | st.sampled_from([math.nan, math.inf, -math.inf, 0])
            case "mode":
                return st.sampled_from(["standby", "all", "nope"])
            case "restart":
                return st.sampled_from(["on-host-failure", "never"])
            case "seed":
                return st.sampled_from(["zz", "00" * 32, "00" * 31, ""])
            case _:
                return st.text(max_size=8) | st.booleans()

    def body(self, kind: str) -> st.SearchStrategy[dict[str, Any]]:
        """A body of `kind`: each field left out, garbage, or (more often) plausible, so that many
        requests get past their first fields to the later ones."""
        def field(name: str) -> st.SearchStrategy[Any]:
            plausible = self.plausible(kind, name)
            return st.one_of(plausible, plausible, plausible, garbage, st.just(MISSING))

        fields = st.fixed_dictionaries({name: field(name) for name in (*FIELDS[kind], "extra")})
        return fields.map(lambda body: {k: v for k, v in body.items() if v is not MISSING})


def answer(client: DaemonClient, kind: str, body: dict[str, Any], frames: list[bytes],
           timeout: float = 10.0) -> Envelope:
    """The daemon's reply envelope to one request, sent as is (DaemonClient.call would raise on an
    error; here the error reply itself is what the test looks at)."""
    return await_answer(client, send_request(client, kind, body, frames), timeout, f"{kind!r} {str(body)[:300]}")


def check_error(env: Envelope, kind: str, body: dict[str, Any]) -> None:
    if env.kind == "ok":
        return
    assert env.kind == "error", env
    code, message = env.body.get("code"), env.body.get("message")
    assert code not in GENERIC and isinstance(message, str) and message, \
        f"{kind} {str(body)[:300]}: got {code}: {message}"
    assert "Traceback" not in message
    if code == "malformed":             # says which field (or the frames) it was
        assert "frame" in message or any(repr(name) in message or f" {name} " in message
                                         or f"{kind}: {name}" in message for name in FIELDS[kind]), \
            f"{kind} {str(body)[:300]}: {message} names no field"


def still_serving(target: Target, client: DaemonClient) -> None:
    assert target.daemon.alive, target.daemon.state_dir / "daemon.log"
    assert client.call("hello")[0]["host"] == "urn:snipe:host:h1"
    assert "bid" in client.call("bid", {"requires": []})[0]
    assert client.call("status", {"urn": target.task})[0]["urn"] == target.task


def tracebacks(cluster: LocalCluster) -> list[str]:
    out = []
    for d in cluster.daemons:
        text = (d.state_dir / "daemon.log").read_text(errors="replace")
        out += [chunk[:3000] for chunk in text.split("Traceback (most recent call last)")[1:]]
    return out


@pytest.fixture
def target(cluster: LocalCluster, tmp_path: Path) -> Iterator[Target]:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    (tmp_path / "quick.py").write_text(QUICK)
    sleeper, quick = snipe.publish(tmp_path / "sleeper.py"), snipe.publish(tmp_path / "quick.py")
    task = snipe.spawn(sleeper, 600, host="h1")
    yield Target(cluster, sleeper, quick, task.urn)


def fuzz(target: Target, client: DaemonClient, kind: str, problems: list[str]) -> None:
    """Send `kind` requests with generated bodies and frames; note each answer that is no answer,
    or an error that does not say what was wrong."""

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(body=target.body(kind), frames=st.lists(st.binary(max_size=64), max_size=3))
    def one(body: dict[str, Any], frames: list[bytes]) -> None:
        t = body.get("timeout", 3600)
        if kind == "wait" and body.get("urn") == target.task and isinstance(t, int | float) \
                and not isinstance(t, bool) and math.isfinite(t) and t > 0:
            body["timeout"] = 0         # a wait on the live task answers when it times out
        if kind == "signal" and isinstance(body.get("signum"), int) and body["signum"] > 0:
            body["signum"] = -body["signum"]        # never a real signal to the task
        try:
            check_error(answer(client, kind, body, frames), kind, body)
        except AssertionError as exc:
            problems.append(str(exc).split("\nassert")[0])

    one()


@pytest.mark.parametrize("kinds", [sorted(FIELDS)[:13], sorted(FIELDS)[13:]], ids=["a-to-g", "h-to-z"])
def test_every_request_kind_answers_malformed_bodies_with_a_specific_error(target: Target,
                                                                          kinds: list[str]) -> None:
    problems: list[str] = []
    with DaemonClient(target.daemon.address, target.cluster.user, timeout=10) as client:
        for kind in kinds:
            fuzz(target, client, kind, problems)
            if kind in AS_ADMIN:
                with DaemonClient(target.daemon.address, target.cluster.admin, timeout=10) as admin:
                    fuzz(target, admin, kind, problems)
                    admin.call("drain", {"on": False})      # the fuzz may have drained the host
            still_serving(target, client)
    assert problems == [], "\n".join(sorted(set(problems)))
    assert tracebacks(target.cluster) == []


def test_each_bad_field_is_named_and_nothing_is_started_or_claimed(target: Target) -> None:
    """The cases the fuzz found, one by one: each answer names the field, no task is started or
    left registered for a refused spawn, and no name is claimed for a refused group."""
    cluster, task, quick = target.cluster, target.task, target.quick
    h2 = cluster.daemons[1]
    cases: list[tuple[Identity, str, str, dict[str, Any], list[bytes], str, str]] = [
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "env": {"A=B": "1"}}, [], "malformed",
         "variable name 'A=B'"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "env": {b"K": "1"}}, [], "malformed",
         "variable name b'K'"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "env": {"K": "a\x00b"}}, [], "malformed",
         "env variable 'K'"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "env": {"K": [1]}}, [], "malformed",
         "env variable 'K'"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "args": ["a\x00"]}, [], "malformed",
         "args may not hold a NUL"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "args": [{"x": 1}]}, [], "malformed",
         "each of args"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "checkpoint_every": math.nan}, [],
         "malformed", "checkpoint_every must be a finite number"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "checkpoint_every": math.inf}, [],
         "malformed", "checkpoint_every must be a finite number"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "replicas": 0}, [], "malformed",
         "replicas must be 1 or more"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "replicas": 2, "mode": "x"}, [],
         "malformed", "replica mode 'x'"),
        (cluster.user, target.daemon.address, "spawn", {"code": quick, "restart": "never"}, [], "malformed",
         "restart policy 'never'"),
        (cluster.user, target.daemon.address, "wait", {"urn": task, "timeout": math.inf}, [], "malformed",
         "timeout must be a finite number"),
        (cluster.user, target.daemon.address, "wait", {"urn": task, "timeout": True}, [], "malformed",
         "timeout must be a finite number"),
        (cluster.user, target.daemon.address, "signal", {"urn": task, "signum": -9}, [], "malformed",
         "signum -9 is not a signal"),
        (cluster.user, target.daemon.address, "migrate", {"urn": task, "host": "urn:snipe:host:h2",
                                                          "timeout": math.nan}, [], "malformed", "timeout"),
        (cluster.user, target.daemon.address, "migrate", {"urn": task, "host": "urn:snipe:host:h2",
                                                          "timeout": -1}, [], "malformed", "timeout"),
        (cluster.user, target.daemon.address, "mcast-join", {"group": "urn:snipe:proc:unclaimed",
                                                             "member": task}, [], "malformed", "not a group URN"),
        (cluster.user, target.daemon.address, "mcast-leave", {"group": "nonsense", "member": task}, [],
         "bad-urn", "not a SNIPE URN"),
        (cluster.user, target.daemon.address, "put-code", {"urn": quick}, [b"a", b"b"], "malformed",
         "exactly one frame, not 2"),
        (cluster.user, target.daemon.address, "put-file", {"urn": f"urn:snipe:file:sha256:{'0' * 64}"}, [],
         "malformed", "exactly one frame, not 0"),
        (cluster.user, target.daemon.address, "bid", {"requires": [["arch", "~~", 1]]}, [], "malformed",
         "requires"),
        (cluster.admin, h2.address, "clone", {"urn": task, "id": "m", "seed": "zz"}, [], "malformed",
         "seed must be the task key's 32-byte seed"),
        (cluster.admin, h2.address, "clone", {"urn": task, "id": "m", "seed": "00"}, [], "malformed",
         "seed must be the task key's 32-byte seed"),
    ]
    for ident, address, kind, body, frames, code, fragment in cases:
        with DaemonClient(address, ident, timeout=10) as client:
            env = answer(client, kind, body, frames)
        assert (env.kind, env.body.get("code")) == ("error", code), (kind, body, env.body)
        assert fragment in env.body["message"], (kind, body, env.body)

    with DaemonClient(target.daemon.address, cluster.user) as client:
        tasks = client.call("ps")[0]["tasks"]
        assert [t["urn"] for t in tasks] == [task]                  # no refused spawn started anything
        still_serving(target, client)
    now = int(time.time() * 1000)
    entries = snipe.catalog().query("urn:snipe:proc:")
    assert [u for u, e in entries.items() if e.value("state", now) == "running"] == [task]
    assert snipe.catalog().get("urn:snipe:proc:unclaimed").records == []      # not claimed by h1
    assert tracebacks(cluster) == []


def test_a_quota_beyond_what_setrlimit_holds_is_no_limit(target: Target) -> None:
    """A quota no host could reach (2**64-1 bytes, 1e300 CPU-seconds) runs the task unlimited,
    where the zygote used to fail setting it and the task died with exit code 1."""
    for quota in ({"memory_bytes": 2 ** 64 - 1}, {"cpu_seconds": 1e300}, {"open_files": 2 ** 63}):
        p = snipe.spawn(target.quick, host="h1", quota=quota)
        done = p.wait(30)
        assert (done["state"], done["exit_code"]) == ("exited", 0), (quota, done)
    assert tracebacks(target.cluster) == []


class Raw:
    """A bare DEALER to h1's daemon, to send what no DaemonClient would."""

    def __init__(self, target: Target) -> None:
        endpoint, key = parse_daemon_address(target.daemon.address)
        self.link = Link(zmq.Context.instance(), target.cluster.user, endpoint, key, immediate=False)

    def ask(self, parts: list[bytes]) -> Envelope:
        self.link.sock.send_multipart(parts)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.link.sock.poll(100):
                return decode(self.link.sock.recv_multipart())[0]
            if self.link.check(time.monotonic()):
                self.link.sock.send_multipart(parts)
        raise AssertionError(f"the daemon did not answer {[bytes(p[:60]) for p in parts]} within 10 s")


def test_garbage_frames_get_error_replies(target: Target) -> None:
    raw = Raw(target)
    try:
        def env(*fields: Any, frames: tuple[bytes, ...] = ()) -> list[bytes]:
            return [msgpack.packb(list(fields), use_bin_type=True), *frames]

        known = [
            ([b""], "malformed"),
            ([b"\xff\xfe not msgpack"], "malformed"),
            ([b"\xc1"], "malformed"),
            (env("daemon", 1, "hello"), "malformed"),                         # four elements
            (env("daemon", 1, "hello", 1, {}, 6), "malformed"),               # six
            (env("daemon", "1", "hello", 1, {}), "malformed"),
            (env("daemon", 1, b"hello", 1, {}), "malformed"),
            (env("daemon", 1, "hello", 1.5, {}), "malformed"),
            (env("daemon", 1, "hello", 1, []), "malformed"),
            (env("daemon", True, "hello", 1, {}), "malformed"),
            ([msgpack.packb(["daemon", 1, "hello", 1, {1: 2}])], "malformed"),        # an int map key
            ([msgpack.packb({"protocol": "daemon"})], "malformed"),
            ([msgpack.packb(["daemon", 1, "hello", 1, {}]) + b"extra"], "malformed"),
            ([b"\x91" * 100_000], "malformed"),                              # deeply nested arrays
            ([b"x" * (4 * 1024 * 1024 + 1)], "too-large"),
            (env("rcds", 1, "hello", 1, {}), "bad-version"),
            (env("daemon", 7, "hello", 1, {}), "bad-version"),
            (env("daemon", 1, "frobnicate", 1, {}), "unknown-request"),
            (env("daemon", 1, "hello", 2 ** 64 - 1, {}, frames=(b"\x00",) * 50), "ok"),
            (env("daemon", 1, "status", -(2 ** 63), {"urn": target.task}, frames=(b"x" * 100_000,)), "ok"),
        ]
        for parts, code in known:
            reply = raw.ask(parts)
            assert (reply.body.get("code") if reply.kind == "error" else reply.kind) == code, (parts[0][:60], reply)

        @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(st.lists(st.binary(max_size=200) | garbage.map(lambda v: msgpack.packb(v, use_bin_type=True)),
                        min_size=1, max_size=4))
        def any_frames(parts: list[bytes]) -> None:
            reply = raw.ask(parts)
            assert reply.kind == "ok" or reply.body.get("code") not in GENERIC, (parts, reply)

        any_frames()
        with DaemonClient(target.daemon.address, target.cluster.user) as client:
            still_serving(target, client)
    finally:
        raw.link.close()
    assert tracebacks(target.cluster) == []


# --- what any admitted key could make the daemon hold (the resource review) -----------------------


def test_mcast_members_must_be_the_callers_and_a_last_leave_stops_routing(target: Target) -> None:
    cluster, task = target.cluster, target.task
    group = "urn:snipe:group:mine"
    with DaemonClient(target.daemon.address, cluster.user, timeout=10) as client:
        for member in ("urn:snipe:user:local", "urn:snipe:proc:nobody-here", "urn:snipe:host:h2"):
            env = answer(client, "mcast-join", {"group": group, "member": member}, [])
            assert (env.kind, env.body.get("code")) == ("error", "not-authorized"), (member, env.body)
            assert f"member {member} is not a process key" in env.body["message"]
        with DaemonClient(target.daemon.address, cluster.admin, timeout=10) as admin:
            admin_task = admin.call("spawn", {"code": target.sleeper, "args": ["600"]})[0]["urn"]
        env = answer(client, "mcast-join", {"group": group, "member": admin_task}, [])
        assert env.body.get("code") == "not-authorized", env.body         # another key's task
        env = answer(client, "mcast-leave", {"group": group, "member": admin_task}, [])
        assert env.body.get("code") == "not-authorized", env.body

        client.call("mcast-join", {"group": group, "member": task})     # its own task: fine
        assert group in client.call("mcast-status")[0]["routing"]
        client.call("mcast-leave", {"group": group, "member": task})
        status = client.call("mcast-status")[0]
        assert group not in status["routing"] and group not in status["local"]
        routers = snipe.catalog().get(group).values("router.urn:snipe:host:h1", int(time.time() * 1000))
        assert routers == {}, routers                                     # withdrawn at once, not renewed
    assert tracebacks(cluster) == []


def test_mcast_groups_per_key_are_bounded(target: Target) -> None:
    from snipe_daemon.mcast import MAX_GROUPS_PER_KEY
    with DaemonClient(target.daemon.address, target.cluster.user, timeout=10) as client:
        for i in range(MAX_GROUPS_PER_KEY):
            client.call("mcast-join", {"group": f"urn:snipe:group:fz{i}", "member": target.task})
        env = answer(client, "mcast-join", {"group": "urn:snipe:group:one-too-many", "member": target.task}, [])
        assert (env.kind, env.body.get("code")) == ("error", "quota-exceeded"), env.body
        assert f"the most one key may ({MAX_GROUPS_PER_KEY}); leave one first" in env.body["message"]
        assert snipe.catalog().get("urn:snipe:group:one-too-many").records == []     # refused before claiming
        client.call("mcast-leave", {"group": "urn:snipe:group:fz0", "member": target.task})
        client.call("mcast-join", {"group": "urn:snipe:group:one-too-many", "member": target.task})
        still_serving(target, client)


def test_a_sparse_tar_bomb_is_refused_and_nothing_of_it_kept(target: Target) -> None:
    from snipe.urn import content_urn
    from tests.unit.test_code import gnu_sparse
    blob = gnu_sparse("main.py", 16 << 20)
    urn = content_urn("code", blob)
    code_dir = target.daemon.state_dir / "code"
    with DaemonClient(target.daemon.address, target.cluster.user, timeout=10) as client:
        env = answer(client, "put-code", {"urn": urn}, [blob])          # nobody published it
        assert (env.kind, env.body.get("code")) == ("error", "not-authorized"), env.body
        assert "has no publisher in the catalog; publish it first" in env.body["message"]
        c = snipe.catalog()
        from snipe import authority
        c.put([c.sign(urn, authority.OWNER, target.cluster.user.key_id),
               c.sign(urn, "manifest", {"entry": "main.py", "format": "snipe-code/1"})])
        env = answer(client, "put-code", {"urn": urn}, [blob])          # published: the archive is refused
        assert (env.kind, env.body.get("code")) == ("error", "bad-code"), env.body
        assert "'main.py' is a sparse file" in env.body["message"]
        still_serving(target, client)
    hexname = urn.rsplit(":", 1)[1]
    assert not (code_dir / hexname).exists() and not (code_dir / "blobs" / hexname).exists()
    assert [p.name for p in code_dir.iterdir() if p.name.startswith(".tmp-")] == []


def test_application_messages_to_the_daemon_are_dropped_not_kept(target: Target) -> None:
    host = "urn:snipe:host:h1"
    log_file = target.daemon.state_dir / "daemon.log"
    for _ in range(2):
        for _ in range(5):
            snipe.send(host, b"x" * 100_000, tag=7)
    me = snipe.me()

    def dropped() -> object:
        stats = snipe.catalog().get(host).value("msg_stats", int(time.time() * 1000)) or {}
        return stats.get(me, {}).get("dropped") == 10

    wait_for(dropped, timeout=15, what="the daemon to count 10 dropped application messages")
    assert log_file.read_text().count("takes no application messages") == 1     # said once a minute at most
    with DaemonClient(target.daemon.address, target.cluster.user) as client:
        still_serving(target, client)


def test_waits_are_capped_and_bounded_per_connection(target: Target) -> None:
    from snipe_daemon.waits import MAX_WAITS_PER_CLIENT
    with DaemonClient(target.daemon.address, target.cluster.user, timeout=10) as client:
        env = answer(client, "wait", {"urn": target.task, "timeout": 1e18}, [])
        assert (env.kind, env.body.get("code")) == ("error", "malformed"), env.body
        assert "is over the cap of 3600 s" in env.body["message"]
        for i in range(MAX_WAITS_PER_CLIENT):        # held (the task runs on): no answer yet
            client.link.sock.send_multipart(encode(Envelope(PROTOCOL, VERSION, "wait", 10_000 + i,
                                                            {"urn": target.task, "timeout": 600})))
        env = answer(client, "wait", {"urn": target.task, "timeout": 600}, [], timeout=5)
        assert (env.kind, env.body.get("code")) == ("error", "quota-exceeded"), env.body
        assert f"the most one connection may ({MAX_WAITS_PER_CLIENT})" in env.body["message"]
    with DaemonClient(target.daemon.address, target.cluster.user, timeout=10) as other:    # another connection
        assert other.call("wait", {"urn": target.task, "timeout": 0})[0]["state"] == "running"
        still_serving(target, other)


def test_the_waits_of_clients_that_left_quietly_free_their_slots(target: Target) -> None:
    """A daemon holds MAX_WAITS waits in all. Those of clients that left without a word (closed,
    killed) kept their slots until their timeouts, up to an hour, and everyone else's wait was
    refused meanwhile. A wait that asks for renew (as snipe's Process.wait does) is now answered
    after a hold at most (a client still waiting asks again), so a gone client's slots come free
    within one (`wait_hold_s`, low here)."""
    from snipe_daemon.waits import MAX_WAITS, MAX_WAITS_PER_CLIENT
    target.cluster.stop_daemon(0)
    target.daemon.settings["wait_hold_s"] = 1.0
    target.cluster.start_daemon(0)
    address, user = target.daemon.address, target.cluster.user
    gone = [DaemonClient(address, user, timeout=10) for _ in range(MAX_WAITS // MAX_WAITS_PER_CLIENT)]
    try:
        for client in gone:
            for i in range(MAX_WAITS_PER_CLIENT):
                client.link.sock.send_multipart(encode(Envelope(PROTOCOL, VERSION, "wait", 10_000 + i,
                                                                {"urn": target.task, "timeout": 600, "renew": True})))
            env = answer(client, "wait", {"urn": target.task, "timeout": 600, "renew": True}, [])    # after those
            assert f"this connection already has {MAX_WAITS_PER_CLIENT} waits" in env.body["message"], env.body
        with DaemonClient(address, user, timeout=10) as late:
            env = answer(late, "wait", {"urn": target.task, "timeout": 0}, [])
            assert f"this daemon already holds {MAX_WAITS} pending waits" in env.body["message"], env.body
            for client in gone:          # they leave without a word
                client.close()
            gone = []
            wait_for(lambda: answer(late, "wait", {"urn": target.task, "timeout": 0}, []).kind == "ok",
                     30, "the gone clients' waits to be dropped")
            still_serving(target, late)
    finally:
        for client in gone:
            client.close()
