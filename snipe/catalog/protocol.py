"""The client-facing catalog protocol, `rcds/1`: names, limits and framing shared by server and client.

Requests (client -> replica; every reply echoes the request id, kind "ok" or "error"):
  hello                             -> {protocols: {name: [versions]}, replica: id, key: hex}
  put     {to?} records             -> {results: [[status, code, message, rev], ...], turn}; `to` lists
                                       the replicas the client sends this put to (the first
                                       KEY_TAG_BYTES of each one's key): the first of them pushes
                                       it to the others, the rest push it nowhere; `turn`: how
                                       many client puts the replica stored with this one (its load)
  put     {relay, wait} records     -> {results, held_by: [key tag], turn}: to this replica alone,
                                       which answers once `relay` peers hold the records too, or
                                       after `wait` ms with those that do; `held_by` names every
                                       replica holding them, this one first (rcds/put_waits.py)
  get     {urn, name?}              -> records: every record held, tombstones included (with a
                                       name: that name's, and the URN's reserved names, which
                                       readers need to believe it: ownership and delegation)
  query   {prefix, where, limit}    -> records: every record of each matching URN
  watch   {watch, prefix, from_rev?}-> {rev, first_rev}; then events (below) or error "resync"
  unwatch {watch}                   -> {}
  status                            -> {replica, rev, first_rev, count, peers, ...}
  admitted {key} or {curve}         -> {key, reasons: [urn]}: the URNs whose assertions admit the
                                       key (given as Ed25519, or as the X25519 key of a handshake)
Events (replica -> client, request id 0):
  event     {watch, prev, revs: [int], kinds: [str]}  records: one per change
  heartbeat {watch, rev}                              sent every HEARTBEAT_S while idle
  lagged    {watch, after}                            events after `after` were not sent

"records": the message's one payload frame, a msgpack array of encoded assertions (each a
byte string, carried as its writer signed it). One frame per message, not one per record: each
frame costs a send and its own CurveZMQ work. A receiver refuses a records frame that is not
such an array, or that holds more than its limit (`MAX_BATCH_RECORDS` for a put), as a whole;
a record in it that does not decode is refused on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgpack

from snipe.errors import CodecError, TooLarge

PROTOCOL = "rcds"
VERSION = 1
VERSIONS = (1,)

HEARTBEAT_S = 1.0
MAX_RELAY_WAIT_MS = 10_000         # the longest a relayed put may ask its replica to wait for peers
KEY_TAG_BYTES = 8                  # a replica named in a put's "to" by this much of its key
MAX_BATCH_RECORDS = 10_000
MAX_QUERY_URNS = 100_000
MAX_REPLY_RECORDS = 10_000_000     # what a client takes in one reply (a query can be large)
MAX_WATCHES_PER_CONNECTION = 256   # watches one client connection may hold at a replica
EVENT_BYTES = 16 * 1024            # a watch event message carries about this many record bytes at most

# put result statuses
STORED = "stored"      # new here
HELD = "held"          # identical record already held (idempotent retry)
REFUSED = "refused"

REPLICA_SET_URN = "urn:snipe:group:rcds-replicas"
REPLICA_NAME_PREFIX = "replica."


def pack_records(records: Sequence[bytes]) -> bytes:
    """The records frame: encoded assertions (or any byte strings) as one msgpack array."""
    return msgpack.packb(list(records), use_bin_type=True)


def unpack_records(frames: Sequence[bytes], max_records: int, what: str = "message") -> list[bytes]:
    """The byte strings of a message's one records frame; CodecError or TooLarge, naming the
    problem, if there is not exactly one such frame or it holds more than `max_records`."""
    if len(frames) != 1:
        raise CodecError(f"a {what} carries one frame (a msgpack array of encoded assertions), "
                         f"not {len(frames)}")
    frame = frames[0]
    count = _array_length(frame)
    if count is None:
        raise CodecError(f"the frame of a {what} must be a msgpack array of encoded assertions")
    if count > max_records:
        raise TooLarge(f"a {what} carries at most {max_records} records, not {count}; split it")
    try:
        items = msgpack.unpackb(frame, raw=False, max_array_len=max_records)
    except Exception as exc:  # msgpack raises many types on garbage
        raise CodecError(f"the records frame of a {what} is not valid msgpack ({exc.__class__.__name__})") from None
    if not isinstance(items, list) or not all(type(r) is bytes for r in items):
        raise CodecError(f"the records frame of a {what} must be an array of byte strings")
    return items


def _array_length(frame: bytes) -> int | None:
    """The element count of a msgpack array header at the start of `frame` (None: not an array)."""
    if not frame:
        return None
    head = frame[0]
    if 0x90 <= head <= 0x9F:
        return head & 0x0F
    if head == 0xDC and len(frame) >= 3:
        return int.from_bytes(frame[1:3], "big")
    if head == 0xDD and len(frame) >= 5:
        return int.from_bytes(frame[1:5], "big")
    return None
