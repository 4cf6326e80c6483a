"""Unicast route selection (SNIPE section 4.3), pure: no I/O, no sockets, inputs never modified.

SNIPE routes a message using the catalog entries of the destination process and of the host it
runs on: on a common private network or IP subnet the fastest of those is used, otherwise the
host's normal IP routing. Here that becomes an ordered list of `Route`s, best first, every later
route a fallback the messaging shell tries when an earlier one fails:

1. same process (same proc URN and same `instance`): `inproc`;
2. same host (same host URN): the peer's `ipc` endpoints, then its loopback `tcp` endpoints;
3. each network the two hosts share, by configured net name or by IP subnet
   (`shared_networks` on the hosts' `interfaces` lists), fastest first: the peer's `tcp`
   endpoint on its address on that network;
4. when the hosts share no network and a host that shares one with each runs a relaying daemon
   (a gateway, after OCEAN's path names): a `relay` route through each such gateway, best first
   (`gateway_routes`), `net` "via <gateway id>/<network it shares with the peer>";
5. last, the peer's default `tcp` endpoint (normal IP routing), `net` None.

What a process publishes as `comm` is built by `advertised_comm`; what a process's catalog entry
says is read by `ProcView.from_values`. Interface entries are the maps a host daemon publishes
(snipe_daemon.hostinfo `Interface.to_value()`): name, family, address, network, prefixlen,
net_name, bandwidth_mbps, latency_us, speed_mbps, up. This module must not import snipe_daemon:
the daemon imports `shared_networks` from here.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from snipe.errors import UrnError
from snipe.urn import Urn, validate_urn

__all__ = [
    "TRANSPORTS",
    "ProcView",
    "Route",
    "RouteKind",
    "advertised_comm",
    "choose_routes",
    "gateway_routes",
    "parse_address",
    "shared_networks",
]

RouteKind = Literal["inproc", "ipc", "tcp", "relay"]
TRANSPORTS: tuple[str, ...] = ("inproc", "ipc", "tcp")

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOPBACK_V4 = ipaddress.IPv4Address("127.0.0.1")
_HOSTNAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?$")


def parse_address(text: str) -> IpAddress | None:
    """`text` as an IP address (an IPv6 `%scope` suffix dropped), or None if it is not one."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


# --- shared networks --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Endpoint:
    value: dict[str, Any]
    address: IpAddress
    network: IpNetwork | None
    net_name: str | None
    bandwidth: float | None
    latency: float | None
    speed: float | None


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) and value >= 0 else None


def _endpoint(value: object) -> _Endpoint | None:
    """A usable interface entry from the catalog, or None (down, loopback or malformed)."""
    if not isinstance(value, dict) or value.get("up", True) is False:
        return None
    text = value.get("address")
    address = parse_address(text) if isinstance(text, str) else None
    if address is None or address.is_loopback or address.is_unspecified:
        return None
    network: IpNetwork | None = None
    try:
        if isinstance(value.get("network"), str):
            network = ipaddress.ip_network(value["network"], strict=False)
        elif isinstance(value.get("prefixlen"), int) and not isinstance(value.get("prefixlen"), bool):
            network = ipaddress.ip_network(f"{address}/{value['prefixlen']}", strict=False)
    except ValueError:
        network = None
    if network is not None and (network.version != address.version or address not in network):
        network = None
    if network is not None and address.is_link_local:
        network = None  # every link has fe80::/64 (and 169.254/16): a match says nothing
    net_name = value.get("net_name")
    return _Endpoint(
        value=value,
        address=address,
        network=network,
        net_name=net_name if isinstance(net_name, str) and net_name else None,
        bandwidth=_number(value.get("bandwidth_mbps")),
        latency=_number(value.get("latency_us")),
        speed=_number(value.get("speed_mbps")),
    )


def _by_name(x: _Endpoint, y: _Endpoint) -> bool:
    return x.net_name is not None and y.net_name is not None


def _shared(x: _Endpoint, y: _Endpoint) -> bool:
    if x.address.version != y.address.version or x.address == y.address:
        return False
    if _by_name(x, y):
        return x.net_name == y.net_name  # explicit names decide, even over equal subnets
    return (
        x.network is not None and y.network is not None
        and y.address in x.network and x.address in y.network
    )


def _combine(a: float | None, b: float | None, pick: Callable[[float, float], float]) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return pick(a, b)


