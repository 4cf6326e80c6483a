"""The daemon's own durable state: its tasks, its drain flag and the multicast groups it serves,
in a small LMDB file.

A daemon killed with SIGKILL and restarted reads its tasks back from here, re-adopts those
still running and reports the rest as lost; nothing about a task lives only in memory. So too
the groups: which local members joined each through it (and with which key) and whether it
routed it, written before a join is answered (daemon/mcast.py restores them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lmdb
import msgpack

from snipe.errors import ConfigError


class DaemonState:
    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
            self.env = lmdb.open(str(path), map_size=1 << 30, max_dbs=4, sync=False, metasync=False)
        except (OSError, lmdb.Error) as exc:
            raise ConfigError(f"cannot open the daemon state at {path}: {exc}") from None
        self.tasks = self.env.open_db(b"tasks")
        self.meta = self.env.open_db(b"meta")
        self.groups = self.env.open_db(b"groups")

    def close(self) -> None:
        self.env.close()

    def _put(self, db: Any, key: str, value: Any) -> None:
        with self.env.begin(write=True) as txn:
            txn.put(key.encode(), msgpack.packb(value, use_bin_type=True), db=db)

    def _drop(self, db: Any, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=db)

    def put_task(self, urn: str, record: dict[str, Any]) -> None:
        self._put(self.tasks, urn, record)

    def drop_task(self, urn: str) -> None:
        self._drop(self.tasks, urn)

    def task(self, urn: str) -> dict[str, Any] | None:
        with self.env.begin() as txn:
            raw = txn.get(urn.encode(), db=self.tasks)
            return msgpack.unpackb(raw, raw=False) if raw is not None else None

    def all_tasks(self) -> dict[str, dict[str, Any]]:
        with self.env.begin() as txn:
            return {bytes(k).decode(): msgpack.unpackb(v, raw=False) for k, v in txn.cursor(db=self.tasks)}

    def get_meta(self, name: str, default: Any = None) -> Any:
        with self.env.begin() as txn:
            raw = txn.get(name.encode(), db=self.meta)
            return msgpack.unpackb(raw, raw=False) if raw is not None else default

    def set_meta(self, name: str, value: Any) -> None:
        self._put(self.meta, name, value)

    def put_group(self, group: str, record: dict[str, Any]) -> None:
        self._put(self.groups, group, record)

    def drop_group(self, group: str) -> None:
        self._drop(self.groups, group)

    def all_groups(self) -> dict[str, Any]:
        """Every group's record as stored (the reader checks their shape: a file on disk)."""
        out: dict[str, Any] = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self.groups):
                try:
                    out[bytes(k).decode()] = msgpack.unpackb(v, raw=False)
                except (UnicodeDecodeError, ValueError, msgpack.UnpackException):
                    out[bytes(k).decode(errors="replace")] = None
        return out
