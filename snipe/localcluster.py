"""Start and stop catalog replicas as local processes: the embedded default and test fixtures.

`LocalCatalog(root, n=3)` makes an admin key, a key per replica, and starts `rcds-server`
processes bound to loopback (or given addresses), each knowing the others as peers. It can kill
(-9), stop and restart any replica, and always leaves no process behind when closed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from snipe.catalog.client import CatalogClient
from snipe.errors import ConfigError, SnipeError, Unreachable
from snipe.identity import Identity
from snipe.interrupts import interrupt_after
from snipe.transport import bound_ipc_sockets, remove_unused_ipc_socket

_handed_out: set[tuple[str, int]] = set()
_claims: dict[int, socket.socket] = {}


def free_port(host: str = "127.0.0.1", *, udp: bool = False) -> int:
    """A TCP port (with `udp`, one free for UDP too) free on `host` now, for a server started
    next, from below the kernel's range of ephemeral ports: the kernel gives those to outgoing
    connections too, so one taken by binding port 0 may be a connection's by the time the server
    binds it (a replica once failed to start so). A port below the range is taken only on
    purpose; none is handed out twice by one process, and none that another process claimed
    (see `_claim`) until that one releases it: the test suite's workers pick at once, and a port
    picked but not yet bound (a server starting, one restarting on its old port, an address that
    must stay dead) looks free to a bind."""
    low = _ephemeral_low()
    for _ in range(500):
        port = random.randrange(max(1024, low - 12_000), low)
        if (host, port) in _handed_out or not _bindable(host, port, udp) or not _claim(port):
            continue
        _handed_out.add((host, port))
        return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:   # all taken: the kernel's choice
        s.bind((host, 0))
        return s.getsockname()[1]


def release_ports(endpoints: list[str]) -> None:
    """Give up this process's claims on the ports of `endpoints` (tcp://host:port), whose servers
    are stopped for good: other processes may pick them again."""
    for endpoint in endpoints:
        port = endpoint.rsplit(":", 1)[-1]
        if port.isdigit() and (claim := _claims.pop(int(port), None)) is not None:
            claim.close()


def _bindable(host: str, port: int, udp: bool) -> bool:
    kinds = (socket.SOCK_STREAM, socket.SOCK_DGRAM) if udp else (socket.SOCK_STREAM,)
    for kind in kinds:
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _claim(port: int) -> bool:
    """Claim `port` among all processes on this machine that pick with free_port: hold an
    abstract unix socket named after it, which only one process can bind and which the kernel
    frees when that process ends, however it ends. False if another process holds it. (Linux
    only: elsewhere nothing is claimed and every port passes.)"""
    if not sys.platform.startswith("linux"):
        return True
    claim = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        claim.bind(f"\0snipe-port-{port}")
    except OSError:
        claim.close()
        return False
    _claims[port] = claim
    return True


def _ephemeral_low() -> int:
    """The lowest port of the kernel's ephemeral range (Linux's default when unreadable)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def toml_document(tables: dict[str, dict[str, str | float | int | list[str]]]) -> str:
    """A TOML file of flat tables of strings, finite numbers and lists of strings (tomllib only
    reads). JSON's escapes are TOML's, once characters outside the BMP are left as they are
    (JSON would write surrogate pairs, which TOML refuses) and DEL is escaped (TOML wants it)."""
    def value_text(v: object) -> str:
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"{v!r} cannot be written to a config file; give a finite number")
        text = json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigError(f"{v!r} holds an undecodable file name; use a path that is valid UTF-8") from None
        return text

    lines: list[str] = []
    for name, table in tables.items():
        lines.append(f"[{name}]")
        for key, value in table.items():
            lines.append(f"{key} = {value_text(value)}")
        lines.append("")
    return "\n".join(lines)


