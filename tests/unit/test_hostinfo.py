"""Host metadata (daemon/hostinfo.py): the collected map is catalog-storable, configured net
names and link speeds attach by interface name and by CIDR, what it publishes is what
shared_networks (snipe.messaging.routes, re-exported here) reads, host ids are URN-safe, the load
sampler is cheap."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from snipe_daemon import hostinfo
from snipe_daemon.hostinfo import (
    Interface,
    LoadSampler,
    build_interfaces,
    collect_host_info,
    collect_interfaces,
    host_id_default,
    sanitize_host_id,
    shared_networks,
)

from snipe.assertion import canonical_value
from snipe.errors import ValueTypeError
from snipe.messaging import routes
from snipe.urn import Urn

AF_LINK = 17


def addr(family: int, address: str, netmask: str | None) -> SimpleNamespace:
    return SimpleNamespace(family=family, address=address, netmask=netmask, broadcast=None, ptp=None)


def stat(isup: bool = True, speed: int = 10000, mtu: int = 1500) -> SimpleNamespace:
    return SimpleNamespace(isup=isup, duplex=0, speed=speed, mtu=mtu, flags="up")


ADDRS = {
    "lo": [
        addr(socket.AF_INET, "127.0.0.1", "255.0.0.0"),
        addr(socket.AF_INET6, "::1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"),
        addr(AF_LINK, "00:00:00:00:00:00", None),
    ],
    "veth-a": [
        addr(socket.AF_INET, "10.1.0.5", "255.255.255.0"),
        addr(socket.AF_INET6, "fd00:1::5", "ffff:ffff:ffff:ffff::"),
        addr(socket.AF_INET6, "fe80::1%veth-a", "ffff:ffff:ffff:ffff::"),
        addr(AF_LINK, "02:00:00:00:00:01", None),
    ],
    "veth-b": [addr(socket.AF_INET, "10.2.0.5", "255.255.0.0")],
    "ifb0": [addr(AF_LINK, "26:8e:0a:40:c5:07", None)],
}
STATS = {
    "lo": stat(speed=0, mtu=65536),
    "veth-a": stat(),
    "veth-b": stat(isup=False, mtu=9000),
    "ifb0": stat(isup=False, speed=0),
}


def by_address(interfaces: list[Interface]) -> dict[str, Interface]:
    return {i.address: i for i in interfaces}


# --- build_interfaces / collect_interfaces ------------------------------------------------------

def test_one_interface_per_ip_address_with_derived_network():
    ifs = by_address(build_interfaces(ADDRS, STATS))
    assert set(ifs) == {"127.0.0.1", "::1", "10.1.0.5", "fd00:1::5", "10.2.0.5"}
    a = ifs["10.1.0.5"]
    assert a == Interface(
        name="veth-a", family="ipv4", address="10.1.0.5", netmask="255.255.255.0", prefixlen=24,
        network="10.1.0.0/24", speed_mbps=10000, mtu=1500, up=True, net_name=None,
        bandwidth_mbps=None, latency_us=None,
    )
    v6 = ifs["fd00:1::5"]
    assert (v6.family, v6.prefixlen, v6.network) == ("ipv6", 64, "fd00:1::/64")
    assert ifs["10.2.0.5"].network == "10.2.0.0/16"
    assert ifs["10.2.0.5"].up is False and ifs["10.2.0.5"].mtu == 9000
    assert ifs["127.0.0.1"].speed_mbps is None  # psutil's 0 means unknown


def test_link_local_ipv6_is_skipped_unless_asked_and_its_scope_is_stripped():
    assert not any(i.address.startswith("fe80") for i in build_interfaces(ADDRS, STATS))
    ifs = build_interfaces(ADDRS, STATS, include_link_local=True)
    assert [i.address for i in ifs if i.address.startswith("fe80")] == ["fe80::1"]


def test_loopback_can_be_left_out():
    ifs = build_interfaces(ADDRS, STATS, include_loopback=False)
    assert {i.name for i in ifs} == {"veth-a", "veth-b"}


def test_missing_or_odd_netmask_gives_no_network():
    odd = {"x": [addr(socket.AF_INET, "10.9.0.1", None), addr(socket.AF_INET, "10.9.0.2", "255.0.255.0"),
                 addr(socket.AF_INET, "not-an-ip", "255.0.0.0")]}
    ifs = build_interfaces(odd, {})
    assert [(i.address, i.prefixlen, i.network, i.up) for i in ifs] == [
        ("10.9.0.1", None, None, False), ("10.9.0.2", None, None, False)]


def test_net_name_by_interface_name_and_by_cidr():
    ifs = by_address(build_interfaces(ADDRS, STATS, net_names={"veth-a": "fabric", "10.2.0.0/16": "storage"}))
    assert ifs["10.1.0.5"].net_name == "fabric"
    assert ifs["fd00:1::5"].net_name == "fabric"  # a name covers every address of the interface
    assert ifs["10.2.0.5"].net_name == "storage"
    assert ifs["127.0.0.1"].net_name is None


def test_cidr_keys_match_contained_addresses_most_specific_first_and_by_family():
    names = {"10.0.0.0/8": "wide", "10.1.0.0/24": "narrow", "fd00:1::/48": "v6net", "10.1.0.5": "exact"}
    ifs = by_address(build_interfaces(ADDRS, STATS, net_names=names))
    assert ifs["10.1.0.5"].net_name == "exact"  # a bare address is a /32
    assert ifs["10.2.0.5"].net_name == "wide"
    assert ifs["fd00:1::5"].net_name == "v6net"
    del names["10.1.0.5"]
    assert by_address(build_interfaces(ADDRS, STATS, net_names=names))["10.1.0.5"].net_name == "narrow"


def test_interface_name_wins_over_cidr():
    ifs = by_address(build_interfaces(ADDRS, STATS, net_names={"10.1.0.0/24": "by-cidr", "veth-a": "by-name"}))
    assert ifs["10.1.0.5"].net_name == "by-name"


def test_link_speeds_by_name_and_cidr_override_psutil_speed():
    speeds = {"veth-a": (1000, 50.5), "10.2.0.0/16": [100.0, None], "fd00:1::/64": (40000, 2)}
    ifs = by_address(build_interfaces(ADDRS, STATS, link_speeds=speeds))
    a = ifs["10.1.0.5"]
    assert (a.bandwidth_mbps, a.latency_us, a.speed_mbps) == (1000.0, 50.5, 10000)
    assert isinstance(a.bandwidth_mbps, float)
    assert (ifs["10.2.0.5"].bandwidth_mbps, ifs["10.2.0.5"].latency_us) == (100.0, None)
    assert ifs["fd00:1::5"].bandwidth_mbps == 1000.0  # the interface name wins
    assert ifs["127.0.0.1"].bandwidth_mbps is None


@pytest.mark.parametrize("speeds", [
    {"veth-a": (-1, 5)}, {"veth-a": (1, float("nan"))}, {"veth-a": (True, 5)},
    {"veth-a": (1,)}, {"veth-a": "fast"}, {"veth-a": (1, "slow")},
])
def test_malformed_link_speeds_are_refused(speeds: dict[str, Any]):
    with pytest.raises(ValueError, match="veth-a"):
        build_interfaces(ADDRS, STATS, link_speeds=speeds)


@pytest.mark.parametrize("names", [{"veth-a": ""}, {"veth-a": 7}, {"": "x"}])
def test_malformed_net_names_are_refused(names: dict[Any, Any]):
    with pytest.raises(ValueError):
        build_interfaces(ADDRS, STATS, net_names=names)


def test_to_value_omits_none_and_is_storable():
    ifs = build_interfaces(ADDRS, STATS, link_speeds={"veth-a": (1000, None)})
    for i in ifs:
        value = i.to_value()
        assert canonical_value(value) == value
        assert None not in value.values()
    a = by_address(ifs)["10.1.0.5"].to_value()
    assert a["bandwidth_mbps"] == 1000.0 and "latency_us" not in a and "net_name" not in a
    assert a["up"] is True


def test_collect_interfaces_on_this_machine():
    ifs = collect_interfaces(link_speeds={"lo": (100000, 1)})
    assert ifs, "every Linux host has at least a loopback address"
    for i in ifs:
        assert i.family in ("ipv4", "ipv6")
        assert not i.address.startswith("fe80")
        assert canonical_value(i.to_value()) == i.to_value()
    loopback = [i for i in ifs if i.name == "lo"]
    assert loopback and all(i.bandwidth_mbps == 100000.0 and i.latency_us == 1.0 for i in loopback)
    assert not any(i.address == "127.0.0.1" for i in collect_interfaces(include_loopback=False))


# --- collect_host_info ----------------------------------------------------------------------------

EXPECTED_TYPES: dict[str, type | tuple[type, ...]] = {
    "cpus": int, "arch": str, "os": str, "kernel": str, "python": str, "memory": int,
    "memory_available": int, "load": float, "load_per_cpu": float, "boot_time": float,
    "hostname": str, "interfaces": list, "playground": dict,
}


def test_host_info_structure_and_types_on_this_machine():
    info = collect_host_info()
    assert set(info) == set(EXPECTED_TYPES)
    for key, kind in EXPECTED_TYPES.items():
        assert isinstance(info[key], kind), key
        assert not isinstance(info[key], bool) or kind is bool, key
    assert canonical_value(info) == info  # every value is catalog-storable
    assert info["os"] == "linux"
    assert info["cpus"] >= 1
    assert 0 < info["memory_available"] <= info["memory"]
    assert info["load_per_cpu"] == pytest.approx(info["load"] / info["cpus"])
    assert info["boot_time"] > 0
    assert not any(i["address"] in ("127.0.0.1", "::1") for i in info["interfaces"])
    caps = info["playground"]
    assert caps["rlimits"] is True
    assert isinstance(caps["bubblewrap"], bool)
    assert all(isinstance(c, str) for c in caps["cgroup_v2_controllers"])
    assert all(isinstance(c, str) for c in caps["cgroup_v1_controllers"])


def test_host_info_carries_configuration_and_merges_playground():
    info = collect_host_info(
        net_names={"lo": "loop-net"}, link_speeds={"lo": (5, 6)},
        playground={"bubblewrap": False, "criu": False, "limits": {"nproc": 64}},
    )
    assert info["playground"]["bubblewrap"] is False
    assert info["playground"]["criu"] is False
    assert info["playground"]["limits"] == {"nproc": 64}
    assert "rlimits" in info["playground"]
    assert canonical_value(info) == info


def test_host_info_refuses_unstorable_playground_values():
    with pytest.raises(ValueTypeError, match="values are"):
        collect_host_info(playground={"bad": object()})


def test_cgroup_controllers_are_read_from_the_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    v2 = tmp_path / "cgroup.controllers"
    v2.write_text("pids cpuset io\n")
    v1 = tmp_path / "cgroups"
    v1.write_text("#subsys_name\thierarchy\tnum_cgroups\tenabled\n"
                  "cpu\t1\t1\t1\nmemory\t4\t46\t1\nnet_cls\t0\t1\t1\nfreezer\t6\t1\t0\n")
    monkeypatch.setattr(hostinfo, "CGROUP_V2_CONTROLLERS", v2)
    monkeypatch.setattr(hostinfo, "PROC_CGROUPS", v1)
    caps = hostinfo.playground_capabilities()
    assert caps["cgroup_v2_controllers"] == ["cpuset", "io", "pids"]
    assert caps["cgroup_v1_controllers"] == ["cpu", "memory"]
    monkeypatch.setattr(hostinfo, "CGROUP_V2_CONTROLLERS", tmp_path / "absent")
    monkeypatch.setattr(hostinfo, "PROC_CGROUPS", tmp_path / "absent")
    caps = hostinfo.playground_capabilities()
    assert caps["cgroup_v2_controllers"] == [] and caps["cgroup_v1_controllers"] == []


# --- host ids -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "expected"), [
    ("node7.example.org", "node7.example.org"),
    ("Node7", "node7"),
    ("my host (lab)", "my-host-lab"),
    ("--weird__name--", "weird__name"),
    ("héllo wörld", "h-llo-w-rld"),
    ("a:b@c", "a-b-c"),
    ("...", ""),
    ("", ""),
])
def test_sanitize_host_id(name: str, expected: str):
    assert sanitize_host_id(name) == expected


@given(st.text(max_size=300))
def test_sanitized_ids_are_urn_safe(name: str):
    ident = sanitize_host_id(name)
    assert len(ident) <= hostinfo.MAX_HOST_ID_LENGTH
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in ident)
    if ident:
        assert Urn.parse(f"urn:snipe:host:{ident}").id == ident


def test_host_id_default_is_the_sanitized_hostname(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(hostinfo.socket, "gethostname", lambda: "Build Box #3")
    assert host_id_default() == "build-box-3"
    assert host_id_default() == host_id_default()


def test_host_id_default_falls_back_to_machine_id(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\n")
    monkeypatch.setattr(hostinfo, "MACHINE_ID", machine_id)
    for name in ("localhost", "", "!!!", "LOCALHOST.localdomain"):
        monkeypatch.setattr(hostinfo.socket, "gethostname", lambda name=name: name)
        assert host_id_default() == "host-0123456789abcdef"
    monkeypatch.setattr(hostinfo, "MACHINE_ID", tmp_path / "absent")
    assert host_id_default() == "host-unknown"


def test_host_id_default_on_this_machine_is_urn_safe():
    ident = host_id_default()
    assert Urn.parse(f"urn:snipe:host:{ident}").id == ident


# --- LoadSampler ----------------------------------------------------------------------------------

def test_load_sampler_uses_its_sources():
    loads = iter([(2.0, 1.0, 0.5), (6.0, 2.0, 1.0)])
    mem = iter([1000, 900])
    sampler = LoadSampler(4, loadavg=lambda: next(loads), memory_available=lambda: next(mem))
    assert sampler.sample() == {"load": 2.0, "load_per_cpu": 0.5, "memory_available": 1000}
    assert sampler.sample() == {"load": 6.0, "load_per_cpu": 1.5, "memory_available": 900}


def test_load_sampler_does_not_read_interfaces(monkeypatch: pytest.MonkeyPatch):
    def forbidden() -> None:
        raise AssertionError("interfaces read by the sampler")
    monkeypatch.setattr(hostinfo.psutil, "net_if_addrs", forbidden)
    monkeypatch.setattr(hostinfo.psutil, "net_if_stats", forbidden)
    value = LoadSampler().sample()
    assert set(value) == {"load", "load_per_cpu", "memory_available"}
    assert canonical_value(value) == value
    assert isinstance(value["load"], float) and isinstance(value["memory_available"], int)


def test_load_sampler_never_divides_by_zero():
    assert LoadSampler(0, loadavg=lambda: (1.0, 0, 0), memory_available=lambda: 1).sample()["load_per_cpu"] == 1.0


# --- shared_networks (its unit tests live in test_routes.py, with the code) -----------------------

def test_shared_networks_is_reexported_from_snipe_messaging():
    assert shared_networks is routes.shared_networks
    assert "shared_networks" in hostinfo.__all__


def test_collected_values_round_trip_into_shared_networks():
    """What collect_interfaces publishes is what shared_networks reads."""
    host_a = build_interfaces(ADDRS, STATS, net_names={"veth-b": "storage"}, link_speeds={"veth-a": (1000, 20)})
    other = {
        "eth0": [addr(socket.AF_INET, "10.1.0.9", "255.255.255.0"),
                 addr(socket.AF_INET6, "fd00:1::9", "ffff:ffff:ffff:ffff::")],
        "eth1": [addr(socket.AF_INET, "172.20.0.9", "255.255.255.0")],
        "lo": [addr(socket.AF_INET, "127.0.0.1", "255.0.0.0")],
    }
    host_b = build_interfaces(other, {n: stat() for n in other}, net_names={"eth1": "storage"},
                              link_speeds={"10.1.0.0/24": (1000, 20), "eth1": (25000, 3)})
    pairs = shared_networks([i.to_value() for i in host_a], [i.to_value() for i in host_b])
    # veth-b is down, so the storage net does not count; loopback never does
    assert [(pa["address"], pb["address"]) for pa, pb in pairs] == [
        ("10.1.0.5", "10.1.0.9"), ("fd00:1::5", "fd00:1::9")]
