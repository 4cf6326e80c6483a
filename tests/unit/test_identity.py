"""Ed25519 identities: key files, signatures, and the CurveZMQ keys derived from them."""

from __future__ import annotations

import os
import stat

import nacl.bindings
import nacl.signing
import pytest
import zmq.utils.z85

from snipe.errors import ConfigError, SignatureError
from snipe.identity import (
    Identity,
    curve_public_key,
    key_id,
    public_key_from_id,
    verify_detached,
)

SEED = bytes(range(32))
ALICE = Identity.from_seed(SEED)
BOB = Identity.from_seed(b"\x07" * 32)


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_identity_from_seed_is_the_nacl_key_of_that_seed():
    expected = bytes(nacl.signing.SigningKey(SEED).verify_key)
    assert ALICE.seed == SEED
    assert ALICE.public_key == expected
    assert ALICE.key_id == expected.hex()
    assert len(ALICE.key_id) == 64
    assert key_id(expected) == expected.hex()


def test_generate_gives_distinct_identities():
    assert Identity.generate().public_key != Identity.generate().public_key


@pytest.mark.parametrize("seed", [b"", b"\x00" * 31, b"\x00" * 33])
def test_from_seed_refuses_a_seed_of_the_wrong_length(seed):
    with pytest.raises(ConfigError) as info:
        Identity.from_seed(seed)
    assert str(info.value) == "an identity seed is 32 bytes"


def test_sign_matches_nacl_and_verifies():
    message = b"urn:snipe:host:a cpus=8"
    signature = ALICE.sign(message)
    assert signature == nacl.signing.SigningKey(SEED).sign(message).signature
    assert len(signature) == 64
    assert verify_detached(ALICE.public_key, message, signature) is None


@pytest.mark.parametrize(
    ("public_key", "message", "signature", "error"),
    [
        (ALICE.public_key, b"other", ALICE.sign(b"msg"), f"signature does not verify for key {ALICE.key_id[:16]}…"),
        (BOB.public_key, b"msg", ALICE.sign(b"msg"), f"signature does not verify for key {BOB.key_id[:16]}…"),
        (
            ALICE.public_key,
            b"msg",
            bytes([ALICE.sign(b"msg")[0] ^ 1]) + ALICE.sign(b"msg")[1:],
            f"signature does not verify for key {ALICE.key_id[:16]}…",
        ),
        (ALICE.public_key[:31], b"msg", ALICE.sign(b"msg"), "signature or key has the wrong length for Ed25519"),
        (ALICE.public_key, b"msg", ALICE.sign(b"msg")[:63], "signature or key has the wrong length for Ed25519"),
    ],
)
def test_verify_detached_refuses_wrong_message_key_or_signature(public_key, message, signature, error):
    with pytest.raises(SignatureError) as info:
        verify_detached(public_key, message, signature)
    assert str(info.value) == error


def test_public_key_from_id_round_trips_and_refuses_non_keys():
    assert public_key_from_id(ALICE.key_id) == ALICE.public_key
    for bad in ["", "zz" * 32, ALICE.key_id[:62], ALICE.key_id + "00"]:
        with pytest.raises(SignatureError) as info:
            public_key_from_id(bad)
        assert str(info.value) == f"{bad!r} is not a key id (64 hex characters of an Ed25519 public key)"


def test_save_then_load_round_trips_with_mode_0600(tmp_path):
    path = tmp_path / "keys" / "host.key"
    ALICE.save(path)
    assert path.read_text() == SEED.hex() + "\n"
    assert mode_of(path) == 0o600
    assert Identity.load(path).seed == SEED
    assert Identity.load(str(path)).public_key == ALICE.public_key
    assert sorted(p.name for p in path.parent.iterdir()) == ["host.key"]  # no tmp file left


def test_save_replaces_an_existing_key_and_keeps_mode_0600(tmp_path):
    path = tmp_path / "host.key"
    path.write_text("old\n")
    path.chmod(0o644)
    stale_tmp = tmp_path / "host.key.tmp"
    stale_tmp.write_text("stale\n")
    stale_tmp.chmod(0o644)
    ALICE.save(path)
    assert path.read_text() == SEED.hex() + "\n"
    assert mode_of(path) == 0o600


def test_load_of_a_missing_file_says_how_to_make_one(tmp_path):
    path = tmp_path / "absent.key"
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    assert str(info.value) == f"key file {path} does not exist; create one with `snipe-console keygen {path}`"
    deeper = tmp_path / "no" / "such" / "user.key"         # keygen refuses a missing folder: say to make it
    with pytest.raises(ConfigError) as info:
        Identity.load(deeper)
    assert str(info.value).endswith(f"create one with `mkdir -p {deeper.parent} && snipe-console keygen {deeper}`")


NOT_A_SEED = "key file {path} does not hold a 64-hex-character Ed25519 seed"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", NOT_A_SEED),
        (b"not hex at all\n", NOT_A_SEED),
        (b"00" * 31 + b"\n", NOT_A_SEED),
        (b"00" * 33 + b"\n", NOT_A_SEED),
        (
            b"\xff\xfe\x00binary",
            "cannot read key file {path}: 'utf-8' codec can't decode byte 0xff in position 0: invalid start byte",
        ),
    ],
)
def test_load_of_bad_content_raises_config_error(tmp_path, content, message):
    path = tmp_path / "bad.key"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        Identity.load(path)
    assert str(info.value) == message.format(path=path)


def test_load_of_a_directory_raises_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        Identity.load(tmp_path)
    assert str(info.value).startswith(f"cannot read key file {tmp_path}: ")


def test_load_or_create_creates_once_then_loads(tmp_path):
    path = tmp_path / "user.key"
    first = Identity.load_or_create(path)
    assert mode_of(path) == 0o600
    second = Identity.load_or_create(path)
    assert second.seed == first.seed


def test_curve_keypair_is_40_char_z85_and_deterministic():
    public, secret = ALICE.curve_keypair()
    assert (len(public), len(secret)) == (40, 40)
    assert ALICE.curve_keypair() == (public, secret)
    assert Identity.from_seed(SEED).curve_keypair() == (public, secret)
    assert Identity.from_seed(b"\x01" * 32).curve_keypair() != (public, secret)
    # the secret's X25519 public half is the public key, which curve_public_key also derives
    raw_public = zmq.utils.z85.decode(public)
    assert nacl.bindings.crypto_scalarmult_base(zmq.utils.z85.decode(secret)) == raw_public
    assert curve_public_key(ALICE.public_key) == public
    assert raw_public == nacl.bindings.crypto_sign_ed25519_pk_to_curve25519(ALICE.public_key)
