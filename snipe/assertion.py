"""Signed assertions: the catalog's only kind of record, and the rule that merges them.

An assertion says `name = value` about a URN, at a hybrid-clock timestamp, optionally for a
lease of `ttl_ms`, signed by its writer's Ed25519 key. A tombstone is an assertion with
`deleted=True` and no value.

Merge: for each key `(urn, name, signer)` the assertion with the greatest `(ts, signature)`
wins. That order is total, so merging is commutative, associative and idempotent: replicas that
saw the same assertions in any order hold the same state.

Canonical encoding: the signed bytes are msgpack of a fixed array with map keys sorted, so a
value signs the same wherever it was built. `decode_assertion` raises only `CodecError` (or
`TooLarge`) on arbitrary input.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from snipe import hlc
from snipe.errors import CodecError, TooLarge, UrnError, ValueTypeError
from snipe.identity import PUBLIC_KEY_BYTES, SIGNATURE_BYTES, Identity, verify_detached
from snipe.urn import validate_urn

SIGNING_DOMAIN = "snipe-assertion/1"
MAX_NAME_LENGTH = 256
# A replica keys a record by leaf (2 bytes), URN, NUL, name, NUL and signer (32 bytes), and an
# expiry or clean-up timer by 9 more bytes: LMDB takes keys of at most 511 bytes, so a URN and
# a name may take at most 466 bytes together (UTF-8) in a record written now. Checked at the
# writer and by every replica for each record it has not stored yet, a record too long to store
# is refused on its own, never failing a batch it rides in. Records without a timer stored before
# that check may be up to 475 bytes: they still decode, so nothing stored goes unread.
MAX_URN_AND_NAME_BYTES = 511 - 9 - 2 - 1 - 1 - 32
MAX_STORED_URN_AND_NAME_BYTES = 511 - 2 - 1 - 1 - 32
MAX_VALUE_DEPTH = 16
MAX_ASSERTION_BYTES = 1024 * 1024
RECORD_OVERHEAD = 48
MAX_TTL_MS = 365 * 24 * 3600 * 1000
INT_MIN, INT_MAX = -(2**63), 2**64 - 1

Value = bytes | str | int | float | bool | list["Value"] | dict[str, "Value"]


def check_name(name: object, urn: str, limit: int = MAX_URN_AND_NAME_BYTES) -> str:
    """`name` if it is a valid name for an assertion about `urn` (taking at most `limit` bytes
    with it); CodecError otherwise."""
    if not isinstance(name, str):
        raise CodecError(f"assertion name must be a string, not {type(name).__name__}")
    shown = repr(name if len(name) <= 40 else name[:40] + "…")
    if not name or len(name) > MAX_NAME_LENGTH or "\x00" in name:
        raise CodecError(f"assertion name {shown} must be 1 to {MAX_NAME_LENGTH} characters without NUL")
    size = len(urn) + len(name.encode())
    if size > limit:
        raise CodecError(f"assertion name {shown} of {urn}: the URN and the name take {size} bytes (UTF-8), "
                         f"more than the {MAX_URN_AND_NAME_BYTES} a replica can key a record by")
    return name


def canonical_value(value: Any, depth: int = 0) -> Value:
    """The value with maps sorted by key and tuples as lists; raise ValueTypeError otherwise."""
    if depth > MAX_VALUE_DEPTH:
        raise ValueTypeError(f"value nests deeper than {MAX_VALUE_DEPTH} levels")
    if isinstance(value, bool | str | bytes):
        return value
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ValueTypeError(f"integer {value} does not fit in 64 bits")
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, list | tuple) and not isinstance(value, msgpack.ExtType):  # ExtType is a tuple
        return [canonical_value(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueTypeError("map keys in a value must be strings")
        return {k: canonical_value(value[k], depth + 1) for k in sorted(value)}
    raise ValueTypeError(
        f"values are bytes, str, int, float, bool, or lists and maps of those; got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Assertion:
    urn: str
    name: str
    value: Value | None
    ts: int
    ttl_ms: int
    deleted: bool
    signer: bytes
    signature: bytes

    # --- identity and order -------------------------------------------------------------
    @property
    def key(self) -> tuple[str, str, bytes]:
        return (self.urn, self.name, self.signer)

    @property
    def rank(self) -> tuple[int, bytes]:
        """The merge order: the greater rank wins for the same key."""
        return (self.ts, self.signature)

    @property
    def expires_at_ms(self) -> int | None:
        return hlc.physical_ms(self.ts) + self.ttl_ms if self.ttl_ms else None

    def is_live(self, now_ms: int) -> bool:
        exp = self.expires_at_ms
        return not self.deleted and (exp is None or now_ms < exp)

    # --- signing ------------------------------------------------------------------------
    def signing_bytes(self) -> bytes:
        return _signing_bytes(self.urn, self.name, self.value, self.ts, self.ttl_ms, self.deleted, self.signer)

    def verify(self) -> None:
        """Raise SignatureError unless the signer signed exactly this assertion."""
        body = self.signing_bytes()
        cache_key = _verified_key(body, self.signature)
        if cache_key in _verified:
            _verified.move_to_end(cache_key)
            return
        verify_detached(self.signer, body, self.signature)
        _remember_verified(cache_key)

    # --- wire ---------------------------------------------------------------------------
    def encode(self) -> bytes:
        return msgpack.packb(
            [self.urn, self.name, self.value, self.ts, self.ttl_ms, self.deleted, self.signer, self.signature],
            use_bin_type=True,
        )

    def describe(self) -> str:
        what = "tombstone" if self.deleted else f"{self.name}={self.value!r}"
        return f"{self.urn} {what} by {self.signer.hex()[:12]}… at {self.ts}"


_VERIFIED_CACHE_SIZE = 100_000
_verified: OrderedDict[bytes, None] = OrderedDict()      # signatures known good: made here, or verified


def _verified_key(body: bytes, signature: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=16).digest() + signature


def _remember_verified(cache_key: bytes) -> None:
    _verified[cache_key] = None
    if len(_verified) > _VERIFIED_CACHE_SIZE:
        _verified.popitem(last=False)


def forget_verified() -> None:
    """Forget every signature known good, so each is verified again when next checked (for
    measuring what verification costs: records signed in this process count as verified)."""
    _verified.clear()


def _signing_bytes(urn: str, name: str, value: Any, ts: int, ttl_ms: int, deleted: bool, signer: bytes) -> bytes:
    return msgpack.packb([SIGNING_DOMAIN, urn, name, value, ts, ttl_ms, deleted, signer], use_bin_type=True)


def make_assertion(
    identity: Identity,
    urn: str,
    name: str,
    value: Any,
    ts: int,
    ttl_ms: int = 0,
    deleted: bool = False,
) -> Assertion:
    """Build and sign an assertion; raise UrnError, CodecError or ValueTypeError on bad input."""
    urn = validate_urn(urn)
    check_name(name, urn)
    if deleted:
        if value is not None:
            raise ValueTypeError("a tombstone carries no value")
    else:
        value = canonical_value(value)
    if type(ts) is not int or not 0 <= ts < 2**64:
        raise ValueTypeError(f"ts must be a 64-bit unsigned integer (a packed HLC timestamp), not {ts!r}")
    if type(ttl_ms) is not int or not 0 <= ttl_ms <= MAX_TTL_MS:
        raise ValueTypeError(f"ttl_ms must be an integer from 0 (no lease) to {MAX_TTL_MS}")
    body = _signing_bytes(urn, name, value, ts, ttl_ms, deleted, identity.public_key)
    if len(body) > MAX_ASSERTION_BYTES:
        raise TooLarge(f"assertion {urn} {name} is {len(body)} bytes; the limit is {MAX_ASSERTION_BYTES}")
    signature = identity.sign(body)
    _remember_verified(_verified_key(body, signature))    # a writer reading back its own records skips the check
    return Assertion(urn, name, value, ts, ttl_ms, deleted, identity.public_key, signature)


def decode_assertion(data: bytes) -> Assertion:
    """Decode and structurally validate (not verify) an assertion; raise CodecError if malformed.

    Decoding is a pure function of the bytes and an Assertion is immutable, so the results for
    recent small records are shared: a replica meets one record from its writer, from its peers
    and in its own store within moments.
    """
    # A record is its signed body minus the 18-byte domain string plus the 66-byte signature,
    # so this is exactly make_assertion's limit on the signed body.
    if len(data) > MAX_ASSERTION_BYTES + RECORD_OVERHEAD:
        raise TooLarge(f"assertion record of {len(data)} bytes exceeds the limit of {MAX_ASSERTION_BYTES}")
    data = bytes(data)
    return _decode_shared(data) if len(data) <= _SHARED_DECODE_MAX_BYTES else _decode(data)


_SHARED_DECODE_MAX_BYTES = 2048


@functools.lru_cache(maxsize=2048)
def _decode_shared(data: bytes) -> Assertion:
    return _decode(data)


def _decode(data: bytes) -> Assertion:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of exception types on garbage
        raise CodecError(f"assertion is not valid msgpack ({exc.__class__.__name__})") from None
    if not isinstance(obj, list) or len(obj) != 8:
        raise CodecError("assertion must be an 8-element array")
    urn, name, value, ts, ttl_ms, deleted, signer, signature = obj
    try:
        urn = validate_urn(urn)
    except UrnError as exc:
        raise CodecError(f"assertion has a bad URN: {exc}") from None
    check_name(name, urn, MAX_STORED_URN_AND_NAME_BYTES)
    if type(ts) is not int or not 0 <= ts < 2**64:
        raise CodecError("assertion timestamp must be a 64-bit unsigned integer")
    if type(ttl_ms) is not int or not 0 <= ttl_ms <= MAX_TTL_MS:
        raise CodecError(f"assertion ttl_ms must be an integer in [0, {MAX_TTL_MS}]")
    if type(deleted) is not bool:
        raise CodecError("assertion deleted flag must be a boolean")
    if not isinstance(signer, bytes) or len(signer) != PUBLIC_KEY_BYTES:
        raise CodecError("assertion signer must be a 32-byte Ed25519 public key")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise CodecError("assertion signature must be 64 bytes")
    if deleted:
        if value is not None:
            raise CodecError("a tombstone must carry no value")
    else:
        try:
            value = canonical_value(value)
        except ValueTypeError as exc:
            raise CodecError(f"assertion value: {exc}") from None
    return Assertion(urn, name, value, ts, ttl_ms, deleted, signer, signature)


def newer(a: Assertion, b: Assertion | None) -> bool:
    """True when `a` beats `b` for the same key (b None: nothing held)."""
    return b is None or a.rank > b.rank


def merge(*sets: Iterable[Assertion]) -> dict[tuple[str, str, bytes], Assertion]:
    """Merge assertion sets by the catalog rule: per key, the greatest rank wins."""
    out: dict[tuple[str, str, bytes], Assertion] = {}
    for s in sets:
        for a in s:
            key = (a.urn, a.name, a.signer)          # a.key and newer(), spelt out: readers merge every answer
            held = out.get(key)
            if held is None or (a.ts, a.signature) > (held.ts, held.signature):
                out[key] = a
    return out


def is_finite_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))
