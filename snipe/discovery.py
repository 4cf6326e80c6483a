"""How a client finds the catalog replicas, and which one it tries next.

Sources, first one that names any replica wins:

1. an explicit list (`discover(replicas=[...])`),
2. the environment variable `SNIPE_CATALOG` (comma-separated list),
3. a TOML file (`config_path=` or `SNIPE_CONFIG`) with a `[catalog]` section,
4. DNS SRV records `_rcds._tcp.<domain>` (`srv_domain=` or `SNIPE_SRV_DOMAIN`).

A list item is `tcp://host:port`, `host:port` (taken as tcp), or `ipc:///path`, optionally
followed by `#<64 hex>`: the replica's Ed25519 key id, so the client can pin the key it expects.
Over DNS the key comes from a TXT record `key=<hex>` at the SRV target (or, shared, at the
service name; see `from_srv`).

Invariants of a `ReplicaAddress`: the endpoint is a well-formed ZeroMQ endpoint (tcp with a host
and a port in 1..65535, an IPv6 host in brackets; or ipc with a path), and the key is either
None or 64 lowercase hex characters. Lists returned here never hold the same endpoint twice.

`FailoverOrder` is the sans-I/O part: it is told which replicas failed and when (the caller
passes `now`), and answers in what order to try them. It reads no clock and touches no socket.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import random
import re
import time
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.name
import dns.rdatatype
import dns.resolver

from snipe.errors import ConfigError, Unreachable

__all__ = [
    "ENV_CATALOG",
    "ENV_CONFIG",
    "ENV_DNS_SERVER",
    "ENV_SRV_DOMAIN",
    "SRV_SERVICE",
    "FailoverOrder",
    "ReplicaAddress",
    "SrvRecord",
    "discover",
    "from_config",
    "from_list",
    "from_srv",
    "order_srv",
    "parse_address",
]

log = logging.getLogger(__name__)

SRV_SERVICE = "_rcds._tcp"
ENV_CATALOG = "SNIPE_CATALOG"
ENV_CONFIG = "SNIPE_CONFIG"
ENV_SRV_DOMAIN = "SNIPE_SRV_DOMAIN"
ENV_DNS_SERVER = "SNIPE_DNS_SERVER"

_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_LIST_EXAMPLE = '"tcp://host:7301" or "host:7301#<64-hex key id>"'
_NOTHING_CONFIGURED = (
    "no catalog replicas configured: pass replicas=[...], "
    f"set {ENV_CATALOG}=tcp://host:7301[,tcp://host2:7301], "
    f"point {ENV_CONFIG} at a TOML file with [catalog] replicas or srv_domain (see conf/client.toml), "
    f"or set {ENV_SRV_DOMAIN} to a domain that publishes {SRV_SERVICE} SRV records"
)


# --------------------------------------------------------------------------- addresses


@dataclass(frozen=True)
class ReplicaAddress:
    """Where one catalog replica listens, and the key it should prove it holds.

    `priority` and `weight` are the SRV values when the address came from DNS (lower priority
    is preferred); addresses from a list keep their list order and carry 0 for both.
    """

    endpoint: str
    public_key: str | None = None
    priority: int = 0
    weight: int = 0

    def __post_init__(self) -> None:
        check_endpoint(self.endpoint)
        if self.public_key is not None:
            if not _KEY_RE.fullmatch(self.public_key):
                raise ConfigError(
                    f"replica key {self.public_key!r} is not a key id "
                    "(64 hex characters of an Ed25519 public key)"
                )
            object.__setattr__(self, "public_key", self.public_key.lower())
        for name in ("priority", "weight"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value <= 65535:
                raise ConfigError(f"replica {name} must be an integer in 0..65535, got {value!r}")
        # Hashed once: an address keys the failover state, looked up several times a request.
        object.__setattr__(self, "_hash", hash((self.endpoint, self.public_key, self.priority, self.weight)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined,no-any-return]

    def __reduce__(self) -> tuple[type[ReplicaAddress], tuple[str, str | None, int, int]]:
        # rebuilt, not copied: a str's hash differs from one process to the next
        return ReplicaAddress, (self.endpoint, self.public_key, self.priority, self.weight)

    def __str__(self) -> str:
        """The list form, which `parse_address` reads back."""
        return self.endpoint if self.public_key is None else f"{self.endpoint}#{self.public_key}"


def check_host(host: str) -> None:
    if host.startswith("["):
        if not host.endswith("]"):
            raise ConfigError(f"IPv6 host {host!r} lacks its closing bracket")
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ConfigError(f"{host[1:-1]!r} in brackets is not an IPv6 address") from None
        return
    if ":" in host:
        raise ConfigError(f"IPv6 host {host!r} must be written in brackets, e.g. tcp://[{host}]:7301")
    if not host:
        raise ConfigError("the host is empty")
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ConfigError(f"{host!r} is neither an IP address nor a valid host name")


def check_endpoint(endpoint: str) -> None:
    """Raise ConfigError unless `endpoint` is tcp://host:port or ipc://path."""
    if not isinstance(endpoint, str):
        raise ConfigError(f"an endpoint is a string, got {type(endpoint).__name__}")
    if endpoint.startswith("ipc://"):
        if len(endpoint) == len("ipc://"):
            raise ConfigError("ipc:// endpoint has no path")
        return
    if not endpoint.startswith("tcp://"):
        scheme = endpoint.split("://", 1)[0] if "://" in endpoint else endpoint
        raise ConfigError(f"unsupported transport {scheme!r}: use tcp://host:port or ipc:///path")
    hostport = endpoint[len("tcp://") :]
    host, sep, port_text = hostport.rpartition(":")
    if not sep or not port_text:
        raise ConfigError("no port: write host:port, e.g. tcp://catalog.example.org:7301")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ConfigError(f"port {port_text!r} is not a number in 1..65535")
    check_host(host)


