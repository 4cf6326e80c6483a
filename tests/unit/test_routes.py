"""Route selection (snipe/messaging/routes.py): shared_networks pairs and ranks two hosts'
interfaces, advertised_comm is what a process publishes, ProcView reads it back leniently, and
choose_routes orders inproc, ipc, shared networks and the default route, best first.

The choose_routes cases are transcripts: two hosts' catalog entries, two processes' entries, and
the routes as (kind, endpoint, net) lines, best first."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from snipe.assertion import canonical_value
from snipe.errors import UrnError
from snipe.messaging.routes import (
    ProcView,
    Route,
    advertised_comm,
    choose_routes,
    parse_address,
    shared_networks,
)


def test_routes_never_imports_the_daemon_package():
    code = ("import sys, snipe.messaging.routes; "
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('snipe_daemon', 'daemon')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_parse_address():
    assert str(parse_address("10.0.0.1")) == "10.0.0.1"
    assert str(parse_address("fe80::1%eth0")) == "fe80::1"
    assert parse_address("bogus") is None and parse_address("") is None


# --- shared_networks ------------------------------------------------------------------------------

def iface(address: str, network: str | None = None, **extra: Any) -> dict[str, Any]:
    family = "ipv6" if ":" in address else "ipv4"
    value: dict[str, Any] = {"name": extra.pop("name", "eth"), "family": family, "address": address, "up": True}
    if network is not None:
        value["network"] = network
        value["prefixlen"] = int(network.split("/")[1])
    value.update(extra)
    return value


def test_no_shared_network():
    a = [iface("10.1.0.1", "10.1.0.0/24"), iface("fd00:1::1", "fd00:1::/64")]
    b = [iface("10.2.0.1", "10.2.0.0/24"), iface("fd00:2::1", "fd00:2::/64")]
    assert shared_networks(a, b) == []
    assert shared_networks([], b) == [] and shared_networks(a, []) == []


def test_common_subnet_pairs_per_family_never_across_families():
    a4, a6 = iface("10.1.0.1", "10.1.0.0/24"), iface("fd00:1::1", "fd00:1::/64")
    b4, b6 = iface("10.1.0.2", "10.1.0.0/24"), iface("fd00:1::2", "fd00:1::/64")
    pairs = shared_networks([a4, a6], [b6, b4])
    assert pairs == [(a4, b4), (a6, b6)]
    assert shared_networks([a4], [b6]) == []
    assert shared_networks([a6], [b4]) == []


def test_ipv4_and_ipv6_with_the_same_net_name_still_do_not_pair():
    a = [iface("10.1.0.1", "10.1.0.0/24", net_name="fabric")]
    b = [iface("fd00:1::2", "fd00:1::/64", net_name="fabric")]
    assert shared_networks(a, b) == []


def test_same_net_name_on_different_subnets_is_shared():
    a = [iface("10.1.0.1", "10.1.0.0/24", net_name="ib")]
    b = [iface("10.9.0.7", "10.9.0.0/24", net_name="ib")]
    assert shared_networks(a, b) == [(a[0], b[0])]


def test_net_name_without_subnet_information_is_enough():
    a = [iface("192.168.5.1", net_name="myrinet")]
    b = [iface("172.16.0.9", net_name="myrinet")]
    assert shared_networks(a, b) == [(a[0], b[0])]


def test_different_net_names_on_the_same_subnet_are_different_networks():
    a = [iface("10.0.0.1", "10.0.0.0/24", net_name="site-a")]
    b = [iface("10.0.0.2", "10.0.0.0/24", net_name="site-b")]
    assert shared_networks(a, b) == []


def test_one_named_side_still_shares_a_subnet():
    a = [iface("10.0.0.1", "10.0.0.0/24", net_name="lab")]
    b = [iface("10.0.0.2", "10.0.0.0/24")]
    assert shared_networks(a, b) == [(a[0], b[0])]


def test_subnet_needs_each_address_in_the_others_network():
    wide = iface("10.1.0.1", "10.1.0.0/16")
    narrow_in = iface("10.1.0.9", "10.1.0.0/24")
    narrow_out = iface("10.1.7.9", "10.1.7.0/24")
    assert shared_networks([wide], [narrow_in]) == [(wide, narrow_in)]
    assert shared_networks([wide], [narrow_out]) == []  # 10.1.0.1 is off 10.1.7.0/24's link
    assert shared_networks([narrow_in], [narrow_out]) == []


def test_prefixlen_alone_gives_the_subnet():
    a = {"address": "10.3.0.1", "prefixlen": 24, "up": True}
    b = {"address": "10.3.0.200", "prefixlen": 24}
    assert shared_networks([a], [b]) == [(a, b)]


def test_loopback_link_local_down_same_address_and_junk_are_ignored():
    a = [
        iface("127.0.0.1", "127.0.0.0/8"),
        iface("::1", "::1/128"),
        iface("fe80::1", "fe80::/64"),
        iface("169.254.1.1", "169.254.0.0/16"),
        iface("10.5.0.1", "10.5.0.0/24", up=False),
        iface("10.6.0.1", "10.6.0.0/24"),
        "not a map", {"address": 7}, {"address": "bogus"}, {"address": "10.7.0.1", "network": "nonsense"},
        {"address": "10.8.0.1", "network": "10.9.0.0/24"}, {"address": "0.0.0.0", "network": "0.0.0.0/0"},
    ]
    b = [
        iface("127.0.0.2", "127.0.0.0/8"),
        iface("::1", "::1/128"),
        iface("fe80::2", "fe80::/64"),
        iface("169.254.1.2", "169.254.0.0/16"),
        iface("10.5.0.2", "10.5.0.0/24"),
        iface("10.6.0.1", "10.6.0.0/24"),
        {"address": "10.7.0.2", "network": "10.7.0.0/24"}, {"address": "10.8.0.2", "network": "10.8.0.0/24"},
        {"address": "10.0.0.1", "network": "0.0.0.0/0"},
    ]
    assert shared_networks(a, b) == []  # type: ignore[arg-type]


def test_link_local_pairs_only_by_net_name():
    a = [iface("fe80::1", "fe80::/64", net_name="direct")]
    b = [iface("fe80::2", "fe80::/64", net_name="direct")]
    assert shared_networks(a, b) == [(a[0], b[0])]


def test_ordering_bandwidth_then_latency_then_speed():
    slow = ("10.1.0.1", "10.1.0.2", "10.1.0.0/24", {"bandwidth_mbps": 100.0, "latency_us": 10.0})
    fast_far = ("10.2.0.1", "10.2.0.2", "10.2.0.0/24", {"bandwidth_mbps": 10000.0, "latency_us": 80.0})
    fast_near = ("10.3.0.1", "10.3.0.2", "10.3.0.0/24", {"bandwidth_mbps": 10000.0, "latency_us": 5.0})
    fast_near_fast_kernel = ("10.4.0.1", "10.4.0.2", "10.4.0.0/24",
                             {"bandwidth_mbps": 10000.0, "latency_us": 5.0, "speed_mbps": 40000})
    unknown = ("10.5.0.1", "10.5.0.2", "10.5.0.0/24", {"speed_mbps": 100000})
    nets = [unknown, slow, fast_far, fast_near, fast_near_fast_kernel]
    a = [iface(x, net, **extra) for x, _, net, extra in nets]
    b = [iface(y, net, **extra) for _, y, net, extra in reversed(nets)]
    got = [(pa["address"], pb["address"]) for pa, pb in shared_networks(a, b)]
    assert got == [("10.4.0.1", "10.4.0.2"), ("10.3.0.1", "10.3.0.2"), ("10.2.0.1", "10.2.0.2"),
                   ("10.1.0.1", "10.1.0.2"), ("10.5.0.1", "10.5.0.2")]


def test_the_slower_end_bounds_a_pair():
    # a's 10 Gbit/s NIC on a net where b only has 100 Mbit/s ranks below a 1 Gbit/s net on both ends
    a = [iface("10.1.0.1", "10.1.0.0/24", bandwidth_mbps=10000.0),
         iface("10.2.0.1", "10.2.0.0/24", bandwidth_mbps=1000)]
    b = [iface("10.1.0.2", "10.1.0.0/24", bandwidth_mbps=100.0),
         iface("10.2.0.2", "10.2.0.0/24", bandwidth_mbps=1000)]
    assert [pa["address"] for pa, _ in shared_networks(a, b)] == ["10.2.0.1", "10.1.0.1"]
    # latency: the higher end counts
    a = [iface("10.1.0.1", "10.1.0.0/24", latency_us=1.0), iface("10.2.0.1", "10.2.0.0/24", latency_us=20.0)]
    b = [iface("10.1.0.2", "10.1.0.0/24", latency_us=50.0), iface("10.2.0.2", "10.2.0.0/24", latency_us=20.0)]
    assert [pa["address"] for pa, _ in shared_networks(a, b)] == ["10.2.0.1", "10.1.0.1"]


def test_one_configured_end_is_used_and_bogus_numbers_are_unknown():
    a = [iface("10.1.0.1", "10.1.0.0/24", bandwidth_mbps=True), iface("10.2.0.1", "10.2.0.0/24")]
    b = [iface("10.1.0.2", "10.1.0.0/24", bandwidth_mbps=-5), iface("10.2.0.2", "10.2.0.0/24", bandwidth_mbps=10)]
    assert [pa["address"] for pa, _ in shared_networks(a, b)] == ["10.2.0.1", "10.1.0.1"]


def test_ties_keep_input_order_and_inputs_are_untouched():
    a = [iface("10.1.0.1", "10.1.0.0/24", name="x"), iface("10.1.0.3", "10.1.0.0/24", name="y")]
    b = [iface("10.1.0.2", "10.1.0.0/24"), iface("10.1.0.4", "10.1.0.0/24")]
    before = (repr(a), repr(b))
    pairs = shared_networks(a, b)
    assert [(pa["address"], pb["address"]) for pa, pb in pairs] == [
        ("10.1.0.1", "10.1.0.2"), ("10.1.0.1", "10.1.0.4"), ("10.1.0.3", "10.1.0.2"), ("10.1.0.3", "10.1.0.4")]
    assert all(pa in a and pb in b for pa, pb in pairs)
    assert (repr(a), repr(b)) == before




# --- advertised_comm ------------------------------------------------------------------------------

PORT = 40123


def test_advertised_comm_lists_ipc_then_addresses_then_loopback():
    interfaces = [
        iface("fd00:1::5", "fd00:1::/64", name="eth0"),
        iface("10.1.0.5", "10.1.0.0/24", name="eth0"),
        iface("192.168.50.5", "192.168.50.0/24", name="ib0", net_name="fabric"),
    ]
    assert advertised_comm(PORT, "/run/user/0/snipe/x.sock", interfaces) == [
        {"transport": "ipc", "endpoint": "ipc:///run/user/0/snipe/x.sock"},
        {"transport": "tcp", "endpoint": "tcp://[fd00:1::5]:40123", "address": "fd00:1::5"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.5:40123", "address": "10.1.0.5", "default": True},
        {"transport": "tcp", "endpoint": "tcp://192.168.50.5:40123", "address": "192.168.50.5"},
        {"transport": "tcp", "endpoint": "tcp://127.0.0.1:40123", "address": "127.0.0.1", "loopback": True},
    ]


def test_advertised_comm_skips_what_no_peer_can_use():
    interfaces = [
        iface("127.0.0.1", "127.0.0.0/8", name="lo"),
        iface("::1", "::1/128", name="lo"),
        iface("fe80::5", "fe80::/64"),
        iface("10.9.0.5", "10.9.0.0/24", up=False),
        iface("0.0.0.0"), iface("224.0.0.1"),
        "not a map", {"address": 5}, {"address": "bogus"}, {},
        iface("10.1.0.5", "10.1.0.0/24"), iface("10.1.0.5", "10.1.0.0/24", name="alias"),
        iface("169.254.3.4", "169.254.0.0/16"),
    ]
    comm = advertised_comm(PORT, None, interfaces)  # type: ignore[arg-type]
    assert [(e["endpoint"], e.get("default", False), e.get("loopback", False)) for e in comm] == [
        ("tcp://10.1.0.5:40123", True, False),
        ("tcp://169.254.3.4:40123", False, False),
        ("tcp://127.0.0.1:40123", False, True),
        ("tcp://[::1]:40123", False, True),
    ]


def test_advertised_comm_default_prefers_ipv4_then_ipv6_then_loopback():
    v6_only = advertised_comm(PORT, None, [iface("fd00:1::5", "fd00:1::/64"), iface("fd00:2::5", "fd00:2::/64")])
    assert [e["endpoint"] for e in v6_only if e.get("default")] == ["tcp://[fd00:1::5]:40123"]
    assert v6_only[-1] == {"transport": "tcp", "endpoint": "tcp://127.0.0.1:40123", "address": "127.0.0.1",
                           "loopback": True}
    nothing = advertised_comm(PORT, None, [])
    assert nothing == [{"transport": "tcp", "endpoint": "tcp://127.0.0.1:40123", "address": "127.0.0.1",
                        "loopback": True, "default": True}]
    only_v6_loopback = advertised_comm(PORT, None, [iface("::1", "::1/128")])
    assert only_v6_loopback == [{"transport": "tcp", "endpoint": "tcp://[::1]:40123", "address": "::1",
                                 "loopback": True, "default": True}]


@pytest.mark.parametrize("port", [0, -1, 65536, True, 1.5, "40123", None])
def test_advertised_comm_refuses_bad_ports(port: Any):
    with pytest.raises(ValueError, match="bind_port"):
        advertised_comm(port, None, [])


@pytest.mark.parametrize("path", ["", 7, b"/x.sock", "a\0b"])
def test_advertised_comm_refuses_bad_ipc_paths(path: Any):
    with pytest.raises(ValueError, match="ipc_path"):
        advertised_comm(PORT, path, [])


def test_advertised_comm_is_catalog_storable_and_reads_back_whole():
    comm = advertised_comm(PORT, "/tmp/p.sock", [iface("10.1.0.5", "10.1.0.0/24"), iface("fd00:1::5", "fd00:1::/64")])
    assert canonical_value(comm) == comm
    view = ProcView.from_values("urn:snipe:proc:p", {"host": "urn:snipe:host:a", "instance": "i1", "comm": comm})
    assert list(view.comm) == comm
    assert view.default_tcp() == comm[1]


# --- ProcView -------------------------------------------------------------------------------------

def test_from_values_skips_malformed_comm_entries():
    good = [
        {"transport": "tcp", "endpoint": "tcp://10.1.0.5:40123", "address": "10.1.0.5", "default": True},
        {"transport": "tcp", "endpoint": "tcp://[FD00:1:0::5]:40123", "address": "fd00:1::5"},
        {"transport": "tcp", "endpoint": "tcp://10.2.0.5:40123"},  # address from the endpoint
        {"transport": "tcp", "endpoint": "tcp://node7.example.org:40123"},  # a DNS name: default only
        {"transport": "ipc", "endpoint": "ipc:///run/user/0/snipe/x.sock"},
        {"transport": "inproc", "endpoint": "inproc://p", "extra": [1, 2]},
    ]
    bad = [
        "tcp://10.1.0.5:1", None, 7, ["transport", "tcp"],
        {"endpoint": "tcp://10.1.0.6:1"},
        {"transport": "udp", "endpoint": "udp://10.1.0.6:1"},
        {"transport": "tcp", "endpoint": 5},
        {"transport": "tcp", "endpoint": "ipc:///x"},
        {"transport": "ipc", "endpoint": "ipc://"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:0"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:65536"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:http"},
        {"transport": "tcp", "endpoint": "tcp://*:40123"},
        {"transport": "tcp", "endpoint": "tcp://0.0.0.0:40123"},
        {"transport": "tcp", "endpoint": "tcp://[::]:40123"},
        {"transport": "tcp", "endpoint": "tcp://fd00::6:40123"},
        {"transport": "tcp", "endpoint": "tcp://[10.1.0.6]:40123"},
        {"transport": "tcp", "endpoint": "tcp://[fe80::6]:40123"},
        {"transport": "tcp", "endpoint": "tcp://[fe80::6%eth0]:40123"},
        {"transport": "tcp", "endpoint": "tcp://eth0;10.1.0.6:40123"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:40123", "address": "10.1.0.7"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:40123", "address": 7},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:40123", "address": "bogus"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:40123", "default": "yes"},
        {"transport": "tcp", "endpoint": "tcp://10.1.0.6:40123", "loopback": 1},
    ]
    mixed = [bad[0], good[0], *bad[1:12], good[1], good[2], *bad[12:], *good[3:]]
    before = repr(mixed)
    view = ProcView.from_values("urn:snipe:proc:p", {"instance": "i1", "comm": mixed})
    expected = [dict(e) for e in good]
    expected[1]["address"] = "fd00:1::5"
    expected[2]["address"] = "10.2.0.5"
    assert list(view.comm) == expected
    assert repr(mixed) == before  # the input is untouched


def test_from_values_is_lenient_except_for_the_urn():
    assert ProcView.from_values("URN:SNIPE:PROC:p", {}) == ProcView("urn:snipe:proc:p", None, "", ())
    view = ProcView.from_values("urn:snipe:proc:p", {"host": "urn:snipe:proc:q", "instance": 5, "comm": "tcp://x:1"})
    assert (view.host, view.instance, view.comm) == (None, "", ())
    assert ProcView.from_values("urn:snipe:proc:p", {"host": "not a urn"}).host is None
    assert ProcView.from_values("urn:snipe:proc:p", {"host": "urn:snipe:HOST:b"}).host == "urn:snipe:host:b"
    assert ProcView.from_values("urn:snipe:proc:p", None).comm == ()  # type: ignore[arg-type]
    for urn in ("", "proc:p", "urn:snipe:bogus:p", 7):
        with pytest.raises(UrnError):
            ProcView.from_values(urn, {})  # type: ignore[arg-type]


def test_constructor_cleans_comm_too():
    view = ProcView("urn:snipe:proc:p", None, "i", [{"transport": "tcp", "endpoint": "tcp://*:1"},  # type: ignore[arg-type]
                                                    {"transport": "ipc", "endpoint": "ipc:///s"}])
    assert view.comm == ({"transport": "ipc", "endpoint": "ipc:///s"},)


def test_default_tcp_without_a_flag_is_the_first_non_loopback_entry():
    comm = [{"transport": "tcp", "endpoint": "tcp://127.0.0.1:1", "address": "127.0.0.1"},
            {"transport": "tcp", "endpoint": "tcp://10.0.0.1:1"}, {"transport": "tcp", "endpoint": "tcp://10.0.0.2:1"}]
    assert ProcView("urn:snipe:proc:p", None, "", comm).default_tcp() == {  # type: ignore[arg-type]
        "transport": "tcp", "endpoint": "tcp://10.0.0.1:1", "address": "10.0.0.1"}
    assert ProcView("urn:snipe:proc:p", None, "", comm[:1]).default_tcp() == comm[0]  # type: ignore[arg-type]
    assert ProcView("urn:snipe:proc:p", None, "", comm[:1]).default_tcp(allow_loopback=False) is None  # type: ignore[arg-type]
    assert ProcView("urn:snipe:proc:p", None, "", ()).default_tcp() is None


# --- choose_routes: transcripts -------------------------------------------------------------------

HOST_A = "urn:snipe:host:a"
HOST_B = "urn:snipe:host:b"

# a and b share a public /24 (1 Gbit/s) and a private "fabric" on different subnets (40 Gbit/s)
A_IFACES = [
    iface("203.0.113.10", "203.0.113.0/24", name="eth0", bandwidth_mbps=1000.0, latency_us=200.0),
    iface("192.168.50.10", "192.168.50.0/24", name="ib0", net_name="fabric", bandwidth_mbps=40000.0, latency_us=2.0),
]
B_IFACES = [
    iface("203.0.113.20", "203.0.113.0/24", name="eth0", bandwidth_mbps=1000.0, latency_us=200.0),
    iface("192.168.60.20", "192.168.60.0/24", name="ib0", net_name="fabric", bandwidth_mbps=40000.0, latency_us=2.0),
]
A_HOST = {"cpus": 8, "interfaces": A_IFACES}
B_HOST = {"cpus": 8, "interfaces": B_IFACES}


def proc(urn: str, host: str | None, instance: str, comm: list[Any]) -> ProcView:
    return ProcView.from_values(urn, {"host": host, "instance": instance, "comm": comm})


def lines(routes: list[Route]) -> list[tuple[str, str, str | None]]:
    assert [r.rank for r in routes] == list(range(len(routes)))
    return [(r.kind, r.endpoint, r.net) for r in routes]


B_COMM = advertised_comm(PORT, "/run/user/0/snipe/q.sock", B_IFACES)
A_COMM = advertised_comm(PORT, "/run/user/0/snipe/p.sock", A_IFACES)
P = proc("urn:snipe:proc:p", HOST_A, "p1", A_COMM)
Q = proc("urn:snipe:proc:q", HOST_B, "q1", B_COMM)


def test_same_process_is_inproc_then_the_same_host_routes():
    assert lines(choose_routes(Q, Q, B_HOST, B_HOST)) == [
        ("inproc", "inproc://urn:snipe:proc:q", None),
        ("ipc", "ipc:///run/user/0/snipe/q.sock", None),
        ("tcp", "tcp://127.0.0.1:40123", "127.0.0.0/8"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]
    advertised = proc("urn:snipe:proc:q", HOST_B, "q1", [{"transport": "inproc", "endpoint": "inproc://q-box"}])
    assert lines(choose_routes(advertised, advertised, None, None)) == [("inproc", "inproc://q-box", None)]


def test_same_urn_other_instance_is_not_the_same_process():
    restarted = proc("urn:snipe:proc:q", HOST_B, "q2", B_COMM)
    assert [r.kind for r in choose_routes(restarted, Q, B_HOST, B_HOST)] == ["ipc", "tcp", "tcp"]
    unknown = proc("urn:snipe:proc:q", HOST_B, "", B_COMM)
    assert choose_routes(unknown, unknown, B_HOST, B_HOST)[0].kind == "ipc"


def test_same_host_with_ipc():
    q2 = proc("urn:snipe:proc:q2", HOST_B, "x", [])
    assert lines(choose_routes(q2, Q, B_HOST, B_HOST)) == [
        ("ipc", "ipc:///run/user/0/snipe/q.sock", None),
        ("tcp", "tcp://127.0.0.1:40123", "127.0.0.0/8"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]


def test_same_host_without_ipc():
    no_ipc = proc("urn:snipe:proc:r", HOST_B, "r1", advertised_comm(PORT, None, B_IFACES))
    q2 = proc("urn:snipe:proc:q2", HOST_B, "x", [])
    assert lines(choose_routes(q2, no_ipc, B_HOST, B_HOST)) == [
        ("tcp", "tcp://127.0.0.1:40123", "127.0.0.0/8"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]


def test_other_host_never_gets_ipc_or_loopback():
    routes = choose_routes(P, Q, A_HOST, B_HOST)
    assert all(r.kind == "tcp" for r in routes)
    assert not any("127.0.0.1" in r.endpoint or "ipc" in r.endpoint for r in routes)
    unknown_host = proc("urn:snipe:proc:q", None, "q1", B_COMM)
    assert lines(choose_routes(unknown_host, unknown_host, None, None)) == [
        ("inproc", "inproc://urn:snipe:proc:q", None), ("tcp", "tcp://203.0.113.20:40123", None)]


def test_shared_private_net_name_beats_the_public_subnet_by_bandwidth():
    routes = choose_routes(P, Q, A_HOST, B_HOST)
    assert lines(routes) == [
        ("tcp", "tcp://192.168.60.20:40123", "fabric"),
        ("tcp", "tcp://203.0.113.20:40123", "203.0.113.0/24"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]
    assert (routes[0].bandwidth_mbps, routes[0].latency_us) == (40000.0, 2.0)
    assert (routes[1].bandwidth_mbps, routes[1].latency_us) == (1000.0, 200.0)
    assert (routes[2].bandwidth_mbps, routes[2].latency_us) == (None, None)


def test_a_faster_public_subnet_ranks_first_and_the_slower_end_counts():
    a = [iface("203.0.113.10", "203.0.113.0/24", bandwidth_mbps=100000.0),
         iface("192.168.50.10", "192.168.50.0/24", net_name="fabric", bandwidth_mbps=40000.0)]
    b = [iface("203.0.113.20", "203.0.113.0/24", bandwidth_mbps=100000.0),
         iface("192.168.60.20", "192.168.60.0/24", net_name="fabric", bandwidth_mbps=10.0)]
    assert lines(choose_routes(P, Q, {"interfaces": a}, {"interfaces": b})) == [
        ("tcp", "tcp://203.0.113.20:40123", "203.0.113.0/24"),
        ("tcp", "tcp://192.168.60.20:40123", "fabric"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]


def test_shared_subnet_by_cidr():
    c = [iface("198.51.100.3", "198.51.100.0/24"), iface("10.1.0.3", "10.1.0.0/24")]
    d = [iface("198.18.0.4", "198.18.0.0/24"), iface("10.1.0.4", "10.1.0.0/24")]
    p = proc("urn:snipe:proc:p", "urn:snipe:host:c", "p1", advertised_comm(PORT, None, c))
    q = proc("urn:snipe:proc:q", "urn:snipe:host:d", "q1", advertised_comm(PORT, None, d))
    routes = choose_routes(p, q, {"interfaces": c}, {"interfaces": d})
    assert lines(routes) == [
        ("tcp", "tcp://10.1.0.4:40123", "10.1.0.0/24"),
        ("tcp", "tcp://198.18.0.4:40123", None),
    ]
    assert routes[0].bandwidth_mbps is None and routes[0].latency_us is None
    prefix_only = [{"address": "10.1.0.4", "prefixlen": 24}]
    assert lines(choose_routes(p, q, {"interfaces": c}, {"interfaces": prefix_only}))[0] == (
        "tcp", "tcp://10.1.0.4:40123", "10.1.0.0/24")


def test_no_shared_network_is_the_default_route():
    c = [iface("198.51.100.3", "198.51.100.0/24")]
    assert lines(choose_routes(P, Q, {"interfaces": c}, B_HOST)) == [("tcp", "tcp://203.0.113.20:40123", None)]
    assert lines(choose_routes(P, Q, None, B_HOST)) == [("tcp", "tcp://203.0.113.20:40123", None)]
    assert lines(choose_routes(P, Q, A_HOST, None)) == [("tcp", "tcp://203.0.113.20:40123", None)]
    assert lines(choose_routes(P, Q, {"interfaces": "junk"}, {})) == [("tcp", "tcp://203.0.113.20:40123", None)]


def test_a_shared_network_without_a_peer_endpoint_there_is_skipped():
    only_public = [e for e in B_COMM if "192.168" not in e["endpoint"]]
    q = proc("urn:snipe:proc:q", HOST_B, "q1", only_public)
    assert lines(choose_routes(P, q, A_HOST, B_HOST)) == [
        ("tcp", "tcp://203.0.113.20:40123", "203.0.113.0/24"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]


def test_a_peer_only_on_loopback_is_unreachable_from_another_host():
    lonely = proc("urn:snipe:proc:q", HOST_B, "q1", advertised_comm(PORT, "/s.sock", []))
    assert choose_routes(P, lonely, A_HOST, B_HOST) == []
    neighbour = proc("urn:snipe:proc:n", HOST_B, "n1", [])
    assert lines(choose_routes(neighbour, lonely, B_HOST, B_HOST)) == [
        ("ipc", "ipc:///s.sock", None),
        ("tcp", "tcp://127.0.0.1:40123", "127.0.0.0/8"),
        ("tcp", "tcp://127.0.0.1:40123", None),
    ]


def test_ipv6_only():
    e = [iface("fd00:1::3", "fd00:1::/64", bandwidth_mbps=10000.0), iface("fd00:9::3", "fd00:9::/64")]
    f = [iface("fd00:2::4", "fd00:2::/64"), iface("fd00:1::4", "fd00:1::/64", bandwidth_mbps=25000.0)]
    p = proc("urn:snipe:proc:p", "urn:snipe:host:e", "p1", advertised_comm(PORT, None, e))
    q = proc("urn:snipe:proc:q", "urn:snipe:host:f", "q1", advertised_comm(PORT, None, f))
    routes = choose_routes(p, q, {"interfaces": e}, {"interfaces": f})
    assert lines(routes) == [
        ("tcp", "tcp://[fd00:1::4]:40123", "fd00:1::/64"),
        ("tcp", "tcp://[fd00:2::4]:40123", None),
    ]
    assert routes[0].bandwidth_mbps == 10000.0


def test_ipv4_host_and_ipv6_peer_share_nothing_but_the_default():
    v6 = [iface("fd00:1::4", "fd00:1::/64", net_name="fabric")]
    q = proc("urn:snipe:proc:q", HOST_B, "q1", advertised_comm(PORT, None, v6))
    a = [iface("10.0.0.1", "10.0.0.0/24", net_name="fabric")]
    assert lines(choose_routes(P, q, {"interfaces": a}, {"interfaces": v6})) == [
        ("tcp", "tcp://[fd00:1::4]:40123", None)]


def test_malformed_comm_entries_do_not_stop_routing():
    comm = ["junk", {"transport": "tcp", "endpoint": "tcp://192.168.60.20:40123", "address": "10.0.0.1"},
            {"transport": "tcp", "endpoint": "tcp://192.168.60.20:40124"},
            {"transport": "tcp", "endpoint": "tcp://*:1", "default": True},
            {"transport": "tcp", "endpoint": "tcp://203.0.113.20:40123", "default": True}]
    q = proc("urn:snipe:proc:q", HOST_B, "q1", comm)
    assert lines(choose_routes(P, q, A_HOST, B_HOST)) == [
        ("tcp", "tcp://192.168.60.20:40124", "fabric"),
        ("tcp", "tcp://203.0.113.20:40123", "203.0.113.0/24"),
        ("tcp", "tcp://203.0.113.20:40123", None),
    ]


def test_ordering_ties_are_stable():
    # two equally fast shared subnets: my interface order, then the peer's
    a = [iface("10.2.0.1", "10.2.0.0/24"), iface("10.1.0.1", "10.1.0.0/24")]
    b = [iface("10.1.0.2", "10.1.0.0/24"), iface("10.2.0.2", "10.2.0.0/24"), iface("10.3.0.2", "10.3.0.0/24")]
    comm = [{"transport": "tcp", "endpoint": "tcp://10.3.0.2:1", "address": "10.3.0.2", "default": True},
            {"transport": "tcp", "endpoint": "tcp://10.1.0.2:1", "address": "10.1.0.2"},
            {"transport": "tcp", "endpoint": "tcp://10.2.0.2:2", "address": "10.2.0.2"},
            {"transport": "tcp", "endpoint": "tcp://10.2.0.2:1", "address": "10.2.0.2"}]
    q = proc("urn:snipe:proc:q", HOST_B, "q1", comm)
    expected = [
        ("tcp", "tcp://10.2.0.2:2", "10.2.0.0/24"),
        ("tcp", "tcp://10.2.0.2:1", "10.2.0.0/24"),
        ("tcp", "tcp://10.1.0.2:1", "10.1.0.0/24"),
        ("tcp", "tcp://10.3.0.2:1", None),
    ]
    for _ in range(3):
        assert lines(choose_routes(P, q, {"interfaces": a}, {"interfaces": b})) == expected
    # two of my interfaces reach the same peer address: it is offered once, at its best place
    a2 = [iface("10.1.0.1", "10.1.0.0/24", bandwidth_mbps=10.0), iface("10.1.0.9", "10.1.0.0/24", bandwidth_mbps=99.0)]
    routes = choose_routes(P, q, {"interfaces": a2}, {"interfaces": b})
    assert lines(routes) == [("tcp", "tcp://10.1.0.2:1", "10.1.0.0/24"), ("tcp", "tcp://10.3.0.2:1", None)]
    assert routes[0].bandwidth_mbps == 99.0


def test_routes_are_values():
    routes = choose_routes(P, Q, A_HOST, B_HOST)
    assert routes == choose_routes(P, Q, A_HOST, B_HOST)
    assert routes[0] == Route("tcp", "tcp://192.168.60.20:40123", "fabric", 40000.0, 2.0, 0)
    assert len(set(routes)) == 3
    with pytest.raises(AttributeError):
        routes[0].rank = 5  # type: ignore[misc]


# --- gateways (relay routes) ----------------------------------------------------------------------

# h1 is on public; far only on back; gw is on both and relays; gw2 too, slower to far; h3 only on public
H1 = "urn:snipe:host:h1"
FAR = "urn:snipe:host:far"
H1_HOST = {"interfaces": [iface("10.201.1.10", "10.201.1.0/24", bandwidth_mbps=1000.0, latency_us=200.0)]}
FAR_HOST = {"interfaces": [iface("10.201.3.14", "10.201.3.0/24", net_name="back", bandwidth_mbps=1000.0,
                                 latency_us=200.0)]}
GW_HOST = {"relay_port": 7401, "key": "ab" * 32, "interfaces": [
    iface("10.201.1.13", "10.201.1.0/24", bandwidth_mbps=1000.0, latency_us=200.0),
    iface("10.201.3.13", "10.201.3.0/24", net_name="back", bandwidth_mbps=1000.0, latency_us=200.0)]}
GW2_HOST = {"relay_port": 7401, "key": "cd" * 32, "interfaces": [
    iface("10.201.1.15", "10.201.1.0/24", bandwidth_mbps=1000.0, latency_us=200.0),
    iface("10.201.3.15", "10.201.3.0/24", net_name="back", bandwidth_mbps=100.0, latency_us=900.0)]}
FAR_PROC = proc("urn:snipe:proc:f", FAR, "f1", advertised_comm(PORT, None, FAR_HOST["interfaces"]))
H1_PROC = proc("urn:snipe:proc:h", H1, "h1", advertised_comm(PORT, None, H1_HOST["interfaces"]))


def test_no_shared_network_goes_through_the_gateways_best_first_before_the_default():
    gateways = {"urn:snipe:host:gw2": GW2_HOST, "urn:snipe:host:gw": GW_HOST}
    routes = choose_routes(H1_PROC, FAR_PROC, H1_HOST, FAR_HOST, gateways)
    assert lines(routes) == [
        ("relay", "tcp://10.201.1.13:7401", "via gw/back"),
        ("relay", "tcp://10.201.1.15:7401", "via gw2/back"),
        ("tcp", "tcp://10.201.3.14:40123", None),
    ]
    assert (routes[0].via, routes[0].via_key) == ("urn:snipe:host:gw", "ab" * 32)
    assert (routes[0].bandwidth_mbps, routes[0].latency_us) == (1000.0, 400.0)
    assert (routes[1].bandwidth_mbps, routes[1].latency_us) == (100.0, 1100.0)
    # and the other way: far reaches gw on back, and the hop to h1 is named by its subnet
    back = choose_routes(FAR_PROC, H1_PROC, FAR_HOST, H1_HOST, {"urn:snipe:host:gw": GW_HOST})
    assert lines(back)[0] == ("relay", "tcp://10.201.3.13:7401", "via gw/10.201.1.0/24")


def test_gateways_are_not_used_when_a_network_is_shared_or_on_the_same_host():
    gateways = {"urn:snipe:host:gw": GW_HOST}
    assert all(r.kind != "relay" for r in choose_routes(P, Q, A_HOST, B_HOST, gateways))
    local = proc("urn:snipe:proc:f2", FAR, "f2", advertised_comm(PORT, "/run/f2.sock", FAR_HOST["interfaces"]))
    assert all(r.kind != "relay" for r in choose_routes(FAR_PROC, local, FAR_HOST, FAR_HOST, gateways))


def test_what_is_not_a_usable_gateway():
    def relays(gateways: dict[str, Any]) -> list[str]:
        return [r.endpoint for r in choose_routes(H1_PROC, FAR_PROC, H1_HOST, FAR_HOST, gateways) if r.kind == "relay"]

    assert relays({}) == []
    assert relays({"urn:snipe:host:gw": {**GW_HOST, "relay_port": None}}) == []          # does not relay
    assert relays({"urn:snipe:host:gw": {**GW_HOST, "relay_port": 70000}}) == []
    assert relays({"urn:snipe:host:gw": {**GW_HOST, "relay_port": True}}) == []
    assert relays({"urn:snipe:host:gw": {**GW_HOST, "key": None}}) == []                 # no key to check it by
    assert relays({"urn:snipe:host:gw": {**GW_HOST, "interfaces": GW_HOST["interfaces"][:1]}}) == []  # not on back
    assert relays({"urn:snipe:host:gw": "junk", FAR: GW_HOST, H1: GW_HOST}) == []        # junk, or an end itself
    assert relays({"urn:snipe:host:gw": GW_HOST}) == ["tcp://10.201.1.13:7401"]
    assert choose_routes(H1_PROC, FAR_PROC, None, FAR_HOST, {"urn:snipe:host:gw": GW_HOST})[0].kind == "tcp"


# --- choose_routes: properties --------------------------------------------------------------------

SUBNETS = ["10.1.0", "10.2.0", "192.168.7"]
V6_SUBNETS = ["fd00:1:", "fd00:2:"]


@st.composite
def host_interfaces(draw: st.DrawFn, host_octet: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for subnet in draw(st.lists(st.sampled_from(SUBNETS), unique=True, max_size=3)):
        extra = draw(st.fixed_dictionaries({}, optional={
            "net_name": st.sampled_from(["fabric", "lab"]),
            "bandwidth_mbps": st.sampled_from([10.0, 1000.0, 40000.0]),
            "latency_us": st.sampled_from([1.0, 50.0]),
            "up": st.booleans(),
        }))
        out.append(iface(f"{subnet}.{host_octet}", f"{subnet}.0/24", **extra))
    for subnet in draw(st.lists(st.sampled_from(V6_SUBNETS), unique=True, max_size=2)):
        out.append(iface(f"{subnet}:{host_octet:x}", f"{subnet}:/64"))
    return out


@given(
    a=host_interfaces(1), b=host_interfaces(2), same_host=st.booleans(), same_proc=st.booleans(),
    ipc=st.booleans(), loopback_listed=st.booleans(), junk=st.lists(st.sampled_from(
        ["x", {"transport": "tcp", "endpoint": "tcp://*:9"}, {"transport": "ipc"}]), max_size=2),
)
def test_every_route_list_ends_with_the_default_route(
    a: list[dict[str, Any]], b: list[dict[str, Any]], same_host: bool, same_proc: bool, ipc: bool,
    loopback_listed: bool, junk: list[Any],
) -> None:
    if same_host:
        b = a
    peer_ifaces = b + ([iface("127.0.0.1", "127.0.0.0/8")] if loopback_listed else [])
    comm = [*junk, *advertised_comm(PORT, "/q.sock" if ipc else None, peer_ifaces)]
    me_host, peer_host = (HOST_A, HOST_A) if same_host else (HOST_A, HOST_B)
    peer = proc("urn:snipe:proc:q", peer_host, "q1", comm)
    me = peer if same_proc and same_host else proc("urn:snipe:proc:p", me_host, "p1", [])
    routes = choose_routes(me, peer, {"interfaces": a}, {"interfaces": b})
    default = peer.default_tcp(allow_loopback=same_host)
    if default is None:  # a peer on another host with nothing but loopback
        assert not same_host and routes == []
        return
    assert routes[-1] == Route("tcp", default["endpoint"], None, None, None, len(routes) - 1)
    assert [r.rank for r in routes] == list(range(len(routes)))
    assert all(r.net is not None or r.kind != "tcp" for r in routes[:-1])
    before = [r.endpoint for r in routes[:-1]]
    assert len(before) == len(set(before))
    if not same_host:
        assert all(r.kind == "tcp" and "127.0.0.1" not in r.endpoint for r in routes)
    kinds = [r.kind for r in routes]
    assert kinds == sorted(kinds, key=["inproc", "ipc", "tcp"].index)
    assert ("inproc" in kinds) == (same_proc and same_host)
    assert ("ipc" in kinds) == (same_host and ipc)
    shared = shared_networks(a, b)
    net_routes = [r for r in routes[:-1] if r.kind == "tcp" and not r.endpoint.startswith("tcp://127.")]
    assert len(net_routes) == len({pb["address"] for _, pb in shared})


@given(a=host_interfaces(1), b=host_interfaces(2), g1=host_interfaces(3), g2=host_interfaces(4),
       port=st.sampled_from([7401, 0, None]))
def test_relay_routes_only_without_a_shared_network_through_gateways_sharing_one_with_each(
    a: list[dict[str, Any]], b: list[dict[str, Any]], g1: list[dict[str, Any]], g2: list[dict[str, Any]],
    port: int | None,
) -> None:
    gateways = {"urn:snipe:host:g1": {"interfaces": g1, "relay_port": port, "key": "ab" * 32},
                "urn:snipe:host:g2": {"interfaces": g2, "relay_port": 7401, "key": "cd" * 32}}
    peer = proc("urn:snipe:proc:q", HOST_B, "q1", advertised_comm(PORT, None, b))
    me = proc("urn:snipe:proc:p", HOST_A, "p1", [])
    routes = choose_routes(me, peer, {"interfaces": a}, {"interfaces": b}, gateways)
    relays = [r for r in routes if r.kind == "relay"]
    if shared_networks(a, b):
        assert relays == []
    usable = {u for u, g in gateways.items() if g["relay_port"] and shared_networks(a, g["interfaces"])
              and shared_networks(g["interfaces"], b)}
    if not shared_networks(a, b):
        assert {r.via for r in relays} == usable
    for r in relays:
        assert r.net is not None and r.net.startswith(f"via {r.via.rsplit(':', 1)[1]}/")
        host = gateways[r.via]
        assert r.endpoint in {f"tcp://{x['address']}:7401" if ":" not in x["address"]
                              else f"tcp://[{x['address']}]:7401" for _, x in shared_networks(a, host["interfaces"])}
    if relays and routes[-1].kind == "tcp" and routes[-1].net is None:
        assert routes.index(relays[-1]) < len(routes) - 1          # relays come before the default route
    assert [r.rank for r in routes] == list(range(len(routes)))
