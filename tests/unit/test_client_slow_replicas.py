"""A read whose replicas are all slower than the hedge delay still gets its quorum.

On a loaded machine (the demo with 1000 workers on 2 CPUs) every replica took longer than the
read's hedge delay to answer. The read then asked the spare replica and dropped the requests it
had sent first, so their answers, arriving a moment later, no longer counted: only the spare's
did, and the read failed with "only 1 of R=2 replicas gave a verifiable answer" half a second
into a three-second timeout. Here three stand-in replicas hold every request until all three
have one (the hedge went out), then the two asked first answer and the spare never does."""

from __future__ import annotations

import threading
import time

import zmq

from snipe.catalog import protocol as P
from snipe.catalog.client import CatalogClient
from snipe.catalog.entry import Entry
from snipe.identity import Identity
from snipe.transport import server_socket
from snipe.wire import decode, encode


def test_a_read_counts_the_answers_of_the_replicas_it_asked_before_hedging() -> None:
    me = Identity.generate()
    keys = [Identity.generate() for _ in range(3)]
    ctx = zmq.Context.instance()
    replicas = [server_socket(ctx, zmq.ROUTER, k) for k in keys]
    addresses = [f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}#{k.key_id}"
                 for s, k in zip(replicas, keys, strict=True)]
    outcome: dict[str, object] = {}

    def read() -> None:
        with CatalogClient(addresses, me, me.key_id, timeout=5.0) as c:
            try:
                outcome["entry"] = c.get("urn:snipe:proc:slow")
            except Exception as exc:
                outcome["error"] = exc
            outcome["spares_asked"] = c.spares_asked

    reader = threading.Thread(target=read)
    reader.start()
    held: list[tuple[zmq.Socket, list[bytes]]] = []       # (replica, request) in the order they came
    try:
        poller = zmq.Poller()
        for s in replicas:
            poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + 10.0      # the hedge goes out within a second
        while len(held) < 3 and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                held.append((sock, sock.recv_multipart()))
        assert len(held) == 3, f"the read asked {len(held)} replicas, not its two and then a spare"
        for sock, (client, *request) in held[:2]:        # the two asked first answer; the spare stays silent
            env, _ = decode(request)
            assert env.kind == "get"
            sock.send_multipart([client, *encode(env.reply(rev=1), [P.pack_records([])])])
        reader.join(10)
        assert not reader.is_alive()
    finally:
        reader.join(10)
        for s in replicas:
            s.close(0)
    assert "error" not in outcome, outcome.get("error")
    assert isinstance(outcome["entry"], Entry) and outcome["entry"].records == []
    assert outcome["spares_asked"] == 1
