"""A catalog client whose replicas are all down waits for them; it does not spin a core.

A request that cannot be sent (no connection) leaves nothing to poll, and a ZeroMQ poll of no
sockets returns at once: the client's wait loop once turned that into a busy loop, and a daemon
whose catalog was down ran at 60% of a core until it came back."""

from __future__ import annotations

import pytest

from snipe.catalog.client import CatalogClient
from snipe.errors import QuorumError
from snipe.identity import Identity
from snipe.localcluster import free_port


def test_a_put_to_replicas_that_are_all_down_waits_instead_of_spinning(monkeypatch: pytest.MonkeyPatch) -> None:
    me, replica = Identity.generate(), Identity.generate()
    dead = [f"tcp://127.0.0.1:{free_port('127.0.0.1')}#{replica.key_id}" for _ in range(3)]
    attempts = 0
    with CatalogClient(dead, me, me.key_id, timeout=1.0) as c:
        send = c._send

        def counted(*args: object, **kw: object) -> int | None:
            nonlocal attempts
            attempts += 1
            return send(*args, **kw)   # type: ignore[arg-type]

        monkeypatch.setattr(c, "_send", counted)
        with pytest.raises(QuorumError, match="acknowledged the write in time"):
            c.put([c.sign("urn:snipe:proc:x", "_owner", me.key_id)], w=2)
    # tried again every 10 ms for the second the put may take: about 3 x 100 attempts, not the
    # hundreds of thousands of a loop that never waits
    assert 0 < attempts < 2_000, attempts


def test_a_read_no_replica_answers_names_each_replica_and_what_it_did() -> None:
    """Nothing listening, and a replica that takes the request but never answers: the error says
    no replica could be reached and names each, not "only 0 of R=... gave a verifiable answer"."""
    import zmq

    from snipe.transport import server_socket

    me, replica = Identity.generate(), Identity.generate()
    closed = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
    ctx = zmq.Context.instance()
    mute = server_socket(ctx, zmq.ROUTER, replica)       # completes the handshake, never replies
    port = mute.bind_to_random_port("tcp://127.0.0.1")
    silent = f"tcp://127.0.0.1:{port}"
    try:
        with CatalogClient([f"{closed}#{replica.key_id}"], me, me.key_id, timeout=0.5, r=1) as c, \
                pytest.raises(QuorumError) as refused:
            c.query("urn:snipe:host:")
        assert str(refused.value).startswith("no catalog replica could be reached for query: "
                                             f"{closed}: no connection came up"), refused.value
        assert "SNIPE_CATALOG" in str(refused.value)
        with CatalogClient([f"{silent}#{replica.key_id}"], me, me.key_id, timeout=0.5, r=1) as c, \
                pytest.raises(QuorumError) as mum:
            c.get("urn:snipe:host:h1")
        assert f"{silent}: took the request but did not answer within 0.5 s" in str(mum.value), mum.value
    finally:
        mute.close(0)
