"""The per-user runtime folders: made private, closed when left open, refused when not ours."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snipe.errors import ConfigError
from snipe.privatedir import private_dir

OTHER_UID = 65534           # nobody


def _mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_missing_folders_and_their_parents_are_made_this_users_alone(tmp_path: Path) -> None:
    # The ipc sockets' fallback folder is /tmp/snipe-<uid>/msg: its parent, made on the way,
    # came with the umask's mode (0755) and let everyone list the sockets.
    before = _mode(tmp_path)
    old = os.umask(0o022)
    try:
        got = private_dir(tmp_path / "snipe-x" / "msg")
    finally:
        os.umask(old)
    assert got == tmp_path / "snipe-x" / "msg"
    assert _mode(got) == 0o700 and _mode(tmp_path / "snipe-x") == 0o700
    assert _mode(tmp_path) == before              # a parent that was there already is left as it was


def test_a_folder_of_ours_left_open_is_closed(tmp_path: Path) -> None:
    d = tmp_path / "open"
    d.mkdir(mode=0o755)
    os.chmod(d, 0o755)
    (d / "kept").write_text("x")
    private_dir(d)
    assert _mode(d) == 0o700 and (d / "kept").read_text() == "x"


def test_a_file_in_the_folders_place_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "snipe-x"
    f.write_text("not a folder")
    with pytest.raises(ConfigError, match="should be a folder"):
        private_dir(f)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_folder_another_user_made_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "squatted"
    d.mkdir(mode=0o777)
    os.chown(d, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match=f"belongs to user id {OTHER_UID}"):
        private_dir(d)
    assert os.stat(d).st_uid == OTHER_UID            # refused, not taken over


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a link to another user")
def test_a_link_another_user_made_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "ours"
    target.mkdir(mode=0o700)
    link = tmp_path / "snipe-x"
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(ConfigError, match="belongs to user id"):
        private_dir(link)
