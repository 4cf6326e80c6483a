"""What a lab is made of: networks (each one bridge) and hosts (each one namespace), pure data.

The default topology (`default_topology()`):

    public   10.201.1.0/24  every host but `far`                       1 Gbit/s, 200 us advertised
    fastnet  10.201.2.0/24  h1, h2 (SNIPE net name "fastnet")         10 Gbit/s,  20 us advertised
    back     10.201.3.0/24  gw, far (net name "back"; far only through gw) 1 Gbit/s, 200 us advertised

    h1   public+fastnet   rcds-server r1, snipe-daemon
    h2   public+fastnet   rcds-server r2, snipe-daemon
    h3   public           rcds-server r3, snipe-daemon
    gw   public+back      snipe-daemon relaying messages (the gateway host; IP forwarding off unless asked)
    far  back             nothing by default; with `far=True` a snipe-daemon, which reaches the
                          catalog through port forwards the harness runs on gw (its messages to
                          other hosts go through gw's relay)
    ctl  public           no service: where drivers and people's commands run

Host i (0-based, in list order) gets address .(10 + i) on each of its networks.
"""

from __future__ import annotations

import ipaddress
from dataclasses import asdict, dataclass, field
from typing import Any

BASE_PREFIX = "10.201.0.0/16"
REPLICA_PORT = 7301
DAEMON_PORT = 7400
RELAY_PORT = 7401                    # a relaying daemon's gateway relay
CATALOG_FORWARD_BASE = 7310          # on a gateway host: port 7310 + k forwards to replica k (k from 0)


@dataclass
class NetSpec:
    name: str                        # also the interface name inside each host (<= 15 characters)
    cidr: str
    net_name: str | None = None      # SNIPE's configured private network name, given to daemons
    bandwidth_mbps: float | None = None
    latency_us: float | None = None

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(self.cidr)


@dataclass
class HostSpec:
    name: str
    nets: list[str]
    replica: bool = False
    daemon: bool = False
    ip_forward: bool = False         # the gateway may forward at IP level; off unless asked
    relay: bool = False              # its daemon relays messages for hosts that share no network


@dataclass
class Topology:
    nets: list[NetSpec]
    hosts: list[HostSpec]
    base_prefix: str = BASE_PREFIX   # every net lies inside; the root namespace gets an unreachable route
    lease_s: float = 3.0             # daemons' host lease
    anti_entropy_s: float = 0.3
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        base = ipaddress.IPv4Network(self.base_prefix)
        if not base.is_private:
            raise ValueError(f"{base} is not a private range; the harness uses private test subnets only")
        names = [n.name for n in self.nets]
        if len(set(names)) != len(names):
            raise ValueError(f"network names repeat: {names}")
        for n in self.nets:
            if not 0 < len(n.name) <= 15 or not n.name.replace("-", "").isalnum():
                raise ValueError(f"network name {n.name!r} must be 1-15 letters, digits or '-'")
            if not n.network.subnet_of(base):
                raise ValueError(f"network {n.name} {n.cidr} is not inside {base}")
        hosts = [h.name for h in self.hosts]
        if len(set(hosts)) != len(hosts):
            raise ValueError(f"host names repeat: {hosts}")
        if len(self.hosts) > 200:
            raise ValueError("at most 200 hosts")
        for h in self.hosts:
            if not 0 < len(h.name) <= 8 or not h.name.replace("-", "").isalnum():
                raise ValueError(f"host name {h.name!r} must be 1-8 letters, digits or '-'")
            for n in h.nets:
                if n not in names:
                    raise ValueError(f"host {h.name} is on unknown network {n!r}")
            if not h.nets:
                raise ValueError(f"host {h.name} is on no network")
        if not any(h.replica for h in self.hosts) and any(h.daemon for h in self.hosts):
            raise ValueError("daemons need at least one replica")

    # --- derived facts ----------------------------------------------------------------------------
    def net(self, name: str) -> NetSpec:
        for n in self.nets:
            if n.name == name:
                return n
        raise KeyError(f"no network {name!r}; networks: {[n.name for n in self.nets]}")

    def host(self, name: str) -> HostSpec:
        for h in self.hosts:
            if h.name == name:
                return h
        raise KeyError(f"no host {name!r}; hosts: {[h.name for h in self.hosts]}")

    def address(self, host: str, net: str) -> str:
        i = [h.name for h in self.hosts].index(host)
        if net not in self.host(host).nets:
            raise KeyError(f"host {host} is not on network {net}")
        return str(self.net(net).network.network_address + 10 + i)

    def addresses(self, host: str) -> dict[str, str]:
        return {n: self.address(host, n) for n in self.host(host).nets}

    @property
    def catalog_net(self) -> str:
        """The network the replicas listen on: the first network of the first replica host."""
        return next(h for h in self.hosts if h.replica).nets[0]

    def to_value(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_value(cls, value: dict[str, Any]) -> Topology:
        return cls(nets=[NetSpec(**n) for n in value["nets"]], hosts=[HostSpec(**h) for h in value["hosts"]],
                   base_prefix=value.get("base_prefix", BASE_PREFIX), lease_s=value.get("lease_s", 3.0),
                   anti_entropy_s=value.get("anti_entropy_s", 0.3), extra=value.get("extra", {}))


def default_nets() -> list[NetSpec]:
    return [
        NetSpec("public", "10.201.1.0/24", None, 1000, 200),
        NetSpec("fastnet", "10.201.2.0/24", "fastnet", 10000, 20),
        NetSpec("back", "10.201.3.0/24", "back", 1000, 200),
    ]


def default_topology(*, daemons: bool = True, replicas: int = 3, lease_s: float = 3.0,
                     anti_entropy_s: float = 0.3, far: bool = False) -> Topology:
    """h1..h3 (replicas and daemons, h1 and h2 on fastnet), gw (relaying daemon, public+back),
    far (back only; a daemon too if `far`), ctl (client only). `replicas` < 3 leaves the later
    hosts without one."""
    hosts = [
        HostSpec("h1", ["public", "fastnet"], replica=replicas >= 1, daemon=daemons),
        HostSpec("h2", ["public", "fastnet"], replica=replicas >= 2, daemon=daemons),
        HostSpec("h3", ["public"], replica=replicas >= 3, daemon=daemons),
        HostSpec("gw", ["public", "back"], daemon=daemons, relay=daemons),
        HostSpec("far", ["back"], daemon=daemons and far),
        HostSpec("ctl", ["public"]),
    ]
    return Topology(default_nets(), hosts, lease_s=lease_s, anti_entropy_s=anti_entropy_s)


def simple_topology(n: int, *, replicas: int = 3, daemons: bool = True, lease_s: float = 3.0) -> Topology:
    """n hosts h1..hn on public (the first half also on fastnet), plus ctl."""
    if not 1 <= n <= 100:
        raise ValueError("1 to 100 hosts")
    hosts = [HostSpec(f"h{i + 1}", ["public", "fastnet"] if i < max(2, n // 2) else ["public"],
                      replica=i < replicas, daemon=daemons) for i in range(n)]
    hosts.append(HostSpec("ctl", ["public"]))
    return Topology(default_nets()[:2], hosts, lease_s=lease_s)