def parse_address(item: str) -> ReplicaAddress:
    """One list item to a ReplicaAddress; ConfigError (naming the item) if malformed."""
    if not isinstance(item, str):
        raise ConfigError(f"replica {item!r} is a {type(item).__name__}; write it as {_LIST_EXAMPLE}")
    text = item.strip()
    key: str | None = None
    if "#" in text:
        text, _, key = text.rpartition("#")
        if not _KEY_RE.fullmatch(key):
            raise ConfigError(f"replica {item!r}: {key!r} after '#' is not a key id (64 hex characters)")
    if not text:
        raise ConfigError(f"replica {item!r} has no address; write it as {_LIST_EXAMPLE}")
    if "://" not in text:
        text = "tcp://" + text
    try:
        return ReplicaAddress(endpoint=text, public_key=key)
    except ConfigError as exc:
        raise ConfigError(f"replica {item!r}: {exc}; write it as {_LIST_EXAMPLE}") from None


def from_list(items: Iterable[str]) -> list[ReplicaAddress]:
    """Parse replica addresses in order; ConfigError naming the first bad or repeated item."""
    if isinstance(items, (str, bytes)):
        raise ConfigError(
            f"from_list takes a list of addresses, not the single string {items!r}; "
            "split a comma-separated value first"
        )
    result: list[ReplicaAddress] = []
    seen: dict[str, str] = {}
    for item in items:
        address = parse_address(item)
        if address.endpoint in seen:
            raise ConfigError(f"replica {item!r} repeats {seen[address.endpoint]!r}; list each replica once")
        seen[address.endpoint] = item
        result.append(address)
    return result


def _split_env_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


# --------------------------------------------------------------------------- config file


@dataclass(frozen=True)
class _CatalogSection:
    replicas: list[ReplicaAddress] = field(default_factory=list)
    srv_domain: str | None = None
    dns_server: str | None = None
    dns_timeout: float = 2.0


CATALOG_KEYS = ("replicas", "srv_domain", "dns_server", "dns_timeout")


