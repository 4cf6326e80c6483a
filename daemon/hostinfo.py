"""Host metadata for the catalog (SNIPE section 4.2.1), and the choice of shared networks.

A host daemon publishes what a host is under `urn:snipe:host:<id>`: its CPUs, architecture,
memory, load, playground capabilities, and one entry per network address with the protocol
family, address, netmask (as prefix length and CIDR network), the configured private "net
name" if any, and per-message latency and bandwidth. This module gathers those facts
(`collect_host_info`, `collect_interfaces`), keeps the volatile ones fresh cheaply
(`LoadSampler`). The question message routing asks of two hosts' interface lists, which pairs
of interfaces sit on a common IP subnet or a common named private network, fastest first, is
answered by `shared_networks` in snipe.messaging.routes (pure, SNIPE section 4.3: the `snipe`
package never imports this one); it is re-exported here for compatibility.

Link speed comes from configuration, not from the kernel: psutil reports 10000 Mbit/s for every
veth, so `link_speeds` (bandwidth in Mbit/s, latency in microseconds) is what routing ranks by;
`speed_mbps` is the kernel's figure, kept only as the last tie-breaker.

Everything returned by `collect_host_info`, `Interface.to_value` and `LoadSampler.sample` is a
catalog-storable value (str, int, float, bool, lists and maps of those).
"""

from __future__ import annotations

import ipaddress
import math
import os
import platform
import re
import resource
import shutil
import socket
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import psutil

from snipe.assertion import canonical_value
from snipe.messaging.routes import parse_address, shared_networks

__all__ = [
    "Interface",
    "LinkSpeed",
    "LoadSampler",
    "build_interfaces",
    "collect_host_info",
    "collect_interfaces",
    "host_id_default",
    "playground_capabilities",
    "sanitize_host_id",
    "shared_networks",
]

Family = Literal["ipv4", "ipv6"]
LinkSpeed = tuple[float | None, float | None]
"""Configured (bandwidth in Mbit/s, per-message latency in microseconds); either may be None."""

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

CGROUP_V2_CONTROLLERS = Path("/sys/fs/cgroup/cgroup.controllers")
PROC_CGROUPS = Path("/proc/cgroups")
MACHINE_ID = Path("/etc/machine-id")
MAX_HOST_ID_LENGTH = 128


