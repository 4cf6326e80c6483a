"""Every kind of bad input gets a specific error reply, and the replica keeps serving."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgpack
import pytest
import zmq

from snipe import hlc
from snipe.assertion import MAX_ASSERTION_BYTES, Assertion, _signing_bytes, decode_assertion, make_assertion
from snipe.catalog import protocol as P
from snipe.identity import Identity
from snipe.localcluster import LocalCatalog
from snipe.transport import Link
from snipe.wire import Envelope, decode, encode
from tests.support import wait_for


class Raw:
    """A bare DEALER speaking rcds/1 by hand, so the test can send anything at all."""

    def __init__(self, cat: LocalCatalog, ident: Identity) -> None:
        r = cat.replicas[0]
        self.link = Link(zmq.Context.instance(), ident, r.endpoint, r.identity.public_key, immediate=False)
        self.ids = 0

    def ask(self, parts: list[bytes]) -> tuple[Envelope, list[bytes]]:
        """Send and wait for the answer; resend if the replica refused our key (it may learn of
        the admission a moment after the test made it) and the link was remade."""
        self.link.sock.send_multipart(parts)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.link.sock.poll(100):
                return decode(self.link.sock.recv_multipart())
            if self.link.check(time.monotonic()):
                self.link.sock.send_multipart(parts)
        raise AssertionError("the replica did not answer within 10 s")

    def request(self, kind: str, body: dict | None = None, frames: list[bytes] | tuple[bytes, ...] = (),
                version: int = P.VERSION) -> tuple[Envelope, list[bytes]]:
        self.ids += 1
        return self.ask(encode(Envelope(P.PROTOCOL, version, kind, self.ids, body or {}), frames))

    def put(self, *records: bytes) -> list[list]:
        env, _ = self.request("put", frames=[P.pack_records(records)])
        assert env.kind == "ok", env.body
        return env.body["results"]


@pytest.fixture
def raw(catalog: LocalCatalog, user: Identity) -> Iterator[Raw]:
    r = Raw(catalog, user)
    yield r
    r.link.close()


def ts() -> int:
    return hlc.pack(int(time.time() * 1000))


def still_serving(raw: Raw, user: Identity) -> None:
    env, _ = raw.request("hello")
    assert env.kind == "ok" and env.body["protocols"]["rcds"] == [1]
    claim = make_assertion(user, "urn:snipe:proc:served", "_owner", user.key_id, ts())
    good = make_assertion(user, "urn:snipe:proc:served", "n", time.time(), ts())
    assert [r[0] for r in raw.put(claim.encode(), good.encode())] == [P.STORED, P.STORED]


def test_each_bad_assertion_is_refused_with_its_reason(catalog: LocalCatalog, user: Identity, raw: Raw) -> None:
    claim = make_assertion(user, "urn:snipe:proc:alive", "_owner", user.key_id, ts())
    assert raw.put(claim.encode())[0][0] == P.STORED
    other = Identity.generate()
    catalog.admit(other, "bob")

    good = make_assertion(user, "urn:snipe:proc:alive", "v", 1, ts())
    forged = Assertion(good.urn, good.name, good.value, good.ts, 0, False, other.public_key, good.signature)
    unsigned = Assertion(good.urn, "w", 2, good.ts, 0, False, user.public_key, bytes(64))
    unauthorized = make_assertion(other, "urn:snipe:proc:alive", "v", 3, ts())
    raw.put(make_assertion(user, "urn:snipe:proc:alive", "s", "new", ts()).encode())
    stale = make_assertion(user, "urn:snipe:proc:alive", "s", "old", ts() - hlc.pack(60_000))
    future = make_assertion(user, "urn:snipe:proc:alive", "f", 1, ts() + hlc.pack(3_600_000))
    big_value, big_ts = b"x" * MAX_ASSERTION_BYTES, ts()
    body = _signing_bytes("urn:snipe:proc:alive", "big", big_value, big_ts, 0, False, user.public_key)
    oversized = msgpack.packb(["urn:snipe:proc:alive", "big", big_value, big_ts, 0, False, user.public_key,
                               user.sign(body)], use_bin_type=True)
    garbage = b"\xc1\x00garbage"
    # 256 characters (the most a name has) but 512 bytes: too long a key for the store. It once
    # failed the whole batch it came in, every other client's puts of that turn with it.
    long_name, long_ts = "é" * 256, ts()
    body = _signing_bytes("urn:snipe:proc:alive", long_name, 1, long_ts, 0, False, user.public_key)
    long_key = msgpack.packb(["urn:snipe:proc:alive", long_name, 1, long_ts, 0, False, user.public_key,
                              user.sign(body)], use_bin_type=True)

    results = raw.put(forged.encode(), unsigned.encode(), unauthorized.encode(), stale.encode(), future.encode(),
                      oversized, garbage, long_key, good.encode())
    codes = [(r[0], r[1]) for r in results]
    assert codes == [
        (P.REFUSED, "bad-signature"),
        (P.REFUSED, "bad-signature"),
        (P.REFUSED, "not-authorized"),
        (P.REFUSED, "stale"),
        (P.REFUSED, "stale"),
        (P.REFUSED, "too-large"),
        (P.REFUSED, "malformed"),
        (P.REFUSED, "malformed"),
        (P.STORED, ""),                 # the good record in the same batch is stored
    ]
    assert "is owned by key" in results[2][2] and "ask its owner" in results[2][2]
    assert "older than the held one" in results[3][2]
    assert "in the future" in results[4][2]
    assert "take 532 bytes" in results[7][2] and "466" in results[7][2]
    still_serving(raw, user)


def test_garbage_messages_get_error_replies(catalog: LocalCatalog, user: Identity, raw: Raw) -> None:
    env, _ = raw.ask([b"\xff\xfe not msgpack"])
    assert (env.kind, env.body["code"]) == ("error", "malformed")
    env, _ = raw.ask([msgpack.packb(["rcds", 1, "get"])])
    assert (env.kind, env.body["code"]) == ("error", "malformed")
    env, _ = raw.request("get", {"urn": 5})
    assert env.body["code"] == "malformed" and "'urn'" in env.body["message"]
    env, _ = raw.request("get", {"urn": "not-a-urn"})
    assert env.body["code"] == "bad-urn"
    env, _ = raw.request("hello", version=7)
    assert env.body["code"] == "bad-version" and "versions on offer: 1" in env.body["message"]
    env, _ = raw.request("frobnicate")
    assert env.body["code"] == "unknown-request" and "put, get, query" in env.body["message"]
    env, _ = raw.request("query", {"prefix": "urn:snipe:", "where": [["a", "~~", 1]]})
    assert env.body["code"] == "malformed" and "op one of" in env.body["message"]
    env, _ = raw.request("watch", {"watch": "w", "prefix": "urn:", "from_rev": 10**12})
    assert env.body["code"] == "resync"
    env, _ = raw.request("put")
    assert env.body["code"] == "malformed" and "one frame" in env.body["message"]
    env, _ = raw.request("put", frames=[P.pack_records([b"a"]), P.pack_records([b"b"])])
    assert env.body["code"] == "malformed" and "one frame" in env.body["message"]
    env, _ = raw.request("put", frames=[msgpack.packb({"records": []})])
    assert env.body["code"] == "malformed" and "msgpack array" in env.body["message"]
    env, _ = raw.request("put", frames=[msgpack.packb(["not bytes"])])
    assert env.body["code"] == "malformed" and "byte strings" in env.body["message"]
    env, _ = raw.request("put", frames=[P.pack_records([b"x"] * (P.MAX_BATCH_RECORDS + 1))])
    assert env.body["code"] == "too-large" and f"at most {P.MAX_BATCH_RECORDS} records" in env.body["message"]
    env, frames = raw.request("get", {"urn": "urn:snipe:proc:nothing-here"})
    assert env.kind == "ok" and P.unpack_records(frames, 10) == []
    env, _ = raw.request("admitted", {"curve": ""})
    assert env.body["code"] == "malformed" and "32-byte X25519 key" in env.body["message"]
    env, _ = raw.request("query", {"prefix": "urn:snipe:", "limit": 0})
    assert env.body["code"] == "malformed" and "'limit' must be 1 to" in env.body["message"]
    still_serving(raw, user)


def test_one_connection_holds_a_bounded_number_of_watches(catalog: LocalCatalog, user: Identity,
                                                           raw: Raw) -> None:
    for i in range(P.MAX_WATCHES_PER_CONNECTION):
        assert raw.request("watch", {"watch": f"w{i}", "prefix": f"urn:snipe:proc:w{i}"})[0].kind == "ok"
    env, _ = raw.request("watch", {"watch": "one-more", "prefix": "urn:snipe:proc:"})
    assert env.body["code"] == "too-large" and "unwatch some" in env.body["message"]
    assert raw.request("watch", {"watch": "w0", "prefix": "urn:snipe:proc:again"})[0].kind == "ok"  # a re-watch
    assert raw.request("unwatch", {"watch": "w1"})[0].kind == "ok"
    assert raw.request("watch", {"watch": "one-more", "prefix": "urn:snipe:proc:"})[0].kind == "ok"
    still_serving(raw, user)


def test_a_watch_replays_a_long_log_in_bounded_messages_without_a_gap(catalog: LocalCatalog, user: Identity,
                                                                      raw: Raw) -> None:
    urn = "urn:snipe:proc:replayed"
    raw.put(make_assertion(user, urn, "_owner", user.key_id, ts()).encode())
    value = b"v" * 2000
    for k in range(4):          # about 240 KB of records: several events of at most P.EVENT_BYTES
        raw.put(*[make_assertion(user, urn, f"n{k}.{j}", value, ts()).encode() for j in range(30)])
    env, _ = raw.request("watch", {"watch": "all", "prefix": urn, "from_rev": 0})
    assert env.kind == "ok"
    events, prev, names = 0, 0, []
    while len(names) < 121:
        env, frames = _next_event(raw)
        assert env.kind == "event" and env.body["prev"] == prev      # each follows the last: no gap
        records = P.unpack_records(frames, 1000)
        assert sum(map(len, records)) <= P.EVENT_BYTES + len(records[-1])
        prev = env.body["revs"][-1]
        names += [decode_assertion(r).name for r in records]
        events += 1
    assert events >= 3 and names[0] == "_owner" and len(set(names)) == 121


def _next_event(raw: Raw) -> tuple[Envelope, list[bytes]]:
    """The next watch event on the raw link (skipping heartbeats)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if raw.link.sock.poll(100):
            env, frames = decode(raw.link.sock.recv_multipart())
            if env.kind != "heartbeat":
                return env, frames
    raise AssertionError("no watch event within 10 s")


def test_a_peer_pretending_to_be_a_replica_changes_nothing(catalog: LocalCatalog, user: Identity,
                                                            raw: Raw) -> None:
    before = wait_for(lambda: raw.request("status")[0].body, 5, "status")
    forged = make_assertion(user, "urn:snipe:proc:sneak", "_owner", user.key_id, ts())
    env, _ = raw.ask(encode(Envelope("rcds-peer", 1, "push", 0, {"from": "r2" * 100_000}),
                            [P.pack_records([forged.encode()])]))
    assert env.body["code"] == "not-authorized" and "only from the replicas of this set" in env.body["message"]
    env, _ = raw.request("get", {"urn": "urn:snipe:proc:sneak"})
    assert env.kind == "ok"
    after = raw.request("status")[0].body
    assert after["count"] == before["count"]
    still_serving(raw, user)


def test_an_unknown_key_is_refused_at_the_handshake(catalog: LocalCatalog) -> None:
    from snipe.errors import NotAuthorized

    with catalog.client(Identity.generate(), timeout=1) as stranger, pytest.raises(NotAuthorized,
                                                                                  match="not admitted"):
        stranger.get("urn:snipe:host:anything")
