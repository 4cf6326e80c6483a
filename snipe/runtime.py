"""The library applications call: `snipe.init()`, `publish`, `spawn`, `Process`, `me()`.

`init()` decides where this process stands, in this order:
1. inside a task a daemon started (SNIPE_PROC_URN is set): the task's own URN, key and catalog;
2. a configured cluster (arguments, SNIPE_CATALOG, or SNIPE_CONFIG / ~/.config/snipe/client.toml);
3. otherwise the embedded default: the local cluster in this user's runtime folder
   ($SNIPE_HOME, else $XDG_RUNTIME_DIR/snipe, else /tmp/snipe-<uid>), started if none is running
   (one replica, one daemon), and reused by every later process, like `ray.init()`. One partly
   down (some of its processes ended, others still run) is an error, ClusterPartlyDown: never is
   a second cluster started over it.
The same application code then runs unchanged against a multi-host deployment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from snipe import authority, checkpoints
from snipe.bidding import Auction, Bid, Refusal, check_price
from snipe.catalog.client import CatalogClient
from snipe.catalog.entry import Entry
from snipe.code import package
from snipe.daemonclient import MAX_WAIT_S, SPAWN_TIMEOUT_S, DaemonClient
from snipe.discovery import discover
from snipe.errors import (
    ClusterPartlyDown,
    ClusterShapeMismatch,
    CodecError,
    ConfigError,
    HighWaterMark,
    NotAuthorized,
    NotDelivered,
    NotFound,
    RequirementError,
    SnipeError,
)
from snipe.identity import Identity
from snipe.messaging.endpoint import Endpoint, Message, retained_resolve_every_s
from snipe.multicast.groups import Membership, member_lease_s
from snipe.placement import check_requirements, choose_host, eligible
from snipe.privatedir import IPC_DIR_ENV, default_runtime_dir, private_dir, refuse_if_not_ours
from snipe.query import Predicate, parse_predicate_text
from snipe.urn import new_urn, validate_urn

log = logging.getLogger("snipe.runtime")


def now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class Session:
    identity: Identity
    catalog: CatalogClient
    admin_key: bytes
    local_daemon: str | None = None
    me: str | None = None
    home: Path | None = None
    ipc_dir: Path | None = None          # a task's: its daemon's ipc folder (privatedir.IPC_DIR_ENV)
    _daemons: dict[tuple[int, str], DaemonClient] = field(default_factory=dict)   # by (thread id, address)
    placed: dict[str, list[int]] = field(default_factory=dict)     # host URN -> when we placed tasks there
    host: str | None = None
    catalog_addresses: list[str] = field(default_factory=list)
    _endpoint: Endpoint | None = None
    _membership: Membership | None = None
    _hosts_seen: tuple[float, dict[str, Any]] | None = None     # (monotonic time, host entries) for placement
    _undeliverable: dict[str, float] = field(default_factory=dict)   # host URN -> left out of placement until

    def membership(self) -> Membership:
        if self._membership is None:
            ep = self.endpoint()
            assert self.me is not None
            self._membership = Membership(ep, self.catalog, self.me, self.host)
        return self._membership

    def endpoint(self, prepare: Callable[[Endpoint], None] | None = None) -> Endpoint:
        """This process's messaging endpoint, started on first use (a task's at init); `prepare`
        runs on it before it starts listening (restoring a checkpoint's channels)."""
        if self._endpoint is None:
            if self.me is None:
                self.me = new_urn("proc")
                self.catalog.claim(self.me)
                self.catalog.set_many(self.me, {"owner": self.identity.key_id, "state": "running",
                                                "started": now_ms(), "kind": "application"})
            if self.host is None and self.local_daemon is not None:
                with contextlib.suppress(SnipeError):
                    self.host = self.daemon(self.local_daemon).call("hello", timeout=5)[0].get("host")
            me = self.me
            copy = os.environ.get("SNIPE_REPLICA_INDEX") if me == os.environ.get("SNIPE_PROC_URN") else None
            ep = Endpoint(me, self.identity, self.catalog_addresses, self.admin_key, host_urn=self.host,
                          runtime_dir=self.ipc_folder(),
                          session_seed=me if copy is not None else None)
            try:
                ep.start(self._publisher(me, copy), prepare)
            except BaseException:
                ep.close()              # its sockets and files: a later call starts another
                raise
            self._endpoint = ep
            if os.environ.get("SNIPE_PROC_URN") == me:      # a task: its daemon may migrate it
                from snipe.migration.origin import OriginShell
                OriginShell(self, ep)
        return self._endpoint

    def ipc_folder(self) -> Path | None:
        """Where this process's ipc socket goes: a task's daemon's folder, the local cluster's
        (home/msg), or None for this user's default runtime folder."""
        return self.ipc_dir or ((self.home / "msg") if self.home else None)

    def _publisher(self, me: str, copy: str | None) -> Callable[[dict[str, Any]], None]:
        """How the endpoint publishes where it listens: on our entry, or, for copy i of a
        replicated task in mode "all" (all copies share the URN), as one `copy.<i>` record."""
        if copy is None:
            return lambda values: self.catalog.set_many(me, values)
        mine: dict[str, Any] = {}

        def publish(values: dict[str, Any]) -> None:
            mine.update({k: v for k, v in values.items() if k in ("comm", "instance", "host")})
            self.catalog.set(me, f"copy.{copy}", mine)
        return publish

    def _host_daemon_address(self) -> str | None:
        """Where our host's catalog entry says its daemon listens now (None: not known)."""
        if self.host is None:
            return None
        with contextlib.suppress(SnipeError):
            self.catalog.invalidate(self.host)
            entry = self.catalog.get(self.host)
            now = now_ms()
            address = entry.value("daemon", now)
            if entry.value("alive", now) is True and isinstance(address, str):
                return address
        return None

    def call_local(self, kind: str, body: dict[str, Any], frames: tuple[bytes, ...] = (), *,
                   timeout: float) -> tuple[dict[str, Any], list[bytes]]:
        """A request to this host's daemon: at `local_daemon` (SNIPE_DAEMON), or, when nothing
        listens there, where our host's entry says it listens now (it restarted on another port
        since it started this task); that address is kept for the next calls."""
        if self.local_daemon is None:
            raise ConfigError(f"no daemon on this host to ask for {kind!r}; set SNIPE_DAEMON or init(daemon=...)")
        at = self.local_daemon

        def moved() -> str | None:
            fresh = self._host_daemon_address()
            if fresh is not None:
                self.local_daemon = fresh
            return fresh
        return self.call_moving(at, moved, kind, body, frames, timeout=timeout)

    def call_moving(self, address: str, moved: Callable[[], str | None], kind: str,
                    body: dict[str, Any], frames: tuple[bytes, ...] = (), *,
                    timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        """A request to the daemon at `address`, which may have restarted on another port: if
        no connection there takes it within MOVED_CONNECT_WAIT_S (so nothing was sent), `moved()`
        says where it listens now, and the request goes there, for what is left of `timeout`
        (to the same address, if `moved()` knows no other)."""
        client = self.daemon(address)
        timeout = timeout or client.timeout
        limit = time.monotonic() + timeout
        try:
            return client.call(kind, body, frames, timeout=timeout, connect_wait=min(timeout, MOVED_CONNECT_WAIT_S))
        except NotDelivered:
            fresh = moved() or address
            left = limit - time.monotonic()
            if left <= 0:
                raise
            return self.daemon(fresh).call(kind, body, frames, timeout=left)

    def daemon(self, address: str) -> DaemonClient:
        """This thread's client of the daemon at `address` (a client, a ZeroMQ socket, is one
        thread's: a migration's worker and the task's own thread both talk to their daemon)."""
        key = (threading.get_ident(), address)
        client = self._daemons.get(key)
        if client is None:
            client = self._daemons[key] = DaemonClient(address, self.identity)
        return client

    def close(self) -> None:
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None
        for d in self._daemons.values():
            d.close()
        self._daemons.clear()
        self.catalog.close()


_session: Session | None = None
MOVED_CONNECT_WAIT_S = 3.0        # a daemon not taking a request this long: where is it now?


def runtime_home() -> Path:
    """$SNIPE_HOME, else this user's default runtime folder (which must be ours alone)."""
    if os.environ.get("SNIPE_HOME"):
        home = Path(os.environ["SNIPE_HOME"])
        if home.exists() and not home.is_dir():
            raise ConfigError(f"SNIPE_HOME={home} is a file, not a folder; set SNIPE_HOME to a folder "
                              "(made if missing) or unset it for this user's default")
        return home
    return refuse_if_not_ours(default_runtime_dir())


# cluster.json records, for every process the cluster started, its PID, boot id and start tick
# (on Linux; else its create time) and command line: a PID alone may name an unrelated process once
# the cluster is gone (after a reboot PIDs are reused), and `cluster down` must never signal those.
# Where only create times are known: psutil derives them from the boot time, which two processes
# may read a second apart, hence the slack.
CREATE_TIME_SLACK_S = 1.0
_CLUSTER_MODULES = ("rcds.server_main", "snipe_daemon.main")
_PATH_FLAGS = ("--data-dir", "--state-dir", "--config", "--key-file", "--ready-file")


def _boot_and_start(pid: int) -> tuple[str, int] | None:
    """(this boot's id, the process's start in clock ticks since boot) from /proc: unlike a
    create time in wall-clock seconds (psutil adds the boot time, which moves when the clock is
    stepped: NTP, a VM resumed), it names one process of one boot exactly. None off Linux."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        return boot, int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _process_record(pid: int) -> dict[str, Any]:
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            record = {"pid": pid, "create_time": p.create_time(), "cmdline": p.cmdline()}
    except psutil.Error:       # already gone: a record that matches no live process
        return {"pid": pid, "create_time": None, "cmdline": []}
    started = _boot_and_start(pid)
    if started is not None:
        record["boot_id"], record["start_ticks"] = started
    return record


def _looks_like_ours(p: psutil.Process, cmdline: list[str], root: Path) -> bool:
    """Whether `cmdline` is a replica or daemon of the local cluster in `root` (one of its files
    or folders lies inside `root`): how PIDs of a cluster.json written before create times were
    recorded are told apart from reused ones."""
    if cmdline[1:2] != ["-m"] or cmdline[2:3] not in ([m] for m in _CLUSTER_MODULES):
        return False
    try:
        cwd = Path(p.cwd())             # a relative path is relative to where it started
    except (psutil.Error, OSError):
        cwd = Path("/")
    inside = root.resolve()
    return any(flag in _PATH_FLAGS and (cwd / value).resolve().is_relative_to(inside)
               for flag, value in itertools.pairwise(cmdline))


def _verified(pid: int, record: dict[str, Any] | None, root: Path) -> tuple[psutil.Process | None, str]:
    """The live process `pid` if it is still the one the cluster started, else None and why not.
    The Process returned remembers its create time, so signalling it later cannot reach a process
    that took the PID in between (psutil checks)."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            created, cmdline = p.create_time(), p.cmdline()
    except psutil.NoSuchProcess:                 # ZombieProcess included: it has ended
        return None, "no longer runs"
    except psutil.AccessDenied:
        return None, "belongs to another user now (cannot be inspected), so it is not the cluster's"
    if record is not None:
        want = record.get("create_time")
        if "start_ticks" in record:
            same = _boot_and_start(pid) == (record.get("boot_id"), record.get("start_ticks"))
        else:
            same = isinstance(want, int | float) and abs(created - want) <= CREATE_TIME_SLACK_S
        if same and cmdline == record.get("cmdline"):
            return p, ""
        return None, (f"is now another process (started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(created))}"
                      f": {' '.join(cmdline)[:120]!r}), so the cluster's process is gone")
    # No record: a cluster.json from before they were kept. Its PIDs are trusted only when the
    # command line is plainly one of this folder's replicas or daemons; anything else may be a
    # stranger's process that reused the PID, and signalling a stranger is worse than leaving one
    # of ours running (the warning names the PID, so the user can look and stop it by hand).
    if _looks_like_ours(p, cmdline, root):
        return p, ""
    return None, (f"cannot be verified (cluster.json predates recorded create times) and its command line "
                  f"{' '.join(cmdline)[:120]!r} is not one of this cluster's")


def _records(desc: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {r["pid"]: r for r in desc.get("processes", []) if isinstance(r, dict) and isinstance(r.get("pid"), int)}


@dataclass(frozen=True)
class _Member:
    """One process cluster.json lists, as it stands now: `process` is the live process the
    cluster started, or None and `reason` says why not (then it is gone, as far as the cluster
    is concerned: ended, or its PID now someone else's)."""

    role: str                   # "replica", "daemon", or "process" for a PID nothing else names
    id: str                     # r1, h2, ... ("?" when not known)
    pid: Any                    # as listed (an int unless the file was edited)
    process: psutil.Process | None
    reason: str

    @property
    def name(self) -> str:
        return f"{self.role} {self.id} (pid {self.pid})"

    def view(self) -> dict[str, Any]:
        return {"role": self.role, "id": self.id, "pid": self.pid, "alive": self.process is not None,
                **({"reason": self.reason} if self.reason else {})}


def _members(desc: dict[str, Any], root: Path) -> list[_Member]:
    """Every process cluster.json lists, checked now. Roles and ids come from the process records
    (since they were kept there), else from the order of "pids": the replicas r1..rN, then the
    daemons in the order "daemons" lists them."""
    records = _records(desc)
    replicas = len(desc.get("catalog", []))
    daemons = list(desc.get("daemons", {}))
    out: list[_Member] = []
    for i, pid in enumerate(desc.get("pids", [])):
        record = records.get(pid) if isinstance(pid, int) else None
        if record is not None and isinstance(record.get("role"), str) and isinstance(record.get("id"), str):
            role, ident = record["role"], record["id"]
        elif i < replicas:
            role, ident = "replica", f"r{i + 1}"
        elif i < replicas + len(daemons):
            role, ident = "daemon", str(daemons[i - replicas])
        else:
            role, ident = "process", "?"
        p, why = _verified(pid, record, root) if isinstance(pid, int) else (None, "is not a PID")
        out.append(_Member(role, ident, pid, p, why))
    return out


def _cluster_alive(desc: dict[str, Any], root: Path) -> bool:
    """Whether every process cluster.json lists is still the cluster's (and it lists some)."""
    members = _members(desc, root)
    return bool(members) and all(m.process is not None for m in members)


def _partly_down(home: Path, members: list[_Member]) -> ClusterPartlyDown:
    gone = [m for m in members if m.process is None]
    alive = len(members) - len(gone)
    return ClusterPartlyDown(
        f"the local cluster in {home} is partly down: {'; '.join(f'{m.name} {m.reason}' for m in gone)}, while "
        f"{alive} of its {len(members)} processes still run; a second cluster is not started over it. Stop "
        f"what is left with `snipe-console cluster down --home {home}` (or snipe.stop_embedded({str(home)!r})), "
        f"then start it again (`snipe-console cluster up --home {home}`, or run this again)")


def cluster_status(home: str | Path | None = None) -> dict[str, Any] | None:
    """The local cluster recorded in `home` (default: this user's runtime folder) as it stands:
    its description plus "state" ("running", "partly down" or "stopped": every process gone, as
    after a reboot) and "members" (role, id, pid, alive, and why not). None when none is recorded."""
    from snipe.localcluster import CLUSTER_FILE

    root = Path(home).expanduser() if home else runtime_home()
    desc = _read_description(root / CLUSTER_FILE)
    if desc is None:
        return None
    members = _members(desc, root)
    alive = sum(m.process is not None for m in members)
    state = "running" if members and alive == len(members) else "partly down" if alive else "stopped"
    return {**desc, "state": state, "members": [m.view() for m in members]}


def _read_description(path: Path) -> dict[str, Any] | None:
    try:
        desc = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); if no cluster runs there, delete the file") from None
    if not isinstance(desc, dict):
        raise ConfigError(f"{path} does not describe a cluster; if no cluster runs there, delete the file")
    return desc


def _write_description(path: Path, desc: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")      # replaced whole: a reader never sees half a file
    tmp.write_text(json.dumps(desc, indent=2))
    os.replace(tmp, path)


def _shape(replicas: int, hosts: int) -> str:
    return f"{replicas} replica{'s' if replicas != 1 else ''} and {hosts} host{'s' if hosts != 1 else ''}"


def start_embedded(home: Path, *, replicas: int | None = None, hosts: int | None = None,
                   default_shape: tuple[int, int] = (1, 1)) -> dict[str, Any]:
    """Start (or find) the local cluster in `home`; return its description. Safe to race.

    A running cluster is reused when it has the `replicas` and `hosts` asked for, or when none
    were asked for (None); one of another shape raises ClusterShapeMismatch. A new cluster gets
    the shape asked for, `default_shape` (replicas, hosts) filling in what was not, also where
    every recorded process has ended (as after a reboot). One partly down (some processes ended,
    others still run) raises ClusterPartlyDown and starts nothing."""
    from snipe.localcluster import CLUSTER_FILE, LocalCluster

    for name, n in (("replicas", replicas), ("hosts", hosts), ("default replicas", default_shape[0]),
                    ("default hosts", default_shape[1])):
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
            raise ConfigError(f"{name} must be a positive integer, not {n!r}")
    if home == default_runtime_dir():
        private_dir(home)
    else:                                   # one the user named: taken as it is
        home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with open(home / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        desc_path = home / CLUSTER_FILE
        desc = _read_description(desc_path)
        members = _members(desc, home) if desc is not None else []
        alive = sum(m.process is not None for m in members)
        if 0 < alive < len(members):          # a second cluster would share its data and state folders
            raise _partly_down(home, members)
        if desc is not None and members and alive == len(members):   # none alive (a reboot): start anew
            have = (len(desc.get("catalog", [])), len(desc.get("daemons", {})))
            if (replicas is not None and replicas != have[0]) or (hosts is not None and hosts != have[1]):
                asked = (have[0] if replicas is None else replicas, have[1] if hosts is None else hosts)
                raise ClusterShapeMismatch(
                    f"a local cluster of {_shape(*have)} already runs in {home}, but {_shape(*asked)} were "
                    f"asked for; stop it first (`snipe-console cluster down --home {home}`, or "
                    f"snipe.stop_embedded({str(home)!r})) or use another folder (--home, SNIPE_HOME)")
            return desc
        n_replicas = default_shape[0] if replicas is None else replicas
        n_hosts = default_shape[1] if hosts is None else hosts
        cluster = LocalCluster(home, replicas=n_replicas, hosts=n_hosts, loopback_hosts=n_hosts > 1)
        try:
            cluster.start()
            desc = cluster.describe()
            started = [("replica", r.id, r.proc) for r in cluster.catalog.replicas]
            started += [("daemon", d.host_id, d.proc) for d in cluster.daemons]
            desc["processes"] = [{"role": role, "id": ident, **_process_record(proc.pid)}
                                 for role, ident, proc in started if proc is not None]
            _write_description(desc_path, desc)
        except BaseException:
            cluster.close()
            raise
        return desc


def init(*, catalog: Sequence[str] | None = None, identity: Identity | None = None, admin_key: str | None = None,
         config: str | None = None, home: str | Path | None = None, daemon: str | None = None) -> Session:
    """Join a SNIPE cluster (see the module docstring for how it is found). Idempotent."""
    global _session
    if _session is not None:
        return _session
    env = os.environ
    retained_resolve_every_s(env)      # a bad SNIPE_RETAINED_RESOLVE_S: said here, not at the first send
    member_lease_s(env)                # ... and a bad SNIPE_MEMBER_LEASE_S, not at the first join
    if env.get("SNIPE_PROC_URN"):
        ident = Identity.load(env["SNIPE_KEY_FILE"])
        admin = env["SNIPE_ADMIN_KEY"]
        addrs = env["SNIPE_CATALOG"].split(",")
        client = CatalogClient(addrs, ident, admin)
        _session = Session(ident, client, client.admin_key, env.get("SNIPE_DAEMON"), env["SNIPE_PROC_URN"],
                           host=env.get("SNIPE_HOST_URN"), catalog_addresses=addrs,
                           ipc_dir=Path(env[IPC_DIR_ENV]) if env.get(IPC_DIR_ENV) else None)
        if env.get("SNIPE_MIGRATION"):        # a migration's clone: take the process over first
            from snipe.hooks import hand_over
            from snipe.migration.clone import become_clone
            from snipe.migration.origin import OriginShell
            mid = env.pop("SNIPE_MIGRATION")
            state = become_clone(_session, mid)
            assert _session._endpoint is not None
            OriginShell(_session, _session._endpoint)
            hand_over(state)
        if env.get("SNIPE_RESTORE_FILE") or env.get("SNIPE_CHECKPOINT_EVERY"):
            checkpoints.resume_at_start(_session)     # started from a checkpoint, or checkpointing periodically
        return _session
    if catalog or env.get("SNIPE_CATALOG") or config or env.get("SNIPE_CONFIG") or env.get("SNIPE_SRV_DOMAIN"):
        addrs = discover(list(catalog) if catalog else None, config_path=config)
        admin = admin_key or env.get("SNIPE_ADMIN_KEY")
        if not admin:
            raise ConfigError("set the cluster's admin key: init(admin_key=...) or SNIPE_ADMIN_KEY")
        key_file = env.get("SNIPE_KEY_FILE", str(Path.home() / ".config" / "snipe" / "user.key"))
        ident = identity or Identity.load(key_file)
        client = CatalogClient(addrs, ident, admin)
        _session = Session(ident, client, client.admin_key, daemon or env.get("SNIPE_DAEMON"),
                           catalog_addresses=[str(a) for a in addrs])
        return _session
    root = Path(home) if home else runtime_home()
    desc = start_embedded(root)
    ident = identity or Identity.load(desc["user_key_file"])
    client = CatalogClient(desc["catalog"], ident, desc["admin_key"])
    local = next(iter(desc["daemons"].values()), None)
    _session = Session(ident, client, client.admin_key, local, home=root, catalog_addresses=list(desc["catalog"]))
    return _session


def session() -> Session:
    return _session if _session is not None else init()


def shutdown() -> None:
    """Forget the session (the embedded cluster keeps running for later processes)."""
    global _session
    if _session is not None:
        _session.close()
        _session = None


def me() -> str:
    """This process's own URN: a task's from its daemon; an application gets one on first use."""
    s = session()
    if s.me is None:
        s.endpoint()
    assert s.me is not None
    return s.me


# --- messaging -------------------------------------------------------------------------------------
def send(urn: str, payload: bytes | bytearray | memoryview, tag: int = 0, *, timeout: float | None = None,
         deadline: float = 30.0) -> None:
    """Send `payload` to the process `urn`: reliable, FIFO per pair, exactly once. Blocks at the
    high-water mark (Unreachable after `timeout`). A message not acknowledged within `deadline`
    seconds comes back from `recv` as a failure (`Message.failed`), naming the reason."""
    if not isinstance(payload, _BYTES_LIKE):
        raise TypeError(f"payload must be bytes-like, not {type(payload).__name__}; use send_obj for objects")
    dest = _valid_dests.get(urn) if type(urn) is str else None
    if dest is None:                     # parsing a URN costs more than the rest of a send: once per peer
        dest = validate_urn(urn)
        if type(urn) is str:
            if len(_valid_dests) >= 4096:
                _valid_dests.clear()
            _valid_dests[urn] = dest
    s = _session                 # a started endpoint without two calls (as recv)
    ep = s._endpoint if s is not None else None
    if ep is None:
        ep = session().endpoint()
    if checkpoints.due == _INF:
        ep.send(dest, payload, tag if type(tag) is int else int(tag), timeout=timeout, deadline_s=deadline)
        return
    # A task that checkpoints periodically keeps doing so while a send waits for room: a peer
    # replicated in standby mode settles our messages only once its checkpoint holds them, and
    # two such tasks sending to each other would otherwise each wait for the other's checkpoint.
    limit = None if timeout is None else time.monotonic() + timeout
    while True:
        checkpoints.maybe_checkpoint()
        now = time.monotonic()
        wait = max(0.001, checkpoints.due - now)
        if limit is not None:
            wait = min(wait, max(0.0, limit - now))
        try:
            ep.send(dest, payload, int(tag), timeout=wait, deadline_s=deadline)
            return
        except HighWaterMark:
            if limit is not None and time.monotonic() >= limit:
                raise HighWaterMark(f"{dest} has {ep.hwm} messages unsettled (the high-water mark); "
                                    f"send timed out after {timeout} s{ep.why_unsettled(dest)}") from None


_INF = float("inf")


_BYTES_LIKE = (bytes, bytearray, memoryview)
_valid_dests: dict[str, str] = {}       # destination text -> its validated, normalised URN


def send_obj(urn: str, obj: Any, tag: int = 0, **kw: Any) -> None:
    """`send` a msgpack-able object (`Message.obj()` decodes it)."""
    import msgpack
    send(urn, msgpack.packb(obj, use_bin_type=True), tag, **kw)


def recv(source: str | None = None, tag: int | None = None, timeout: float | None = None) -> Message | None:
    """The next message (from `source`, with `tag`, if given), waiting up to `timeout` seconds
    (None: forever); None if nothing came. Selective, as PVM's pvm_recv. A task that checkpoints
    periodically does so while it waits here too (waiting for a message is a safe point)."""
    s = _session                 # a started endpoint without two calls: recv runs once a message
    ep = s._endpoint if s is not None else None
    if ep is None:
        ep = session().endpoint()
    if checkpoints.due == _INF:
        return ep.recv(source, tag, timeout)
    limit = None if timeout is None else time.monotonic() + timeout
    while True:
        checkpoints.maybe_checkpoint()
        now = time.monotonic()
        wait = max(0.0, checkpoints.due - now)
        if limit is not None:
            wait = min(wait, max(0.0, limit - now))
        m = ep.recv(source, tag, wait)
        if m is not None or (limit is not None and time.monotonic() >= limit):
            return m


# safe_point() in a task whose messaging could not start (the catalog briefly unreachable): it
# tries again this often, and says so once
SAFE_POINT_START_RETRY_S = 5.0
@dataclass
class _StartRetry:
    at: float = 0.0         # the next try (monotonic)
    said: bool = False


_safe_point_start = _StartRetry()


def safe_point() -> None:
    """Say this is a good moment to take the task's state (a migration waits for one): for a
    task that computes long between its other snipe calls. In a task, the first call starts its
    messaging if nothing else has (its daemon asks it to move by a message, so a task that only
    ever calls safe_point is migratable too); after that it costs nothing when none is waiting.
    It never raises: if the messaging cannot start yet, it says so once and tries again at most
    every SAFE_POINT_START_RETRY_S (the task is not migratable till then)."""
    s = session()
    ep = s._endpoint
    if ep is None:
        if s.me is None or s.me != os.environ.get("SNIPE_PROC_URN"):
            return          # not a task: nothing can ask it to move
        now = time.monotonic()
        if now < _safe_point_start.at:
            return
        try:
            ep = s.endpoint()
        except SnipeError as exc:
            _safe_point_start.at = now + SAFE_POINT_START_RETRY_S
            if not _safe_point_start.said:
                _safe_point_start.said = True
                log.warning("snipe.safe_point(): could not start this task's messaging (%s); it cannot be "
                            "migrated until it does, and is tried again every %g s", exc, SAFE_POINT_START_RETRY_S)
            return
    if ep.safe_point_due:
        ep._safe_point()


def probe(source: str | None = None, tag: int | None = None) -> bool:
    """Whether a matching message is waiting (never blocks)."""
    if checkpoints.due != _INF:
        checkpoints.maybe_checkpoint()
    return session().endpoint().probe(source, tag)


def join(group: str) -> list[str]:
    """Join a multicast group (`urn:snipe:group:<name>`); its messages then arrive through
    `recv`, with `Message.group` set. Returns the routers this process registered with."""
    s = session()
    membership = s.membership()
    me_ = s.me

    def elect(g: str) -> list[str] | None:
        if s.local_daemon is None:
            return None
        reply, _ = s.call_local("mcast-join", {"group": g, "member": me_}, timeout=30)
        return list(reply.get("routers", []))
    return membership.join(group, elect)


def leave(group: str) -> None:
    """Leave a group: no more of its messages are delivered here."""
    s = session()
    s.membership().leave(group)
    if s.local_daemon is not None:
        with contextlib.suppress(SnipeError):
            s.call_local("mcast-leave", {"group": validate_urn(group), "member": s.me}, timeout=10)


def mcast(group: str, payload: bytes | bytearray | memoryview, tag: int = 0) -> int:
    """Send to every member of `group`; a sender need not be a member. Reliable while a
    minority of the group's routers fail; FIFO per sender at every member."""
    return session().membership().mcast(group, payload, int(tag))


def members(group: str) -> list[str]:
    """The URNs of the group's current members."""
    return session().membership().members(group)


def messaging_stats() -> dict[str, dict[str, Any]]:
    """Per peer: sent, acked, retransmitted, received, bytes, current route."""
    return session().endpoint().stats()


async def send_async(urn: str, payload: bytes, tag: int = 0, **kw: Any) -> None:
    """`send` for asyncio applications (blocks only a worker thread at the high-water mark). If
    the caller is cancelled while the send waits for room, the message is still sent once room
    comes (a send cannot be taken back); pass `timeout` to bound that wait."""
    import asyncio
    await asyncio.to_thread(send, urn, payload, tag, **kw)


RECV_ASYNC_SLICE_S = 0.1      # a cancelled recv_async's worker thread gives up within this


async def recv_async(source: str | None = None, tag: int | None = None, timeout: float | None = None
                     ) -> Message | None:
    """`recv` for asyncio applications. Cancelling it (asyncio.wait_for, a task group) loses no
    message: one its worker thread took meanwhile goes back to the head of the inbox for the
    next recv. The thread waits in slices, so a cancelled call does not leave it blocked."""
    import asyncio
    import threading

    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        wait = RECV_ASYNC_SLICE_S if left is None else min(RECV_ASYNC_SLICE_S, left)
        cancelled = threading.Event()

        def take(wait: float = wait, cancelled: threading.Event = cancelled) -> Message | None:
            m = recv(source, tag, wait)
            if m is not None and cancelled.is_set():
                _unread(m)       # its caller is gone: keep it for the next recv
                return None
            return m

        fut = loop.run_in_executor(None, take)
        try:
            m = await asyncio.shield(fut)
        except asyncio.CancelledError:
            cancelled.set()      # the thread may still take one: `take` or this callback puts it back
            fut.add_done_callback(lambda f: None if f.cancelled() or f.exception() is not None
                                  or f.result() is None else _unread(f.result()))
            raise
        if m is not None or (left is not None and left <= wait):
            return m


def _unread(m: Message) -> None:
    session().endpoint().unread(m)


def catalog() -> CatalogClient:
    return session().catalog


# --- code ----------------------------------------------------------------------------------------
def publish(path: str | Path, *, entry: str | None = None, requirements: Sequence[str] = ()) -> str:
    """Publish a script or package folder as mobile code; return its content-addressed URN."""
    s = session()
    pkg = package(path, entry=entry, requirements=requirements)
    c = s.catalog
    try:
        c.put([c.sign(pkg.urn, authority.OWNER, s.identity.key_id),
               c.sign(pkg.urn, authority.DELEGATE_PREFIX + authority.ANY_KEY, ["location"]),
               c.sign(pkg.urn, "manifest", pkg.manifest)])
    except NotAuthorized:
        owner = c.get(pkg.urn).owner(s.admin_key, now_ms())
        if owner is None:
            raise
        # the same bytes were published before by another key: its manifest stands
    if s.local_daemon is None:
        raise ConfigError("no daemon to hold the code on this host; set SNIPE_DAEMON or init(daemon=...)")
    s.call_local("put-code", {"urn": pkg.urn, "manifest": pkg.manifest}, (pkg.blob,), timeout=120)
    _put_spare_copy(s, pkg.urn, pkg.manifest, pkg.blob)
    return pkg.urn


def _put_spare_copy(s: Session, urn: str, manifest: dict[str, Any], blob: bytes) -> None:
    """Put published code on one more live host, so that losing the publisher's host does not
    leave it nowhere to be fetched from (every host that runs it later keeps a copy too). Which
    host is spread by the code's hash; one that cannot take it now is only a warning."""
    now = now_ms()
    try:
        hosts = s.catalog.query("urn:snipe:host:")
    except SnipeError as exc:
        log.warning("publish %s: no spare copy (the host list could not be read: %s)", urn, exc)
        return
    others = [u for u in eligible(hosts, [], now) if u != s.host and hosts[u].value("daemon", now) != s.local_daemon]
    others.sort(key=lambda u: hashlib.sha256(f"{urn} {u}".encode()).digest())
    for host in others[:SPARE_COPY_TRIES]:
        try:
            s.daemon(str(hosts[host].value("daemon", now))).call(
                "put-code", {"urn": urn, "manifest": manifest}, (blob,), timeout=60, connect_wait=PLACEMENT_CONNECT_S)
            return
        except NotDelivered as exc:             # gone since its last lease: the next
            log.info("publish %s: no spare copy on %s (%s)", urn, host, exc)
        except SnipeError as exc:
            log.warning("publish %s: no spare copy on %s (%s); the code is on this host only until a task of "
                        "it runs elsewhere", urn, host, exc)
            return
    if others:
        log.warning("publish %s: no other host took a spare copy; the code is on this host only until a task "
                    "of it runs elsewhere", urn)


# --- processes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProcessEvent:
    seq: int
    kind: str              # started, suspended, resumed, migrated, restarted, exited, killed, lost, host-lost
    at: float
    exit_code: int | None
    reason: str | None
    final: bool = False    # the task ended: `Process.events` stops after this one


class Process:
    """A handle on a task, by URN. Works from any process in the cluster."""

    def __init__(self, urn: str, supervisor: str | None = None, host: str | None = None) -> None:
        self.urn = validate_urn(urn)
        self._supervisor = supervisor
        self.host = host

    def __repr__(self) -> str:
        return f"Process({self.urn!r}, host={self.host!r})"

    @property
    def supervisor(self) -> str:
        if self._supervisor is None:
            entry = session().catalog.get(self.urn)
            sup = entry.value("supervisor", now_ms())
            if sup is None:
                raise NotFound(f"{self.urn} has no supervisor in the catalog; is it a task?")
            self._supervisor = str(sup)
            self.host = entry.value("host", now_ms())
        return self._supervisor

    def _call(self, kind: str, rpc_timeout: float | None = None, **body: Any) -> dict[str, Any]:
        """Ask the task's daemon. One that took no connection (nothing was sent) may have
        restarted on another port: its address is read again from the catalog, and asked there."""
        def moved() -> str | None:
            self._supervisor = None
            session().catalog.invalidate(self.urn)
            try:
                return self.supervisor
            except SnipeError:              # not read now: the address we had is asked again
                return None
        reply, _ = session().call_moving(self.supervisor, moved, kind, {"urn": self.urn, **body}, timeout=rpc_timeout)
        return reply

    def status(self) -> dict[str, Any]:
        return self._call("status")

    def wait(self, timeout: float | None = None) -> dict[str, Any]:
        """Block until the task ends (or `timeout`); returns its status with exit code and stderr tail."""
        t = 3600.0 if timeout is None else timeout
        limit = time.monotonic() + t
        moves = 0
        while True:
            # a daemon takes a wait of MAX_WAIT_S at most, and holds one a while (WAIT_HOLD_S)
            # before it answers `renew`: either way what is left is asked for again
            left = max(0.0, limit - time.monotonic())
            reply = self._call("wait", rpc_timeout=min(left, MAX_WAIT_S) + 10, timeout=min(left, MAX_WAIT_S),
                               renew=True)
            if reply.get("state") == "migrated" and moves < 64:     # followed to its new host
                moves += 1
                self._supervisor = None
                time.sleep(0.05)                 # its new daemon publishes the move a moment later
            elif reply.get("state") in ("starting", "running", "suspended") and (
                    left > MAX_WAIT_S or (reply.get("renew") is True and limit > time.monotonic())):
                continue
            else:
                return reply

    def kill(self) -> dict[str, Any]:
        return self._call("kill")

    def signal(self, signum: int) -> dict[str, Any]:
        return self._call("signal", signum=int(signum))

    def suspend(self) -> dict[str, Any]:
        return self._call("suspend")

    def resume(self) -> dict[str, Any]:
        return self._call("resume")

    def send(self, payload: bytes, tag: int = 0, **kw: Any) -> None:
        send(self.urn, payload, tag, **kw)

    def migrate(self, host: str, *, timeout: float = 120.0) -> dict[str, Any]:
        """Move the task to `host` (SNIPE 4.6), keeping its URN, messages and state (its
        on_checkpoint/on_restore hooks). Returns {urn, from, to, supervisor}. Raises
        MigrationFailed, naming why, if it could not be moved; the task then still runs here."""
        target = host if host.startswith("urn:") else f"urn:snipe:host:{host}"
        reply = self._call("migrate", rpc_timeout=timeout + 10, host=validate_urn(target), timeout=timeout)
        self._supervisor, self.host = reply.get("supervisor"), reply.get("to")
        return reply

    def info(self) -> dict[str, Any]:
        return session().catalog.get(self.urn).as_dict(now_ms())

    def events(self, timeout: float | None = None) -> Iterator[ProcessEvent]:
        """Every state change of the task, once each and in order, until it ends (the event
        says `final`) or `timeout` seconds pass. If the task's host loses its lease, a
        `host-lost` (seq 0: the cluster noticed it, the task did not record it). That is the end
        unless the task is to be restarted elsewhere (a restart policy or standbys, and a host
        to do it): then the next incarnation's events follow, `restarted` first, or a final
        `lost` (seq 0) once no host that could restart it is alive."""
        s = session()
        w = s.catalog.watch(self.urn)
        host_watch = None
        try:
            seen = 0
            entry = s.catalog.get(self.urn)
            host = entry.value("host", now_ms())
            if isinstance(host, str):
                host_watch = s.catalog.watch(host)
            restarters = _restarters(entry)
            orphaned_check = math.inf      # while its host is lost: when to look again for a host to restart it
            pending = entry.value("events", now_ms(), [])
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                for item in sorted(pending or [], key=lambda e: e.get("seq", 0) if isinstance(e, dict) else 0):
                    if not isinstance(item, dict) or not isinstance(item.get("seq"), int):
                        continue
                    seq, kind, at = item["seq"], str(item.get("kind")), float(item.get("at", 0))
                    code, reason = item.get("exit_code"), item.get("reason")
                    if seq > seen:
                        if seq != seen + 1 and seen:
                            yield ProcessEvent(seen + 1, "gap", time.time(), None,
                                               f"events {seen + 1}..{seq - 1} fell out of the kept history")
                        seen = seq
                        ended = kind in ("exited", "killed", "lost")
                        yield ProcessEvent(seq, kind, at, code, reason, final=ended)
                        if ended:
                            return
                        if kind in ("migrated", "restarted"):     # follow the lease of its new host
                            orphaned_check = math.inf
                            s.catalog.invalidate(self.urn)
                            now_entry = s.catalog.get(self.urn)
                            restarters = _restarters(now_entry)
                            moved_to = now_entry.value("host", now_ms())
                            if isinstance(moved_to, str) and moved_to != host:
                                if host_watch is not None:
                                    host_watch.close()
                                host, host_watch = moved_to, s.catalog.watch(moved_to)
                pending = []
                if deadline is not None and time.monotonic() >= deadline:
                    return
                ev = w.next(0.1)
                if ev is not None and ev.record is not None and ev.record.name == "events" and ev.kind == "put":
                    pending = ev.record.value if isinstance(ev.record.value, list) else []
                if host_watch is not None:
                    hev = host_watch.next(0)
                    # a watch is by prefix: urn:snipe:host:h1 also hears h10..h19
                    if hev is not None and hev.kind == "expire" and hev.record is not None \
                            and hev.record.urn == host and hev.record.name == "alive":
                        orphaned = not any(_host_alive(s, h) for h in restarters if h != host)
                        yield ProcessEvent(0, "host-lost", time.time(), None,
                                           f"{host}'s lease expired: its daemon is gone or cut off", final=orphaned)
                        if orphaned:
                            return
                        host_watch.close()
                        host_watch = None          # until a new incarnation names its host
                        orphaned_check = time.monotonic() + ORPHAN_CHECK_S
                if not pending and time.monotonic() >= orphaned_check:
                    if not any(_host_alive(s, h) for h in restarters if h != host):
                        yield ProcessEvent(0, "lost", time.time(), None,
                                           f"{host} was lost and no host that could restart the task is alive",
                                           final=True)
                        return
                    orphaned_check = time.monotonic() + ORPHAN_CHECK_S
        finally:
            w.close()
            if host_watch is not None:
                host_watch.close()


ORPHAN_CHECK_S = 2.0     # how often Process.events looks for a live host to restart a task whose host was lost


def _restarters(entry: Entry) -> list[str]:
    """The hosts that may restart the task `entry` is about when its host is lost."""
    keys = entry.value("takeover_keys", now_ms())
    return sorted(str(h) for h in keys) if isinstance(keys, dict) else []


def _host_alive(s: Session, host_urn: str) -> bool:
    try:
        return s.catalog.get(host_urn).value("alive", now_ms()) is True
    except SnipeError:
        return True                 # cannot tell: keep following rather than call the task lost


def _requirements(requires: Sequence[Predicate | str] | dict[str, Any] | None) -> list[Predicate]:
    """The requirements as predicates; RequirementError naming one that no host could meet as
    written (an attribute hosts do not publish, a malformed expression)."""
    if requires is None:
        return []
    if isinstance(requires, str):
        raise RequirementError(f"requires must be a list of requirements, e.g. [{requires!r}], not one string")
    if isinstance(requires, dict):
        preds: list[Predicate] = [(k, "=", v) for k, v in requires.items()]
        check_requirements(preds)
        return preds
    preds, written = [], []
    for r in requires:
        if isinstance(r, str):
            try:
                preds.append(parse_predicate_text(r.strip()))
            except CodecError as exc:
                raise RequirementError(str(exc)) from None
            written.append(r)
        else:
            preds.append(tuple(r) if isinstance(r, list | tuple) else r)  # type: ignore[arg-type]
            written.append(None)
    check_requirements(preds, written)
    return preds


def hosts(requires: Sequence[Predicate | str] | dict[str, Any] | None = None, *,
          catalog: CatalogClient | None = None) -> dict[str, Any]:
    """The live hosts' metadata, by URN; read with `catalog` (a thread's own client) if given."""
    now = now_ms()
    c = catalog or session().catalog
    return {u: e.as_dict(now) for u, e in c.query("urn:snipe:host:", _requirements(requires)).items()
            if e.value("alive", now) is True}


# Placement reuses the hosts' entries for this long: a loop of spawns costs one catalog query per
# interval, not one each (the hosts' own counts of tasks are refreshed every lease/3 seconds anyway,
# and this client adds the tasks it placed since, see snipe/placement.py).
PLACEMENT_CACHE_S = 1.0
PLACEMENT_TRIES = 3          # hosts a spawn tries in turn when the chosen one's daemon cannot be reached
PLACEMENT_CONNECT_S = 5.0    # how long a spawn waits for a chosen host's daemon to take a connection
UNDELIVERABLE_FOR_S = 10.0   # a host whose daemon took none is left out of placement this long
SPARE_COPY_TRIES = 2         # hosts `publish` offers its spare copy of the code to, in turn
RESTART_POLICIES = ("on-host-failure",)
REPLICA_MODES = ("standby", "all")
PLACEMENTS = ("least-loaded", "bids")
BID_TIMEOUT_S = 2.0          # how long a call for bids waits for each host
BID_STRAGGLER_S = 0.25       # ... and, once all but a quarter have bid, for the rest
BID_WORKERS = 16             # hosts asked for a bid at once


def _call_for_bids(hosts: dict[str, Any], requires: list[Predicate], max_price: float | None) -> list[Bid]:
    """Ask every host in `hosts` (URN -> catalog entry) for a bid at once, each on a daemon
    client of its own (a client is one thread's); the bids, best first, or NotFound saying why
    each host did not bid."""
    s, now = session(), now_ms()
    auction = Auction(sorted(hosts))
    body: dict[str, Any] = {"requires": [list(r) for r in requires], "max_price": max_price}

    def ask(urn: str) -> Bid | Refusal:
        with DaemonClient(str(hosts[urn].value("daemon", now)), s.identity) as d:
            reply, _ = d.call("bid", body, timeout=BID_TIMEOUT_S)
        offer, busy = reply.get("bid"), reply.get("busy", 0.0)
        if not (isinstance(offer, int | float) and not isinstance(offer, bool) and math.isfinite(offer) and offer >= 0):
            return Refusal(urn, str(reply.get("refused") or f"answered no bid: {reply!r}"[:200]))
        if max_price is not None and offer > max_price:          # a daemon's word on the cap is not taken
            return Refusal(urn, f"its bid {offer:.6g} is above the price cap {max_price:g}")
        detail = reply.get("detail") if isinstance(reply.get("detail"), dict) else {}
        return Bid(urn, float(offer), detail, float(busy) if isinstance(busy, int | float) and math.isfinite(busy)
                   and not isinstance(busy, bool) else 0.0)

    pool = ThreadPoolExecutor(max_workers=min(BID_WORKERS, len(hosts)), thread_name_prefix="snipe-bids")
    try:
        pending = {pool.submit(ask, urn): urn for urn in sorted(hosts)}
        deadline = time.monotonic() + BID_TIMEOUT_S
        until = deadline
        while pending and (left := until - time.monotonic()) > 0:
            finished, _ = wait(pending, timeout=left, return_when=FIRST_COMPLETED)
            for answer in finished:
                urn = pending.pop(answer)
                try:
                    got = answer.result()
                except SnipeError as exc:
                    got = Refusal(urn, str(exc))
                except Exception as exc:      # what one daemon answered must not end the call for bids
                    got = Refusal(urn, f"{type(exc).__name__}: {exc}")
                if isinstance(got, Bid):
                    auction.on_bid(got)
                else:
                    auction.on_refusal(got)
            if auction.quorum and until == deadline:      # the rest get a short while, not the whole deadline
                until = min(deadline, time.monotonic() + BID_STRAGGLER_S)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)    # a silent host's call ends at its own timeout
    auction.on_deadline()
    ranked = auction.ranked()
    if not ranked:
        auction.winner()              # raises NotFound with every host's reason
    return ranked


def spawn(code: str, *args: Any, host: str | None = None, requires: Sequence[Predicate | str] | dict | None = None,
          env: dict[str, str] | None = None, quota: dict[str, Any] | None = None,
          notify: Sequence[str] = (), checkpoint_every: float | None = None, restart: str | None = None,
          replicas: int = 1, mode: str = "standby", placement: str = "least-loaded",
          max_price: float | None = None) -> Process:
    """Start `code` (a code URN from `publish`) as a task; return its Process handle.

    With no `host`, the least-loaded live host meeting `requires` is chosen from what the hosts
    publish in the catalog; with `placement="bids"` the hosts are asked for a bid instead and
    the cheapest wins (snipe/bidding.py: each host's price per CPU-second times how busy it is
    now), none above `max_price`. `quota` may set cpu_seconds, memory_bytes, wall_seconds and
    open_files. `checkpoint_every` (seconds) makes
    the task checkpoint itself periodically (snipe/checkpoints.py); `restart="on-host-failure"`
    has it restarted on another live host, from its last checkpoint (or from the beginning
    without one), keeping its URN, when its host's lease lapses.

    `replicas=N, mode="standby"`: one URN backed by N hosts: the primary runs the task and
    checkpoints it (every `checkpoint_every`, default 1 s) to itself and the N-1 standby hosts,
    which hold its code and state; when the primary's host dies the first live standby is
    promoted (restarted there from the checkpoint). Senders keep every message until a
    checkpoint holds it, so losing a replica loses no acknowledged message.
    `mode="all"`: N copies run on N hosts; every message sent to the URN is delivered to each
    copy, and the copies number what they send alike, so a peer gets each answer once (the
    task must be deterministic: same messages in, same messages out, in the same order).
    """
    s = session()
    code = validate_urn(code)
    body: dict[str, Any] = {"code": code, "args": [str(a) for a in args], "env": env or {}, "quota": quota or {},
                            "notify": list(notify), "timeout": SPAWN_TIMEOUT_S}
    if checkpoint_every is not None:
        if not (isinstance(checkpoint_every, int | float) and checkpoint_every > 0):
            raise ValueError(f"checkpoint_every must be a positive number of seconds, not {checkpoint_every!r}")
        body["checkpoint_every"] = float(checkpoint_every)
    if restart is not None:
        if restart not in RESTART_POLICIES:
            raise ValueError(f"restart must be one of {RESTART_POLICIES}, not {restart!r}")
        body["restart"] = restart
    if replicas != 1:
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
            raise ValueError(f"replicas must be a positive integer, not {replicas!r}")
        if mode not in REPLICA_MODES:
            raise ValueError(f"mode must be one of {REPLICA_MODES}, not {mode!r}")
        body.update({"replicas": replicas, "mode": mode})
    if placement not in PLACEMENTS:
        raise ValueError(f"placement must be one of {PLACEMENTS}, not {placement!r}")
    if max_price is not None:
        if placement != "bids":
            raise ValueError("max_price caps bids: pass placement='bids' with it")
        max_price = check_price(max_price, "max_price")
    if host is not None and placement == "bids":
        raise ValueError(f"a host was named ({host}): bids choose one; pass either host= or placement='bids'")
    if host is None and placement == "bids":
        hosts = s.catalog.query("urn:snipe:host:")
        wanted = _requirements(requires)
        candidates = eligible(hosts, wanted, now_ms())
        if not candidates:
            choose_host(hosts, wanted, now_ms())          # raises NotFound saying why none fits
        refused: list[str] = []
        for offer in _call_for_bids({u: hosts[u] for u in candidates}, wanted, max_price):
            try:
                return _spawn_on(s, offer.host, body, connect_wait=PLACEMENT_CONNECT_S)
            except (NotAuthorized, NotDelivered) as exc:   # draining, or gone, since it bid: the next best
                refused.append(f"{offer.host}: {exc}")
        raise NotFound("no host that bid took the task: " + "; ".join(refused))
    if host is not None:
        return _spawn_on(s, host if host.startswith("urn:") else f"urn:snipe:host:{host}", body)
    seen = s._hosts_seen
    fresh = seen is None or time.monotonic() - seen[0] >= PLACEMENT_CACHE_S
    if fresh:
        s._hosts_seen = seen = (time.monotonic(), s.catalog.query("urn:snipe:host:"))  # all, so a refusal says why
    assert seen is not None
    now = time.monotonic()
    # Hosts whose daemon took no connection lately are left out while their lease may still say alive.
    hosts_seen = {u: e for u, e in seen[1].items() if s._undeliverable.get(u, 0.0) <= now}
    not_taken: list[str] = []
    for _ in range(PLACEMENT_TRIES):
        try:
            host_urn = choose_host(hosts_seen, _requirements(requires), now_ms(), s.placed)
        except NotFound:
            if not not_taken:
                raise
            break
        address = hosts_seen[host_urn].value("daemon", now_ms())
        try:
            reply, _ = s.daemon(str(address)).call("spawn", body, timeout=SPAWN_TIMEOUT_S,
                                                   connect_wait=PLACEMENT_CONNECT_S)
            return _placed(s, host_urn, str(address), reply)
        except NotDelivered as exc:
            # Its daemon died since it last renewed its lease: the spawn never reached it, so
            # another host may take it.
            log.warning("spawn: %s; choosing another host", exc)
            not_taken.append(f"{host_urn}: {exc}")
            s._undeliverable[host_urn] = time.monotonic() + UNDELIVERABLE_FOR_S
            del hosts_seen[host_urn]
        except NotAuthorized:
            if fresh:
                raise
            # the host list was up to PLACEMENT_CACHE_S old (the host may have started draining): ask again
            s._hosts_seen = None
            return spawn(code, *args, requires=requires, env=env, quota=quota, notify=notify,
                         checkpoint_every=checkpoint_every, restart=restart, replicas=replicas, mode=mode)
    raise NotDelivered("spawn: no host took it; " + "; ".join(not_taken))


def _spawn_on(s: Session, host_urn: str, body: dict[str, Any], *, connect_wait: float | None = None) -> Process:
    """Ask `host_urn`'s daemon to spawn; NotDelivered if it has none live, or none took the request."""
    entry = s.catalog.get(host_urn)
    address = entry.value("daemon", now_ms())
    if address is None or entry.value("alive", now_ms()) is not True:
        raise NotDelivered(f"{host_urn} has no live daemon in the catalog; the spawn was not sent")
    reply, _ = s.daemon(str(address)).call("spawn", body, timeout=SPAWN_TIMEOUT_S, connect_wait=connect_wait)
    return _placed(s, host_urn, str(address), reply)


def _placed(s: Session, host_urn: str, address: str, reply: dict[str, Any]) -> Process:
    recent = s.placed.setdefault(host_urn, [])
    recent.append(now_ms())
    del recent[:-256]
    return Process(reply["urn"], address, reply["host"])


def stop_embedded(home: str | Path | None = None) -> bool:
    """Stop the embedded cluster in `home` (default: this user's runtime folder). True if one ran.
    Only processes still verifiably the cluster's are signalled (see stop_embedded_report)."""
    return bool(stop_embedded_report(home)["stopped"])


def stop_embedded_report(home: str | Path | None = None) -> dict[str, Any]:
    """Stop the embedded cluster in `home`; say what was done: {"stopped": whether a cluster was
    described there, "signalled": [pid, ...], "skipped": [{"pid", "role", "id", "reason"}, ...],
    "tasks_killed": [pid, ...], "sockets_removed": [path, ...]}.
    Every listed process still running is stopped, also when others have ended (a cluster partly
    down). A PID from cluster.json that no longer names the process the cluster started is
    skipped (and logged unless it simply ended): after a reboot it may be anybody's. Then every
    task its daemons ran is killed, and the ipc socket files of the processes stopped here that
    are confirmed dead are removed (only those, and only while nobody listens on one)."""
    import signal as signals

    from snipe.localcluster import CLUSTER_FILE, DEAD_WAIT_S, LocalCluster, remove_sockets_of, wait_ended
    from snipe.transport import bound_ipc_sockets

    root = Path(home).expanduser() if home else runtime_home()
    desc_path = root / CLUSTER_FILE
    nothing: dict[str, Any] = {"stopped": False, "signalled": [], "skipped": [], "tasks_killed": [],
                               "sockets_removed": []}
    if not desc_path.exists():
        return nothing
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)        # not while start_embedded is still writing the file
        desc = _read_description(desc_path)
        if desc is None:
            return nothing
        procs: list[psutil.Process] = []
        sockets: dict[int, list[Path]] = {}
        skipped: list[dict[str, Any]] = []
        for m in _members(desc, root):
            if m.process is None:
                skipped.append({"pid": m.pid, "role": m.role, "id": m.id, "reason": m.reason})
                if m.reason != "no longer runs":
                    log.warning("not signalling pid %s listed in %s: it %s", m.pid, desc_path, m.reason)
                continue
            sockets[m.process.pid] = bound_ipc_sockets(m.process)     # a daemon's own, if it must be killed
            with contextlib.suppress(psutil.Error):
                m.process.send_signal(signals.SIGTERM)
                procs.append(m.process)
        _, alive = psutil.wait_procs(procs, timeout=10)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()        # psutil refuses if the PID has meanwhile gone to another process
        removed = remove_sockets_of(wait_ended(procs, DEAD_WAIT_S), sockets)
        tasks_killed: list[int] = []
        with contextlib.suppress(SnipeError, OSError):
            killed = LocalCluster(root, replicas=0, hosts=len(desc.get("daemons", {}))).kill_tasks()
            tasks_killed, removed = killed.pids, removed + killed.sockets_removed
        desc_path.unlink(missing_ok=True)
    return {"stopped": True, "signalled": [p.pid for p in procs], "skipped": skipped, "tasks_killed": tasks_killed,
            "sockets_removed": removed}
