"""`snipe-daemon`: run the host daemon from a TOML file and/or flags.

    snipe-daemon --config conf/snipe-daemon.toml
    snipe-daemon --host-id node1 --listen tcp://10.0.0.5:7400 --state-dir /var/lib/snipe/daemon \\
                 --key-file /var/lib/snipe/daemon/host.key --admin-key <hex> \\
                 --catalog tcp://10.0.0.1:7301#<key> --catalog ...

The host key must have been admitted by the admin (`snipe-console admit host ID KEY`).
SIGTERM and SIGINT stop the daemon; its tasks keep running and are re-adopted on restart.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import tomllib
from pathlib import Path
from typing import Any

from snipe_daemon.server import Daemon, DaemonConfig

from snipe import discovery
from snipe.bidding import DEFAULT_PRICE, check_price
from snipe.daemonclient import WAIT_HOLD_S
from snipe.errors import ConfigError, NotAuthorized, SnipeError
from snipe.identity import Identity
from snipe.messaging.endpoint import retained_resolve_every_s
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

# What a daemon makes in its state dir (daemon/server.py): a start that fails removes those it made.
STATE_DIR_PARTS = ("state", "code", "files", "tasks", "msg")


def load_config(argv: list[str] | None = None, footprint: Footprint | None = None,
                ) -> tuple[DaemonConfig, argparse.Namespace]:
    """The daemon's configuration from `argv` (and the file it names), every setting checked
    before anything is created; then the host key is made if missing (and the state dir with it),
    noted first on `footprint` so a start that fails can remove what it made."""
    ap = argparse.ArgumentParser(prog="snipe-daemon", description="Run the SNIPE daemon for this host.")
    ap.add_argument("--config", help="TOML file with a [daemon] table and optionally a [catalog] one "
                                     "(see conf/snipe-daemon.toml); flags override it")
    ap.add_argument("--host-id", help="this host's id in urn:snipe:host:<id>")
    ap.add_argument("--listen", help="ZeroMQ endpoint to bind, e.g. tcp://0.0.0.0:7400")
    ap.add_argument("--advertise", help="endpoint others should use, if not the listen one")
    ap.add_argument("--state-dir", help="folder for the daemon's state, code cache and task folders")
    ap.add_argument("--key-file", help="the host's Ed25519 key (created if missing)")
    ap.add_argument("--admin-key", help="the cluster admin's public key id")
    ap.add_argument("--catalog", action="append", default=[], help="replica ENDPOINT#KEY, repeatable")
    ap.add_argument("--lease", type=float, help="seconds the host's metadata lease lasts (default 10)")
    ap.add_argument("--price", type=float, help="what this host asks per CPU-second in placement bids (default 1)")
    ap.add_argument("--net-name", action="append", default=[], help="IFACE_OR_CIDR=NAME, a private network")
    ap.add_argument("--relay", help="relay for hosts that share no network (a gateway): listen here, "
                                    "e.g. tcp://0.0.0.0:7401")
    ap.add_argument("--ready-file", help="write {endpoint, key, pid} as JSON once serving")
    ap.add_argument("--log-level", default=os.environ.get("SNIPE_LOG_LEVEL", "WARNING"))
    args = ap.parse_args(argv)
    file_cfg: dict[str, Any] = {}
    has_catalog_section = False
    if args.config:
        file_cfg, has_catalog_section = read_config_file(Path(args.config))

    def pick(flag: Any, key: str, default: Any = None) -> Any:
        return flag if flag not in (None, []) else file_cfg.get(key, default)

    host_id, listen, state_dir, admin = (pick(args.host_id, "host_id"), pick(args.listen, "listen"),
                                         pick(args.state_dir, "state_dir"), pick(args.admin_key, "admin_key"))
    catalog = pick(args.catalog, "catalog", [])
    if not catalog and has_catalog_section:
        catalog = [str(a) for a in discovery.from_config(args.config)]      # DNS, if it names a domain
    for name, value in (("host_id", host_id), ("listen", listen), ("state_dir", state_dir),
                        ("admin_key", admin), ("catalog", catalog)):
        if not value:
            raise ConfigError(f"snipe-daemon needs {name}: pass --{name.replace('_', '-')} or set it in [daemon]"
                              + (" (or list the replicas in [catalog])" if name == "catalog" else ""))
    catalog_source = source_of(args.catalog, "--catalog", args.config)
    try:
        replicas = discovery.from_list([str(c) for c in catalog])
    except ConfigError as exc:
        raise ConfigError(f"catalog ({catalog_source}): {exc}") from None
    for replica in replicas:
        if replica.public_key is not None:
            peer_key_from(replica.public_key, f"catalog ({catalog_source}): replica {str(replica)!r}")
    net_names = dict(file_cfg.get("net_names", {}))
    for item in args.net_name:
        k, sep, v = item.partition("=")
        if not sep:
            raise ConfigError(f"--net-name {item!r} must be IFACE_OR_CIDR=NAME")
        net_names[k] = v
    speeds = {k: (v.get("bandwidth_mbps"), v.get("latency_us")) for k, v in file_cfg.get("links", {}).items()}
    admin_key = admin_key_from(admin, source_of(args.admin_key, "--admin-key", args.config))
    check_listen_endpoint(listen, "listen", source_of(args.listen, "--listen", args.config), 7400)
    relay = pick(args.relay, "relay")
    if relay is not None:
        check_listen_endpoint(relay, "relay", source_of(args.relay, "--relay", args.config), 7401)
    state_source = source_of(args.state_dir, "--state-dir", args.config)
    check_folder(Path(state_dir), "state_dir", state_source)
    key_file = pick(args.key_file, "key_file", str(Path(state_dir) / "host.key"))
    key_source = source_of(args.key_file, "--key-file", args.config) \
        if pick(args.key_file, "key_file") is not None else f"<state_dir>/host.key, state_dir from {state_source}"
    check_key_file(Path(key_file), "key_file", key_source, "host.key")
    args.log_level = log_level(args.log_level, "--log-level or SNIPE_LOG_LEVEL")
    retained_resolve_every_s()       # a bad SNIPE_RETAINED_RESOLVE_S: said now, before this host is published
    lease_s = float(pick(args.lease, "lease_s", 10.0))
    price = check_price(pick(args.price, "price", DEFAULT_PRICE), "[daemon] price")
    takeover_backoff_s = _positive_seconds(file_cfg.get("takeover_backoff_s", 1.0), "takeover_backoff_s")
    wait_hold_s = _positive_seconds(file_cfg.get("wait_hold_s", WAIT_HOLD_S), "wait_hold_s")
    # Every setting is checked: only now is anything made on disk.
    if footprint is not None:
        footprint.note(Path(state_dir), *(Path(state_dir) / part for part in STATE_DIR_PARTS), Path(key_file))
    cfg = DaemonConfig(host_id=str(host_id), listen=str(listen), state_dir=Path(state_dir),
                       identity=Identity.load_or_create(key_file), admin_key=admin_key,
                       catalog=[str(c) for c in catalog], advertise=pick(args.advertise, "advertise"),
                       lease_s=lease_s, net_names=net_names, link_speeds=speeds, relay=relay, price=price,
                       takeover_backoff_s=takeover_backoff_s, wait_hold_s=wait_hold_s)
    return cfg, args


def _positive_seconds(value: Any, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ConfigError(f"[daemon] {key} must be a number of seconds above 0, not {value!r}")
    return float(value)


# [daemon] keys and what each must be: a key this does not know is an error, not silence (a
# misspelt `lease_s` would otherwise leave the default in force with nothing said).
DAEMON_KEYS: dict[str, tuple[type, ...]] = {
    "host_id": (str,), "listen": (str,), "advertise": (str,), "state_dir": (str,), "key_file": (str,),
    "admin_key": (str,), "catalog": (list,), "lease_s": (int, float), "relay": (str,), "net_names": (dict,),
    "links": (dict,), "price": (int, float), "takeover_backoff_s": (int, float), "wait_hold_s": (int, float),
}
LINK_KEYS = ("bandwidth_mbps", "latency_us")


def read_config_file(path: Path) -> tuple[dict[str, Any], bool]:
    """The checked [daemon] table of `path`, and whether it has a [catalog] section (the one
    applications read, conf/client.toml: a list and/or DNS SRV records; checked here, resolved
    only if neither --catalog nor daemon.catalog names the replicas)."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    if "catalog" in raw:
        discovery.check_config(path)
    unknown = sorted(set(raw) - {"daemon", "catalog"})
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(unknown)}; snipe-daemon reads [daemon] and [catalog]")
    table = raw.get("daemon", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: 'daemon' must be a table ([daemon])")
    for key, value in table.items():
        kinds = DAEMON_KEYS.get(key)
        if kinds is None:
            raise ConfigError(f"{path}: [daemon] has no key {key!r}; it has {', '.join(DAEMON_KEYS)}")
        if not isinstance(value, kinds) or isinstance(value, bool):
            raise ConfigError(f"{path}: daemon.{key} must be {' or '.join(k.__name__ for k in kinds)}, "
                              f"not {type(value).__name__}")
    for net, name in table.get("net_names", {}).items():
        if not isinstance(name, str):
            raise ConfigError(f"{path}: daemon.net_names.{net} must be a net name (a string)")
    for link, speeds in table.get("links", {}).items():
        if not isinstance(speeds, dict) or set(speeds) - set(LINK_KEYS) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in speeds.values()):
            raise ConfigError(f"{path}: daemon.links.{link} must be a table of non-negative {' and '.join(LINK_KEYS)}")
    return table, ("catalog" in raw)


def main(argv: list[str] | None = None) -> int:
    footprint = Footprint()
    try:
        cfg, args = load_config(argv, footprint)
        logging.basicConfig(level=args.log_level, format="%(asctime)s snipe-daemon %(levelname)s %(message)s")
        daemon = Daemon(cfg)
    except SnipeError as exc:
        # What this start made goes, but not a key the admin is told to admit: the next start needs it.
        if not isinstance(exc, NotAuthorized):
            footprint.undo()
        print(f"snipe-daemon: {exc}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, lambda *_: daemon.stop())
    signal.signal(signal.SIGINT, lambda *_: daemon.stop())
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"endpoint": cfg.address, "host": cfg.host_urn, "pid": os.getpid()}))
        tmp.replace(args.ready_file)
    daemon.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
