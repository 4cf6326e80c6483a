"""Task secrets sealed to host keys, so another host can take a task over under its own URN.

A task keeps its URN (and so its catalog entry, its peers' channels and its key) when it is
restarted or a standby is promoted: the host that takes over needs the task's key. The host that
spawns it seals {seed, env, quota} to each other host's X25519 key (derived from its Ed25519
key, as CurveZMQ does) with a libsodium sealed box; only that host can open its copy.
"""

from __future__ import annotations

from typing import Any

import msgpack
import nacl.bindings
import nacl.exceptions
import nacl.public

from snipe.errors import CodecError, IntegrityError
from snipe.identity import Identity, public_key_from_id


def seal(secret: dict[str, Any], host_key_id: str) -> bytes:
    """`secret` (msgpack-able) sealed to the host whose Ed25519 key id is `host_key_id`."""
    curve = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key_from_id(host_key_id))
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(curve)).encrypt(
        msgpack.packb(secret, use_bin_type=True)))


def unseal(sealed: bytes, identity: Identity) -> dict[str, Any]:
    """Open a secret sealed to `identity`; IntegrityError if it was sealed to another key."""
    curve = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(identity.seed + identity.public_key)
    try:
        raw = nacl.public.SealedBox(nacl.public.PrivateKey(curve)).decrypt(bytes(sealed))
    except nacl.exceptions.CryptoError as exc:
        raise IntegrityError(f"a sealed task secret does not open with key {identity.key_id[:16]}…") from exc
    value = msgpack.unpackb(raw, raw=False)
    if not isinstance(value, dict) or not isinstance(value.get("seed"), bytes):
        raise CodecError("a sealed task secret must be a map with the task's key seed")
    return value
