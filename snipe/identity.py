"""Ed25519 identities: every host, process and user signs with one.

A key's public half is its name on the wire and in the catalog (`key_id`, 64 hex characters).
CurveZMQ keys are derived from the same key pair (Ed25519 to X25519, as libsodium defines), so
one identity authenticates both assertions and links. Key files are written 0600.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nacl.bindings
import nacl.exceptions
import nacl.signing
import zmq.utils.z85

from snipe.errors import ConfigError, SignatureError

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def key_id(public_key: bytes) -> str:
    return public_key.hex()


def public_key_from_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SignatureError(f"{text!r} is not a key id (64 hex characters of an Ed25519 public key)")
    return raw


def usable_public_key_from_id(text: str) -> bytes:
    """`public_key_from_id`, and the key is a point of the curve: one CurveZMQ can derive a key
    from (libsodium refuses the rest, which could never sign or complete a handshake anyway)."""
    raw = public_key_from_id(text)
    try:
        nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(raw)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.ValueError, ValueError):
        raise SignatureError(f"{text!r} is 64 hex characters but not an Ed25519 public key (no point of the "
                             "curve has it)") from None
    return raw


def verify_detached(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Raise SignatureError unless `signature` is `public_key`'s signature of `message`."""
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise SignatureError("signature or key has the wrong length for Ed25519")
    try:
        nacl.bindings.crypto_sign_open(signature + message, public_key)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError) as exc:
        raise SignatureError(f"signature does not verify for key {public_key.hex()[:16]}…") from exc


def curve_public_key(public_key: bytes) -> bytes:
    """The Z85 CurveZMQ public key of an Ed25519 public key."""
    return zmq.utils.z85.encode(nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(public_key))


def _key_path(path: str | Path) -> Path:
    """`path` with a leading `~` expanded, as a shell would: key paths come from configuration
    and the environment (SNIPE_KEY_FILE) unexpanded, and a literal "~" folder is never meant."""
    try:
        return Path(path).expanduser()
    except RuntimeError:            # no home directory to expand to
        raise ConfigError(f"cannot expand ~ in key path {path}: this user has no home directory; "
                          "give an absolute path") from None


@dataclass(frozen=True)
class Identity:
    signing_key: nacl.signing.SigningKey

    @classmethod
    def generate(cls) -> Identity:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        if len(seed) != 32:
            raise ConfigError("an identity seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @property
    def public_key(self) -> bytes:
        return bytes(self.signing_key.verify_key)

    @property
    def key_id(self) -> str:
        return key_id(self.public_key)

    @property
    def seed(self) -> bytes:
        return bytes(self.signing_key)

    def sign(self, message: bytes) -> bytes:
        return nacl.bindings.crypto_sign(message, self.seed + self.public_key)[:SIGNATURE_BYTES]

    def curve_keypair(self) -> tuple[bytes, bytes]:
        """(public, secret) Z85 CurveZMQ keys derived from this identity."""
        sk = nacl.bindings.crypto_sign_ed25519_sk_to_curve25519(self.seed + self.public_key)
        pk = nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(self.public_key)
        return zmq.utils.z85.encode(pk), zmq.utils.z85.encode(sk)

    def save(self, path: str | Path) -> None:
        path = _key_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # a stale tmp file keeps its old mode through O_CREAT
        with os.fdopen(fd, "w") as f:
            f.write(self.seed.hex() + "\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        path = _key_path(path)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            make = "" if path.parent.is_dir() else f"mkdir -p {path.parent} && "
            raise ConfigError(f"key file {path} does not exist; create one with `{make}snipe-console keygen "
                              f"{path}`") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read key file {path}: {exc}") from None
        try:
            return cls.from_seed(bytes.fromhex(text))
        except (ValueError, ConfigError):
            raise ConfigError(f"key file {path} does not hold a 64-hex-character Ed25519 seed") from None

    @classmethod
    def load_or_create(cls, path: str | Path) -> Identity:
        path = _key_path(path)
        if path.exists():
            return cls.load(path)
        ident = cls.generate()
        ident.save(path)
        return ident
