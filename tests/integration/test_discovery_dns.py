"""Replica discovery against a real DNS server on 127.0.0.1.

Each case runs against dnsmasq (a separate process, which also sends the SRV targets' addresses
in the additional section) and against a dnslib server in a thread (which does not, so the
client asks for A/AAAA itself). Without dnsmasq installed its variant is skipped. The example zone
in conf/dns/ is served by dnslib, since dnsmasq does not read zone files.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from snipe.discovery import ReplicaAddress, discover, from_config, from_srv
from snipe.errors import Unreachable
from snipe.localcluster import free_port

DNSMASQ = shutil.which("dnsmasq") or next(
    (p for p in ("/usr/sbin/dnsmasq", "/sbin/dnsmasq") if Path(p).exists()), None
)
CONF = Path(__file__).resolve().parents[2] / "conf"

KEY1 = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
KEY2 = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
KEY3 = "ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1"

DOMAIN = "example.test"
# (name, type, data). SRV data: priority weight port target.
RECORDS: list[tuple[str, str, str]] = [
    # Three replicas: two at priority 10, listed heaviest-last to show the order is ours.
    (f"_rcds._tcp.{DOMAIN}", "SRV", f"20 0 7303 r3.{DOMAIN}"),
    (f"_rcds._tcp.{DOMAIN}", "SRV", f"10 40 7302 r2.{DOMAIN}"),
    (f"_rcds._tcp.{DOMAIN}", "SRV", f"10 60 7301 r1.{DOMAIN}"),
    (f"r1.{DOMAIN}", "A", "127.0.0.11"),
    (f"r2.{DOMAIN}", "A", "127.0.0.12"),
    (f"r3.{DOMAIN}", "A", "127.0.0.13"),
    (f"r3.{DOMAIN}", "AAAA", "fd00::13"),
    # r1's key at its own name, r2's at the service name; r3 has none.
    (f"r1.{DOMAIN}", "TXT", f"key={KEY1}"),
    (f"_rcds._tcp.{DOMAIN}", "TXT", f"target=r2.{DOMAIN} key={KEY2}"),
    # A shared key at the service name; the target's own key still wins.
    (f"_rcds._tcp.shared.{DOMAIN}", "SRV", f"0 0 7301 r1.{DOMAIN}"),
    (f"_rcds._tcp.shared.{DOMAIN}", "SRV", f"0 0 7302 r2.{DOMAIN}"),
    (f"_rcds._tcp.shared.{DOMAIN}", "TXT", f"key={KEY3}"),
    # A target without addresses; a name with a TXT record but no SRV.
    (f"_rcds._tcp.noaddr.{DOMAIN}", "SRV", f"0 0 7301 ghost.{DOMAIN}"),
    (f"_rcds._tcp.nosrv.{DOMAIN}", "TXT", "hello=world"),
    # A malformed key.
    (f"_rcds._tcp.badkey.{DOMAIN}", "SRV", f"0 0 7301 bad.{DOMAIN}"),
    (f"bad.{DOMAIN}", "A", "127.0.0.99"),
    (f"bad.{DOMAIN}", "TXT", "key=12345"),
]

EXPECTED = [
    ReplicaAddress("tcp://127.0.0.11:7301", KEY1, 10, 60),
    ReplicaAddress("tcp://127.0.0.12:7302", KEY2, 10, 40),
    ReplicaAddress("tcp://127.0.0.13:7303", None, 20, 0),
    ReplicaAddress("tcp://[fd00::13]:7303", None, 20, 0),
]


@dataclass(frozen=True)
class DnsServer:
    kind: str
    host: str
    port: int

    @property
    def address(self) -> str:
        """The "ip:port" form SNIPE_DNS_SERVER and catalog.dns_server take."""
        return f"{self.host}:{self.port}"


# --------------------------------------------------------------------------- servers


def wait_until_answering(host: str, port: int, alive: Callable[[], bool], deadline_s: float = 10.0) -> None:
    """Poll with a real query until the server answers; fail on its early exit or the deadline."""
    deadline = time.monotonic() + deadline_s
    query = dns.message.make_query(f"_rcds._tcp.{DOMAIN}", "SRV")
    while time.monotonic() < deadline:
        if not alive():
            raise RuntimeError("DNS server exited before answering")
        try:
            dns.query.udp(query, host, port=port, timeout=0.2)
            return
        except (dns.exception.Timeout, OSError):
            continue
    raise RuntimeError(f"DNS server on {host}:{port} did not answer within {deadline_s}s")


def dnsmasq_args(port: int) -> list[str]:
    args = [
        DNSMASQ or "dnsmasq",
        "--no-daemon",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-resolv",
        "--no-hosts",
        "--conf-file=/dev/null",
        "--pid-file=",
        f"--local=/{DOMAIN}/",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # dnsmasq would otherwise switch to nobody
        args.append("--user=root")
    addresses: dict[str, list[str]] = {}
    for name, rtype, data in RECORDS:
        if rtype == "SRV":
            priority, weight, srv_port, target = data.split()
            service, _, domain = name.partition("._tcp.")
            args.append(f"--srv-host={service}._tcp.{domain},{target},{srv_port},{priority},{weight}")
        elif rtype in ("A", "AAAA"):
            addresses.setdefault(name, []).append(data)
        elif rtype == "TXT":
            args.append(f"--txt-record={name},{data}")  # no shell: no quotes
    args.extend(f"--host-record={name},{','.join(addrs)}" for name, addrs in addresses.items())
    return args


def zone_text(records: list[tuple[str, str, str]]) -> str:
    lines = ["$TTL 60"]
    for name, rtype, data in records:
        value = f'"{data}"' if rtype == "TXT" else (data + "." if rtype == "SRV" else data)
        lines.append(f"{name}. IN {rtype} {value}")
    return "\n".join(lines) + "\n"


def start_dnsmasq(log_path: Path) -> tuple[DnsServer, subprocess.Popen[bytes]]:
    last_error = ""
    for _ in range(3):  # the port may be taken between choosing and binding it
        port = free_port("127.0.0.1", udp=True)     # dnsmasq binds both UDP and TCP
        with log_path.open("wb") as log:
            proc = subprocess.Popen(dnsmasq_args(port), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_until_answering("127.0.0.1", port, lambda p=proc: p.poll() is None)
            return DnsServer("dnsmasq", "127.0.0.1", port), proc
        except RuntimeError as exc:
            stop_process(proc)
            last_error = f"{exc}: {log_path.read_text(errors='replace')}"
    raise RuntimeError(f"dnsmasq did not start: {last_error}")


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


@contextmanager
def dnslib_server(zone: str) -> Iterator[DnsServer]:
    """A dnslib server for `zone` in a thread, on a free UDP port, stopped on leaving."""
    from dnslib.server import DNSLogger
    from dnslib.server import DNSServer as DnslibServer
    from dnslib.zoneresolver import ZoneResolver

    server = DnslibServer(
        ZoneResolver(zone), address="127.0.0.1", port=0, logger=DNSLogger(logf=lambda *_: None)
    )
    thread = threading.Thread(target=server.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        host, port = server.server.server_address[:2]
        wait_until_answering(host, port, thread.is_alive)
        yield DnsServer("dnslib", host, port)
    finally:
        server.server.shutdown()
        server.server.server_close()
        thread.join(timeout=5)


@contextmanager
def dnsmasq_server(log_path: Path) -> Iterator[DnsServer]:
    server, proc = start_dnsmasq(log_path)
    try:
        yield server
    finally:
        stop_process(proc)


@pytest.fixture(scope="module", params=["dnsmasq", "dnslib"])
def dns_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DnsServer]:
    """A DNS server on 127.0.0.1 serving RECORDS, on a free port, for this module's tests."""
    if request.param == "dnslib":
        with dnslib_server(zone_text(RECORDS)) as server:
            yield server
        return
    if DNSMASQ is None:
        pytest.skip("dnsmasq is not installed; the dnslib variant covers these cases")
    with dnsmasq_server(tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log") as server:
        yield server


@pytest.fixture(scope="module")
def example_zone_server() -> Iterator[DnsServer]:
    """conf/dns/example.org.zone served as is (dnslib reads zone files; dnsmasq does not)."""
    with dnslib_server((CONF / "dns" / "example.org.zone").read_text()) as server:
        yield server


# --------------------------------------------------------------------------- from_srv


def test_srv_lookup_orders_by_priority_with_ports_and_keys(dns_server: DnsServer) -> None:
    found = from_srv(DOMAIN, dns_server.host, dns_server.port, timeout=3.0)
    assert found == EXPECTED


def test_srv_lookup_accepts_a_trailing_dot_and_capitals(dns_server: DnsServer) -> None:
    assert from_srv("Example.TEST.", dns_server.host, dns_server.port) == EXPECTED


def test_target_key_wins_over_a_shared_key(dns_server: DnsServer) -> None:
    found = from_srv(f"shared.{DOMAIN}", dns_server.host, dns_server.port)
    assert {a.endpoint: a.public_key for a in found} == {
        "tcp://127.0.0.11:7301": KEY1,
        "tcp://127.0.0.12:7302": KEY3,
    }


def test_missing_domain_names_domain_and_server(dns_server: DnsServer) -> None:
    with pytest.raises(Unreachable) as info:
        from_srv(f"missing.{DOMAIN}", dns_server.host, dns_server.port)
    message = str(info.value)
    assert f"_rcds._tcp.missing.{DOMAIN}" in message
    assert dns_server.address in message
    assert "NXDOMAIN" in message


def test_name_without_srv_records_is_unreachable(dns_server: DnsServer) -> None:
    with pytest.raises(Unreachable, match=rf"_rcds\._tcp\.nosrv\.{DOMAIN}.*{dns_server.address}"):
        from_srv(f"nosrv.{DOMAIN}", dns_server.host, dns_server.port)


def test_targets_without_addresses_are_unreachable(dns_server: DnsServer) -> None:
    with pytest.raises(Unreachable, match=rf"ghost\.{DOMAIN}, but none has an A or AAAA record"):
        from_srv(f"noaddr.{DOMAIN}", dns_server.host, dns_server.port)


def test_malformed_txt_key_is_a_config_error(dns_server: DnsServer) -> None:
    from snipe.errors import ConfigError

    with pytest.raises(ConfigError, match=rf'TXT record at bad\.{DOMAIN}: "key=12345" is not a key id'):
        from_srv(f"badkey.{DOMAIN}", dns_server.host, dns_server.port)


def test_silent_server_times_out_naming_it() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(Unreachable, match=rf"127\.0\.0\.1:{port} did not answer .* within 0\.5s"):
            from_srv(DOMAIN, "127.0.0.1", port, timeout=0.5)
        assert time.monotonic() - started < 5.0


# --------------------------------------------------------------------------- discover()


def test_discover_uses_the_srv_domain_argument(dns_server: DnsServer) -> None:
    assert discover(srv_domain=DOMAIN, dns_server=dns_server.address, env={}) == EXPECTED


def test_discover_uses_the_srv_domain_from_env(dns_server: DnsServer) -> None:
    env = {"SNIPE_SRV_DOMAIN": DOMAIN, "SNIPE_DNS_SERVER": dns_server.address}
    assert discover(env=env) == EXPECTED


def test_discover_srv_domain_argument_beats_env(dns_server: DnsServer) -> None:
    env = {"SNIPE_SRV_DOMAIN": f"missing.{DOMAIN}", "SNIPE_DNS_SERVER": dns_server.address}
    assert discover(srv_domain=DOMAIN, env=env) == EXPECTED


def test_discover_config_file_beats_srv_domain(dns_server: DnsServer, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[catalog]\nsrv_domain = "{DOMAIN}"\ndns_server = "{dns_server.address}"\n')
    env = {"SNIPE_CONFIG": str(config), "SNIPE_SRV_DOMAIN": f"missing.{DOMAIN}"}
    assert discover(env=env) == EXPECTED
    assert from_config(config) == EXPECTED


def test_discover_lists_beat_dns_without_asking_it(dns_server: DnsServer, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[catalog]\nsrv_domain = "missing.{DOMAIN}"\ndns_server = "{dns_server.address}"\n')
    env = {
        "SNIPE_CATALOG": "127.0.0.1:7301",
        "SNIPE_CONFIG": str(config),
        "SNIPE_SRV_DOMAIN": f"missing.{DOMAIN}",
        "SNIPE_DNS_SERVER": dns_server.address,
    }
    assert discover(env=env) == [ReplicaAddress("tcp://127.0.0.1:7301")]
    assert discover(["127.0.0.2:7301"], env=env) == [ReplicaAddress("tcp://127.0.0.2:7301")]
    with pytest.raises(Unreachable, match=f"{config}: catalog.srv_domain: .*missing.{DOMAIN}"):
        discover(env={"SNIPE_CONFIG": str(config)})


def test_config_list_comes_first_and_srv_fills_in(dns_server: DnsServer, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(
        f'[catalog]\nreplicas = ["127.0.0.12:7302", "10.9.9.9:7301"]\nsrv_domain = "{DOMAIN}"\n'
        f'dns_server = "{dns_server.address}"\n'
    )
    assert from_config(config) == [
        ReplicaAddress("tcp://127.0.0.12:7302"),
        ReplicaAddress("tcp://10.9.9.9:7301"),
        EXPECTED[0],
        EXPECTED[2],
        EXPECTED[3],
    ]


def test_config_list_survives_a_failed_srv_lookup(dns_server: DnsServer, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(
        f'[catalog]\nreplicas = ["10.9.9.9:7301"]\nsrv_domain = "missing.{DOMAIN}"\n'
        f'dns_server = "{dns_server.address}"\n'
    )
    assert from_config(config) == [ReplicaAddress("tcp://10.9.9.9:7301")]


def test_env_dns_server_overrides_the_config_file(dns_server: DnsServer, tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text(f'[catalog]\nsrv_domain = "{DOMAIN}"\ndns_server = "127.0.0.1:1"\n')
    env = {"SNIPE_CONFIG": str(config), "SNIPE_DNS_SERVER": dns_server.address}
    assert discover(env=env) == EXPECTED


# --------------------------------------------------------------------------- conf/ examples


def test_example_zone_resolves(example_zone_server: DnsServer) -> None:
    server = example_zone_server
    found = from_srv("example.org", server.host, server.port)
    assert found == [
        ReplicaAddress("tcp://192.0.2.11:7301", KEY1, 10, 60),
        ReplicaAddress("tcp://192.0.2.12:7301", KEY2, 10, 40),
        ReplicaAddress("tcp://192.0.2.13:7301", KEY3, 20, 0),
        ReplicaAddress("tcp://[2001:db8::13]:7301", KEY3, 20, 0),
    ]


def test_example_client_config_with_the_example_zone(example_zone_server: DnsServer) -> None:
    env = {"SNIPE_DNS_SERVER": example_zone_server.address}
    found = discover(config_path=CONF / "client.toml", env=env)
    assert [str(a) for a in found] == [
        f"tcp://rcds1.example.org:7301#{KEY1}",
        f"tcp://rcds2.example.org:7301#{KEY2}",
        "tcp://rcds3.example.org:7301",
        f"tcp://192.0.2.11:7301#{KEY1}",
        f"tcp://192.0.2.12:7301#{KEY2}",
        f"tcp://192.0.2.13:7301#{KEY3}",
        f"tcp://[2001:db8::13]:7301#{KEY3}",
    ]