# --- interfaces -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Interface:
    """One IP address of one network interface, as published in a host's `interfaces` list."""

    name: str
    family: Family
    address: str
    netmask: str | None
    prefixlen: int | None
    network: str | None
    speed_mbps: int | None
    mtu: int | None
    up: bool
    net_name: str | None
    bandwidth_mbps: float | None
    latency_us: float | None

    def to_value(self) -> dict[str, Any]:
        """The catalog value: a map of the fields that are known (None fields are left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


class _AddressMatcher:
    """Look up a configuration map keyed by interface name or by CIDR network.

    An interface name matches first; otherwise the most specific network containing the
    address does. A key that parses as an IP network (`10.1.0.0/24`, or a bare address) is a
    network; any other key is an interface name.
    """

    def __init__(self, mapping: Mapping[str, Any]) -> None:
        self.by_name: dict[str, Any] = {}
        self.by_network: list[tuple[IpNetwork, Any]] = []
        for key, value in mapping.items():
            if not isinstance(key, str) or not key:
                raise ValueError(f"configuration keys are interface names or CIDR networks, not {key!r}")
            try:
                net = ipaddress.ip_network(key, strict=False)
            except ValueError:
                self.by_name[key] = value
            else:
                self.by_network.append((net, value))
        self.by_network.sort(key=lambda item: -item[0].prefixlen)  # most specific first

    def lookup(self, ifname: str, address: IpAddress) -> Any | None:
        if ifname in self.by_name:
            return self.by_name[ifname]
        for net, value in self.by_network:
            if net.version == address.version and address in net:
                return value
        return None


def _check_net_names(net_names: Mapping[str, str]) -> None:
    for key, value in net_names.items():
        if not isinstance(value, str) or not value:
            raise ValueError(f"net name for {key!r} must be a non-empty string, not {value!r}")


def _non_negative(value: object, what: str, key: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} for {key!r} must be a non-negative number or None, not {value!r}")
    return float(value)


def _check_link_speeds(link_speeds: Mapping[str, Sequence[float | None]]) -> dict[str, LinkSpeed]:
    checked: dict[str, LinkSpeed] = {}
    for key, pair in link_speeds.items():
        if isinstance(pair, str | bytes) or not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"link speed for {key!r} must be (bandwidth_mbps, latency_us), not {pair!r}")
        checked[key] = (_non_negative(pair[0], "bandwidth", key), _non_negative(pair[1], "latency", key))
    return checked


def _prefixlen(netmask: str | None, version: int) -> int | None:
    """The prefix length of a dotted or colon netmask, or None if absent or not contiguous."""
    if not netmask:
        return None
    try:
        mask = ipaddress.ip_address(netmask)
    except ValueError:
        return None
    if mask.version != version:
        return None
    bits = mask.max_prefixlen
    value = int(mask)
    ones = bin(value).count("1")
    if value != ((1 << ones) - 1) << (bits - ones):
        return None
    return ones


def build_interfaces(
    addrs: Mapping[str, Iterable[Any]],
    stats: Mapping[str, Any],
    net_names: Mapping[str, str] = {},
    link_speeds: Mapping[str, Sequence[float | None]] = {},
    include_loopback: bool = True,
    include_link_local: bool = False,
) -> list[Interface]:
    """Interfaces from data shaped like `psutil.net_if_addrs()` and `psutil.net_if_stats()`.

    `addrs` maps an interface name to records with `family`, `address` and `netmask`; `stats`
    maps it to a record with `isup`, `speed` (0 = unknown) and `mtu`. Non-IP records (AF_LINK)
    are skipped, as are IPv6 link-local addresses unless `include_link_local`, and loopback
    addresses unless `include_loopback`. Order follows `addrs`.
    """
    _check_net_names(net_names)
    names = _AddressMatcher(net_names)
    speeds = _AddressMatcher(_check_link_speeds(link_speeds))
    result: list[Interface] = []
    for ifname, records in addrs.items():
        stat = stats.get(ifname)
        up = bool(getattr(stat, "isup", False))
        speed = getattr(stat, "speed", 0) or None
        mtu = getattr(stat, "mtu", 0) or None
        for rec in records:
            if rec.family == socket.AF_INET:
                family: Family = "ipv4"
            elif rec.family == socket.AF_INET6:
                family = "ipv6"
            else:
                continue
            address = parse_address(rec.address)
            if address is None:
                continue
            if address.is_loopback and not include_loopback:
                continue
            if family == "ipv6" and address.is_link_local and not include_link_local:
                continue
            prefixlen = _prefixlen(rec.netmask, address.version)
            network = (
                str(ipaddress.ip_network(f"{address}/{prefixlen}", strict=False)) if prefixlen is not None else None
            )
            bandwidth, latency = speeds.lookup(ifname, address) or (None, None)
            result.append(Interface(
                name=ifname,
                family=family,
                address=str(address),
                netmask=rec.netmask or None,
                prefixlen=prefixlen,
                network=network,
                speed_mbps=int(speed) if speed else None,
                mtu=int(mtu) if mtu else None,
                up=up,
                net_name=names.lookup(ifname, address),
                bandwidth_mbps=bandwidth,
                latency_us=latency,
            ))
    return result


def collect_interfaces(
    net_names: Mapping[str, str] = {},
    link_speeds: Mapping[str, Sequence[float | None]] = {},
    include_loopback: bool = True,
    include_link_local: bool = False,
) -> list[Interface]:
    """This host's IP addresses, one `Interface` each, with configured net names and link speeds.

    `net_names` maps an interface name or a CIDR network to the name of a private network (SNIPE's
    "net name", shared by every host on that network); `link_speeds` maps an interface name or a
    CIDR network to the configured (bandwidth_mbps, latency_us). An interface name wins over a
    network; among networks the most specific containing the address wins. Raises ValueError on
    a malformed configuration.
    """
    return build_interfaces(
        psutil.net_if_addrs(), psutil.net_if_stats(), net_names, link_speeds, include_loopback, include_link_local,
    )


# --- host -------------------------------------------------------------------------------------

def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _cgroup_v1_controllers(text: str | None) -> list[str]:
    """Controllers mounted on a v1 hierarchy, from the text of /proc/cgroups."""
    found: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) >= 4 and parts[1] != "0" and parts[3] == "1":
            found.append(parts[0])
    return sorted(found)


def playground_capabilities() -> dict[str, Any]:
    """What process playgrounds can use here: rlimits, bubblewrap, cgroup controllers."""
    v2 = _read_text(CGROUP_V2_CONTROLLERS)
    return {
        "rlimits": hasattr(resource, "setrlimit"),
        "bubblewrap": shutil.which("bwrap") is not None,
        "cgroup_v2_controllers": sorted(v2.split()) if v2 else [],
        "cgroup_v1_controllers": _cgroup_v1_controllers(_read_text(PROC_CGROUPS)),
    }


def collect_host_info(
    *,
    net_names: Mapping[str, str] = {},
    link_speeds: Mapping[str, Sequence[float | None]] = {},
    playground: Mapping[str, object] | None = None,
    include_loopback: bool = False,
) -> dict[str, Any]:
    """The host's catalog metadata as one catalog-storable map.

    Keys: cpus, arch, os, kernel, python, memory, memory_available, load, load_per_cpu,
    boot_time, hostname, interfaces (a list of `Interface.to_value()`), playground (detected
    capabilities overridden by `playground`). Loopback addresses are left out by default: they
    mean nothing to another host. Raises ValueError on malformed configuration and
    snipe.errors.ValueTypeError if `playground` holds something the catalog cannot store.
    """
    cpus = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    memory = psutil.virtual_memory()
    load = os.getloadavg()[0]
    caps = playground_capabilities()
    caps.update(playground or {})
    info = {
        "cpus": int(cpus),
        "arch": platform.machine(),
        "os": platform.system().lower(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "memory": int(memory.total),
        "memory_available": int(memory.available),
        "load": float(load),
        "load_per_cpu": float(load) / cpus,
        "boot_time": float(psutil.boot_time()),
        "hostname": socket.gethostname(),
        "interfaces": [i.to_value() for i in collect_interfaces(net_names, link_speeds, include_loopback)],
        "playground": caps,
    }
    value = canonical_value(info)
    assert isinstance(value, dict)
    return value


def sanitize_host_id(name: str) -> str:
    """`name` as a host id: lower case, runs of characters other than letters, digits, `.`,
    `_` and `-` become one `-`, starting and ending with a letter or digit, at most
    MAX_HOST_ID_LENGTH characters; "" if nothing usable is left."""
    text = re.sub(r"[^a-z0-9._-]+", "-", name.strip().lower())
    text = text[:MAX_HOST_ID_LENGTH]
    return re.sub(r"^[^a-z0-9]+|[^a-z0-9]+$", "", text)


_UNHELPFUL_HOSTNAMES = {"", "localhost", "localhost.localdomain", "localhost6", "localhost6.localdomain6"}


def host_id_default() -> str:
    """A stable id for this host, for `urn:snipe:host:<id>`: the sanitized hostname, or, when
    that is empty or "localhost", `host-` and the start of /etc/machine-id (`host-unknown` if
    that is missing too). Uses only letters, digits, `.`, `_` and `-`."""
    ident = sanitize_host_id(socket.gethostname())
    if ident not in _UNHELPFUL_HOSTNAMES:
        return ident
    machine = sanitize_host_id(_read_text(MACHINE_ID) or "")
    return f"host-{machine[:16]}" if machine else "host-unknown"


class LoadSampler:
    """Cheap refresh of the volatile host fields (load, load_per_cpu, memory_available).

    Interfaces, CPUs and the rest change rarely and are collected once by `collect_host_info`;
    a daemon calls `sample()` on its timer and republishes the result. The sources are
    injectable so tests need no real machine state.
    """

    def __init__(
        self,
        cpus: int | None = None,
        *,
        loadavg: Callable[[], tuple[float, float, float]] = os.getloadavg,
        memory_available: Callable[[], int] | None = None,
    ) -> None:
        if cpus is None:
            cpus = psutil.cpu_count(logical=True) or os.cpu_count() or 1
        self.cpus = max(1, cpus)
        self._loadavg = loadavg
        self._memory_available = memory_available or (lambda: psutil.virtual_memory().available)

    def sample(self) -> dict[str, Any]:
        load = float(self._loadavg()[0])
        return {
            "load": load,
            "load_per_cpu": load / self.cpus,
            "memory_available": int(self._memory_available()),
        }
