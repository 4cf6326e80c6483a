"""`sync = true` in a replica's TOML file: every commit is flushed to disk before the write is
acknowledged (rcds/store.py opens LMDB with sync and metasync on; it writes through the map,
so LMDB flushes with msync), and the replica serves as before. Checked on a real rcds-server
started from a TOML file, as an operator would, traced by strace: the syscalls that flush its
LMDB data file are counted while it acknowledges writes, and its status reply states the mode
it runs in."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from snipe.catalog import CatalogClient
from snipe.errors import QuorumError, StorageFull
from snipe.identity import Identity
from snipe.localcluster import free_port
from snipe.runtime import now_ms
from tests.support import wait_for

STRACE = shutil.which("strace")
FLUSHES = "fsync,fdatasync,msync,sync_file_range"
TRACED = f"{FLUSHES},mmap"      # msync names an address, not a file: the map's mmap says which file
WRITES = 40


class TomlReplica:
    """One rcds-server (a catalog of one) started from `<root>/rcds.toml`, optionally under
    `strace -f -y`; killed -9 by the pid it wrote in its ready file. Every process it started
    is ended by `close()`."""

    def __init__(self, root: Path, *, sync: bool, flags: tuple[str, ...] = ()) -> None:
        self.root, self.flags = root, flags
        self.data_dir = root / "r1"
        self.admin = Identity.load_or_create(root / "admin.key")
        self.key = Identity.load_or_create(self.data_dir / "replica.key")
        self.endpoint = f"tcp://127.0.0.1:{free_port('127.0.0.1')}"
        self.config = root / "rcds.toml"
        self.config.write_text(
            "[replica]\n"
            'id = "r1"\n'
            f'listen = "{self.endpoint}"\n'
            f'data_dir = "{self.data_dir}"\n'
            f'key_file = "{self.data_dir / "replica.key"}"\n'
            f'admin_key = "{self.admin.key_id}"\n'
            "anti_entropy_s = 0.5\n"
            f"sync = {'true' if sync else 'false'}\n")
        self.ready = root / "ready.json"
        self.trace = root / "strace.out"
        self.popen: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def address(self) -> str:
        return f"{self.endpoint}#{self.key.key_id}"

    def start(self, *, traced: bool = False) -> None:
        self.ready.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "rcds.server_main", "--config", str(self.config), "--ready-file",
                str(self.ready), *self.flags]
        if traced:
            assert STRACE is not None
            self.trace.unlink(missing_ok=True)
            argv = [STRACE, "-f", "-qq", "-y", "-e", f"trace={TRACED}", "-o", str(self.trace), *argv]
        with open(self.root / "server.log", "ab") as log:
            self.popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        popen = self.popen

        def ready() -> bool:
            if popen.poll() is not None:
                raise AssertionError(f"the replica exited ({popen.returncode}):\n"
                                     + (self.root / "server.log").read_text(errors="replace")[-2000:])
            return self.ready.exists()
        wait_for(ready, 30, "the replica to be ready")
        self.pid = int(json.loads(self.ready.read_text())["pid"])

    def data_file_flushes(self) -> int:
        """How many flushing syscalls the traced replica made on its LMDB data file so far: on
        its descriptor, or (msync) on an address in a mapping of it."""
        data = re.escape(str(self.data_dir / "data.mdb"))
        text = self.trace.read_text(errors="replace") if self.trace.exists() else ""
        maps = [(int(m[2], 16), int(m[2], 16) + int(m[1])) for m in
                re.finditer(rf"\bmmap\(\w+, (\d+), [^)]*\d+<{data}>, \w+\)\s*=\s*(0x[0-9a-f]+)", text)]
        on_file = re.compile(rf"\b({FLUSHES.replace(',', '|')})\(\d+<{data}>")

        def in_map(line: str) -> bool:
            m = re.search(r"\bmsync\((0x[0-9a-f]+),", line)
            return m is not None and any(lo <= int(m[1], 16) < hi for lo, hi in maps)
        return sum(1 for line in text.splitlines() if on_file.search(line) or in_map(line))

    def kill9(self) -> None:
        """kill -9 the replica itself (not strace), by the pid it reported, and wait until it is gone."""
        if self.pid is not None:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(self.pid)
                if str(self.config) in proc.cmdline():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait(10)
            self.pid = None
        if self.popen is not None:
            try:
                self.popen.wait(10)            # strace exits with its tracee; a plain replica is the tracee
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
            self.popen = None

    def close(self) -> None:
        self.kill9()


@pytest.fixture
def make_replica(tmp_path: Path) -> Iterator[Callable[..., TomlReplica]]:
    made: list[TomlReplica] = []

    def make(name: str, *, sync: bool, flags: tuple[str, ...] = ()) -> TomlReplica:
        (tmp_path / name).mkdir()
        r = TomlReplica(tmp_path / name, sync=sync, flags=flags)
        made.append(r)
        return r
    try:
        yield make
    finally:
        for r in made:
            r.close()


def _write_acknowledged(r: TomlReplica, first: int, count: int) -> None:
    with CatalogClient([r.address], r.admin, r.admin.key_id, w=1, r=1) as c:
        for i in range(first, first + count):
            c.set("urn:snipe:user:durable", f"n{i}", i, w=1)     # one commit, acknowledged, per write


def _read(r: TomlReplica) -> dict[str, object]:
    with CatalogClient([r.address], r.admin, r.admin.key_id, w=1, r=1) as c:
        return c.get("urn:snipe:user:durable").as_dict(now_ms())


@pytest.mark.skipif(STRACE is None, reason="needs strace to watch the replica's syscalls")
def test_sync_true_in_the_toml_file_fsyncs_every_acknowledged_commit(
        make_replica: Callable[..., TomlReplica]) -> None:
    """`sync = true` in the file (and the `--sync` flag over a file saying false) flush LMDB's
    data file at least once per acknowledged write; the default, and `--no-sync` over a file
    saying true, flush it never. The status reply says which."""
    cases = {"sync = false": (False, ()), "sync = true": (True, ()), "--sync": (False, ("--sync",)),
             "--no-sync": (True, ("--no-sync",))}
    expect_sync = {"sync = false": False, "sync = true": True, "--sync": True, "--no-sync": False}
    flushed = {}
    for case, (sync, flags) in cases.items():
        r = make_replica(f"r{len(flushed)}", sync=sync, flags=flags)
        r.start(traced=True)
        before = r.data_file_flushes()
        _write_acknowledged(r, 0, WRITES)
        # each write was acknowledged after its commit returned, so its flush (if any) is traced by now
        flushed[case] = r.data_file_flushes() - before
        assert _read(r) == {f"n{i}": i for i in range(WRITES)}         # it serves reads
        with CatalogClient([r.address], r.admin, r.admin.key_id) as c:
            status = c.status()
            assert status["count"] >= WRITES and status["sync"] is expect_sync[case], (case, status)
        r.close()
    assert flushed["sync = true"] >= WRITES and flushed["--sync"] >= WRITES, flushed
    assert flushed["sync = false"] == 0 and flushed["--no-sync"] == 0, flushed     # flushing left to the OS


def test_with_sync_true_a_write_acknowledged_by_one_replica_survives_its_kill9(
        make_replica: Callable[..., TomlReplica]) -> None:
    """A catalog of one replica, so nothing but its own store can bring the writes back. (kill -9
    keeps the page cache, so this shows sync mode recovers and serves; that the bytes reached
    the disk is what the flush count above shows: a power cut cannot be staged here.)"""
    r = make_replica("alone", sync=True)
    r.start()
    _write_acknowledged(r, 0, 10)
    r.kill9()
    r.start()                                     # the same TOML file, the same data folder
    assert _read(r) == {f"n{i}": i for i in range(10)}
    _write_acknowledged(r, 10, 5)                 # and it goes on taking writes
    assert _read(r) == {f"n{i}": i for i in range(15)}


def test_a_replica_short_of_disk_space_refuses_writes_says_why_and_keeps_serving(
        make_replica: Callable[..., TomlReplica]) -> None:
    """A replica whose store's file system has less free than `min_free_mib` (here: more than any
    disk has, with --min-free-mib) refuses each write with StorageFull, which the client is told,
    instead of dying of a write into its sparse map on a full disk; it serves reads and status
    meanwhile, and takes writes again once it has room (here: restarted without the flag)."""
    r = make_replica("full", sync=False)
    r.start()
    _write_acknowledged(r, 0, 3)
    r.kill9()
    r.flags = ("--min-free-mib", str(1 << 40))
    r.start()
    with pytest.raises((StorageFull, QuorumError), match="MiB free on its file system"):
        _write_acknowledged(r, 3, 1)
    assert _read(r) == {f"n{i}": i for i in range(3)}                # what it held, served
    with CatalogClient([r.address], r.admin, r.admin.key_id) as c:
        assert c.status()["refused_for_disk"] >= 1
    r.kill9()
    r.flags = ()
    r.start()
    _write_acknowledged(r, 3, 1)
    assert _read(r) == {f"n{i}": i for i in range(4)}


def test_a_quoted_sync_value_is_refused_not_read_as_true(tmp_path: Path) -> None:
    """`sync = "false"` is a string, and a string is true: the replica refuses to start and says
    why, rather than run with the opposite of what its operator wrote (or with a guess)."""
    r = TomlReplica(tmp_path, sync=False)
    r.config.write_text(r.config.read_text().replace("sync = false", 'sync = "false"'))
    proc = subprocess.Popen([sys.executable, "-m", "rcds.server_main", "--config", str(r.config), "--ready-file",
                             str(r.ready)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        wait_for(lambda: proc.poll() is not None or r.ready.exists(), 30, "the replica to exit or serve")
        assert not r.ready.exists(), "the replica started with sync = \"false\""
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == 2, err
    assert "sync = 'false' must be true or false" in err, err
    assert not (r.data_dir / "data.mdb").exists()
