"""CatalogClient.put against three scripted replicas (real CurveZMQ sockets in this process, a
thread answering as the test says): how the client treats a replica that refuses.

The case the suite once hit: a W=3 write right after a claim the client wrote at W=2. The third
replica has not got the claim yet (its peers push it on), refuses on authority, and answers
first. The client must wait for the other two, which store it, and ask the third again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
import zmq

from snipe.catalog import protocol as P
from snipe.catalog.client import CatalogClient
from snipe.errors import NotAuthorized
from snipe.identity import Identity
from snipe.transport import KeyGate, server_socket
from snipe.wire import decode, encode

NO_OWNER = [P.REFUSED, NotAuthorized.code, "urn:snipe:proc:t has no owner yet", 0]
STORED = [P.STORED, "", "", 1]

# (delay in seconds, result row) for each put a replica gets, in order; the last one repeats
Script = list[tuple[float, list[object]]]


@dataclass
class FakeReplica:
    identity: Identity
    script: Script
    port: int = 0
    puts: int = 0
    sock: zmq.Socket | None = None
    held: list[tuple[float, list[bytes]]] = field(default_factory=list)


@pytest.fixture()
def replicas() -> Iterator[Callable[[list[Script], Identity], list[FakeReplica]]]:
    ctx = zmq.Context()
    gate = KeyGate(ctx, lambda key: True)
    gate.install()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def serve(r: FakeReplica) -> None:
        import time
        assert r.sock is not None
        while not stop.is_set():
            now = time.monotonic()
            for due, parts in [h for h in r.held if h[0] <= now]:
                r.held.remove((due, parts))
                r.sock.send_multipart(parts)
            if not r.sock.poll(5):
                continue
            ident, *frames = r.sock.recv_multipart()
            env, _ = decode(frames)
            if env.kind != "put":
                continue
            delay, row = r.script[min(r.puts, len(r.script) - 1)]
            r.puts += 1
            r.held.append((now + delay, [ident, *encode(env.reply(results=[row], turn=1))]))

    def make(scripts: list[Script], client: Identity) -> list[FakeReplica]:
        gate.learn(client.public_key)            # the handshake's key: the client's
        out = []
        for script in scripts:
            r = FakeReplica(Identity.generate(), script)
            r.sock = server_socket(ctx, zmq.ROUTER, r.identity)
            r.port = r.sock.bind_to_random_port("tcp://127.0.0.1")
            t = threading.Thread(target=serve, args=(r,), daemon=True)
            t.start()
            threads.append(t)
            out.append(r)
        return out

    yield make
    stop.set()
    for t in threads:
        t.join(5)
    gate.stop()
    ctx.destroy(linger=0)


def _client(rs: list[FakeReplica], user: Identity) -> CatalogClient:
    return CatalogClient([f"tcp://127.0.0.1:{r.port}#{r.identity.key_id}" for r in rs], user, user.key_id,
                         timeout=5.0, relay=False)


def test_a_refusal_on_authority_that_comes_first_does_not_end_a_write_the_others_store(
        replicas: Callable[[list[Script], Identity], list[FakeReplica]]) -> None:
    user = Identity.generate()
    laggard, *others = replicas([[(0.0, NO_OWNER), (0.0, STORED)], [(0.05, STORED)], [(0.05, STORED)]], user)
    with _client([laggard, *others], user) as c:
        result = c.put([c.sign("urn:snipe:proc:t", "x", 1)], w=3)
    assert result.acks == 3
    assert laggard.puts == 2                     # refused once, asked again, stored
    assert [r.puts for r in others] == [1, 1]


def test_a_write_every_replica_refuses_on_authority_fails_at_once_with_their_error(
        replicas: Callable[[list[Script], Identity], list[FakeReplica]]) -> None:
    user = Identity.generate()
    rs = replicas([[(0.0, NO_OWNER)]] * 3, user)
    with _client(rs, user) as c, pytest.raises(NotAuthorized, match="no owner yet"):
        c.put([c.sign("urn:snipe:proc:t", "x", 1)], w=3)
    assert [r.puts for r in rs] == [1, 1, 1]     # nobody stored it: not asked again
