"""Several SNIPE hosts on one machine: network namespaces, bridges, services and faults.

`Lab(topology).up()` builds, for a run id `rid` (6 hex digits, in every name it creates):

- a "switch" namespace `snl-<rid>-sw` holding one bridge per network (`br-<net>`);
- one namespace per host, `snl-<rid>-<host>`, with loopback up, IPv6 off, IP forwarding off
  (unless the host asks for it), and per network a veth whose host end is named after the
  network and whose other end (`<host>-n<i>`) is a port of that network's bridge;
- in the ROOT namespace only an `unreachable` route for the lab's base prefix (10.201.0.0/16 by
  default) with a metric of its own (7000-7999), so nothing meant for a test host can leave the
  machine; no interface, bridge or rule of the lab lives in the root namespace;
- rcds-server replicas and snipe-daemons inside their hosts (`ip netns exec`), with the argv
  conventions of snipe.localcluster, an admin key, replica keys and host keys; daemons get
  `--net-name CIDR=NAME` for named networks and the advertised link speeds in a config file.
  The admin admits the host keys and a user key from inside a namespace (snipe.netlab.agent).

Faults (`loss`, `delay`, `rate`, `cut`, `partition`) return a fault id that `heal(id)` undoes;
`kill` and `restart` act on a service at once and return what they did (a dict: the process and
when). nftables rules live in a table `snl_<rid>` in the hosts' namespaces. A fault that cannot
be applied as asked raises, undoing what part of it was made: `faults()` lists only faults in
force. Faults stack: a link has one queue, so of the queue faults on it (rates, and delays where
netem is used) the newest is in force and healing it puts back the one before; a link cut twice
comes up when both cuts are healed.
`down()` removes every process, namespace, rule and route the run made, identified by pid and
start time or by name; it is registered with atexit and SIGTERM/SIGHUP, and
`cleanup_stale()` removes what a killed run left behind (by the `snl-` prefix and the state
files in the runs folder).

Everything is recorded in `<runs>/<rid>/state.json` (runs folder: $SNIPE_NETLAB_DIR, default
/tmp/snipe-netlab), so another process (the `snipe-netlab` command) can attach to a run,
inject faults and take it down.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from snipe.netlab import procs as P
from snipe.netlab.sh import ToolError, ns_run, run, which
from snipe.netlab.topology import (
    CATALOG_FORWARD_BASE,
    DAEMON_PORT,
    RELAY_PORT,
    REPLICA_PORT,
    Topology,
    default_topology,
)

log = logging.getLogger("snipe.netlab")

PREFIX = "snl-"
METRIC_BASE, METRIC_SPAN = 7000, 1000
RELAY_MARK = 0x5A1
RELAY_PORT_BASE = 7900
PROBE_RID = "probe"          # netem_available()'s throwaway namespace: snl-probe<pid>
_SAFE_ENV_DROP = ("SNIPE_", "XDG_RUNTIME_DIR")


def runs_dir() -> Path:
    return Path(os.environ.get("SNIPE_NETLAB_DIR", "/tmp/snipe-netlab"))


def why_not() -> str | None:
    """Why the harness cannot run here (None if it can)."""
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "building network namespaces needs root (CI runs as root)"
    for tool, pkg in (("ip", "iproute2"), ("nft", "nftables"), ("tc", "iproute2")):
        if which(tool) is None:
            return f"the harness needs `{tool}` (Debian package {pkg})"
    return None


_netem: bool | None = None


def netem_available() -> bool:
    """Does this kernel have the netem qdisc? Tried once, in a throwaway namespace."""
    global _netem
    if _netem is None:
        ns = f"{PREFIX}{PROBE_RID}{os.getpid()}"       # cleanup_stale() spares it while we run
        try:
            run(["ip", "netns", "add", ns])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            r = ns_run(ns, ["tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"], check=False)
            _netem = r.returncode == 0
        except ToolError:
            _netem = False
        finally:
            run(["ip", "netns", "del", ns], check=False)
    return _netem


# --- the registry of live labs: torn down at exit and on SIGTERM/SIGHUP ------------------------------
_live: weakref.WeakSet[Lab] = weakref.WeakSet()
_handlers_installed = False
_registry_lock = threading.Lock()


def _teardown_all() -> None:
    for lab in list(_live):
        with contextlib.suppress(Exception):
            lab.down()


def _on_signal(signum: int, frame: Any) -> None:
    _teardown_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _register(lab: Lab) -> None:
    global _handlers_installed
    with _registry_lock:
        _live.add(lab)
        if _handlers_installed:
            return
        _handlers_installed = True
        atexit.register(_teardown_all)
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGHUP):
                if signal.getsignal(sig) in (signal.SIG_DFL, None):
                    signal.signal(sig, _on_signal)


class LabError(RuntimeError):
    pass


class Lab:
    """A set of namespace hosts running SNIPE, with faults. See the module docstring."""

    def __init__(self, topology: Topology | None = None, *, run_id: str | None = None, detached: bool = False,
                 log_level: str = "WARNING", _state: dict[str, Any] | None = None) -> None:
        self.topo = topology or default_topology()
        self.rid = run_id or secrets.token_hex(3)
        if not self.rid.isalnum() or len(self.rid) > 12:
            raise ValueError(f"run id {self.rid!r} must be up to 12 letters and digits")
        self.dir = runs_dir() / self.rid
        self.log_level = log_level
        self.procs: dict[str, P.Proc] = {}
        self.state: dict[str, Any] = _state or {
            "rid": self.rid, "status": "new", "detached": detached, "owner_pid": os.getpid(),
            "owner_ctime": P.create_time(os.getpid()), "created": time.time(),
            "topology": self.topo.to_value(), "namespaces": [], "route": None, "procs": {}, "faults": {},
            "next_fault": 1, "describe": {},
        }
        if _state is not None:
            self.procs = {k: P.Proc.from_value(v) for k, v in _state.get("procs", {}).items()}
        self._lock = threading.RLock()
        self._downed = False
        if not detached:          # a run made by `snipe-netlab up` outlives the command; `down` ends it
            _register(self)

    # --- names -----------------------------------------------------------------------------------
    @property
    def switch_ns(self) -> str:
        return f"{PREFIX}{self.rid}-sw"

    def ns(self, host: str) -> str:
        self.topo.host(host)
        return f"{PREFIX}{self.rid}-{host}"

    @property
    def table(self) -> str:
        return f"snl_{self.rid}"

    def _port_name(self, host: str, net: str) -> str:
        i = [n.name for n in self.topo.nets].index(net)
        return f"{host}-n{i}"

    def address(self, host: str, net: str | None = None) -> str:
        """`host`'s address on `net` (default: its first network)."""
        return self.topo.address(host, net or self.topo.host(host).nets[0])

    # --- state -------------------------------------------------------------------------------------
    def _save(self) -> None:
        with self._lock:
            self.state["procs"] = {k: v.to_value() for k, v in self.procs.items()}
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / "state.json.tmp"
            tmp.write_text(json.dumps(self.state, indent=1))
            tmp.replace(self.dir / "state.json")

    @classmethod
    def attach(cls, rid: str | None = None) -> Lab:
        """The run `rid` (default: the only run that is up) as recorded in its state file."""
        if rid is None:
            up = [s for s in list_runs() if s.get("status") == "up"]
            if len(up) != 1:
                raise LabError(f"{len(up)} runs are up ({', '.join(s['rid'] for s in up) or 'none'}); "
                               "name one with --run")
            rid = up[0]["rid"]
        path = runs_dir() / rid / "state.json"
        if not path.exists():
            raise LabError(f"no run {rid} in {runs_dir()}")
        state = json.loads(path.read_text())
        return cls(Topology.from_value(state["topology"]), run_id=rid, detached=True, _state=state)

    # --- building ----------------------------------------------------------------------------------
    def up(self, *, services: bool = True, timeout: float = 60.0) -> Lab:
        """Build the network and (with `services`) start replicas and daemons. On failure
        everything built so far is removed before the error is raised."""
        reason = why_not()
        if reason:
            raise LabError(reason)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state["status"] = "building"
        self._save()
        try:
            self._build_network()
            self.state["status"] = "up"
            self._save()
            if services:
                self.start_services(timeout=timeout)
        except BaseException:
            self.down(keep_logs=True)
            raise
        return self

    def _route_add(self) -> None:
        prefix = self.topo.base_prefix
        first = METRIC_BASE + int(secrets.token_hex(2), 16) % METRIC_SPAN
        for k in range(20):
            metric = METRIC_BASE + (first - METRIC_BASE + k) % METRIC_SPAN
            # Recorded before it is added, as the namespaces are: cleanup_stale() in another
            # process lists the routes before it reads the state files, so a route it sees is
            # one it also sees claimed.
            self.state["route"] = {"prefix": prefix, "metric": metric}
            self._save()
            r = run(["ip", "route", "add", "unreachable", prefix, "metric", str(metric)], check=False)
            if r.returncode == 0:
                return
            self.state["route"] = None     # not ours: down() must not delete another lab's route
            self._save()
            if "exists" not in (r.stderr or ""):
                raise ToolError(["ip", "route", "add", "unreachable", prefix], r.returncode, r.stderr)
        raise LabError(f"could not find a free metric for the unreachable route {prefix}")

    def _netns_add(self, ns: str) -> None:
        self.state["namespaces"].append(ns)   # recorded first: a half-made namespace is still removed
        self._save()
        run(["ip", "netns", "add", ns])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])

    def _build_network(self) -> None:
        self._route_add()
        sw = self.switch_ns
        self._netns_add(sw)
        for net in self.topo.nets:
            br = f"br-{net.name}"[:15]
            run(["ip", "-n", sw, "link", "add", br, "type", "bridge"])
            run(["ip", "-n", sw, "link", "set", br, "up"])
        for h in self.topo.hosts:
            ns = self.ns(h.name)
            self._netns_add(ns)
            ns_run(ns, ["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
                        "net.ipv6.conf.default.disable_ipv6=1",
                        f"net.ipv4.ip_forward={1 if h.ip_forward else 0}"])
            for net_name in h.nets:
                net = self.topo.net(net_name)
                port = self._port_name(h.name, net_name)
                run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", net_name, "netns", ns])
                run(["ip", "-n", sw, "link", "set", port, "master", f"br-{net_name}"[:15], "up"])
                run(["ip", "-n", ns, "addr", "add", f"{self.topo.address(h.name, net_name)}/{net.network.prefixlen}",
                     "dev", net_name])
                run(["ip", "-n", ns, "link", "set", net_name, "up"])
            ns_run(ns, ["nft", "add", "table", "inet", self.table])
        self.state["netem"] = netem_available()
        self._save()

    # --- services ----------------------------------------------------------------------------------
    def _env(self, host: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SAFE_ENV_DROP)}
        home = self.dir / "home" / host
        xdg = self.dir / "xdg" / host
        for d in (home, xdg):
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        env.update({"PYTHONUNBUFFERED": "1", "SNIPE_HOME": str(home), "XDG_RUNTIME_DIR": str(xdg),
                    "SNIPE_NETLAB_RUN": self.rid,
                    "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "/usr/bin:/bin")])})
        return env

    def client_env(self, host: str) -> dict[str, str]:
        """The environment for a client program on `host` (drivers, `snipe-netlab exec`):
        SNIPE_CATALOG, SNIPE_ADMIN_KEY, SNIPE_KEY_FILE (the lab's user), SNIPE_DAEMON."""
        d = self.describe()
        env = self._env(host)
        daemons = d.get("daemons", {})
        catalog = d.get("catalogs", {}).get(host) or d.get("catalog", [])
        env.update({"SNIPE_CATALOG": ",".join(catalog), "SNIPE_ADMIN_KEY": d.get("admin_key", ""),
                    "SNIPE_KEY_FILE": d.get("user_key_file", ""), "SNIPE_NETLAB_LAB": str(self.dir / "lab.json")})
        daemon = daemons.get(host) or next(iter(daemons.values()), None)
        if daemon:
            env["SNIPE_DAEMON"] = daemon
        return env

    def describe(self) -> dict[str, Any]:
        return dict(self.state.get("describe") or {})

    def _keys(self) -> dict[str, Any]:
        from snipe.identity import Identity

        keys = self.dir / "keys"
        admin = Identity.load_or_create(keys / "admin.key")
        user = Identity.load_or_create(keys / "user.key")
        replicas: dict[str, Identity] = {}
        hosts: dict[str, Identity] = {}
        for h in self.topo.hosts:
            if h.replica:
                replicas[h.name] = Identity.load_or_create(self.dir / "replicas" / h.name / "replica.key")
            if h.daemon:
                hosts[h.name] = Identity.load_or_create(self.dir / "daemons" / h.name / "host.key")
        return {"admin": admin, "user": user, "replicas": replicas, "hosts": hosts}

    def start_services(self, timeout: float = 60.0) -> None:
        keys = self._keys()
        cat_net = self.topo.catalog_net
        replica_hosts = [h for h in self.topo.hosts if h.replica]
        ids = {h.name: f"r{i + 1}" for i, h in enumerate(replica_hosts)}
        endpoints = {h.name: f"tcp://{self.topo.address(h.name, cat_net)}:{REPLICA_PORT}" for h in replica_hosts}
        catalog = [f"{endpoints[h]}#{keys['replicas'][h].key_id}" for h in endpoints]
        # A daemon host off the catalog's network reaches the replicas through port forwards on a
        # gateway host that is on both (see _catalog_forwards); its daemon listens on its own network.
        forwards = self._catalog_forwards(replica_hosts, endpoints)
        catalogs = {h.name: [f"{fwd}#{keys['replicas'][r].key_id}" for r, fwd in forwards[h.name]]
                    if h.name in forwards else catalog for h in self.topo.hosts}
        daemons = {h.name: f"tcp://{self.topo.address(h.name, cat_net if cat_net in h.nets else h.nets[0])}:"
                           f"{DAEMON_PORT}#{keys['hosts'][h.name].key_id}"
                   for h in self.topo.hosts if h.daemon}
        self.state["describe"] = {
            "run": self.rid, "dir": str(self.dir), "catalog": catalog, "replica_ids": ids,
            "admin_key": keys["admin"].key_id, "admin_key_file": str(self.dir / "keys" / "admin.key"),
            "user_key": keys["user"].key_id, "user_key_file": str(self.dir / "keys" / "user.key"),
            "user_urn": "urn:snipe:user:netlab",
            "catalogs": {h: c for h, c in catalogs.items() if h in forwards},   # hosts with their own list
            "daemons": daemons, "host_keys": {h: k.key_id for h, k in keys["hosts"].items()},
            "hosts": {h.name: {"ns": self.ns(h.name), "addresses": self.topo.addresses(h.name),
                               "replica": h.replica, "daemon": h.daemon} for h in self.topo.hosts},
            "nets": {n.name: {"cidr": n.cidr, "net_name": n.net_name} for n in self.topo.nets},
            "client_host": self.client_host,
        }
        (self.dir / "lab.json").write_text(json.dumps(self.state["describe"], indent=1))
        self._save()
        for h in replica_hosts:
            d = self.dir / "replicas" / h.name
            argv = [sys.executable, "-m", "rcds.server_main", "--id", ids[h.name], "--listen", endpoints[h.name],
                    "--data-dir", str(d), "--key-file", str(d / "replica.key"),
                    "--admin-key", keys["admin"].key_id, "--anti-entropy", str(self.topo.anti_entropy_s),
                    "--ready-file", str(d / "ready.json"), "--log-level", self.log_level]
            for o in replica_hosts:
                if o is not h:
                    argv += ["--peer", f"{ids[o.name]}={endpoints[o.name]}#{keys['replicas'][o.name].key_id}"]
            self._spawn(P.Proc(f"replica@{h.name}", "replica", h.name, argv, str(d / "server.log"),
                               str(d / "ready.json")))
        for h in replica_hosts:
            self._wait_ready(self.procs[f"replica@{h.name}"], timeout)
        self._start_forwards(timeout)
        if daemons:
            self.agent(["admit"], timeout=timeout)
        for h in self.topo.hosts:
            if not h.daemon:
                continue
            d = self.dir / "daemons" / h.name
            d.mkdir(parents=True, exist_ok=True)
            (d / "daemon.toml").write_text(self._daemon_toml(h.name))
            argv = [sys.executable, "-m", "snipe_daemon.main", "--config", str(d / "daemon.toml"),
                    "--host-id", h.name, "--listen", f"tcp://0.0.0.0:{DAEMON_PORT}",
                    "--advertise", daemons[h.name].split("#")[0], "--state-dir", str(d / "state"),
                    "--key-file", str(d / "host.key"), "--admin-key", keys["admin"].key_id,
                    "--lease", str(self.topo.lease_s), "--ready-file", str(d / "ready.json"),
                    "--log-level", self.log_level]
            if h.relay:
                argv += ["--relay", f"tcp://0.0.0.0:{RELAY_PORT}"]
            for c in catalogs[h.name]:
                argv += ["--catalog", c]
            for net_name in h.nets:
                net = self.topo.net(net_name)
                if net.net_name:
                    argv += ["--net-name", f"{net.cidr}={net.net_name}"]
            self._spawn(P.Proc(f"daemon@{h.name}", "daemon", h.name, argv, str(d / "daemon.log"),
                               str(d / "ready.json")))
        for _name, p in list(self.procs.items()):
            if p.kind == "daemon":
                try:
                    self._wait_ready(p, timeout)
                except LabError:
                    # A daemon checks its admission in the catalog as it starts and gives up after a
                    # few seconds; on a loaded machine the replicas may answer later. Once more:
                    if p.alive:
                        raise
                    self._spawn(p)
                    self._wait_ready(p, timeout)
        self._save()

    def _catalog_forwards(self, replica_hosts: list[Any], endpoints: dict[str, str]
                          ) -> dict[str, list[tuple[str, str]]]:
        """For each daemon host not on the catalog's network: [(replica host, forwarded endpoint)],
        the forwards running on a gateway host that shares a network with it and is on the
        catalog's network (port CATALOG_FORWARD_BASE + k for replica k)."""
        cat_net = self.topo.catalog_net
        out: dict[str, list[tuple[str, str]]] = {}
        forwards: set[tuple[str, str, str]] = set()
        for h in self.topo.hosts:
            if not h.daemon or cat_net in h.nets:
                continue
            gateway = next(((g, n) for g in self.topo.hosts if cat_net in g.nets
                            for n in h.nets if n in g.nets), None)
            if gateway is None:
                raise LabError(f"host {h.name} runs a daemon but is not on {cat_net}, where the catalog is, "
                               f"and no host on {cat_net} shares a network with it")
            g, net = gateway
            address = self.topo.address(g.name, net)
            out[h.name] = [(r.name, f"tcp://{address}:{CATALOG_FORWARD_BASE + k}")
                           for k, r in enumerate(replica_hosts)]
            for k, r in enumerate(replica_hosts):
                forwards.add((g.name, f"{address}:{CATALOG_FORWARD_BASE + k}", endpoints[r.name].split("://", 1)[1]))
        self.state["forwards"] = sorted(forwards)      # (gateway host, listen, replica's endpoint)
        return out

    def _start_forwards(self, timeout: float) -> None:
        """One forwarder process per gateway host, for every replica endpoint forwarded there."""
        by_gateway: dict[str, list[str]] = {}
        for gw, listen, target in self.state.get("forwards", []):
            by_gateway.setdefault(gw, []).append(f"{listen}={target}")
        d = self.dir / "forwards"
        for gw, pairs in sorted(by_gateway.items()):
            d.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "snipe.netlab.relay", "--delay-ms", "0", "--mark", hex(RELAY_MARK),
                    "--ready-file", str(d / f"{gw}.ready")]
            for pair in pairs:
                argv += ["--forward", pair]
            name = f"forward@{gw}"
            self._spawn(P.Proc(name, "forward", gw, argv, str(d / f"{gw}.log"), str(d / f"{gw}.ready")))
            self._wait_ready(self.procs[name], timeout)

    def _daemon_toml(self, host: str) -> str:
        lines = ["[daemon]", ""]
        for net_name in self.topo.host(host).nets:
            net = self.topo.net(net_name)
            if net.bandwidth_mbps is None and net.latency_us is None:
                continue
            lines.append(f'[daemon.links."{net.cidr}"]')
            if net.bandwidth_mbps is not None:
                lines.append(f"bandwidth_mbps = {float(net.bandwidth_mbps)}")
            if net.latency_us is not None:
                lines.append(f"latency_us = {float(net.latency_us)}")
            lines.append("")
        return "\n".join(lines)

    @property
    def client_host(self) -> str:
        """Where the harness's own catalog calls run: a service-less host on the catalog network
        (else a replica host)."""
        cat_net = self.topo.catalog_net
        for h in self.topo.hosts:
            if cat_net in h.nets and not h.replica and not h.daemon:
                return h.name
        return next(h.name for h in self.topo.hosts if h.replica)

    def _spawn(self, p: P.Proc) -> None:
        if p.ready_file:
            Path(p.ready_file).unlink(missing_ok=True)
        Path(p.log).parent.mkdir(parents=True, exist_ok=True)
        with open(p.log, "ab") as logf:
            p.popen = subprocess.Popen(["ip", "netns", "exec", self.ns(p.host), *p.argv], stdout=logf,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self._env(p.host),
                                       start_new_session=True, executable=which("ip"))
        p.pid = p.popen.pid
        p.ctime = P.create_time(p.pid)
        with self._lock:
            self.procs[p.name] = p
        self._save()

    def _wait_ready(self, p: P.Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert p.ready_file is not None
        while not Path(p.ready_file).exists():
            if not p.alive:
                tail = Path(p.log).read_text(errors="replace")[-3000:] if Path(p.log).exists() else ""
                raise LabError(f"{p.name} exited before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                raise LabError(f"{p.name} was not ready within {timeout} s (log: {p.log})")
            time.sleep(0.02)

    # --- running things inside hosts ---------------------------------------------------------------
    def exec(self, host: str, argv: list[str], *, timeout: float = 60.0, env: dict[str, str] | None = None,
             check: bool = False, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run `argv` inside `host` with the client environment; bounded by `timeout`."""
        full_env = self.client_env(host) if self.describe() else self._env(host)
        full_env.update(env or {})
        r = subprocess.run(["ip", "netns", "exec", self.ns(host), *argv], env=full_env, capture_output=True,
                           text=True, timeout=timeout, input=input, executable=which("ip"))
        if check and r.returncode != 0:
            raise LabError(f"{' '.join(argv)} on {host} failed ({r.returncode}):\n{r.stdout[-2000:]}\n"
                           f"{r.stderr[-4000:]}")
        return r

    def popen(self, host: str, argv: list[str], *, env: dict[str, str] | None = None, **kw: Any
              ) -> subprocess.Popen[str]:
        """Start `argv` inside `host` (the caller bounds it; down() kills whatever is left)."""
        full_env = self.client_env(host) if self.describe() else self._env(host)
        full_env.update(env or {})
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        return subprocess.Popen(["ip", "netns", "exec", self.ns(host), *argv], env=full_env, text=True,
                                start_new_session=True, executable=which("ip"), **kw)

    def agent(self, args: list[str], *, host: str | None = None, timeout: float = 60.0) -> Any:
        """Run a snipe.netlab.agent command inside a host (default: the client host); its JSON."""
        r = self.exec(host or self.client_host,
                      [sys.executable, "-m", "snipe.netlab.agent", "--lab", str(self.dir / "lab.json"), *args],
                      timeout=timeout, check=True)
        lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None

    # --- processes: kill -9, stop, start, restart ---------------------------------------------------
    def proc(self, name: str) -> P.Proc:
        """A service by name: `replica@h1`, `daemon@h2`, or `KIND HOST` forms via kill()/restart()."""
        if name not in self.procs:
            raise LabError(f"no process {name!r}; processes: {sorted(self.procs)}")
        return self.procs[name]

    def kill(self, name: str) -> dict[str, Any]:
        """kill -9, as a crash would."""
        p = self.proc(name)
        t = time.time()
        if p.pid is not None:
            P.signal_pid(p.pid, p.ctime, signal.SIGKILL)
            P.wait_gone([(p.pid, p.ctime)], 10)
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)
        return {"fault": "kill", "process": name, "at": t}

    def stop(self, name: str) -> None:
        p = self.proc(name)
        if p.pid is not None:
            P.terminate([(p.pid, p.ctime)], 10)
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.popen.wait(5)

    def start(self, name: str, timeout: float = 60.0) -> None:
        p = self.proc(name)
        if p.alive:
            return
        self._spawn(P.Proc(p.name, p.kind, p.host, p.argv, p.log, p.ready_file, info=p.info))
        if p.ready_file:
            self._wait_ready(self.procs[name], timeout)

    def restart(self, name: str, timeout: float = 60.0) -> dict[str, Any]:
        t = time.time()
        self.stop(name)
        self.start(name, timeout)
        return {"fault": "restart", "process": name, "at": t, "ready_after_s": round(time.time() - t, 3)}

    # --- network faults ----------------------------------------------------------------------------
    def _nft(self, host: str, script: str) -> None:
        ns_run(self.ns(host), ["nft", "-f", "-"], input=script)

    def _new_fault(self, record: dict[str, Any]) -> str:
        with self._lock:
            fid = f"f{self.state['next_fault']}"
            self.state["next_fault"] += 1
            record["at"] = time.time()
            self.state["faults"][fid] = record
            self._save()
            return fid

    @contextlib.contextmanager
    def _applying(self, record: dict[str, Any]) -> Iterator[str]:
        """Record a fault, then apply it in the `with` body. If applying fails, whatever part of
        it was made is undone and the record dropped before the error goes on: `faults()` lists
        only faults in force."""
        fid = self._new_fault(record)
        try:
            yield fid
        except BaseException:
            with contextlib.suppress(Exception):
                self.heal(fid)
            with self._lock:
                if self.state["faults"].pop(fid, None) is not None:
                    self._save()
            raise

    def faults(self) -> dict[str, dict[str, Any]]:
        return dict(self.state["faults"])

    def _check_link(self, host: str, net: str) -> None:
        if net not in self.topo.host(host).nets:
            raise LabError(f"host {host} is not on {net}; its networks: {self.topo.host(host).nets}")

    def loss(self, host: str, net: str, percent: float, direction: str = "both") -> str:
        """Drop `percent`% of the packets on `host`'s link to `net` (nftables numgen), out, in or both."""
        self._check_link(host, net)
        pct = round(percent)
        if not 0 <= pct <= 100:
            raise ValueError("percent must be 0-100")
        if direction not in ("both", "in", "out"):
            raise ValueError("direction is both, in or out")
        # numgen draws 0-99, and nftables refuses `< 100`: 100% is a plain drop
        share = "" if pct == 100 else f"numgen random mod 100 < {pct} "
        with self._applying({"kind": "loss", "host": host, "net": net, "percent": pct, "direction": direction}) as fid:
            t = self.table
            script = [f"add table inet {t}"]
            if direction in ("both", "out"):
                script += [f"add chain inet {t} {fid}_out {{ type filter hook output priority 0; policy accept; }}",
                           f'add rule inet {t} {fid}_out oifname "{net}" {share}drop']
            if direction in ("both", "in"):
                script += [f"add chain inet {t} {fid}_in {{ type filter hook input priority 0; policy accept; }}",
                           f'add rule inet {t} {fid}_in iifname "{net}" {share}drop']
            self._nft(host, "\n".join(script) + "\n")
        return fid

    def partition(self, hosts: list[str]) -> str:
        """Cut `hosts` off from every other host (nftables drops in the hosts' namespaces, both
        directions); the hosts in the set still reach each other."""
        inside = set(hosts)
        for h in inside:
            self.topo.host(h)
        outside = [a for h in self.topo.hosts if h.name not in inside for a in self.topo.addresses(h.name).values()]
        if not inside:
            raise ValueError("partition needs at least one host")
        if not outside:
            raise LabError(f"partition {' '.join(sorted(inside))} names every host of the lab, so nothing is left "
                           "to cut them off from; name the hosts of one side only")
        with self._applying({"kind": "partition", "hosts": sorted(inside)}) as fid:
            t, addrs = self.table, ", ".join(outside)
            for h in sorted(inside):
                self._nft(h, "\n".join([
                    f"add table inet {t}",
                    f"add chain inet {t} {fid}_out {{ type filter hook output priority 0; policy accept; }}",
                    f"add rule inet {t} {fid}_out ip daddr {{ {addrs} }} drop",
                    f"add chain inet {t} {fid}_in {{ type filter hook input priority 0; policy accept; }}",
                    f"add rule inet {t} {fid}_in ip saddr {{ {addrs} }} drop"]) + "\n")
        return fid

    def cut(self, host: str, net: str, side: str = "host") -> str:
        """Take `host`'s link to `net` down: side "host" sets the host's interface down (the
        host sees it and its address route goes); side "switch" sets the bridge port down (a
        cable pulled at the far end: the host's interface stays up, packets vanish)."""
        self._check_link(host, net)
        if side not in ("host", "switch"):
            raise ValueError("side is host or switch")
        with self._applying({"kind": "cut", "host": host, "net": net, "side": side}) as fid:
            if side == "host":
                run(["ip", "-n", self.ns(host), "link", "set", net, "down"])
            else:
                run(["ip", "-n", self.switch_ns, "link", "set", self._port_name(host, net), "down"])
        return fid

    def rate(self, host: str, net: str, mbit: float) -> str:
        """Cap `host`'s link to `net` at `mbit` Mbit/s each way (tc tbf on both veth ends)."""
        self._check_link(host, net)
        if not mbit > 0:
            raise ValueError(f"rate must be more than 0 Mbit/s, not {mbit}; to stop all traffic use "
                             "`cut` or `loss ... 100`")
        with self._applying({"kind": "rate", "host": host, "net": net, "mbit": mbit}) as fid:
            self._set_qdisc(self.state["faults"][fid])
        return fid

    def _set_qdisc(self, f: dict[str, Any]) -> None:
        """Put fault `f`'s queue (a rate's token bucket, a netem delay) on both ends of its link,
        in place of whatever queue is there."""
        if f["kind"] == "rate":
            mbit = f["mbit"]
            burst = max(32, int(mbit * 1000 / 8 / 100))       # kbit: about 10 ms of traffic, at least 32
            qdisc = ["tbf", "rate", f"{mbit}mbit", "burst", f"{burst}kbit", "latency", "200ms"]
        else:
            qdisc = ["netem", "delay", f"{f['ms']}ms", *([f"{f['jitter_ms']}ms"] if f["jitter_ms"] else [])]
        for ns, dev in ((self.ns(f["host"]), f["net"]), (self.switch_ns, self._port_name(f["host"], f["net"]))):
            run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", *qdisc])

    @staticmethod
    def _queues(f: dict[str, Any]) -> bool:
        return f["kind"] == "rate" or (f["kind"] == "delay" and f.get("mechanism") == "netem")

    def _others_on_link(self, fid: str, f: dict[str, Any], same: Any) -> list[dict[str, Any]]:
        """The faults other than `fid` on `f`'s link for which `same(other)` holds, oldest first."""
        return [g for gid, g in sorted(self.state["faults"].items(), key=lambda kv: int(kv[0][1:]))
                if gid != fid and g.get("host") == f.get("host") and g.get("net") == f.get("net") and same(g)]

    def delay(self, host: str, net: str, ms: float, jitter_ms: float = 0.0, *, force_relay: bool = False,
              exclude_ports: tuple[int, ...] = (REPLICA_PORT, DAEMON_PORT)) -> str:
        """Delay traffic on `host`'s link to `net` by `ms` each way (jitter: up to `jitter_ms` more).

        With netem (kernels that have it): `tc netem delay` on both veth ends. Without it: a
        userspace relay (snipe.netlab.relay) in the host's namespace takes over new TCP
        connections leaving through that link (nftables redirect), except to `exclude_ports`
        (the catalog's and daemons' by default); connections open before the fault are not
        affected. Jitter there is drawn per connection (see the relay's docstring)."""
        self._check_link(host, net)
        if not ms >= 0 or not jitter_ms >= 0:
            raise ValueError(f"delay and jitter are milliseconds, 0 or more (not {ms} and {jitter_ms})")
        use_netem = bool(self.state.get("netem")) and not force_relay
        with self._applying({"kind": "delay", "host": host, "net": net, "ms": ms, "jitter_ms": jitter_ms,
                             "mechanism": "netem" if use_netem else "relay"}) as fid:
            if use_netem:
                self._set_qdisc(self.state["faults"][fid])
                return fid
            port = RELAY_PORT_BASE + int(fid[1:])
            d = self.dir / "relays"
            d.mkdir(parents=True, exist_ok=True)
            argv = [sys.executable, "-m", "snipe.netlab.relay", "--port", str(port), "--delay-ms", str(ms),
                    "--jitter-ms", str(jitter_ms), "--mark", hex(RELAY_MARK), "--ready-file",
                    str(d / f"{fid}.ready"), "--stats-file", str(d / f"{fid}.stats")]
            name = f"relay@{host}/{fid}"
            self._spawn(P.Proc(name, "relay", host, argv, str(d / f"{fid}.log"), str(d / f"{fid}.ready")))
            self.state["faults"][fid]["relay"] = name      # recorded at once: heal() stops it, whatever fails next
            self._save()
            self._wait_ready(self.procs[name], 20)
            t = self.table
            excl = f" tcp dport != {{ {', '.join(str(p) for p in exclude_ports)} }}" if exclude_ports else ""
            self._nft(host, "\n".join([
                f"add table inet {t}",
                f"add chain inet {t} {fid}_nat {{ type nat hook output priority -100; policy accept; }}",
                f'add rule inet {t} {fid}_nat oifname "{net}" meta l4proto tcp meta mark != {hex(RELAY_MARK)}{excl} '
                f"redirect to :{port}"]) + "\n")
        return fid

    def relay_stats(self, fid: str) -> dict[str, Any]:
        path = self.dir / "relays" / f"{fid}.stats"
        return json.loads(path.read_text()) if path.exists() else {}

    def heal(self, fid: str) -> None:
        """Undo one fault."""
        with self._lock:
            f = self.state["faults"].get(fid)
            if f is None:
                raise LabError(f"no fault {fid}; faults: {sorted(self.state['faults'])}")
            kind = f["kind"]
            if kind in ("loss", "partition", "delay"):
                hosts = f["hosts"] if kind == "partition" else [f["host"]]
                for h in hosts:
                    for suffix in ("out", "in", "nat"):
                        chain = f"{fid}_{suffix}"
                        ns_run(self.ns(h), ["nft", "-f", "-"], check=False,
                               input=f"flush chain inet {self.table} {chain}\n"
                                     f"delete chain inet {self.table} {chain}\n")
            if self._queues(f):
                # One queue per link: the newest other queue fault on it takes the link again.
                under = self._others_on_link(fid, f, self._queues)
                try:
                    if under:
                        self._set_qdisc(under[-1])
                except ToolError as exc:      # the fault is healed all the same; the one under it is not back
                    log.warning("healing %s: could not put back the %s under it: %s", fid, under[-1]["kind"], exc)
                if not under:
                    for ns, dev in ((self.ns(f["host"]), f["net"]),
                                    (self.switch_ns, self._port_name(f["host"], f["net"]))):
                        run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"], check=False)
            if kind == "delay" and f.get("relay") and f["relay"] in self.procs:
                self.stop(f["relay"])
                del self.procs[f["relay"]]
            if kind == "cut" and not self._others_on_link(fid, f, lambda g: g["kind"] == "cut"
                                                          and g["side"] == f["side"]):
                if f["side"] == "host":           # (a link cut twice comes up with its last heal)
                    run(["ip", "-n", self.ns(f["host"]), "link", "set", f["net"], "up"])
                else:
                    run(["ip", "-n", self.switch_ns, "link", "set", self._port_name(f["host"], f["net"]), "up"])
            del self.state["faults"][fid]
            self._save()

    def heal_all(self) -> None:
        for fid in list(self.state["faults"]):
            self.heal(fid)

    # --- status and teardown -------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {"run": self.rid, "dir": str(self.dir), "status": self.state.get("status"),
                "netem": self.state.get("netem"), "route": self.state.get("route"),
                "namespaces": list(self.state.get("namespaces", [])),
                "hosts": {h.name: self.topo.addresses(h.name) for h in self.topo.hosts},
                "processes": {n: {"pid": p.pid, "alive": p.alive, "log": p.log} for n, p in self.procs.items()},
                "faults": self.faults()}

    def down(self, *, keep_logs: bool = False) -> dict[str, Any]:
        """Remove everything this run made. Idempotent; bounded in time."""
        with self._lock:
            if self._downed:
                return {"run": self.rid, "already": True}
            self._downed = True
            _live.discard(self)
            report = _remove_run(self.rid, self.state, self.procs)
            if keep_logs and self.dir.exists():
                report["logs"] = _keep_logs(self.dir, self.rid)
            if self.dir.exists():
                shutil.rmtree(self.dir, ignore_errors=True)
            return report

    def __enter__(self) -> Lab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down(keep_logs=exc[0] is not None)


def _keep_logs(d: Path, rid: str) -> str:
    dest = runs_dir() / "logs" / rid
    dest.mkdir(parents=True, exist_ok=True)
    for f in d.rglob("*.log"):
        rel = f.relative_to(d)
        target = dest / str(rel).replace("/", "_")
        with contextlib.suppress(OSError):
            shutil.copyfile(f, target)
    return str(dest)


def _ns_pids(ns: str) -> list[int]:
    r = run(["ip", "netns", "pids", ns], check=False)
    return [int(x) for x in r.stdout.split() if x.isdigit()] if r.returncode == 0 else []


def _remove_run(rid: str, state: dict[str, Any], procs: dict[str, P.Proc] | None = None) -> dict[str, Any]:
    """Stop the run's processes, delete its namespaces (with their veths, bridges and rules) and
    its root route. Only things named by `rid` or recorded in its state are touched."""
    report: dict[str, Any] = {"run": rid, "processes": 0, "namespaces": [], "route": None}
    recorded = [P.Proc.from_value(v) for v in state.get("procs", {}).values()]
    if procs:
        recorded += list(procs.values())
    pids = {(p.pid, p.ctime) for p in recorded if p.pid is not None}
    alive = [x for x in pids if P.same_process(*x)]
    P.terminate(alive, 3.0)
    for p in procs.values() if procs else ():
        if p.popen is not None:
            with contextlib.suppress(subprocess.TimeoutExpired, OSError):
                p.popen.wait(1)
    report["processes"] = len(alive)
    listed = set(_list_netns())
    names = [n for n in dict.fromkeys([*state.get("namespaces", []), *sorted(listed)])
             if n.startswith(f"{PREFIX}{rid}-")]
    for ns in names:                       # whatever else runs there: tasks, pools, drivers
        if ns not in listed:
            continue
        left = [(pid, P.create_time(pid)) for pid in _ns_pids(ns)]
        for pid, ctime in left:
            P.signal_pid(pid, ctime, signal.SIGKILL)
        P.wait_gone(left, 5.0)
        report["processes"] += len(left)
    for ns in names:
        if ns in listed:
            run(["ip", "netns", "del", ns], check=False)
            report["namespaces"].append(ns)
    route = state.get("route")
    if route:
        r = run(["ip", "route", "del", "unreachable", route["prefix"], "metric", str(route["metric"])], check=False)
        report["route"] = f"unreachable {route['prefix']} metric {route['metric']}" if r.returncode == 0 else None
    return report


def _list_netns() -> list[str]:
    r = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def list_runs() -> list[dict[str, Any]]:
    out = []
    base = runs_dir()
    if not base.exists():
        return out
    for d in sorted(base.iterdir()):
        f = d / "state.json"
        if f.exists():
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(f.read_text()))
    return out


def _run_is_live(state: dict[str, Any]) -> bool:
    if state.get("status") not in ("up", "building"):
        return False
    if state.get("detached"):
        return True
    return P.same_process(int(state.get("owner_pid", 0) or 0), state.get("owner_ctime"))


def _probe_is_live(rid: str) -> bool:
    """Is `rid` the name of a netem probe (snl-probe<pid>) whose process still runs?"""
    pid = rid.removeprefix(PROBE_RID)
    return rid.startswith(PROBE_RID) and pid.isdigit() and P.create_time(int(pid)) is not None


def _claimed_routes(states: dict[str, dict[str, Any]], live: set[str]) -> set[tuple[str, int]]:
    """(prefix, metric) of the routes the `live` runs recorded."""
    return {(s["route"]["prefix"], s["route"]["metric"]) for rid, s in states.items()
            if rid in live and s.get("route")}


def _unreachable_routes() -> list[tuple[str, int]]:
    """(prefix, metric) of the root namespace's unreachable routes with the harness's metrics."""
    r = run(["ip", "-j", "route", "show", "type", "unreachable"], check=False)
    found = []
    with contextlib.suppress(ValueError):
        for route in json.loads(r.stdout or "[]"):
            dst, metric = route.get("dst"), route.get("metric")
            if not isinstance(metric, int) or not METRIC_BASE <= metric < METRIC_BASE + METRIC_SPAN:
                continue
            try:
                if not ipaddress.ip_network(dst).is_private:
                    continue
            except ValueError:
                continue
            found.append((dst, metric))
    return found


def cleanup_stale(*, everything: bool = False) -> dict[str, Any]:
    """Remove what runs that are no longer alive left behind: namespaces named `snl-<rid>-*`,
    unreachable routes with the harness's metrics (7000-7999), processes recorded in their
    state files, and their run folders. With `everything`, live runs too.

    Safe while other processes build labs: a lab writes its state file (status "building", its
    owner's pid) and records each namespace and its route there before it makes them, and this
    lists the namespaces and routes first and reads the state files after, so whatever it finds
    belongs to a run whose state it reads (or to one that has just gone)."""
    report: dict[str, Any] = {"runs": [], "namespaces": [], "routes": []}
    namespaces = _list_netns()
    routes = _unreachable_routes()
    states = {s["rid"]: s for s in list_runs() if "rid" in s}
    live = {rid for rid, s in states.items() if _run_is_live(s) and not everything}
    claimed = _claimed_routes(states, live)
    by_run: dict[str, list[str]] = {}
    for ns in namespaces:
        if ns.startswith(PREFIX):
            rid = ns[len(PREFIX):].split("-", 1)[0]
            if not everything and _probe_is_live(rid):
                continue
            by_run.setdefault(rid, []).append(ns)
    for rid in sorted(set(by_run) | set(states)):
        if rid in live:
            continue
        st = states.get(rid) or {"namespaces": by_run.get(rid, []), "procs": {}}
        route = st.get("route")
        if route and (route["prefix"], route["metric"]) in claimed:
            # recorded by a run killed before it added it, and since taken by a live run
            st = {**st, "route": None}
        r = _remove_run(rid, st)
        if rid not in states and not r["namespaces"] and not r["processes"]:
            continue                  # a run that went down between the listing and now
        report["runs"].append(rid)
        report["namespaces"] += r["namespaces"]
        if r["route"]:
            report["routes"].append(r["route"])
        d = runs_dir() / rid
        if d.exists():
            shutil.rmtree(d, ignore_errors=True)
    removed = set(report["routes"])
    if not everything:      # again, after the slow part: a lab may have taken a freed metric since
        states = {s["rid"]: s for s in list_runs() if "rid" in s}
        claimed |= _claimed_routes(states, {rid for rid, s in states.items() if _run_is_live(s)})
    for dst, metric in routes:
        name = f"unreachable {dst} metric {metric}"
        if (dst, metric) in claimed or name in removed:
            continue
        r = run(["ip", "route", "del", "unreachable", dst, "metric", str(metric)], check=False)
        if r.returncode == 0:
            report["routes"].append(name)
    return report
