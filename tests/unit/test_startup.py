"""The start-up checks of snipe/startup.py: which listen endpoints and keys pass, and a Footprint
that removes only what a failed start made."""

from __future__ import annotations

from pathlib import Path

import pytest

from snipe.errors import ConfigError, SignatureError
from snipe.identity import Identity, usable_public_key_from_id
from snipe.startup import EXAMPLE_ADMIN_KEY, Footprint, admin_key_from, check_listen_endpoint


@pytest.mark.parametrize("endpoint", ["tcp://0.0.0.0:7301", "tcp://*:7301", "tcp://127.0.0.1:*", "tcp://[::1]:7301",
                                      "tcp://eth0:7301", "tcp://rcds1.example.org:0", "ipc:///run/snipe/r1.sock"])
def test_an_endpoint_a_server_can_bind_passes(endpoint: str) -> None:
    assert check_listen_endpoint(endpoint, "listen", "--listen", 7301) == endpoint


@pytest.mark.parametrize("endpoint", ["garbage", "127.0.0.1:7301", "udp://0.0.0.0:7301", "tcp://0.0.0.0",
                                      "tcp://0.0.0.0:70000", "tcp://::1:7301", "tcp://:7301", "ipc://"])
def test_an_endpoint_a_server_cannot_bind_is_named(endpoint: str) -> None:
    with pytest.raises(ConfigError, match=f"listen '{endpoint}' \\(--listen\\)"):
        check_listen_endpoint(endpoint, "listen", "--listen", 7301)


def test_a_key_of_the_right_length_off_the_curve_is_refused() -> None:
    good = Identity.generate().key_id
    assert usable_public_key_from_id(good).hex() == good
    with pytest.raises(SignatureError, match="64 hex characters but not an Ed25519 public key"):
        usable_public_key_from_id(EXAMPLE_ADMIN_KEY)
    with pytest.raises(ConfigError, match=r"admin_key \(--admin-key\): .* not an Ed25519 public key"):
        admin_key_from("ab" * 32, "--admin-key")
    with pytest.raises(ConfigError, match=r"admin_key in r\.toml: 'x' is not a key id.*replace it"):
        admin_key_from("x", "config file r.toml")


def test_a_footprint_removes_only_what_was_made_after_it_noted_it(tmp_path: Path) -> None:
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old").write_text("old")
    fp = Footprint()
    fp.note(tmp_path / "new" / "deep", kept / "old", kept / "made", tmp_path / "never")
    (tmp_path / "new" / "deep").mkdir(parents=True)
    (tmp_path / "new" / "deep" / "data.mdb").write_text("x")
    (kept / "made").write_text("x")
    fp.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert sorted(p.name for p in kept.iterdir()) == ["old"]
