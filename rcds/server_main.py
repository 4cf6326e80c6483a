"""`rcds-server`: run one catalog replica from a TOML file and/or flags.

    rcds-server --config conf/rcds-server.toml
    rcds-server --id r1 --listen tcp://127.0.0.1:7301 --data-dir ./r1 --key-file ./r1/replica.key \\
                --admin-key <hex> --peer r2=tcp://127.0.0.1:7302#<hex key> ...

Flags override the file. SIGTERM and SIGINT stop the replica cleanly.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from rcds.server import PeerInfo, Server, ServerConfig
from snipe.discovery import check_endpoint
from snipe.errors import ConfigError, SnipeError
from snipe.identity import Identity
from snipe.startup import (
    Footprint,
    admin_key_from,
    check_folder,
    check_key_file,
    check_listen_endpoint,
    log_level,
    peer_key_from,
    source_of,
)

REPLICA_KEYS = {"id", "listen", "data_dir", "key_file", "admin_key", "anti_entropy_s", "log_retention", "sync",
                "map_budget_mib", "min_free_mib"}


def parse_peer(text: str) -> PeerInfo:
    rid, sep, rest = text.partition("=")
    endpoint, sep2, key = rest.partition("#")
    if not sep or not sep2 or not rid or not endpoint:
        raise ConfigError(f"peer {text!r} must look like ID=tcp://HOST:PORT#KEYHEX")
    return PeerInfo(rid, _peer_endpoint(endpoint, f"peer {text!r}"), peer_key_from(key, f"peer {text!r}"))


def _peer_endpoint(endpoint: str, what: str) -> str:
    try:
        check_endpoint(endpoint)
    except ConfigError as exc:
        raise ConfigError(f"{what}: endpoint {endpoint!r}: {exc}") from None
    return endpoint


def load_config(argv: list[str] | None = None, footprint: Footprint | None = None,
                ) -> tuple[ServerConfig, argparse.Namespace]:
    """The replica's configuration from `argv` (and the file it names), every setting checked
    before anything is created; then the key file is made if missing (and the data dir with it),
    noted first on `footprint` so a start that fails can remove what it made."""
    ap = argparse.ArgumentParser(prog="rcds-server", description="Run one replica of the SNIPE catalog.")
    ap.add_argument("--config", help="TOML file ([replica] table and [[peers]] array)")
    ap.add_argument("--id", help="this replica's id (unique in the replica set)")
    ap.add_argument("--listen", help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:7301")
    ap.add_argument("--data-dir", help="folder for the LMDB store")
    ap.add_argument("--key-file", help="this replica's Ed25519 key (created if missing)")
    ap.add_argument("--admin-key", help="the cluster admin's public key id (64 hex)")
    ap.add_argument("--peer", action="append", default=[], help="ID=ENDPOINT#KEYHEX, repeatable")
    ap.add_argument("--anti-entropy", type=float, help="seconds between anti-entropy rounds (default 1)")
    ap.add_argument("--log-retention", type=int, help="change-log entries kept for watchers (default 200000)")
    ap.add_argument("--sync", action=argparse.BooleanOptionalAction, default=None,
                    help="fsync every commit, to survive a power cut (--no-sync overrides the file's sync = true)")
    ap.add_argument("--map-budget-mib", type=int,
                    help="MiB of the LMDB map kept mapped before its pages are dropped (default 64)")
    ap.add_argument("--min-free-mib", type=int,
                    help="MiB kept free on the store's file system: writes are refused below it (default 64)")
    ap.add_argument("--ready-file", help="write {endpoint, key, pid} as JSON here once serving")
    ap.add_argument("--log-level", default=os.environ.get("RCDS_LOG_LEVEL", "WARNING"))
    args = ap.parse_args(argv)

    file_cfg: dict[str, Any] = {}
    peers_cfg: list[dict[str, Any]] = []
    if args.config:
        try:
            raw = tomllib.loads(Path(args.config).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {args.config} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {args.config} is not valid TOML: {exc}") from None
        file_cfg = raw.get("replica", {})
        peers_cfg = raw.get("peers", [])
        if not isinstance(file_cfg, dict) or not isinstance(peers_cfg, list):
            raise ConfigError(f"{args.config}: expected a [replica] table and a [[peers]] array")
        # A key this does not read is an error, not silence: a misspelt `sync` would otherwise
        # leave a replica acknowledging writes it has not fsynced, with nothing said.
        unknown = [*sorted(set(raw) - {"replica", "peers"}),
                   *(f"replica.{k}" for k in sorted(set(file_cfg) - REPLICA_KEYS))]
        if unknown:
            raise ConfigError(f"{args.config}: unknown key(s) {', '.join(unknown)}; [replica] has "
                              f"{', '.join(sorted(REPLICA_KEYS))}, and [[peers]] lists the other replicas")

    def pick(flag: Any, key: str, default: Any = None) -> Any:
        if flag is not None:
            return flag
        return file_cfg.get(key, default)

    rid = pick(args.id, "id")
    listen = pick(args.listen, "listen")
    data_dir = pick(args.data_dir, "data_dir")
    admin = pick(args.admin_key, "admin_key")
    for name, value in (("id", rid), ("listen", listen), ("data_dir", data_dir), ("admin_key", admin)):
        if not value:
            raise ConfigError(f"rcds-server needs {name}: pass --{name.replace('_', '-')} or set it in [replica]")
    key_file = pick(args.key_file, "key_file", str(Path(data_dir) / "replica.key"))
    peers = [parse_peer(p) for p in args.peer]
    for i, p in enumerate(peers_cfg):
        extra = sorted(set(p) - {"id", "endpoint", "key"}) if isinstance(p, dict) else []
        if extra:
            raise ConfigError(f"{args.config}: peers[{i}] has no key {', '.join(map(repr, extra))}; "
                              "a peer has id, endpoint and key")
        try:
            rid_i, endpoint_i, key_i = str(p["id"]), str(p["endpoint"]), str(p["key"])
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"{args.config}: peers[{i}] needs id, endpoint and key ({exc})") from None
        what = f"{args.config}: peers[{i}] ({rid_i})"
        peers.append(PeerInfo(rid_i, _peer_endpoint(endpoint_i, what), peer_key_from(key_i, what)))
    args.log_level = log_level(args.log_level, "--log-level or RCDS_LOG_LEVEL")
    sync = pick(args.sync, "sync", False)
    if not isinstance(sync, bool):
        # bool("false") is True: a quoted value would be read as the opposite of what it says
        raise ConfigError(f"{args.config}: [replica] sync = {sync!r} must be true or false (a TOML boolean, "
                          "unquoted)")
    admin_key = admin_key_from(admin, source_of(args.admin_key, "--admin-key", args.config))
    check_listen_endpoint(listen, "listen", source_of(args.listen, "--listen", args.config), 7301)
    data_source = source_of(args.data_dir, "--data-dir", args.config)
    data_path, key_path = Path(str(data_dir)), Path(str(key_file))
    check_folder(data_path, "data_dir", data_source)
    key_source = source_of(args.key_file, "--key-file", args.config) \
        if pick(args.key_file, "key_file") is not None else f"<data_dir>/replica.key, data_dir from {data_source}"
    check_key_file(key_path, "key_file", key_source, "replica.key")

    def number(flag: Any, key: str, default: float, kind: type, least: float) -> Any:
        """A numeric setting, checked: a quoted or negative one is a clear error, not a traceback."""
        v = pick(flag, key, default)
        if isinstance(v, bool) or not isinstance(v, int | float) or (kind is int and not isinstance(v, int)) \
                or not v >= least:
            want = "a whole number" if kind is int else "a number"
            raise ConfigError(f"[replica] {key} = {v!r} must be {want} of at least {least:g} (unquoted)")
        return kind(v)

    anti_entropy_s = number(args.anti_entropy, "anti_entropy_s", 1.0, float, 0.01)
    log_retention = number(args.log_retention, "log_retention", 200_000, int, 1)
    map_budget_mib = number(args.map_budget_mib, "map_budget_mib", 64, int, 1)
    min_free_mib = number(args.min_free_mib, "min_free_mib", 64, int, 1)
    # Every setting is checked: only now is anything made on disk.
    if footprint is not None:
        footprint.note(data_path, data_path / "data.mdb", data_path / "lock.mdb", key_path)
    cfg = ServerConfig(
        replica_id=str(rid), listen=str(listen), data_dir=str(data_dir),
        identity=Identity.load_or_create(key_path), admin_key=admin_key, peers=peers,
        anti_entropy_s=anti_entropy_s, log_retention=log_retention, sync=sync, map_budget_mib=map_budget_mib,
        min_free_mib=min_free_mib,
    )
    return cfg, args


def main(argv: list[str] | None = None) -> int:
    footprint = Footprint()
    try:
        cfg, args = load_config(argv, footprint)
        logging.basicConfig(level=args.log_level, format="%(asctime)s rcds %(levelname)s %(message)s")
        server = Server(cfg)
    except SnipeError as exc:
        footprint.undo()            # a data dir (or key file) this start made is not left half-made
        print(f"rcds-server: {exc}", file=sys.stderr)
        return 2
    # A replica makes many short-lived containers per message and almost no reference cycles:
    # leave what start-up built out of collections, and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    signal.signal(signal.SIGINT, lambda *_: server.stop())
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"endpoint": cfg.listen, "key": cfg.identity.key_id, "pid": os.getpid(),
                                   "id": cfg.replica_id}))
        tmp.replace(args.ready_file)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
