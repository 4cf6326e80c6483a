"""URNs: `urn:snipe:<kind>:<id>`, the global names of everything in the catalog.

Invariants: a `Urn` is always valid and normalised (the scheme and kind lower-case); code and
file URNs are content addresses, `sha256:<64 lower-case hex>`, so the name is the integrity check.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from dataclasses import dataclass

from snipe.errors import UrnError

KINDS = ("host", "proc", "group", "code", "file", "user")
CONTENT_KINDS = ("code", "file")
PREFIX = "urn:snipe:"
MAX_LENGTH = 256

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@+=~-]*$")
_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Urn:
    kind: str
    id: str

    def __str__(self) -> str:
        return f"{PREFIX}{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Urn:
        if not isinstance(text, str):
            raise UrnError(f"a URN must be a string, not {type(text).__name__}")
        if len(text) > MAX_LENGTH:
            raise UrnError(f"URN is {len(text)} characters long; at most {MAX_LENGTH} are allowed")
        if text[: len(PREFIX)].lower() != PREFIX:
            raise UrnError(f"{text!r} is not a SNIPE URN; expected urn:snipe:<kind>:<id>")
        rest = text[len(PREFIX):]
        kind, sep, ident = rest.partition(":")
        kind = kind.lower()
        if not sep:
            raise UrnError(f"{text!r} lacks an id; expected urn:snipe:<kind>:<id>")
        if kind not in KINDS:
            raise UrnError(f"{text!r} has kind {kind!r}; the kinds are {', '.join(KINDS)}")
        if not _ID.fullmatch(ident):
            raise UrnError(
                f"{text!r} has an empty or malformed id; ids use letters, digits and . _ : @ + = ~ -"
            )
        if kind in CONTENT_KINDS and not _SHA256.fullmatch(ident):
            raise UrnError(f"{text!r}: {kind} URNs are content addresses, sha256:<64 lower-case hex>")
        return cls(kind, ident)


def parse_urn(text: str | Urn) -> Urn:
    if isinstance(text, Urn):
        return text
    if not isinstance(text, str):
        raise UrnError(f"a URN must be a string, not {type(text).__name__}")
    return _parsed(text)


def validate_urn(text: str) -> str:
    """Return the normalised text of a URN, or raise UrnError."""
    if not isinstance(text, str):
        raise UrnError(f"a URN must be a string, not {type(text).__name__}")
    return _normalised(text)


# URNs repeat (every record names one): parse each distinct text once while it stays in use.
@functools.lru_cache(maxsize=8192)
def _normalised(text: str) -> str:
    return str(_parsed(text))


@functools.lru_cache(maxsize=8192)
def _parsed(text: str) -> Urn:
    return Urn.parse(text)


def is_host(text: str) -> bool:
    """Whether `text` is a host's URN (a host daemon speaks for it); False for anything else."""
    try:
        return _parsed(text).kind == "host"
    except (UrnError, TypeError):
        return False


def content_urn(kind: str, data: bytes) -> str:
    if kind not in CONTENT_KINDS:
        raise UrnError(f"only {CONTENT_KINDS} URNs are content-addressed, not {kind!r}")
    return f"{PREFIX}{kind}:sha256:{hashlib.sha256(data).hexdigest()}"


def new_urn(kind: str) -> str:
    """A fresh random URN of a kind that is not content-addressed."""
    if kind not in KINDS or kind in CONTENT_KINDS:
        raise UrnError(f"cannot mint a random {kind!r} URN")
    return f"{PREFIX}{kind}:{uuid.uuid4().hex}"