def _read_catalog_section(path: Path) -> _CatalogSection:
    """The [catalog] section of a TOML file, checked; an absent section reads as empty."""
    try:
        with path.open("rb") as handle:
            document = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create it (see conf/client.toml) or fix the path") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a TOML file") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; make it readable by this user") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None

    section = document.get("catalog", {})
    if not isinstance(section, dict):
        raise ConfigError(f"{path}: 'catalog' must be a table ([catalog]), not a {type(section).__name__}")
    unknown = sorted(set(section) - set(CATALOG_KEYS))
    if unknown:         # a misspelt key would otherwise be ignored in silence
        raise ConfigError(f"{path}: [catalog] has no key {', '.join(map(repr, unknown))}; "
                          f"it has {', '.join(CATALOG_KEYS)}")

    replicas: list[ReplicaAddress] = []
    raw = section.get("replicas", [])
    if not isinstance(raw, list):
        raise ConfigError(
            f"{path}: catalog.replicas must be a list of strings like [{_LIST_EXAMPLE}], "
            f"not a {type(raw).__name__}"
        )
    seen: set[str] = set()
    for index, item in enumerate(raw):
        try:
            address = parse_address(item)
        except ConfigError as exc:
            raise ConfigError(f"{path}: catalog.replicas[{index}]: {exc}") from None
        if address.endpoint in seen:
            raise ConfigError(f"{path}: catalog.replicas[{index}] repeats {address.endpoint}; list it once")
        seen.add(address.endpoint)
        replicas.append(address)

    srv_domain = section.get("srv_domain")
    if srv_domain is not None:
        if not isinstance(srv_domain, str) or not srv_domain.strip():
            raise ConfigError(f'{path}: catalog.srv_domain must be a domain name like "example.org"')
        try:
            srv_domain = _check_domain(srv_domain)
        except ConfigError as exc:
            raise ConfigError(f"{path}: catalog.srv_domain: {exc}") from None

    dns_server = section.get("dns_server")
    if dns_server is not None:
        if not isinstance(dns_server, str):
            raise ConfigError(
                f'{path}: catalog.dns_server must be a string like "10.0.0.53" or "10.0.0.53:53"'
            )
        try:
            _parse_dns_server(dns_server)
        except ConfigError as exc:
            raise ConfigError(f"{path}: catalog.dns_server: {exc}") from None

    dns_timeout = section.get("dns_timeout", 2.0)
    if isinstance(dns_timeout, bool) or not isinstance(dns_timeout, (int, float)) or dns_timeout <= 0:
        raise ConfigError(f"{path}: catalog.dns_timeout must be a positive number of seconds")

    return _CatalogSection(replicas, srv_domain, dns_server, float(dns_timeout))


def _resolve_section(
    path: Path,
    section: _CatalogSection,
    dns_server: str | None,
    rng: random.Random | None,
) -> list[ReplicaAddress]:
    """Listed replicas first, then SRV-found ones; a failed lookup is fatal only with no list."""
    result = list(section.replicas)
    if section.srv_domain is None:
        return result
    server = dns_server or section.dns_server
    host, port = _parse_dns_server(server) if server else (None, 53)
    try:
        found = from_srv(section.srv_domain, host, port, section.dns_timeout, rng=rng)
    except Unreachable as exc:
        if not result:
            raise Unreachable(f"{path}: catalog.srv_domain: {exc}") from None
        log.warning("%s: SRV lookup failed, using the listed replicas only: %s", path, exc)
        return result
    listed = {address.endpoint for address in result}
    result.extend(address for address in found if address.endpoint not in listed)
    return result


def check_config(path: str | os.PathLike[str]) -> None:
    """Check the `[catalog]` section of a TOML file without resolving it (no DNS): ConfigError
    names the file and key of anything unusable."""
    _read_catalog_section(Path(path))


def from_config(path: str | os.PathLike[str], *, rng: random.Random | None = None) -> list[ReplicaAddress]:
    """Replicas named by the `[catalog]` section of a TOML file.

    Keys: `replicas` (list of addresses), `srv_domain` (looked up with `from_srv`),
    `dns_server` ("ip" or "ip:port"; default the system resolver), `dns_timeout` (seconds).
    With both `replicas` and `srv_domain`, the listed replicas come first and SRV results not
    already listed follow; if the lookup fails the list alone is returned. ConfigError names the
    file and key of anything unusable; Unreachable if only DNS was configured and it failed.
    """
    file = Path(path)
    section = _read_catalog_section(file)
    if not section.replicas and section.srv_domain is None:
        raise ConfigError(
            f"{file}: [catalog] names no replicas; add replicas = [{_LIST_EXAMPLE}] "
            'or srv_domain = "example.org"'
        )
    return _resolve_section(file, section, None, rng)


# --------------------------------------------------------------------------- DNS SRV


@dataclass(frozen=True)
class SrvRecord:
    """One SRV answer, as RFC 2782 defines it (target is an absolute name, without the dot)."""

    priority: int
    weight: int
    port: int
    target: str


