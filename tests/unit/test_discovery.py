"""Replica discovery without the network: list and config parsing, precedence, SRV order, failover."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from snipe.discovery import (
    FailoverOrder,
    ReplicaAddress,
    SrvRecord,
    discover,
    from_config,
    from_list,
    order_srv,
    parse_address,
)
from snipe.errors import ConfigError

KEY_A = "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
KEY_B = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"
CONF = Path(__file__).resolve().parents[2] / "conf"


# --------------------------------------------------------------------------- list items


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("tcp://127.0.0.1:7301", ReplicaAddress("tcp://127.0.0.1:7301")),
        ("127.0.0.1:7301", ReplicaAddress("tcp://127.0.0.1:7301")),
        ("  rcds1.example.org:7301 ", ReplicaAddress("tcp://rcds1.example.org:7301")),
        ("tcp://[::1]:7301", ReplicaAddress("tcp://[::1]:7301")),
        ("[2001:db8::1]:65535", ReplicaAddress("tcp://[2001:db8::1]:65535")),
        (f"tcp://rcds1.example.org:7301#{KEY_A}", ReplicaAddress("tcp://rcds1.example.org:7301", KEY_A)),
        (f"localhost:1#{KEY_A.upper()}", ReplicaAddress("tcp://localhost:1", KEY_A)),
        ("ipc:///run/user/1000/snipe/rcds-0.sock", ReplicaAddress("ipc:///run/user/1000/snipe/rcds-0.sock")),
    ],
)
def test_parse_address_accepts(item: str, expected: ReplicaAddress) -> None:
    assert parse_address(item) == expected


@pytest.mark.parametrize(
    ("item", "says"),
    [
        ("rcds1.example.org", "no port"),
        ("tcp://rcds1.example.org:", "no port"),
        ("rcds1.example.org:0", "not a number in 1..65535"),
        ("rcds1.example.org:70000", "not a number in 1..65535"),
        ("rcds1.example.org:http", "not a number in 1..65535"),
        ("udp://127.0.0.1:7301", "unsupported transport 'udp'"),
        ("::1:7301", "must be written in brackets"),
        ("tcp://[::1:7301", "closing bracket"),
        ("tcp://[not-v6]:7301", "not an IPv6 address"),
        ("bad_host!:7301", "neither an IP address nor a valid host name"),
        ("-lead.example.org:7301", "neither an IP address nor a valid host name"),
        (":7301", "host is empty"),
        ("", "has no address"),
        (f"#{KEY_A}", "has no address"),
        ("127.0.0.1:7301#abc", "not a key id"),
        (f"127.0.0.1:7301#{KEY_A}00", "not a key id"),
        ("ipc://", "no path"),
    ],
)
def test_parse_address_rejects_naming_the_item(item: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(item)
    assert says in str(info.value)
    assert repr(item) in str(info.value)


def test_parse_address_rejects_non_strings() -> None:
    with pytest.raises(ConfigError, match="is a int"):
        parse_address(7301)  # type: ignore[arg-type]


def test_replica_address_prints_in_list_form_and_reads_back() -> None:
    address = ReplicaAddress("tcp://[::1]:7301", KEY_A.upper())
    assert address.public_key == KEY_A
    assert str(address) == f"tcp://[::1]:7301#{KEY_A}"
    assert parse_address(str(address)) == address
    assert str(ReplicaAddress("tcp://h:1")) == "tcp://h:1"


def test_replica_address_validates_when_built_directly() -> None:
    with pytest.raises(ConfigError, match="not a key id"):
        ReplicaAddress("tcp://h:1", "xyz")
    with pytest.raises(ConfigError, match="no port"):
        ReplicaAddress("tcp://h")
    with pytest.raises(ConfigError, match="priority must be an integer"):
        ReplicaAddress("tcp://h:1", priority=-1)


def test_from_list_keeps_order() -> None:
    assert from_list(["b.example.org:2", f"tcp://a.example.org:1#{KEY_B}"]) == [
        ReplicaAddress("tcp://b.example.org:2"),
        ReplicaAddress("tcp://a.example.org:1", KEY_B),
    ]
    assert from_list([]) == []


def test_from_list_names_the_bad_item() -> None:
    with pytest.raises(ConfigError, match="replica 'nope'"):
        from_list(["127.0.0.1:7301", "nope"])


def test_from_list_refuses_a_repeated_replica() -> None:
    with pytest.raises(ConfigError, match=r"replica 'tcp://h:1' repeats 'h:1'; list each replica once"):
        from_list(["h:1", "tcp://h:1"])


def test_from_list_refuses_a_bare_string() -> None:
    with pytest.raises(ConfigError, match="not the single string"):
        from_list("tcp://h:1")


# --------------------------------------------------------------------------- config files


def write(tmp_path: Path, text: str, name: str = "client.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_from_config_reads_the_replica_list(tmp_path: Path) -> None:
    path = write(tmp_path, f'[catalog]\nreplicas = ["h1:7301", "tcp://h2:7302#{KEY_A}"]\n')
    assert from_config(path) == [ReplicaAddress("tcp://h1:7301"), ReplicaAddress("tcp://h2:7302", KEY_A)]
    assert from_config(str(path)) == from_config(path)


def test_from_config_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=f"{missing}: no such file"):
        from_config(missing)


def test_from_config_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        from_config(tmp_path)


def test_from_config_bad_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[catalog\nreplicas = 1\n")
    with pytest.raises(ConfigError, match=f"{path}: not valid TOML"):
        from_config(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('catalog = "h:1"\n', "'catalog' must be a table"),
        ('[catalog]\nreplicas = "h:1"\n', "catalog.replicas must be a list of strings"),
        ('[catalog]\nreplicas = ["h:1", 7301]\n', "catalog.replicas[1]: replica 7301 is a int"),
        ('[catalog]\nreplicas = ["h:1", "h"]\n', "catalog.replicas[1]: replica 'h': no port"),
        ('[catalog]\nreplicas = ["h:1", "tcp://h:1"]\n', "catalog.replicas[1] repeats tcp://h:1"),
        ("[catalog]\nsrv_domain = 5\n", "catalog.srv_domain must be a domain name"),
        ('[catalog]\nsrv_domain = ""\n', "catalog.srv_domain must be a domain name"),
        ('[catalog]\nsrv_domain = "bad domain"\n', "catalog.srv_domain: 'bad domain' is not a domain name"),
        ('[catalog]\nsrv_domain = "192.0.2.1"\n', "catalog.srv_domain: '192.0.2.1' is an IP address"),
        ('[catalog]\nreplicas = ["h:1"]\ndns_server = 53\n', "catalog.dns_server must be a string"),
        ('[catalog]\nreplicas = ["h:1"]\ndns_server = "ns.example.org"\n', "give an IP address"),
        ('[catalog]\nreplicas = ["h:1"]\ndns_server = "10.0.0.1:x"\n', "port 'x' is not a number"),
        ('[catalog]\nreplicas = ["h:1"]\ndns_timeout = 0\n', "catalog.dns_timeout must be a positive number"),
        (
            '[catalog]\nreplicas = ["h:1"]\ndns_timeout = true\n',
            "catalog.dns_timeout must be a positive number",
        ),
        ("[catalog]\nreplicas = []\n", "[catalog] names no replicas"),
        ("[daemon]\nlisten = 'tcp://*:7401'\n", "[catalog] names no replicas"),
    ],
)
def test_from_config_names_file_and_key(tmp_path: Path, text: str, says: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        from_config(path)
    assert str(path) in str(info.value)
    assert says in str(info.value)


def test_from_config_accepts_ipv6_dns_server_forms(tmp_path: Path) -> None:
    for server in ("::1", "[::1]:5353", "127.0.0.1", "127.0.0.1:5353"):
        path = write(tmp_path, f'[catalog]\nreplicas = ["h:1"]\ndns_server = "{server}"\n')
        assert from_config(path) == [ReplicaAddress("tcp://h:1")]


def test_example_client_config_parses_its_list(tmp_path: Path) -> None:
    """conf/client.toml without its srv_domain (that part is tested against a DNS server)."""
    text = (CONF / "client.toml").read_text().replace('srv_domain = "example.org"', "")
    assert [str(a) for a in from_config(write(tmp_path, text))] == [
        f"tcp://rcds1.example.org:7301#{KEY_A}",
        f"tcp://rcds2.example.org:7301#{KEY_B}",
        "tcp://rcds3.example.org:7301",
    ]


# --------------------------------------------------------------------------- precedence


def test_discover_explicit_list_beats_everything(tmp_path: Path) -> None:
    config = write(tmp_path, '[catalog]\nreplicas = ["file:1"]\n')
    env = {"SNIPE_CATALOG": "env:1", "SNIPE_CONFIG": str(config), "SNIPE_SRV_DOMAIN": "example.org"}
    assert discover(["explicit:1"], config_path=config, srv_domain="example.org", env=env) == [
        ReplicaAddress("tcp://explicit:1")
    ]


def test_discover_env_list_beats_config(tmp_path: Path) -> None:
    config = write(tmp_path, '[catalog]\nreplicas = ["file:1"]\n')
    env = {"SNIPE_CATALOG": " env1:1 , env2:2#" + KEY_A + ",", "SNIPE_CONFIG": str(config)}
    assert discover(config_path=config, env=env) == [
        ReplicaAddress("tcp://env1:1"),
        ReplicaAddress("tcp://env2:2", KEY_A),
    ]


def test_discover_empty_explicit_list_and_env_fall_through(tmp_path: Path) -> None:
    config = write(tmp_path, '[catalog]\nreplicas = ["file:1"]\n')
    assert discover([], env={"SNIPE_CATALOG": " ", "SNIPE_CONFIG": str(config)}) == [
        ReplicaAddress("tcp://file:1")
    ]


def test_discover_config_argument_beats_config_env(tmp_path: Path) -> None:
    chosen = write(tmp_path, '[catalog]\nreplicas = ["arg:1"]\n', "a.toml")
    other = write(tmp_path, '[catalog]\nreplicas = ["env:1"]\n', "b.toml")
    assert discover(config_path=chosen, env={"SNIPE_CONFIG": str(other)}) == [ReplicaAddress("tcp://arg:1")]
    assert discover(env={"SNIPE_CONFIG": str(other)}) == [ReplicaAddress("tcp://env:1")]


def test_discover_names_the_bad_env_list() -> None:
    with pytest.raises(ConfigError, match="SNIPE_CATALOG: replica 'h:x'"):
        discover(env={"SNIPE_CATALOG": "h:1,h:x"})


def test_discover_names_the_variable_that_pointed_at_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file.*\(named by SNIPE_CONFIG\)"):
        discover(env={"SNIPE_CONFIG": str(tmp_path / "gone.toml")})


def test_discover_rejects_a_bad_dns_server_before_asking(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="SNIPE_DNS_SERVER: DNS server 'ns1'"):
        discover(srv_domain="example.org", env={"SNIPE_DNS_SERVER": "ns1"})


def test_discover_names_the_variable_holding_a_bad_domain() -> None:
    with pytest.raises(ConfigError, match="SNIPE_SRV_DOMAIN: 'not a domain' is not a domain name"):
        discover(env={"SNIPE_SRV_DOMAIN": "not a domain"})


def test_discover_with_nothing_configured_says_what_to_set() -> None:
    with pytest.raises(ConfigError) as info:
        discover(env={})
    message = str(info.value)
    for hint in ("replicas=", "SNIPE_CATALOG", "SNIPE_CONFIG", "SNIPE_SRV_DOMAIN"):
        assert hint in message


def test_discover_config_without_catalog_and_no_domain(tmp_path: Path) -> None:
    config = write(tmp_path, "[daemon]\n")
    with pytest.raises(ConfigError, match=r"names no replicas, and no SRV domain is set.*SNIPE_CATALOG"):
        discover(config_path=config, env={})


# --------------------------------------------------------------------------- SRV order


def srv(priority: int, weight: int, target: str, port: int = 7301) -> SrvRecord:
    return SrvRecord(priority, weight, port, target)


def test_order_srv_without_rng_is_priority_then_heaviest() -> None:
    records = [srv(20, 0, "c"), srv(10, 40, "b"), srv(10, 60, "a"), srv(10, 60, "a"), srv(5, 0, "z")]
    assert [r.target for r in order_srv(records)] == ["z", "a", "b", "c"]


def test_order_srv_weighted_random_within_priority() -> None:
    records = [srv(10, 60, "a"), srv(10, 40, "b"), srv(10, 0, "zero"), srv(20, 100, "later")]
    rng = random.Random(1234)
    firsts: Counter[str] = Counter()
    for _ in range(4000):
        ordered = [r.target for r in order_srv(records, rng)]
        assert ordered[-1] == "later"
        assert sorted(ordered[:3]) == ["a", "b", "zero"]
        firsts[ordered[0]] += 1
    # RFC 2782 picks by running sum over [0, total]: shares 61/101, 40/101, 1/101 up to noise.
    assert 0.55 < firsts["a"] / 4000 < 0.66
    assert 0.34 < firsts["b"] / 4000 < 0.45
    assert firsts["zero"] / 4000 < 0.03


def test_order_srv_is_reproducible_with_a_seed() -> None:
    records = [srv(10, w, f"t{w}") for w in (1, 5, 10, 20, 40)]
    assert order_srv(records, random.Random(7)) == order_srv(records, random.Random(7))


def test_order_srv_all_zero_weights_still_orders_everything() -> None:
    records = [srv(10, 0, "a"), srv(10, 0, "b")]
    assert sorted(r.target for r in order_srv(records, random.Random(0))) == ["a", "b"]


# --------------------------------------------------------------------------- failover

A = ReplicaAddress("tcp://a:1")
B = ReplicaAddress("tcp://b:1")
C = ReplicaAddress("tcp://c:1")


def test_failover_prefers_replicas_in_discovery_order() -> None:
    order = FailoverOrder([A, B, C])
    assert order.next_candidates(now=0.0) == [A, B, C]
    assert order.next_retry_at() is None


def test_failover_leaves_a_down_replica_out_until_its_backoff_ends() -> None:
    order = FailoverOrder([A, B, C], base_backoff=1.0, max_backoff=60.0)
    assert order.mark_down(A, now=100.0) == 101.0
    assert order.is_down(A)
    assert order.next_candidates(now=100.5) == [B, C]
    assert order.next_candidates(now=100.5, include_backing_off=True) == [B, C, A]
    assert order.next_retry_at() == 101.0
    assert order.next_candidates(now=101.0) == [B, C, A]


def test_failover_backoff_doubles_per_failure_up_to_the_cap() -> None:
    order = FailoverOrder([A], base_backoff=1.0, max_backoff=10.0)
    retries = [order.mark_down(A, now=0.0) for _ in range(6)]
    assert retries == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert order.backoff(10_000) == 10.0


def test_failover_mark_up_resets_the_backoff() -> None:
    order = FailoverOrder([A, B], base_backoff=1.0)
    order.mark_down(A, now=0.0)
    order.mark_down(A, now=1.0)
    order.mark_up(A)
    assert not order.is_down(A)
    assert order.retry_at(A) is None
    assert order.next_candidates(now=1.0) == [A, B]
    assert order.mark_down(A, now=5.0) == 6.0


def test_failover_retries_the_longest_waiting_first() -> None:
    order = FailoverOrder([A, B, C], base_backoff=1.0)
    order.mark_down(B, now=0.0)  # due at 1
    order.mark_down(A, now=5.0)  # due at 6
    order.mark_down(C, now=2.0)  # due at 3
    assert order.next_candidates(now=10.0) == [B, C, A]
    assert order.next_candidates(now=4.0) == [B, C]
    assert order.next_candidates(now=0.5, include_backing_off=True) == [B, C, A]


def test_failover_all_down_and_waiting_gives_nothing_but_says_when() -> None:
    order = FailoverOrder([A, B], base_backoff=2.0)
    order.mark_down(A, now=0.0)
    order.mark_down(B, now=1.0)
    assert order.next_candidates(now=1.5) == []
    assert order.next_retry_at() == 2.0


def test_failover_replace_keeps_state_of_replicas_still_present() -> None:
    order = FailoverOrder([A, B], base_backoff=1.0)
    order.mark_down(A, now=0.0)
    order.mark_down(B, now=0.0)
    order.replace([C, A, A])
    assert order.addresses == (C, A)
    assert order.is_down(A) and not order.is_down(B)
    assert order.next_candidates(now=0.0) == [C]
    assert order.mark_down(B, now=0.0) is None  # a late report about a dropped replica is ignored
    order.mark_up(B)
    assert order.addresses == (C, A)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_failover_rejects_a_nonsense_backoff(base: float, cap: float) -> None:
    with pytest.raises(ConfigError, match="0 < base_backoff <= max_backoff"):
        FailoverOrder([A], base_backoff=base, max_backoff=cap)
