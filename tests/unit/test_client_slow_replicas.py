"""Requests to replicas that are all slower than the hedge delay still get their answers.

On a loaded machine (the demo with 1000 workers on 2 CPUs) every replica took longer than the
read's hedge delay to answer. The read then asked the spare replica and dropped the requests it
had sent first, so their answers, arriving a moment later, no longer counted: only the spare's
did, and the read failed with "only 1 of R=2 replicas gave a verifiable answer" half a second
into a three-second timeout. Here stand-in replicas hold every request until the hedge has gone
out, then the replicas asked first answer and the spare never does."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import zmq

from snipe.catalog import protocol as P
from snipe.catalog.client import CatalogClient
from snipe.catalog.entry import Entry
from snipe.identity import Identity
from snipe.transport import server_socket
from snipe.wire import decode, encode


def answered_after_the_hedge(n: int, asked_first: int, ask: Callable[[CatalogClient], object]
                             ) -> dict[str, object]:
    """Run `ask` on a client of `n` stand-in replicas; once all `n` hold a request (the hedge
    went out), the `asked_first` that got theirs first answer (no records), the others never.
    Returns {"answer" or "error", "spares_asked", "kinds"}."""
    me = Identity.generate()
    keys = [Identity.generate() for _ in range(n)]
    ctx = zmq.Context.instance()
    replicas = [server_socket(ctx, zmq.ROUTER, k) for k in keys]
    addresses = [f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}#{k.key_id}"
                 for s, k in zip(replicas, keys, strict=True)]
    outcome: dict[str, object] = {}

    def run() -> None:
        with CatalogClient(addresses, me, me.key_id, timeout=5.0) as c:
            try:
                outcome["answer"] = ask(c)
            except Exception as exc:
                outcome["error"] = exc
            outcome["spares_asked"] = c.spares_asked

    caller = threading.Thread(target=run)
    caller.start()
    held: list[tuple[zmq.Socket, list[bytes]]] = []       # (replica, request) in the order they came
    try:
        poller = zmq.Poller()
        for s in replicas:
            poller.register(s, zmq.POLLIN)
        deadline = time.monotonic() + 10.0      # the hedge goes out within a second
        while len(held) < n and time.monotonic() < deadline:
            for sock, _ in poller.poll(100):
                held.append((sock, sock.recv_multipart()))
        assert len(held) == n, f"the client asked {len(held)} replicas, not {asked_first} and then a spare"
        outcome["kinds"] = [decode(request)[0].kind for _, (_, *request) in held]
        for sock, (client, *request) in held[:asked_first]:
            env, _ = decode(request)
            sock.send_multipart([client, *encode(env.reply(rev=1), [P.pack_records([])])])
        caller.join(10)
        assert not caller.is_alive()
    finally:
        caller.join(10)
        for s in replicas:
            s.close(0)
    return outcome


def test_a_read_counts_the_answers_of_the_replicas_it_asked_before_hedging() -> None:
    outcome = answered_after_the_hedge(3, 2, lambda c: c.get("urn:snipe:proc:slow"))
    assert "error" not in outcome, outcome.get("error")
    assert isinstance(outcome["answer"], Entry) and outcome["answer"].records == []
    assert outcome["kinds"] == ["get"] * 3 and outcome["spares_asked"] == 1


def test_a_request_takes_the_answer_of_the_replica_it_asked_first_after_asking_another() -> None:
    outcome = answered_after_the_hedge(2, 1, lambda c: c.request("status"))
    assert "error" not in outcome, outcome.get("error")
    assert outcome["kinds"] == ["status"] * 2 and outcome["spares_asked"] == 1


def test_a_replica_that_stays_silent_is_asked_last_by_the_next_read() -> None:
    """Reads no longer give up on a slow replica at the hedge, but one that stayed silent while
    a hedge answered in its place (frozen, cut off) is still asked last next time: the next read
    does not wait out the hedge delay on it again."""
    me = Identity.generate()
    keys = [Identity.generate() for _ in range(3)]
    ctx = zmq.Context.instance()
    replicas = [server_socket(ctx, zmq.ROUTER, k) for k in keys]
    addresses = [f"tcp://127.0.0.1:{s.bind_to_random_port('tcp://127.0.0.1')}#{k.key_id}"
                 for s, k in zip(replicas, keys, strict=True)]
    asked = [0, 0, 0]
    done = threading.Event()

    def serve() -> None:              # the first replica is frozen: it takes requests, never answers
        poller = zmq.Poller()
        for s in replicas:
            poller.register(s, zmq.POLLIN)
        while not done.is_set():
            for sock, _ in poller.poll(50):
                client, *request = sock.recv_multipart()
                i = replicas.index(sock)
                asked[i] += 1
                if i:
                    env, _ = decode(request)
                    sock.send_multipart([client, *encode(env.reply(rev=1), [P.pack_records([])])])

    server = threading.Thread(target=serve)
    server.start()
    try:
        with CatalogClient(addresses, me, me.key_id, timeout=5.0) as c:
            c.get("urn:snipe:proc:first")
            assert asked[0] == 1 and c.spares_asked == 1
            c.get("urn:snipe:proc:second")
            assert asked[0] == 1 and c.spares_asked == 1, asked
    finally:
        done.set()
        server.join(10)
        for s in replicas:
            s.close(0)