def order_srv(records: Iterable[SrvRecord], rng: random.Random | None = None) -> list[SrvRecord]:
    """RFC 2782 order: ascending priority; within one priority, weighted random by `rng`.

    Without `rng` the order within a priority is deterministic: heavier first, then by target
    and port. Duplicate (target, port) pairs are kept once.
    """
    unique: dict[tuple[str, int], SrvRecord] = {}
    for record in records:
        unique.setdefault((record.target, record.port), record)
    by_priority: dict[int, list[SrvRecord]] = {}
    for record in unique.values():
        by_priority.setdefault(record.priority, []).append(record)

    ordered: list[SrvRecord] = []
    for priority in sorted(by_priority):
        group = by_priority[priority]
        if rng is None:
            ordered.extend(sorted(group, key=lambda r: (-r.weight, r.target, r.port)))
            continue
        # RFC 2782: weight-0 records first in the pool, then repeatedly pick by running sum.
        pool = sorted(group, key=lambda r: (r.weight != 0, r.target, r.port))
        while pool:
            total = sum(r.weight for r in pool)
            threshold = rng.randint(0, total)
            running = 0
            for index, record in enumerate(pool):
                running += record.weight
                if running >= threshold:
                    ordered.append(pool.pop(index))
                    break
    return ordered


def _check_domain(domain: str) -> str:
    """The domain without a trailing dot, lowercased; ConfigError if it is not a DNS name."""
    text = domain.strip().rstrip(".").lower()
    if not text:
        raise ConfigError("the SRV domain is empty; give a domain like example.org")
    try:
        check_host(text)
    except ConfigError:
        raise ConfigError(f"{domain!r} is not a domain name (like example.org)") from None
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return text
    raise ConfigError(f"{domain!r} is an IP address; SRV lookup needs a domain name like example.org")


def _parse_dns_server(text: str) -> tuple[str, int]:
    """'ip', 'ip:port', '[ipv6]:port' or a bare IPv6 address, to (ip, port)."""
    value = text.strip()
    host, port = value, 53
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ConfigError(f"DNS server {text!r}: write an IPv6 server as [addr]:port")
        if rest:
            port_text = rest[1:]
            if not port_text.isdigit():
                raise ConfigError(f"DNS server {text!r}: port {port_text!r} is not a number")
            port = int(port_text)
    elif value.count(":") == 1:
        host, port_text = value.split(":")
        if not port_text.isdigit():
            raise ConfigError(f"DNS server {text!r}: port {port_text!r} is not a number")
        port = int(port_text)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"DNS server {text!r}: give an IP address (optionally :port), not a name") from None
    if not 1 <= port <= 65535:
        raise ConfigError(f"DNS server {text!r}: port {port} is not in 1..65535")
    return host, port


class _Lookup:
    """One discovery's DNS queries: one resolver, one overall deadline, errors that name both."""

    def __init__(self, resolver_address: str | None, resolver_port: int, timeout: float) -> None:
        if resolver_address is None:
            try:
                self.resolver = dns.resolver.Resolver()
            except dns.resolver.NoResolverConfiguration as exc:
                raise ConfigError(
                    f"no system DNS resolver configured ({exc}); pass a DNS server address "
                    f"(resolver_address=, catalog.dns_server or {ENV_DNS_SERVER})"
                ) from None
            self.asked = ", ".join(str(ns) for ns in self.resolver.nameservers) or "the system resolver"
        else:
            self.resolver = dns.resolver.Resolver(configure=False)
            self.resolver.nameservers = [resolver_address]
            self.resolver.port = resolver_port
            host = f"[{resolver_address}]" if ":" in resolver_address else resolver_address
            self.asked = f"{host}:{resolver_port}"
        self.timeout = timeout
        self.deadline = time.monotonic() + timeout

    def query(self, name: str, rdtype: str, *, missing_ok: bool) -> dns.resolver.Answer | None:
        """The answer for `name` (absolute, written without the final dot), or None for NXDOMAIN or
        no data when `missing_ok`; Unreachable otherwise."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise Unreachable(
                f"DNS lookup of {name} {rdtype} ran out of time ({self.timeout}s in all) "
                f"asking {self.asked}; check that the server answers or raise the timeout"
            )
        try:
            answer = self.resolver.resolve(
                name + ".", rdtype, search=False, raise_on_no_answer=False, lifetime=remaining
            )
        except dns.resolver.NXDOMAIN:
            if missing_ok:
                return None
            raise Unreachable(
                f"{name} does not exist (NXDOMAIN from {self.asked}); publish {SRV_SERVICE} SRV "
                f"records for the catalog replicas there, or configure a list ({ENV_CATALOG})"
            ) from None
        except dns.exception.Timeout:
            raise Unreachable(
                f"DNS server {self.asked} did not answer for {name} {rdtype} within "
                f"{self.timeout}s; check the server address and that it is running"
            ) from None
        except dns.resolver.NoNameservers as exc:
            raise Unreachable(
                f"DNS server {self.asked} failed or refused the query for {name} {rdtype} ({exc}); "
                "check that it serves this domain"
            ) from None
        except dns.exception.DNSException as exc:
            raise Unreachable(f"DNS lookup of {name} {rdtype} asking {self.asked} failed: {exc}") from None
        if answer.rrset is None:
            return None
        return answer


def _txt_attributes(rdata: object) -> list[dict[str, str]]:
    """A TXT rdata's strings as one attribute dict (tokens `name=value`, space separated)."""
    strings: Sequence[bytes] = getattr(rdata, "strings", ())
    attrs: dict[str, str] = {}
    for chunk in strings:
        for token in chunk.decode("utf-8", "replace").split():
            name, sep, value = token.partition("=")
            if sep:
                attrs[name.lower()] = value
    return [attrs] if attrs else []


