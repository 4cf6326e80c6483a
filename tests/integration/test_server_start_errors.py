"""`rcds-server` and `snipe-daemon` started as commands with a mistake in their configuration:
each exits non-zero with a one-line error naming the bad value (no traceback), and leaves no
folder it made behind (a folder that was there before is left as it was)."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from snipe.identity import Identity
from snipe.localcluster import LocalCatalog
from snipe.startup import EXAMPLE_ADMIN_KEY

ROOT = Path(__file__).resolve().parents[2]
GOOD_KEY = Identity.from_seed(bytes(range(32))).key_id


def run(program: str, *argv: str) -> tuple[int, str]:
    done = subprocess.run([str(ROOT / "bin" / program), *argv], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr


def assert_one_line_error(program: str, code: int, stderr: str, *words: str) -> None:
    assert code != 0
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{program}: "), stderr
    assert all(w in lines[0] for w in words), stderr


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port another socket listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


def replica_args(tmp_path: Path, **over: str) -> list[str]:
    flags = {"id": "r1", "listen": "tcp://127.0.0.1:9", "data-dir": str(tmp_path / "data"), "admin-key": GOOD_KEY}
    flags.update(over)
    return [a for k, v in flags.items() for a in (f"--{k}", v)]


def test_the_readme_command_with_the_example_file_names_the_placeholder_and_creates_nothing(tmp_path: Path) -> None:
    """`rcds-server --config conf/rcds-server.toml`, its paths moved under tmp_path."""
    conf = tmp_path / "rcds-server.toml"
    conf.write_text((ROOT / "conf" / "rcds-server.toml").read_text().replace("/var/lib/rcds-server",
                                                                              str(tmp_path / "lib")))
    code, err = run("rcds-server", "--config", str(conf))
    assert_one_line_error("rcds-server", code, err, f"replace the placeholder admin_key in {conf}",
                          "snipe-console keygen")
    assert not (tmp_path / "lib").exists()


@pytest.mark.parametrize(("over", "words"), [
    ({"admin-key": EXAMPLE_ADMIN_KEY}, ["admin_key (--admin-key)", "not an Ed25519 public key"]),
    ({"admin-key": "abc"}, ["admin_key (--admin-key)", "'abc' is not a key id"]),
    ({"listen": "garbage"}, ["listen 'garbage' (--listen)", "tcp://HOST:PORT"]),
    ({"listen": "tcp://127.0.0.1:port"}, ["listen 'tcp://127.0.0.1:port' (--listen)", "port"]),
    ({"listen": "tcp://192.0.2.1:7301"}, ["cannot listen on tcp://192.0.2.1:7301", "no interface"]),
    ({"peer": f"r2=tcp://127.0.0.1:9#{'ab' * 32}"}, ["peer 'r2=", "not an Ed25519 public key"]),
    ({"peer": "r2=garbage#" + GOOD_KEY}, ["peer 'r2=", "'garbage'"]),
    ({"log-level": "loud"}, ["log level 'loud'"]),
])
def test_rcds_server_refuses_a_bad_setting_and_creates_nothing(tmp_path: Path, over: dict[str, str],
                                                               words: list[str]) -> None:
    code, err = run("rcds-server", *replica_args(tmp_path, **over))
    assert_one_line_error("rcds-server", code, err, *words)
    assert not (tmp_path / "data").exists()


def test_rcds_server_names_a_data_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0\n")
    code, err = run("rcds-server", *replica_args(tmp_path, **{"data-dir": str(file)}))
    assert_one_line_error("rcds-server", code, err, f"data_dir {file} (--data-dir) is a file")
    code, err = run("rcds-server", *replica_args(tmp_path, **{"data-dir": str(file / "sub")}))
    assert_one_line_error("rcds-server", code, err, f"{file} is a file")
    assert file.read_text() == "root:x:0:0\n"


def test_rcds_server_on_a_port_in_use_names_it_and_removes_the_data_dir_it_made(tmp_path: Path,
                                                                                  busy_port: int) -> None:
    endpoint = f"tcp://127.0.0.1:{busy_port}"
    code, err = run("rcds-server", *replica_args(tmp_path, listen=endpoint, **{"data-dir": str(tmp_path / "a" / "b")}))
    assert_one_line_error("rcds-server", code, err, f"cannot listen on {endpoint}", "another process")
    assert not (tmp_path / "a").exists()


def test_rcds_server_on_a_port_in_use_leaves_a_data_dir_that_was_there_as_it_was(tmp_path: Path,
                                                                                    busy_port: int) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes").write_text("mine")
    code, err = run("rcds-server", *replica_args(tmp_path, listen=f"tcp://127.0.0.1:{busy_port}"))
    assert_one_line_error("rcds-server", code, err, "cannot listen on")
    assert sorted(p.name for p in data.iterdir()) == ["notes"]


def daemon_args(tmp_path: Path, **over: str) -> list[str]:
    flags = {"host-id": "h1", "listen": "tcp://127.0.0.1:9", "state-dir": str(tmp_path / "state"),
             "admin-key": GOOD_KEY, "catalog": f"tcp://127.0.0.1:9#{GOOD_KEY}"}
    flags.update(over)
    return [a for k, v in flags.items() for a in (f"--{k}", v)]


@pytest.mark.parametrize(("over", "words"), [
    ({"admin-key": EXAMPLE_ADMIN_KEY}, ["admin_key (--admin-key)", "not an Ed25519 public key"]),
    ({"listen": "garbage"}, ["listen 'garbage' (--listen)"]),
    ({"relay": "tcp://0.0.0.0"}, ["relay 'tcp://0.0.0.0' (--relay)"]),
    ({"catalog": f"tcp://127.0.0.1:9#{'ab' * 32}"}, ["catalog (--catalog)", "not an Ed25519 public key"]),
])
def test_snipe_daemon_refuses_a_bad_setting_and_creates_nothing(tmp_path: Path, over: dict[str, str],
                                                                words: list[str]) -> None:
    code, err = run("snipe-daemon", *daemon_args(tmp_path, **over))
    assert_one_line_error("snipe-daemon", code, err, *words)
    assert not (tmp_path / "state").exists()


def test_snipe_daemon_names_the_example_files_placeholder(tmp_path: Path) -> None:
    code, err = run("snipe-daemon", "--config", str(ROOT / "conf" / "snipe-daemon.toml"),
                    "--state-dir", str(tmp_path / "state"))
    assert_one_line_error("snipe-daemon", code, err, "replace the placeholder admin_key in",
                          "conf/snipe-daemon.toml")
    assert not (tmp_path / "state").exists()


def test_snipe_daemon_names_a_state_dir_that_is_a_file(tmp_path: Path) -> None:
    file = tmp_path / "passwd"
    file.write_text("root:x:0:0\n")
    code, err = run("snipe-daemon", *daemon_args(tmp_path, **{"state-dir": str(file)}))
    assert_one_line_error("snipe-daemon", code, err, f"state_dir {file} (--state-dir) is a file")
    assert file.read_text() == "root:x:0:0\n"


def test_snipe_daemon_on_a_port_in_use_names_it_and_removes_the_state_dir_it_made(
        tmp_path: Path, catalog: LocalCatalog, busy_port: int) -> None:
    host = Identity.generate()
    host.save(tmp_path / "host.key")
    catalog.admit(host, "h1", kind="host")
    endpoint = f"tcp://127.0.0.1:{busy_port}"
    common = ["--admin-key", catalog.admin.key_id, "--key-file", str(tmp_path / "host.key"),
              *(a for r in catalog.addresses for a in ("--catalog", r))]
    code, err = run("snipe-daemon", "--host-id", "h1", "--listen", endpoint, "--state-dir", str(tmp_path / "state"),
                    *common)
    assert_one_line_error("snipe-daemon", code, err, f"cannot listen on {endpoint}", "another process")
    assert not (tmp_path / "state").exists()
    code, err = run("snipe-daemon", "--host-id", "h1", "--listen", "tcp://127.0.0.1:0", "--relay", endpoint,
                    "--state-dir", str(tmp_path / "state"), *common)
    assert_one_line_error("snipe-daemon", code, err, f"cannot listen on {endpoint} (relay)")
    assert not (tmp_path / "state").exists()
    assert Identity.load(tmp_path / "host.key").key_id == host.key_id       # a key that was there stays
