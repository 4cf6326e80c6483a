"""The per-user runtime folders: made private, closed when left open, refused when not ours."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from snipe.errors import ConfigError
from snipe.privatedir import default_runtime_dir, private_dir, refuse_if_not_ours, short_ipc_dir
from snipe.runtime import runtime_home

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


def test_a_link_to_nothing_is_refused_with_a_config_error(tmp_path: Path) -> None:
    link = tmp_path / "snipe-x"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ConfigError, match="not a folder"):
        private_dir(link)


def test_the_default_folder_is_under_xdg_runtime_dir_else_in_tmp(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_runtime_dir() == tmp_path / "snipe"          # never XDG_RUNTIME_DIR itself
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_runtime_dir() == Path(f"/tmp/snipe-{os.getuid()}")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_the_default_home_of_another_user_is_refused_but_one_the_user_names_is_taken(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    squatted = tmp_path / "snipe"
    squatted.mkdir()
    os.chmod(squatted, 0o777)
    os.chown(squatted, OTHER_UID, OTHER_UID)
    monkeypatch.delenv("SNIPE_HOME", raising=False)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="belongs to user id"):
        runtime_home()                      # what `cluster down` and the console read
    assert refuse_if_not_ours(tmp_path / "missing") == tmp_path / "missing"
    monkeypatch.setenv("SNIPE_HOME", str(squatted))
    assert runtime_home() == squatted       # named by the user: as it is
    assert stat.S_IMODE(os.stat(squatted).st_mode) == 0o777


def test_a_folder_too_long_for_a_socket_path_has_a_short_private_stand_in_of_its_own(tmp_path: Path) -> None:
    """Two clusters' hosts whose folders are both too long must not end up sharing one."""
    a, b = tmp_path / ("a" * 120), tmp_path / ("b" * 120)
    short = [short_ipc_dir(a), short_ipc_dir(b)]
    try:
        assert short[0] != short[1] and short_ipc_dir(a) == short[0]
        assert all(len(str(p / "msg-0123456789abcdef.sock")) <= 100 and _mode(p) == 0o700 for p in short)
    finally:
        for p in short:
            p.rmdir()


def test_a_daemons_ipc_folder_refused_names_its_absolute_state_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's `<state_dir>/msg`, refused, told the operator to set SNIPE_HOME, which no
    daemon reads; and a relative state_dir made the paths its tasks are given (SNIPE_IPC_DIR,
    SNIPE_KEY_FILE) resolve against each task's own working folder."""
    from snipe_daemon.server import Daemon, DaemonConfig

    from snipe.identity import Identity
    monkeypatch.chdir(tmp_path)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "msg").write_text("not a folder")
    cfg = DaemonConfig(host_id="h1", listen="tcp://127.0.0.1:1", state_dir=Path("state"),
                       identity=Identity.generate(), admin_key=Identity.generate().public_key, catalog=[])
    with pytest.raises(ConfigError) as refused:
        Daemon(cfg)
    assert cfg.state_dir == tmp_path / "state"
    assert f"set the daemon's state_dir (--state-dir; now {tmp_path / 'state'})" in str(refused.value), refused.value
    assert "SNIPE_HOME" not in str(refused.value)


def test_a_folder_passed_to_an_endpoint_is_taken_as_it_is(tmp_path: Path) -> None:
    """Whoever names an endpoint's folder judges it (a daemon its own, the user SNIPE_HOME): the
    endpoint makes it if missing and leaves its mode alone."""
    from types import SimpleNamespace

    from snipe.messaging.endpoint import Endpoint
    given = tmp_path / "g"
    given.mkdir()
    os.chmod(given, 0o750)
    path = Endpoint._ipc_socket_path(SimpleNamespace(instance="0123456789abcdef99"), given)  # type: ignore[arg-type]
    assert path.endswith("/msg-0123456789abcdef.sock") and _mode(given) == 0o750
    made = Endpoint._ipc_socket_path(SimpleNamespace(instance="0123456789abcdef99"), tmp_path / "m")  # type: ignore[arg-type]
    assert made.endswith("/msg-0123456789abcdef.sock") and _mode(tmp_path / "m") == 0o700
