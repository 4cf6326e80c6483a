"""The one wire format: ZeroMQ multipart messages, an envelope frame then raw payload frames.

The envelope is a msgpack array `[protocol, version, kind, request_id, body]`; payload frames
after it are carried as they are (never re-encoded). Every protocol is named and versioned
(`rcds/1`, `daemon/1`, `msg/1`, ...); a server answers a version it lacks with a
`ProtocolVersionError` naming the versions it has.
Invariant: `decode_envelope` raises nothing but `CodecError` (or `TooLarge`) on any input bytes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from snipe.errors import CodecError, ProtocolVersionError, SnipeError, TooLarge, error_from_code

MAX_ENVELOPE_BYTES = 4 * 1024 * 1024

# Reply kinds every protocol shares.
OK = "ok"
ERROR = "error"


@dataclass(frozen=True, slots=True)
class Envelope:
    protocol: str
    version: int
    kind: str
    request_id: int = 0
    body: dict[str, Any] = field(default_factory=dict)

    def reply(self, kind: str = OK, **body: Any) -> Envelope:
        return Envelope(self.protocol, self.version, kind, self.request_id, body)

    def error_reply(self, err: SnipeError) -> Envelope:
        return Envelope(self.protocol, self.version, ERROR, self.request_id,
                        {"code": err.code, "message": str(err)})

    def raise_if_error(self) -> Envelope:
        """On an error reply, raise the error the peer reported; else return self."""
        if self.kind == ERROR:
            raise error_from_code(str(self.body.get("code", "error")), str(self.body.get("message", "")))
        return self


def encode_envelope(env: Envelope) -> bytes:
    return msgpack.packb([env.protocol, env.version, env.kind, env.request_id, env.body], use_bin_type=True)


def decode_envelope(data: bytes) -> Envelope:
    return envelope_of(unpack_envelope(data))


def unpack_envelope(data: bytes) -> Any:
    """What an envelope frame holds, as msgpack decodes it, not yet checked (`envelope_of`
    checks it): for a hot path that reads its usual message's fields without making an
    Envelope. Raises nothing but CodecError (or TooLarge, over MAX_ENVELOPE_BYTES)."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise TooLarge(f"envelope of {len(data)} bytes exceeds the {MAX_ENVELOPE_BYTES}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many types (ValueError, ExtraData, TypeError, ...)
        raise CodecError(f"envelope is not valid msgpack: {exc.__class__.__name__}") from None


def envelope_of(obj: Any) -> Envelope:
    """The Envelope an unpacked envelope frame (`unpack_envelope`) holds; CodecError if malformed."""
    if type(obj) is list and len(obj) == 5:      # the usual envelope, its types checked at once
        protocol, version, kind, request_id, body = obj
        if type(protocol) is str and type(kind) is str and type(version) is int and type(request_id) is int \
                and type(body) is dict:
            return Envelope(protocol, version, kind, request_id, body)
    if not isinstance(obj, list) or len(obj) != 5:
        raise CodecError("envelope must be a 5-element array [protocol, version, kind, request_id, body]")
    protocol, version, kind, request_id, body = obj
    if not isinstance(protocol, str) or not isinstance(kind, str):
        raise CodecError("envelope protocol and kind must be strings")
    if type(version) is not int or type(request_id) is not int:
        raise CodecError("envelope version and request id must be integers")
    if not isinstance(body, dict):
        raise CodecError("envelope body must be a map")
    return Envelope(protocol, version, kind, request_id, body)


def encode(env: Envelope, frames: Sequence[bytes] = ()) -> list[bytes]:
    return [encode_envelope(env), *frames]


def decode(parts: Sequence[bytes]) -> tuple[Envelope, list[bytes]]:
    if not parts:
        raise CodecError("empty multipart message")
    return decode_envelope(bytes(parts[0])), [bytes(p) for p in parts[1:]]


def check_version(env: Envelope, protocol: str, versions: Sequence[int]) -> None:
    """Raise ProtocolVersionError unless env speaks one of `versions` of `protocol`."""
    if env.protocol != protocol:
        raise ProtocolVersionError(
            f"this service speaks {protocol}/{','.join(map(str, versions))}, not {env.protocol!r}")
    if env.version not in versions:
        raise ProtocolVersionError(
            f"{protocol} version {env.version} is not served here; versions on offer: "
            f"{', '.join(str(v) for v in versions)}")


def field_of(env: Envelope, name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    """A body field of the expected type, or CodecError naming the field."""
    if name not in env.body:
        if default is ...:
            raise CodecError(f"{env.protocol} {env.kind!r} request lacks field {name!r}")
        return default
    value = env.body[name]
    if isinstance(value, bool) and kind is int:
        raise CodecError(f"field {name!r} must be int, not bool")
    if not isinstance(value, kind):
        raise CodecError(f"field {name!r} of {env.kind!r} has type {type(value).__name__}")
    return value