def _pair_speed(x: _Endpoint, y: _Endpoint) -> tuple[float | None, float | None, float | None]:
    """(bandwidth, latency, kernel speed) of a link: the slower end bounds it."""
    return (
        _combine(x.bandwidth, y.bandwidth, min),
        _combine(x.latency, y.latency, max),
        _combine(x.speed, y.speed, min),
    )


def _rank(pair: tuple[_Endpoint, _Endpoint]) -> tuple[bool, float, bool, float, bool, float]:
    bandwidth, latency, speed = _pair_speed(*pair)
    return (
        bandwidth is None, -(bandwidth or 0.0),
        latency is None, latency or 0.0,
        speed is None, -(speed or 0.0),
    )


def _shared_pairs(a: Sequence[object], b: Sequence[object]) -> list[tuple[_Endpoint, _Endpoint]]:
    ends_a = [e for e in map(_endpoint, a) if e is not None]
    ends_b = [e for e in map(_endpoint, b) if e is not None]
    pairs = [(x, y) for x in ends_a for y in ends_b if _shared(x, y)]
    pairs.sort(key=_rank)  # stable: ties keep the order of a, then of b
    return pairs


def shared_networks(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pairs (interface of host a, interface of host b) on a common network, best first.

    `a` and `b` are two hosts' `interfaces` values as stored in the catalog. Two entries share a
    network when they are of the same IP family and either both carry the same `net_name`, or
    they do not carry different net names and each address lies in the other's subnet. Entries
    that are down, loopback, unspecified or malformed are ignored, as are subnet matches on
    link-local addresses; identical addresses never pair.

    Order: highest configured bandwidth (the lower of the two ends), then lowest latency (the
    higher of the two), then kernel speed (the lower); unknown values rank after known ones;
    ties keep the order of `a`, then of `b`. Pure: no I/O, inputs are not modified.
    """
    return [(x.value, y.value) for x, y in _shared_pairs(a, b)]


# --- what a process advertises ----------------------------------------------------------------

def _tcp_host_port(endpoint: str) -> tuple[str, int] | None:
    """(host, port) of `tcp://host:port` (an IPv6 host in brackets), or None if malformed."""
    rest = endpoint[len("tcp://"):]
    if rest.startswith("["):
        host, sep, tail = rest[1:].partition("]")
        if not sep or not tail.startswith(":"):
            return None
        port_text = tail[1:]
        address = parse_address(host) if "%" not in host else None
        if address is None or address.version != 6:
            return None
    else:
        host, sep, port_text = rest.rpartition(":")
        if not sep or not _HOSTNAME.fullmatch(host):
            return None  # also refuses '*', interface;source forms and unbracketed IPv6
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return None
    return host, int(port_text)


def _tcp_endpoint(address: IpAddress, port: int) -> str:
    return f"tcp://[{address}]:{port}" if address.version == 6 else f"tcp://{address}:{port}"


def _comm_entry(value: object) -> dict[str, Any] | None:
    """A well-formed `comm` entry (a copy, its `address` normalised), or None.

    Kept: a map whose `transport` is inproc, ipc or tcp and whose `endpoint` is a string with
    that scheme and something after it; flags `default` and `loopback`, where present, are
    booleans. A tcp endpoint is `tcp://host:port` with port 1-65535 and host a DNS name, an
    IPv4 address or a bracketed IPv6 address (no scope id); `address`, if present, is an IP
    address equal to the host when the host is an address. Unspecified (0.0.0.0, ::) and IPv6
    link-local addresses are refused: a peer cannot connect to them as published.
    """
    if not isinstance(value, Mapping):
        return None
    transport, endpoint = value.get("transport"), value.get("endpoint")
    if transport not in TRANSPORTS or not isinstance(endpoint, str):
        return None
    if not endpoint.startswith(f"{transport}://") or len(endpoint) == len(f"{transport}://"):
        return None
    if any(flag in value and not isinstance(value[flag], bool) for flag in ("default", "loopback")):
        return None
    entry = dict(value)
    if transport != "tcp":
        return entry
    parsed = _tcp_host_port(endpoint)
    if parsed is None:
        return None
    host_address = parse_address(parsed[0])
    given = value.get("address")
    if given is None:
        address = host_address
    else:
        address = parse_address(given) if isinstance(given, str) and "%" not in given else None
        if address is None or (host_address is not None and host_address != address):
            return None
    if address is not None:
        if address.is_unspecified or (address.version == 6 and address.is_link_local):
            return None
        entry["address"] = str(address)
    return entry


def _is_loopback(entry: Mapping[str, Any]) -> bool:
    if entry.get("loopback") is True:
        return True
    address = entry.get("address")
    parsed = parse_address(address) if isinstance(address, str) else None
    return parsed is not None and parsed.is_loopback


def advertised_comm(
    bind_port: int, ipc_path: str | None, interfaces: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """The `comm` list a process publishes: how to reach it, most specific first.

    `bind_port` is the TCP port it bound on all interfaces, `ipc_path` its ipc socket path (None
    if it has none), `interfaces` its host's interface entries (snipe_daemon.hostinfo maps;
    non-maps, down entries, unparseable, unspecified, multicast and IPv6 link-local addresses
    are skipped, and an address is listed once).

    Order: the ipc entry, then one tcp entry per usable non-loopback address in interface order
    (`{"transport": "tcp", "endpoint": "tcp://10.1.0.5:40123", "address": "10.1.0.5"}`, IPv6
    as `tcp://[fd00::5]:40123`), then the loopback addresses marked `"loopback": True` (127.0.0.1
    if the interfaces list none: catalog host entries leave loopback out, and a process bound on
    all interfaces answers there); loopback is only ever used by a process on the same host.
    Exactly one tcp entry carries `"default": True`: the first non-loopback IPv4 address, else
    the first non-loopback IPv6 address, else the first loopback address.
    Raises ValueError for a port outside 1-65535 or an empty or non-string `ipc_path`.
    """
    if isinstance(bind_port, bool) or not isinstance(bind_port, int) or not 0 < bind_port < 65536:
        raise ValueError(f"bind_port must be an int in 1-65535, not {bind_port!r}")
    if ipc_path is not None and (not isinstance(ipc_path, str) or not ipc_path or "\0" in ipc_path):
        raise ValueError(f"ipc_path must be a non-empty path or None, not {ipc_path!r}")
    public: list[IpAddress] = []
    loopback: list[IpAddress] = []
    for value in interfaces:
        if not isinstance(value, Mapping) or value.get("up", True) is False:
            continue
        text = value.get("address")
        address = parse_address(text) if isinstance(text, str) else None
        if (address is None or address.is_unspecified or address.is_multicast
                or (address.version == 6 and address.is_link_local) or address in public or address in loopback):
            continue
        (loopback if address.is_loopback else public).append(address)
    if not loopback:
        loopback.append(_LOOPBACK_V4)
    default = next((a for a in public if a.version == 4), None) or next(iter(public), None) or loopback[0]
    comm: list[dict[str, Any]] = []
    if ipc_path is not None:
        comm.append({"transport": "ipc", "endpoint": f"ipc://{ipc_path}"})
    for address in public + loopback:
        entry: dict[str, Any] = {"transport": "tcp", "endpoint": _tcp_endpoint(address, bind_port),
                                 "address": str(address)}
        if address.is_loopback:
            entry["loopback"] = True
        if address == default:
            entry["default"] = True
        comm.append(entry)
    return comm


# --- what a peer is ---------------------------------------------------------------------------

def _clean_comm(comm: object) -> tuple[dict[str, Any], ...]:
    if isinstance(comm, str | bytes) or not isinstance(comm, Sequence):
        return ()
    return tuple(e for e in map(_comm_entry, comm) if e is not None)


@dataclass(frozen=True)
class ProcView:
    """What route selection needs of a process's catalog entry.

    `urn` is the proc URN, `host` the URN of the host it runs on (None if unknown), `instance`
    the id of this incarnation of the process ("" if unknown: never taken as the same process),
    `comm` its well-formed communication entries (see `advertised_comm`); malformed entries
    given to the constructor are dropped, and a list becomes a tuple.
    """

    urn: str
    host: str | None
    instance: str
    comm: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "comm", _clean_comm(self.comm))

    @classmethod
    def from_values(cls, urn: str, values: Mapping[str, Any]) -> ProcView:
        """A view of a process from its catalog values (name -> value): `host`, `instance`, `comm`.

        Raises UrnError (a ValueError) if `urn` is not a URN. Everything else is lenient, since
        a process entry is written by another program: a `host` that is not a host URN reads as
        None, a non-string `instance` as "", a `comm` that is not a list as [], and malformed
        comm entries are skipped. URNs are normalised (scheme and kind lower case).
        """
        urn = validate_urn(urn)
        if not isinstance(values, Mapping):
            values = {}
        host: str | None = None
        raw_host = values.get("host")
        if isinstance(raw_host, str):
            try:
                parsed = Urn.parse(raw_host)
            except UrnError:
                parsed = None
            host = str(parsed) if parsed is not None and parsed.kind == "host" else None
        instance = values.get("instance")
        return cls(urn=urn, host=host, instance=instance if isinstance(instance, str) else "",
                   comm=_clean_comm(values.get("comm")))

    def entries(self, transport: str) -> list[dict[str, Any]]:
        """The comm entries of one transport, in published order."""
        return [e for e in self.comm if e["transport"] == transport]

    def default_tcp(self, allow_loopback: bool = True) -> dict[str, Any] | None:
        """The default tcp entry: the first flagged `default`, else the first non-loopback tcp
        entry, else the first loopback one; None if there is no tcp entry. Without
        `allow_loopback` (a caller on another host) loopback entries are not candidates."""
        tcp = [e for e in self.entries("tcp") if allow_loopback or not _is_loopback(e)]
        return (next((e for e in tcp if e.get("default") is True), None)
                or next((e for e in tcp if not _is_loopback(e)), None)
                or next(iter(tcp), None))


# --- routes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Route:
    """One way to reach a peer: `kind` inproc, ipc or tcp; the ZeroMQ `endpoint`; `net`, the
    net name or CIDR of the shared network it uses (None for the default route and for inproc
    and ipc); the link's advertised `bandwidth_mbps` (the slower end) and `latency_us` (the
    higher end), None if unknown; `rank`, its position in the list (0 = best). A `relay` route
    connects to a gateway daemon's relay (`endpoint`), which forwards to the peer: `via` is the
    gateway's host URN and `via_key` its key id (the link authenticates the gateway; the
    messages themselves are sealed for the peer)."""

    kind: str
    endpoint: str
    net: str | None
    bandwidth_mbps: float | None
    latency_us: float | None
    rank: int
    via: str | None = None
    via_key: str | None = None


def _interfaces(host: Mapping[str, Any] | None) -> list[Any]:
    value = host.get("interfaces") if isinstance(host, Mapping) else None
    return value if isinstance(value, list) else []


def _loopback_net(entry: Mapping[str, Any]) -> str | None:
    address = entry.get("address")
    parsed = parse_address(address) if isinstance(address, str) else None
    if parsed is None:
        return None
    return "::1/128" if parsed.version == 6 else "127.0.0.0/8"


def _relay_port(host: Mapping[str, Any]) -> int | None:
    port = host.get("relay_port")
    return port if type(port) is int and 0 < port < 65536 else None


def _host_id(urn: str) -> str:
    return urn.rsplit(":", 1)[-1]


def gateway_routes(my_host_urn: str | None, my_host: Mapping[str, Any] | None, peer_host_urn: str | None,
                   peer_host: Mapping[str, Any] | None,
                   gateways: Mapping[str, Mapping[str, Any]]) -> list[Route]:
    """Relay routes from a host to another through gateway hosts, best first (`rank` 0-based).

    `gateways` maps host URNs to their catalog values; a host is a gateway when it publishes a
    `relay_port` (1-65535) and a `key`, and shares a network with each end (`shared_networks`
    on `interfaces`; the two ends themselves and unknown hosts are never gateways). One route
    per gateway: to its relay port on its address on the best network it shares with us; `net`
    names the hop to the peer ("via gw/back": the gateway's id, then the net name or subnet of
    the best network it shares with the peer). Bandwidth is the lower of the two hops', latency
    their sum. Order: highest bandwidth, then lowest latency (unknown last), then host URN.
    Pure: inputs are not modified.
    """
    if my_host is None or peer_host is None or my_host_urn is None or my_host_urn == peer_host_urn:
        return []
    found: list[tuple[tuple[bool, float, bool, float, str], Route]] = []
    for urn, host in gateways.items():
        if not isinstance(host, Mapping):
            continue
        port, key = _relay_port(host), host.get("key")
        if urn in (my_host_urn, peer_host_urn) or port is None or not isinstance(key, str) or not key:
            continue
        to_gateway = _shared_pairs(_interfaces(my_host), _interfaces(host))
        to_peer = _shared_pairs(_interfaces(host), _interfaces(peer_host))
        if not to_gateway or not to_peer:
            continue
        (x, g), (g2, y) = to_gateway[0], to_peer[0]
        bw1, lat1, _ = _pair_speed(x, g)
        bw2, lat2, _ = _pair_speed(g2, y)
        bandwidth = _combine(bw1, bw2, min)
        latency = lat1 + lat2 if lat1 is not None and lat2 is not None else None
        hop = g2.net_name if _by_name(g2, y) else str(y.network)
        route = Route("relay", _tcp_endpoint(g.address, port), f"via {_host_id(urn)}/{hop}", bandwidth, latency, 0,
                      via=urn, via_key=key)
        found.append(((bandwidth is None, -(bandwidth or 0.0), latency is None, latency or 0.0, urn), route))
    found.sort(key=lambda item: item[0])
    return [replace(route, rank=i) for i, (_, route) in enumerate(found)]


def choose_routes(me: ProcView, peer: ProcView, my_host: Mapping[str, Any] | None,
                  peer_host: Mapping[str, Any] | None,
                  gateways: Mapping[str, Mapping[str, Any]] | None = None) -> list[Route]:
    """The routes from `me` to `peer`, best first; each later route is a fallback.

    `my_host` and `peer_host` are the two hosts' catalog values (only `interfaces` is read;
    None if unknown). Rules, in order, each adding routes behind the previous ones:

    - same process (same URN, same non-empty instance): `inproc`, at the peer's advertised
      inproc endpoint, else `inproc://<peer urn>`;
    - same host (same non-None host URN): the peer's ipc endpoints, then its loopback tcp
      endpoints (`net` 127.0.0.0/8 or ::1/128);
    - every network the hosts share (`shared_networks` on their interfaces), fastest first:
      the peer's tcp endpoints on its address there, `net` the shared net name when both ends
      name it, else the peer's subnet in CIDR form; bandwidth and latency are the pair's;
    - only when the hosts are different and share no network: relay routes through the
      `gateways` (host URN -> catalog values) that share a network with each (`gateway_routes`);
    - the peer's default tcp endpoint (`ProcView.default_tcp`, loopback entries only on the
      same host), `net` None, always last when there is one.

    Relay routes come before the default route: a gateway that shares a network with both ends
    is known to reach the peer, while IP routing between hosts with no common network is a guess
    (and where it works, the hosts usually do share a subnet or a configured net name).

    An endpoint appears once before the default route (at its best place); the default route
    may repeat an earlier endpoint, so every list that has a default ends with it. Loopback
    endpoints are never offered to another host. An empty list means the peer is unreachable.
    """
    same_host = me.host is not None and me.host == peer.host
    candidates: list[tuple[str, str, str | None, float | None, float | None]] = []
    if me.urn == peer.urn and me.instance and me.instance == peer.instance:
        inproc = peer.entries("inproc")
        candidates.append(("inproc", inproc[0]["endpoint"] if inproc else f"inproc://{peer.urn}", None, None, None))
    if same_host:
        candidates.extend(("ipc", e["endpoint"], None, None, None) for e in peer.entries("ipc"))
        candidates.extend(("tcp", e["endpoint"], _loopback_net(e), None, None)
                          for e in peer.entries("tcp") if _is_loopback(e))
    shared = _shared_pairs(_interfaces(my_host), _interfaces(peer_host))
    by_address: dict[str, list[str]] = {}
    for entry in peer.entries("tcp"):
        if not _is_loopback(entry) and isinstance(entry.get("address"), str):
            by_address.setdefault(entry["address"], []).append(entry["endpoint"])
    for x, y in shared:
        bandwidth, latency, _ = _pair_speed(x, y)
        net = x.net_name if _by_name(x, y) else str(y.network)
        candidates.extend(("tcp", endpoint, net, bandwidth, latency) for endpoint in by_address.get(str(y.address), []))
    seen: set[str] = set()
    routes: list[Route] = []
    for kind, endpoint, net, bandwidth, latency in candidates:
        if endpoint not in seen:
            seen.add(endpoint)
            routes.append(Route(kind, endpoint, net, bandwidth, latency, len(routes)))
    if not same_host and not shared and gateways:
        for relay in gateway_routes(me.host, my_host, peer.host, peer_host, gateways):
            if relay.endpoint not in seen:
                seen.add(relay.endpoint)
                routes.append(replace(relay, rank=len(routes)))
    default = peer.default_tcp(allow_loopback=same_host)
    if default is not None:
        routes.append(Route("tcp", default["endpoint"], None, None, None, len(routes)))
    return routes