def _key_from_attrs(attrs: Mapping[str, str], where: str) -> str:
    key = attrs["key"]
    if not _KEY_RE.fullmatch(key):
        raise ConfigError(
            f'TXT record at {where}: "key={key}" is not a key id (64 hex characters); fix the zone'
        )
    return key.lower()


def _one_key(keys: set[str], where: str) -> str | None:
    if len(keys) > 1:
        raise ConfigError(f"TXT records at {where} give {len(keys)} different keys; keep one")
    return next(iter(keys), None)


def _addresses_in(response: dns.message.Message | None, target: str) -> list[str]:
    """A then AAAA addresses for `target` found in a response's additional section."""
    if response is None:
        return []
    name = dns.name.from_text(target)
    found: list[str] = []
    for rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        for rrset in response.additional:
            if rrset.name == name and rrset.rdtype == rdtype:
                found.extend(rdata.address for rdata in rrset)
    return found


def _endpoint(address: str, port: int) -> str:
    return f"tcp://[{address}]:{port}" if ":" in address else f"tcp://{address}:{port}"


def from_srv(
    domain: str,
    resolver_address: str | None = None,
    resolver_port: int = 53,
    timeout: float = 2.0,
    *,
    rng: random.Random | None = None,
) -> list[ReplicaAddress]:
    """Replicas published as SRV records at `_rcds._tcp.<domain>`, in the order to try them.

    Targets are resolved to A then AAAA addresses, from the answer's additional section when the
    server sent them, else by asking; a target with several addresses gives one ReplicaAddress
    per address (all with its key), so count distinct keys, not entries, when counting replicas.
    A replica's key is a TXT record `key=<hex>` at its target; failing that, a TXT record at
    `_rcds._tcp.<domain>` of the form `target=<host> key=<hex>` for that target, or
    `key=<hex>` alone (a key every replica without its own shares).

    `resolver_address` is a DNS server's IP (default: the system resolver); `timeout` bounds the
    whole lookup. Raises Unreachable naming the domain and the server asked when there are no
    usable records, the name does not exist, or the server does not answer; ConfigError for a
    malformed domain or TXT key.
    """
    domain = _check_domain(domain)
    if timeout <= 0:
        raise ConfigError(f"DNS timeout must be positive, got {timeout}")
    service = f"{SRV_SERVICE}.{domain}"
    lookup = _Lookup(resolver_address, resolver_port, timeout)

    answer = lookup.query(service, "SRV", missing_ok=False)
    records = [
        SrvRecord(rr.priority, rr.weight, rr.port, rr.target.to_text(omit_final_dot=True).lower())
        for rr in (answer.rrset if answer is not None else ())
    ]
    # RFC 2782: a lone target of "." says the service is decidedly not available here.
    records = [r for r in records if r.target not in ("", ".")]
    if not records:
        raise Unreachable(
            f"no SRV records at {service} (asked {lookup.asked}); publish one per catalog replica, "
            f"e.g. '{SRV_SERVICE} IN SRV 10 50 7301 replica1.{domain}.'"
        )
    response = answer.response if answer is not None else None

    shared_keys: set[str] = set()
    keys_for_target: dict[str, set[str]] = {}
    service_txt = lookup.query(service, "TXT", missing_ok=True)
    for rdata in service_txt or ():
        for attrs in _txt_attributes(rdata):
            if "key" not in attrs:
                continue
            key = _key_from_attrs(attrs, service)
            if "target" in attrs:
                target = attrs["target"].rstrip(".").lower()
                keys_for_target.setdefault(target, set()).add(key)
            else:
                shared_keys.add(key)
    shared_key = _one_key(shared_keys, service)

    result: list[ReplicaAddress] = []
    unresolved: list[str] = []
    seen: set[str] = set()
    for record in order_srv(records, rng):
        own_keys: set[str] = set()
        for rdata in lookup.query(record.target, "TXT", missing_ok=True) or ():
            for attrs in _txt_attributes(rdata):
                if "key" in attrs:
                    own_keys.add(_key_from_attrs(attrs, record.target))
        key = (
            _one_key(own_keys, record.target)
            or _one_key(keys_for_target.get(record.target, set()), f"{service} for {record.target}")
            or shared_key
        )

        addresses = _addresses_in(response, record.target)
        if not addresses:
            for rdtype in ("A", "AAAA"):
                found = lookup.query(record.target, rdtype, missing_ok=True)
                addresses.extend(rdata.address for rdata in found or ())
        if not addresses:
            unresolved.append(record.target)
            log.warning("SRV target %s of %s has no A or AAAA record; skipped", record.target, service)
            continue
        for address in addresses:
            endpoint = _endpoint(address, record.port)
            if endpoint in seen:
                continue
            seen.add(endpoint)
            result.append(ReplicaAddress(endpoint, key, record.priority, record.weight))

    if not result:
        raise Unreachable(
            f"SRV records at {service} name {', '.join(unresolved)}, but none has an A or AAAA "
            f"record (asked {lookup.asked}); add address records for the targets"
        )
    return result


