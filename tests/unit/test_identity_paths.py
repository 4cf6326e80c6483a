"""Key file paths as configuration and the README give them: a leading `~` is the user's home."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snipe.errors import ConfigError
from snipe.identity import Identity


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)      # where an unexpanded "~" folder would be made
    return tmp_path


def test_save_and_load_expand_the_home_folder(home: Path) -> None:
    ident = Identity.generate()
    ident.save("~/.config/snipe/user.key")
    written = home / ".config" / "snipe" / "user.key"
    assert written.is_file() and stat.S_IMODE(os.stat(written).st_mode) == 0o600
    assert not (home / "~").exists()
    assert Identity.load("~/.config/snipe/user.key").key_id == ident.key_id
    assert Identity.load(Path("~/.config/snipe/user.key")).key_id == ident.key_id


def test_load_or_create_expands_and_then_reuses(home: Path) -> None:
    first = Identity.load_or_create("~/keys/host.key")
    assert (home / "keys" / "host.key").is_file() and not (home / "~").exists()
    assert Identity.load_or_create("~/keys/host.key").key_id == first.key_id


def test_a_missing_key_names_the_expanded_path(home: Path) -> None:
    with pytest.raises(ConfigError, match=f"key file {home / 'absent.key'} does not exist"):
        Identity.load("~/absent.key")
