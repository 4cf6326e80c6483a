"""Start and stop catalog replicas as local processes: the embedded default and test fixtures.

`LocalCatalog(root, n=3)` makes an admin key, a key per replica, and starts `rcds-server`
processes bound to loopback (or given addresses), each knowing the others as peers. It can kill
(-9), stop and restart any replica, and always leaves no process behind when closed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from snipe.catalog.client import CatalogClient
from snipe.errors import ConfigError, SnipeError, Unreachable
from snipe.identity import Identity


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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
            with open(r.data_dir / "server.log", "ab") as log:
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
        """Have the admin make `identity` the owner of a user (or host) URN, which admits it."""
        urn = f"urn:snipe:{kind}:{name or identity.key_id[:16]}"
        with self.client() as c:
            c.set(urn, "_owner", identity.key_id)
        return urn

    def close(self) -> None:
        with contextlib.suppress(SnipeError):
            self.stop()

    def __enter__(self) -> LocalCatalog:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