# --------------------------------------------------------------------------- precedence


def discover(
    replicas: Iterable[str] | None = None,
    config_path: str | os.PathLike[str] | None = None,
    srv_domain: str | None = None,
    env: Mapping[str, str] = os.environ,
    *,
    dns_server: str | None = None,
    rng: random.Random | None = None,
) -> list[ReplicaAddress]:
    """The catalog replicas, from the first source that names any.

    Order: `replicas` > `SNIPE_CATALOG` > the config file (`config_path` or `SNIPE_CONFIG`) >
    the SRV domain (`srv_domain` or `SNIPE_SRV_DOMAIN`). An empty list or empty variable counts
    as not given. A config file without a [catalog] section falls through to the SRV domain.
    The DNS server for SRV look-ups is `dns_server` or `SNIPE_DNS_SERVER` ("ip" or "ip:port"),
    else the config file's `catalog.dns_server`, else the system resolver.

    Raises ConfigError saying what to set when no source names a replica, or when the source
    chosen is malformed; Unreachable when the chosen source is DNS and the lookup failed.
    """
    if replicas is not None:
        explicit = from_list(replicas)
        if explicit:
            log.debug("catalog replicas from the explicit list: %s", explicit)
            return explicit

    env_list = env.get(ENV_CATALOG, "").strip()
    if env_list:
        try:
            found = from_list(_split_env_list(env_list))
        except ConfigError as exc:
            raise ConfigError(f"{ENV_CATALOG}: {exc}") from None
        if found:
            log.debug("catalog replicas from %s: %s", ENV_CATALOG, found)
            return found

    server_text = dns_server or env.get(ENV_DNS_SERVER, "").strip() or None
    if server_text is not None:
        try:
            _parse_dns_server(server_text)
        except ConfigError as exc:
            source = "dns_server" if dns_server else ENV_DNS_SERVER
            raise ConfigError(f"{source}: {exc}") from None

    path_text = config_path if config_path is not None else (env.get(ENV_CONFIG, "").strip() or None)
    if path_text is not None:
        path = Path(path_text)
        try:
            section = _read_catalog_section(path)
        except ConfigError as exc:
            if config_path is None:
                raise ConfigError(f"{exc} (named by {ENV_CONFIG})") from None
            raise
        if section.replicas or section.srv_domain is not None:
            found = _resolve_section(path, section, server_text, rng)
            log.debug("catalog replicas from %s: %s", path, found)
            return found

    domain = srv_domain or env.get(ENV_SRV_DOMAIN, "").strip() or None
    if domain is not None:
        try:
            _check_domain(domain)
        except ConfigError as exc:
            raise ConfigError(f"{'srv_domain' if srv_domain else ENV_SRV_DOMAIN}: {exc}") from None
        host, port = _parse_dns_server(server_text) if server_text else (None, 53)
        found = from_srv(domain, host, port, rng=rng)
        log.debug("catalog replicas from SRV records of %s: %s", domain, found)
        return found

    if path_text is not None:
        raise ConfigError(
            f"{path_text}: [catalog] names no replicas, and no SRV domain is set; {_NOTHING_CONFIGURED}"
        )
    raise ConfigError(_NOTHING_CONFIGURED)


