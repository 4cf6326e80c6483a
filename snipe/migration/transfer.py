"""The `migrate/1` wire format between a migrating process and its clone (no I/O).

    state   {id, lib, groups, app: "none"|"bytes"|"msgpack", sizes}  frames: [small blob, big..., app]
    ready   {id, location}          clone -> origin: restored, here is where I listen
    refused {id, message}           clone -> origin: the state could not be restored
    commit  {id}                    origin -> clone: you are the process now
    abort   {id, message}           origin -> clone: the migration is off

Message payloads travel packed: those up to `PACK_MAX` bytes concatenated in one frame (their
sizes in `sizes`, as >= 0), bigger ones as frames of their own (-1 in `sizes`), never copied
again. The application's state is the last frame: bytes as they are (a 100 MiB state is one
zero-copy frame), anything else msgpack-encoded. The link is CurveZMQ, both ends holding the
process's own key, so only the process itself can hand over its state.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgpack

from snipe.errors import CodecError
from snipe.wire import Envelope, decode_envelope, encode

PROTOCOL = "migrate"
VERSION = 1
PACK_MAX = 64 * 1024


def pack_payloads(payloads: Sequence[bytes]) -> tuple[list[int], list[Any]]:
    """(sizes, frames): small payloads joined in frames[0], big ones as frames 1.. (not copied)."""
    sizes: list[int] = []
    small: list[bytes] = []
    big: list[Any] = []
    for p in payloads:
        if len(p) <= PACK_MAX:
            sizes.append(len(p))
            small.append(p)
        else:
            sizes.append(-1)
            big.append(p)
    return sizes, [b"".join(small), *big]


def unpack_payloads(sizes: Sequence[int], frames: Sequence[Any]) -> list[bytes]:
    if not frames:
        raise CodecError("migrate/1 state: no payload frames")
    blob = bytes(frames[0])
    big = iter(frames[1:])
    out: list[bytes] = []
    at = 0
    for n in sizes:
        if type(n) is not int or n < -1:
            raise CodecError("migrate/1 state: sizes must be integers >= -1")
        if n == -1:
            try:
                out.append(next(big))
            except StopIteration:
                raise CodecError("migrate/1 state: fewer big payload frames than sizes name") from None
        else:
            if at + n > len(blob):
                raise CodecError("migrate/1 state: packed payloads overrun their frame")
            out.append(blob[at:at + n])
            at += n
    if at != len(blob) or next(big, None) is not None:
        raise CodecError("migrate/1 state: payload frames hold more than sizes name")
    return out


def encode_state(mid: str, lib: dict[str, Any], payloads: Sequence[bytes], groups: dict[str, Any],
                 app: Any) -> list[Any]:
    """The multipart message that carries a process's whole state."""
    sizes, frames = pack_payloads(payloads)
    if app is None:
        kind, app_frame = "none", b""
    elif isinstance(app, bytes | bytearray | memoryview):
        kind, app_frame = "bytes", app
    else:
        try:
            kind, app_frame = "msgpack", msgpack.packb(app, use_bin_type=True)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"the on_checkpoint hook returned what msgpack cannot encode: {exc}") from exc
    env = Envelope(PROTOCOL, VERSION, "state", 0, {"id": mid, "lib": lib, "groups": groups, "app": kind,
                                                    "sizes": sizes})
    return encode(env, [*frames, app_frame])


def decode_state(env: Envelope, frames: Sequence[Any]) -> tuple[dict[str, Any], list[bytes], dict[str, Any], Any]:
    """(lib, payloads, groups, app state) of a `state` message; CodecError if malformed."""
    body = env.body
    lib, groups, kind, sizes = body.get("lib"), body.get("groups"), body.get("app"), body.get("sizes")
    if not isinstance(lib, dict) or not isinstance(groups, dict) or not isinstance(sizes, list):
        raise CodecError("migrate/1 state needs lib and groups maps and a sizes list")
    if len(frames) < 2:
        raise CodecError("migrate/1 state needs payload frames and the application's state frame")
    payloads = unpack_payloads(sizes, frames[:-1])
    app_frame = frames[-1]
    if kind == "none":
        app = None
    elif kind == "bytes":
        app = bytes(app_frame)
    elif kind == "msgpack":
        try:
            app = msgpack.unpackb(app_frame, raw=False)
        except Exception as exc:
            raise CodecError(f"migrate/1 state: the application's state does not decode: {exc}") from None
    else:
        raise CodecError(f"migrate/1 state: app must be none, bytes or msgpack, not {kind!r}")
    return lib, payloads, groups, app


def message(kind: str, mid: str, **body: Any) -> list[bytes]:
    return encode(Envelope(PROTOCOL, VERSION, kind, 0, {"id": mid, **body}))


def parse(parts: Sequence[Any]) -> tuple[Envelope, list[Any]]:
    """A migrate/1 message; CodecError (or ProtocolVersionError) if it is not one."""
    env, frames = decode_envelope(bytes(parts[0])), list(parts[1:])   # big frames stay uncopied
    if env.protocol != PROTOCOL or env.version != VERSION:
        raise CodecError(f"expected {PROTOCOL}/{VERSION}, got {env.protocol}/{env.version}")
    if not isinstance(env.body.get("id"), str):
        raise CodecError("a migrate/1 message needs its migration id")
    return env, frames


__all__ = ["decode_state", "encode_state", "message", "pack_payloads", "parse", "unpack_payloads"]