@dataclass
class ReplicaProc:
    id: str
    endpoint: str
    data_dir: Path
    identity: Identity
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.endpoint}#{self.identity.key_id}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class LocalCatalog:
    def __init__(self, root: str | Path, n: int = 3, *, host: str = "127.0.0.1", admin: Identity | None = None,
                 anti_entropy_s: float = 0.5, extra_args: tuple[str, ...] = (), ports: list[int] | None = None
                 ) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.admin = admin or Identity.load_or_create(self.root / "admin.key")
        self.anti_entropy_s = anti_entropy_s
        self.extra_args = extra_args
        self.replicas: list[ReplicaProc] = []
        for i in range(n):
            rid = f"r{i + 1}"
            port = ports[i] if ports else free_port(host)
            d = self.root / rid
            ident = Identity.load_or_create(d / "replica.key")
            self.replicas.append(ReplicaProc(rid, f"tcp://{host}:{port}", d, ident))

    @property
    def addresses(self) -> list[str]:
        return [r.address for r in self.replicas]

    def _argv(self, r: ReplicaProc) -> list[str]:
        argv = [sys.executable, "-m", "rcds.server_main", "--id", r.id, "--listen", r.endpoint,
                "--data-dir", str(r.data_dir), "--key-file", str(r.data_dir / "replica.key"),
                "--admin-key", self.admin.key_id, "--anti-entropy", str(self.anti_entropy_s),
                "--ready-file", str(r.data_dir / "ready.json"), *self.extra_args]
        for p in self.replicas:
            if p is not r:
                argv += ["--peer", f"{p.id}={p.endpoint}#{p.identity.key_id}"]
        return argv

    def start(self, which: int | None = None, timeout: float = 20.0) -> None:
        targets = self.replicas if which is None else [self.replicas[which]]
        for r in targets:
            if r.alive:
                continue
            (r.data_dir / "ready.json").unlink(missing_ok=True)
            r.data_dir.mkdir(parents=True, exist_ok=True)
            with open(r.data_dir / "server.log", "ab") as log, interrupt_after():
                r.proc = subprocess.Popen(self._argv(r), stdout=log, stderr=subprocess.STDOUT,
                                          env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        deadline = time.monotonic() + timeout
        for r in targets:
            while not (r.data_dir / "ready.json").exists():
                if r.proc is not None and r.proc.poll() is not None:
                    tail = (r.data_dir / "server.log").read_text(errors="replace")[-2000:]
                    raise ConfigError(f"replica {r.id} exited with {r.proc.returncode}:\n{tail}")
                if time.monotonic() > deadline:
                    raise Unreachable(f"replica {r.id} did not become ready within {timeout} s")
                time.sleep(0.01)
            json.loads((r.data_dir / "ready.json").read_text())

    def kill(self, i: int) -> None:
        """kill -9, as a crash would."""
        r = self.replicas[i]
        if r.proc is not None and r.proc.poll() is None:
            r.proc.send_signal(signal.SIGKILL)
            r.proc.wait(10)

    def stop(self, i: int | None = None) -> None:
        targets = self.replicas if i is None else [self.replicas[i]]
        for r in targets:
            if r.proc is not None and r.proc.poll() is None:
                r.proc.terminate()
        for r in targets:
            if r.proc is not None:
                try:
                    r.proc.wait(10)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
                    r.proc.wait(10)

    def restart(self, i: int) -> None:
        self.stop(i)
        self.start(i)

    def client(self, identity: Identity | None = None, **kw: object) -> CatalogClient:
        return CatalogClient(self.addresses, identity or self.admin, self.admin.key_id, **kw)  # type: ignore[arg-type]

    def admit(self, identity: Identity, name: str | None = None, kind: str = "user") -> str:
        """Have the admin make `identity` the owner of a user (or host) URN, which admits it at
        every replica before this returns (the caller talks to any of them next)."""
        urn = f"urn:snipe:{kind}:{name or identity.key_id[:16]}"
        with self.client() as c:
            c.set(urn, "_owner", identity.key_id, w=c.n)
        return urn

    def close(self) -> None:
        with contextlib.suppress(SnipeError):
            self.stop()
        release_ports([r.endpoint for r in self.replicas])

    def __enter__(self) -> LocalCatalog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class DaemonProc:
    host_id: str
    endpoint: str
    state_dir: Path
    identity: Identity
    proc: subprocess.Popen[bytes] | None = None
    settings: dict[str, Any] = field(default_factory=dict)    # more [daemon] keys (e.g. price), at its next start

    @property
    def address(self) -> str:
        return f"{self.endpoint}#{self.identity.key_id}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


CLUSTER_FILE = "cluster.json"
DEAD_WAIT_S = 5.0     # how long a stop waits for the processes it killed to be gone before leaving their files


@dataclass(frozen=True)
class KilledTasks:
    """What `LocalCluster.kill_tasks` did: the task processes it killed, and the socket files of
    those confirmed dead that it removed."""

    pids: list[int]
    sockets_removed: list[str]


def _ended(process: psutil.Process) -> bool:
    """Whether `process` has ended: gone, its PID another process's now, or a zombie whose files
    and sockets the kernel has closed (only its exit status waits for its parent). A killed
    process's main thread is a zombie while its other threads still exit, and they hold its files
    until the last is gone (a ZeroMQ I/O thread keeps the ipc listener accepting meanwhile), so a
    zombie has ended once it is its last thread."""
    try:
        if not process.is_running():
            return True
        return process.status() == psutil.STATUS_ZOMBIE and process.num_threads() <= 1
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:            # cannot be told: taken as running
        return False


def wait_ended(processes: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Those of `processes` that have ended by `timeout` seconds from now (waited for, bounded)."""
    deadline = time.monotonic() + timeout
    left = list(processes)
    while True:
        left = [p for p in left if not _ended(p)]
        if not left or time.monotonic() >= deadline:
            break
        time.sleep(0.02)
    return [p for p in processes if all(p is not q for q in left)]


def remove_sockets_of(ended: list[psutil.Process], sockets: dict[int, list[Path]]) -> list[str]:
    """Remove the socket files `sockets` lists (by PID, read while each ran) for the processes
    that `ended`, each only while nobody listens on it (remove_unused_ipc_socket); those removed."""
    return [str(path) for p in ended for path in sockets.get(p.pid, []) if remove_unused_ipc_socket(path)]


class LocalCluster:
    """A whole cluster on this machine: catalog replicas plus one daemon per "host", each host
    bound to its own loopback address (127.0.0.2, .3, ...), as several machines would be.

    `describe()` (also written to `<root>/cluster.json`) tells clients everything they need:
    replica and daemon addresses, the admin key, the user key file.
    """

    def __init__(self, root: str | Path, *, replicas: int = 3, hosts: int = 3, lease_s: float = 10.0,
                 anti_entropy_s: float = 0.5, loopback_hosts: bool = True) -> None:
        self.root = Path(root)
        self.catalog = LocalCatalog(self.root / "catalog", replicas, anti_entropy_s=anti_entropy_s)
        self.admin = self.catalog.admin
        self.lease_s = lease_s
        self.user = Identity.load_or_create(self.root / "user.key")
        self.daemons: list[DaemonProc] = []
        for i in range(hosts):
            ip = f"127.0.0.{i + 2}" if loopback_hosts else "127.0.0.1"
            d = self.root / "hosts" / f"h{i + 1}"
            self.daemons.append(DaemonProc(f"h{i + 1}", f"tcp://{ip}:{free_port(ip)}", d,
                                           Identity.load_or_create(d / "host.key")))

    def describe(self) -> dict[str, object]:
        return {"catalog": self.catalog.addresses, "admin_key": self.admin.key_id,
                "admin_key_file": str(self.root / "catalog" / "admin.key"),
                "user_key_file": str(self.root / "user.key"),
                "daemons": {d.host_id: d.address for d in self.daemons},
                "pids": [p.proc.pid for p in [*self.catalog.replicas, *self.daemons] if p.proc is not None]}

    def _daemon_argv(self, d: DaemonProc) -> list[str]:
        """Start the daemon from a config file, as a systemd unit does (conf/snipe-daemon.toml):
        every local cluster exercises that path, not only the flags."""
        config = d.state_dir / "snipe-daemon.toml"
        config.write_text(toml_document({
            "daemon": {"host_id": d.host_id, "listen": d.endpoint, "state_dir": str(d.state_dir),
                       "key_file": str(d.state_dir / "host.key"), "admin_key": self.admin.key_id,
                       "lease_s": float(self.lease_s), **d.settings},
            "catalog": {"replicas": list(self.catalog.addresses)}}))
        return [sys.executable, "-m", "snipe_daemon.main", "--config", str(config),
                "--ready-file", str(d.state_dir / "ready.json")]

    def start(self, timeout: float = 30.0) -> None:
        self.catalog.start()
        with self.catalog.client() as c:
            recs = [c.sign(f"urn:snipe:host:{d.host_id}", "_owner", d.identity.key_id) for d in self.daemons]
            recs.append(c.sign("urn:snipe:user:local", "_owner", self.user.key_id))
            c.put(recs, w=len(self.catalog.replicas))
        for i in range(len(self.daemons)):
            self.start_daemon(i, wait=False)
        for i in range(len(self.daemons)):
            self._wait_daemon(self.daemons[i], timeout)
        (self.root / CLUSTER_FILE).write_text(json.dumps(self.describe(), indent=2))

    def start_daemon(self, i: int, *, wait: bool = True, timeout: float = 30.0) -> None:
        d = self.daemons[i]
        if d.alive:
            return
        d.state_dir.mkdir(parents=True, exist_ok=True)
        (d.state_dir / "ready.json").unlink(missing_ok=True)
        with open(d.state_dir / "daemon.log", "ab") as log, interrupt_after():
            d.proc = subprocess.Popen(self._daemon_argv(d), stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)
        if wait:
            self._wait_daemon(d, timeout)

    def _wait_daemon(self, d: DaemonProc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not (d.state_dir / "ready.json").exists():
            if d.proc is not None and d.proc.poll() is not None:
                tail = (d.state_dir / "daemon.log").read_text(errors="replace")[-2000:]
                raise ConfigError(f"daemon {d.host_id} exited with {d.proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise Unreachable(f"daemon {d.host_id} did not become ready within {timeout} s")
            time.sleep(0.01)

    def kill_daemon(self, i: int) -> None:
        d = self.daemons[i]
        if d.alive and d.proc is not None:
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)

    def stop_daemon(self, i: int) -> None:
        self._stop_daemons([self.daemons[i]])

    def _stop_daemons(self, daemons: list[DaemonProc]) -> None:
        """SIGTERM each, then wait for each (all at once: a daemon takes a few tenths of a second
        to shut down, and the test suite closes a cluster per test)."""
        running = [d.proc for d in daemons if d.proc is not None and d.proc.poll() is None]
        for proc in running:
            proc.terminate()
        for proc in running:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill_tasks(self) -> KilledTasks:
        """SIGKILL every task the daemons started (they run in sessions of their own), and remove
        the ipc socket files of those that are then confirmed dead: killed, a task cannot remove
        its own, and they would stay in its host's ipc folder until a process starts there when
        they are over a minute old."""
        killed: list[psutil.Process] = []
        sockets: dict[int, list[Path]] = {}
        for d in self.daemons:
            tasks = d.state_dir / "tasks"
            if not tasks.exists():
                continue
            for p in psutil.process_iter(["cwd", "pid"]):
                try:
                    cwd = p.info.get("cwd") or ""
                    if cwd.startswith(str(tasks)):
                        group = [p, *p.children(recursive=True)]
                        for q in group:         # while they run: afterwards nothing says whose a file was
                            sockets.setdefault(q.pid, bound_ipc_sockets(q))
                        os.killpg(p.pid, signal.SIGKILL)
                        killed.extend(group)
                except (psutil.Error, ProcessLookupError, PermissionError):
                    continue
        return KilledTasks([p.pid for p in killed], remove_sockets_of(wait_ended(killed, DEAD_WAIT_S), sockets))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._stop_daemons(self.daemons)
        self.kill_tasks()
        self.catalog.close()
        release_ports([d.endpoint for d in self.daemons])
        (self.root / CLUSTER_FILE).unlink(missing_ok=True)

    def __enter__(self) -> LocalCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