# --------------------------------------------------------------------------- failover


@dataclass
class _Health:
    failures: int = 0
    retry_at: float = 0.0


class FailoverOrder:
    """In what order to try the replicas, given which ones failed recently. No I/O, no clock.

    Invariants: the replicas keep the order they were given in (discovery order: SRV priority,
    or list order); a replica is down from `mark_down` until `mark_up`; a down replica becomes
    due for a retry at the time of its latest failure plus a back-off that starts at
    `base_backoff` and doubles with each consecutive failure up to `max_backoff`.
    `next_candidates(now)` gives the up replicas first, then those due for a retry (the one that
    waited longest first); replicas still backing off are left out unless asked for.
    """

    def __init__(
        self,
        addresses: Sequence[ReplicaAddress],
        base_backoff: float = 1.0,
        max_backoff: float = 60.0,
    ) -> None:
        if base_backoff <= 0 or max_backoff < base_backoff:
            raise ConfigError(
                f"back-off must satisfy 0 < base_backoff <= max_backoff, got {base_backoff} and {max_backoff}"
            )
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self._addresses: tuple[ReplicaAddress, ...] = ()
        self._down: dict[ReplicaAddress, _Health] = {}
        self.replace(addresses)

    @property
    def addresses(self) -> tuple[ReplicaAddress, ...]:
        return self._addresses

    def replace(self, addresses: Sequence[ReplicaAddress]) -> None:
        """Take a fresh discovery result; replicas still present keep their down state."""
        unique = tuple(dict.fromkeys(addresses))
        self._addresses = unique
        self._down = {a: h for a, h in self._down.items() if a in unique}

    def backoff(self, failures: int) -> float:
        """Seconds a replica waits after its `failures`-th consecutive failure."""
        if failures <= 0:
            return 0.0
        return min(self.max_backoff, self.base_backoff * 2.0 ** min(failures - 1, 62))

    def mark_down(self, address: ReplicaAddress, now: float) -> float | None:
        """Record a failure at `now`; returns when the replica is due for a retry.

        An address not in the list (e.g. dropped by `replace` while a request was in flight) is
        ignored and None returned.
        """
        if address not in self._addresses:
            return None
        health = self._down.setdefault(address, _Health())
        health.failures += 1
        health.retry_at = now + self.backoff(health.failures)
        return health.retry_at

    def mark_up(self, address: ReplicaAddress) -> None:
        """Record a success: the replica is preferred again and its back-off resets."""
        self._down.pop(address, None)

    def is_down(self, address: ReplicaAddress) -> bool:
        return address in self._down

    def retry_at(self, address: ReplicaAddress) -> float | None:
        """When a down replica is due for a retry; None if it is up (or unknown)."""
        health = self._down.get(address)
        return None if health is None else health.retry_at

    def next_retry_at(self) -> float | None:
        """The earliest retry time among down replicas; None when none is down."""
        if not self._down:
            return None
        return min(h.retry_at for h in self._down.values())

    def next_candidates(self, now: float, *, include_backing_off: bool = False) -> list[ReplicaAddress]:
        """Replicas to try, best first: up ones, then down ones due for a retry at `now`.

        With `include_backing_off`, replicas whose back-off has not run out follow last (soonest
        due first), for a caller that would rather try anything than wait.
        """
        position = {address: index for index, address in enumerate(self._addresses)}
        up = [a for a in self._addresses if a not in self._down]
        down = sorted(self._down, key=lambda a: (self._down[a].retry_at, position[a]))
        due = [a for a in down if self._down[a].retry_at <= now]
        result = up + due
        if include_backing_off:
            result += [a for a in down if self._down[a].retry_at > now]
        return result
