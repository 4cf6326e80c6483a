"""Checks on the fields of daemon/1 requests, for what `snipe.wire.field_of` does not cover.

Each returns the field's value in the form the daemon uses, or raises CodecError naming the
request, the field and what it must be; nothing is started or stored before a request's fields
pass. (A task's argv and environment go to exec and a zygote's os.environ, which refuse NUL
bytes and `=` in names; refused here, the caller hears why, instead of a task that dies.)
"""

from __future__ import annotations

import math

from snipe.errors import CodecError
from snipe.wire import Envelope, field_of

MAX_SEQ = 1 << 53           # event sequence numbers: far from msgpack's 64-bit limit after any number of events


def shown(value: object) -> str:
    """A value for an error message: its repr, cut short (a request may carry megabytes)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def seconds_of(env: Envelope, name: str, default: float) -> float:
    """A duration field: a finite number >= 0 (not a bool, NaN or infinity)."""
    value = env.body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value >= 0):
        raise CodecError(f"{env.kind}: {name} must be a finite number of seconds >= 0, not {shown(value)}")
    return float(value)


def texts_of(env: Envelope, name: str) -> list[str]:
    """A list of strings (numbers are written out), none holding a NUL byte: a task's args."""
    out = []
    for item in field_of(env, name, list, []):
        if isinstance(item, bool) or not isinstance(item, str | int | float):
            raise CodecError(f"{env.kind}: each of {name} must be a string or a number, not {type(item).__name__}")
        text = str(item)
        if "\x00" in text:
            raise CodecError(f"{env.kind}: {name} may not hold a NUL byte: {shown(text)}")
        out.append(text)
    return out


def environment_of(env: Envelope, name: str) -> dict[str, str]:
    """A task's extra environment: names without `=` or NUL, values strings or numbers without NUL."""
    out = {}
    for key, value in field_of(env, name, dict, {}).items():
        if not isinstance(key, str) or not key or "=" in key or "\x00" in key:
            raise CodecError(f"{env.kind}: {name} has variable name {shown(key)}; names are non-empty strings "
                             "without '=' or NUL")
        if isinstance(value, bool) or not isinstance(value, str | int | float) or "\x00" in str(value):
            raise CodecError(f"{env.kind}: {name} variable {shown(key)} must be a string or a number without NUL, "
                             f"not {shown(value)}")
        out[key] = str(value)
    return out


def seq_of(env: Envelope, name: str, default: int) -> int:
    """An event sequence number: an int from 0 to MAX_SEQ."""
    value = field_of(env, name, int, default)
    if not 0 <= value <= MAX_SEQ:
        raise CodecError(f"{env.kind}: {name} must be from 0 to {MAX_SEQ}, not {value}")
    return value
