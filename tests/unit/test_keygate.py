"""The key gate (ZAP handler): its answers to well-formed and malformed requests, and on a real
context, that every handshake of a burst of clients is answered (the gate it replaced, pyzmq's
ThreadAuthenticator, now and then slept through a waiting request)."""

from __future__ import annotations

import threading

import nacl.bindings
import zmq

from snipe.identity import Identity
from snipe.transport import KeyGate, client_socket, server_socket

KNOWN, STRANGER = Identity.generate(), Identity.generate()


def curve_of(ident: Identity) -> bytes:
    return nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ident.public_key)


def gate() -> KeyGate:
    g = KeyGate(zmq.Context.instance(), lambda key: key == KNOWN.public_key)
    g.learn(KNOWN.public_key)
    g.learn(STRANGER.public_key)
    return g


def request(mechanism: bytes, *credentials: bytes, domain: bytes = b"snipe", version: bytes = b"1.0") -> list[bytes]:
    return [version, b"7", domain, b"127.0.0.1", b"", mechanism, *credentials]


def test_an_admitted_curve_key_is_accepted_and_tagged_with_its_ed25519_key_id() -> None:
    assert gate().answer(request(b"CURVE", curve_of(KNOWN))) == [b"1.0", b"7", b"200", b"OK",
                                                                  KNOWN.public_key.hex().encode(), b""]


def test_a_key_that_is_not_admitted_is_refused_and_remembered() -> None:
    g = gate()
    reply = g.answer(request(b"CURVE", curve_of(STRANGER)))
    assert reply[2] == b"400" and reply[4] == b"" and len(g.refused) == 1


def test_malformed_requests_get_a_400_naming_what_was_wrong() -> None:
    g = gate()
    cases = {
        "not a ZAP 1.0 request": [b"1.0", b"7"],
        "not a ZAP 1.0 request ": request(b"CURVE", curve_of(KNOWN), version=b"2.0"),
        "unknown domain": request(b"CURVE", curve_of(KNOWN), domain=b"other"),
        "mechanism b'NULL'": request(b"NULL"),
        "mechanism b'CURVE'": request(b"CURVE", b"short"),
    }
    for expected, msg in cases.items():
        reply = g.answer(msg)
        assert reply[2] == b"400" and expected.strip() in reply[3].decode(), (expected, reply)
    assert g.answer([])[:3] == [b"1.0", b"", b"400"]


def test_an_ipc_token_from_another_user_is_refused() -> None:
    reply = gate().answer(request(b"PLAIN", KNOWN.key_id.encode(), b"00"))
    assert reply[2] == b"400"                # the address names no uid of ours


def test_every_handshake_of_a_burst_of_clients_is_answered() -> None:
    ctx = zmq.Context()
    server = Identity.generate()
    clients = [Identity.generate() for _ in range(24)]
    admitted = {c.public_key for c in clients}
    g = KeyGate(ctx, lambda key: key in admitted)
    for c in clients:
        g.learn(c.public_key)
    g.install()
    router = server_socket(ctx, zmq.ROUTER, server)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    answered: list[bool] = []

    def one(ident: Identity) -> None:
        sock = client_socket(ctx, zmq.DEALER, ident, server.public_key)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send(b"ping")
        answered.append(bool(sock.poll(10_000)))
        sock.close(0)

    try:
        for _ in range(3):
            threads = [threading.Thread(target=one, args=(c,)) for c in clients]
            for t in threads:
                t.start()
            for _ in clients:                    # echo every request; each is tagged with its key
                assert router.poll(10_000), "a client's request never reached the server"
                frames = router.recv_multipart(copy=False)
                assert frames[1].get("User-Id") in {c.public_key.hex() for c in clients}
                router.send_multipart([f.bytes for f in frames])
            for t in threads:
                t.join(15)
        assert answered == [True] * (3 * len(clients))
    finally:
        router.close(0)
        g.stop()
        ctx.term()
