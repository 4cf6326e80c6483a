"""The gateway relay (daemon/relay.py) on real sockets and a real catalog, no root needed.

Process A speaks msg/1 through the relay to process B, a real messaging endpoint on the
gateway's host: A seals with the channel core's own messages, B opens, delivers and seals its
ack back through the relay. Keys the cluster did not admit never get a handshake; garbage,
forged sources and forged boxes are refused with a reason, and the relay keeps forwarding.
(The netns suite runs the whole path between namespace hosts: tests/netns/test_gateway.py.)
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from snipe_daemon.relay import Relay

from snipe.admission import CatalogAdmission
from snipe.catalog.client import CatalogClient
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog
from snipe.messaging.channel import Outbound, pack_frames, parse_ack
from snipe.messaging.endpoint import Endpoint
from snipe.messaging.gateway import RELAY, Sealer, parse_relay, relay_parts
from snipe.transport import KeyGate, Link
from snipe.urn import new_urn
from snipe.wire import Envelope, decode, encode
from tests.support import wait_for


class World:
    def __init__(self, catalog: LocalCatalog, tmp_path: Path) -> None:
        self.admin = catalog.admin.public_key
        self.addrs = catalog.addresses
        self.gw, self.a, self.b = Identity.generate(), Identity.generate(), Identity.generate()
        self.gw_urn = catalog.admit(self.gw, "gw", kind="host")
        catalog.admit(self.a, "a")
        catalog.admit(self.b, "b")
        self.ctx = zmq.Context()
        self.admission = CatalogAdmission(self.addrs, self.gw, self.admin)
        self.gate = KeyGate(self.ctx, self.admission.admit, self.admission.resolve)
        self.gate.install()
        self.relay = Relay(self.ctx, self.gw, self.gw_urn, self.addrs, self.admin, "tcp://127.0.0.1:*")
        self.relay.start()
        self.relay_at = f"tcp://127.0.0.1:{self.relay.port}"
        self.cb = CatalogClient(self.addrs, self.b, self.admin)
        self.b_urn = new_urn("proc")
        self.cb.claim(self.b_urn)
        # B runs on the gateway's host: the relay reaches it by its ipc socket
        self.ep = Endpoint(self.b_urn, self.b, self.addrs, self.admin, host_urn=self.gw_urn,
                           runtime_dir=tmp_path / "b")
        self.ep.start(lambda values: self.cb.set_many(self.b_urn, values))
        self.ca = CatalogClient(self.addrs, self.a, self.admin)
        self.a_urn = new_urn("proc")
        self.ca.claim(self.a_urn)
        self.ca.set_many(self.a_urn, {"key": self.a.key_id, "state": "running"})
        self.out = Outbound(self.a_urn, self.b_urn)
        self.sealer = Sealer(self.a)
        self.actx = zmq.Context()
        self.link = Link(self.actx, self.a, self.relay_at, self.gw.public_key, immediate=False)

    def close(self) -> None:
        self.link.close()
        self.actx.term()
        self.ep.close()
        self.relay.close()
        self.gate.stop()
        self.admission.close()
        self.ca.close()
        self.cb.close()
        self.ctx.term()

    def data_parts(self, payloads: list[bytes], out: Outbound | None = None) -> list[list[bytes]]:
        """What A's endpoint would send on a relay route for these payloads: sealed msg/1 data
        (numbered by A's channel, or by `out` for messages the test expects to be lost)."""
        out = out or self.out
        now = time.monotonic()
        for p in payloads:
            out.submit(0, p, now, now + 30)
        wires = []
        for s in out.flush(now):
            body = {**s.envelope.body, "f": self.a_urn}
            sizes, frames = pack_frames(s.frames)
            if sizes is not None:
                body["z"] = sizes
            env = Envelope(s.envelope.protocol, s.envelope.version, s.envelope.kind, 0, body)
            sealed = self.sealer.seal(self.b.public_key, self.a_urn, self.b_urn, encode(env, frames))
            wires.append(relay_parts(self.a_urn, self.b_urn, sealed))
        return wires

    def answer(self, timeout: float = 10.0) -> tuple[Envelope, list[bytes]] | None:
        if not self.link.sock.poll(int(timeout * 1000)):
            return None
        return decode(self.link.sock.recv_multipart())

    def take_ack(self, timeout: float = 10.0) -> None:
        got = self.answer(timeout)
        assert got is not None, "no ack came back through the relay"
        env, frames = got
        assert env.kind == RELAY, env
        source, dest, sealed = parse_relay(env, frames)
        assert (source, dest) == (self.b_urn, self.a_urn)
        ack, _ = decode(Sealer(self.a).open(self.b.public_key, source, dest, sealed))
        session, cum = parse_ack(ack)
        self.out.on_ack(session, cum, time.monotonic())


@pytest.fixture
def world(catalog: LocalCatalog, tmp_path: Path) -> Iterator[World]:
    w = World(catalog, tmp_path)
    try:
        yield w
    finally:
        w.close()


def _recv_all(ep: Endpoint, n: int) -> list[Any]:
    got = []
    deadline = time.monotonic() + 20
    while len(got) < n and time.monotonic() < deadline:
        m = ep.recv(timeout=0.5)
        if m is not None:
            got.append(m)
    return got


def test_sealed_messages_and_acks_cross_the_relay(world: World) -> None:
    payloads = [b"hello %d" % i for i in range(50)]
    for parts in world.data_parts(payloads):
        world.link.sock.send_multipart(parts)
    got = _recv_all(world.ep, 50)
    assert [(m.source, m.payload) for m in got] == [(world.a_urn, p) for p in payloads]
    world.take_ack()
    assert world.out.acked == 50
    key = f"{world.a_urn} -> {world.b_urn}"
    pair = wait_for(lambda: (p := world.relay.status().get("pairs", {}).get(key)) and p["returned"] and p, 5,
                    "the relay's counters (copied every half second)")
    assert pair["forwarded"] >= 1 and pair["dropped"] == 0


def test_the_relay_refuses_strangers_garbage_and_forgeries_and_keeps_forwarding(world: World) -> None:
    # a key the cluster never admitted: no handshake, so nothing is relayed or answered
    stranger = Identity.generate()
    sctx = zmq.Context()
    try:
        slink = Link(sctx, stranger, world.relay_at, world.gw.public_key, immediate=False)
        slink.sock.send_multipart(world.data_parts([b"from a stranger"], Outbound(world.a_urn, world.b_urn))[0])
        assert not slink.sock.poll(1500)
        slink.close()
    finally:
        sctx.term()
    assert world.gate.refused, "the relay's key gate never saw the stranger"
    # an admitted key sending garbage, or speaking for a process it does not own: refused, with a reason
    bad: list[list[bytes]] = [
        [b"\xff\x00garbage"],
        encode(Envelope("msg", 2, RELAY, 0, {"f": world.a_urn, "t": world.b_urn}), [b"x"]),
        encode(Envelope("msg", 1, RELAY, 0, {"f": "not a urn", "t": world.b_urn}), [b"x"]),
        encode(Envelope("msg", 1, RELAY, 0, {"f": world.a_urn, "t": world.b_urn}), []),
        relay_parts(world.b_urn, world.a_urn, b"A claims to be B"),
    ]
    reasons = []
    for parts in bad:
        world.link.sock.send_multipart(parts)
        got = world.answer()
        assert got is not None and got[0].kind == "error", parts
        reasons.append(got[0].body["message"])
    assert "does not speak for" in reasons[-1] and "versions on offer" in reasons[1], reasons
    assert world.relay.status() is not None
    # a box A claims but a third key sealed: the relay cannot tell (it never opens boxes); B drops it
    forged = Sealer(stranger).seal(world.b.public_key, world.a_urn, world.b_urn, [b"junk"])
    world.link.sock.send_multipart(relay_parts(world.a_urn, world.b_urn, forged))
    assert world.ep.recv(timeout=1.5) is None
    # and the relay still forwards
    for parts in world.data_parts([b"still here"]):
        world.link.sock.send_multipart(parts)
    got = _recv_all(world.ep, 1)
    assert [m.payload for m in got] == [b"still here"]
    world.take_ack()
    assert world.out.acked == 1
