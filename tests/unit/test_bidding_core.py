"""Placement by bids without sockets: a host's bid from its state, and the auction's choice."""

from __future__ import annotations

import pytest

from snipe.bidding import Auction, Bid, HostState, Refusal, bid, check_price
from snipe.errors import ConfigError, NotFound


def host(name: str, *, price: float = 1.0, cpus: int = 4, running: int = 0, load: float = 0.0,
         draining: bool = False, **meta: object) -> HostState:
    return HostState(f"urn:snipe:host:{name}", price, cpus, running, load, draining,
                     {"arch": "x86_64", "cpus": cpus, **meta})


def test_a_bid_is_the_price_times_how_busy_the_task_would_find_the_host() -> None:
    idle = bid(host("a"), [])
    assert isinstance(idle, Bid) and idle.price == pytest.approx(1.25)         # 1 + (0 + 1) / 4
    dear = bid(host("b", price=2.0), [])
    assert isinstance(dear, Bid) and dear.price == pytest.approx(2.5)
    busy_cheap = bid(host("c", price=1.0, running=8, load=1.5), [])           # 1 + 9/4 + 1.5
    assert isinstance(busy_cheap, Bid) and busy_cheap.price == pytest.approx(4.75) and busy_cheap.price > dear.price
    assert busy_cheap.detail == {"price_per_cpu_s": 1.0, "running_tasks": 8, "cpus": 4, "load_per_cpu": 1.5}
    free = bid(host("d", price=0.0, running=100), [])
    assert isinstance(free, Bid) and free.price == 0.0


def test_a_host_refuses_when_draining_unfit_or_above_the_cap_and_says_why() -> None:
    assert bid(host("a", draining=True), []) == Refusal("urn:snipe:host:a", "draining: it takes no new tasks")
    unfit = bid(host("a"), [("arch", "=", "aarch64"), ("cpus", ">=", 2)])
    assert isinstance(unfit, Refusal) and "arch = 'aarch64'" in unfit.reason
    assert isinstance(bid(host("a"), [("arch", "=", "x86_64"), ("cpus", ">=", 2), ("gpu", "exists", None)]), Refusal)
    assert isinstance(bid(host("a", gpu="a100"), [("gpu", "exists", None)]), Bid)
    capped = bid(host("a"), [], max_price=1.0)
    assert isinstance(capped, Refusal) and "1.25 is above the price cap 1" in capped.reason
    assert isinstance(bid(host("a"), [], max_price=1.25), Bid)


def test_prices_are_checked() -> None:
    assert check_price(0) == 0.0 and check_price(2.5) == 2.5
    for bad in (-1, float("nan"), float("inf"), True, "1", None):
        with pytest.raises(ConfigError, match="price must be a number >= 0"):
            check_price(bad)


def test_the_auction_takes_the_lowest_bid_and_ties_go_to_the_first_host_by_urn() -> None:
    a = Auction(["urn:snipe:host:c", "urn:snipe:host:a", "urn:snipe:host:b"])
    a.on_bid(Bid("urn:snipe:host:c", 2.0))
    a.on_bid(Bid("urn:snipe:host:b", 2.0))
    assert not a.done
    a.on_bid(Bid("urn:snipe:host:a", 3.0))
    a.on_bid(Bid("urn:snipe:host:a", 0.1))               # a second answer from one host is ignored
    a.on_bid(Bid("urn:snipe:host:x", 0.1))               # and one from a host not asked
    assert a.done and a.winner() == Bid("urn:snipe:host:b", 2.0)
    assert [b.host for b in a.ranked()] == ["urn:snipe:host:b", "urn:snipe:host:c", "urn:snipe:host:a"]


def test_with_no_bid_the_auction_says_why_each_host_did_not_bid() -> None:
    a = Auction(["urn:snipe:host:h1", "urn:snipe:host:h2", "urn:snipe:host:h3"])
    a.on_refusal(Refusal("urn:snipe:host:h1", "draining: it takes no new tasks"))
    a.on_bid(Bid("urn:snipe:host:h2", 5.0))
    a.on_deadline()                                          # h3 never answered
    assert a.done and a.winner().host == "urn:snipe:host:h2"
    b = Auction(["urn:snipe:host:h1", "urn:snipe:host:h3"])
    b.on_refusal(Refusal("urn:snipe:host:h1", "draining: it takes no new tasks"))
    b.on_deadline()
    with pytest.raises(NotFound, match=r"h1: draining: it takes no new tasks; h3: did not bid in time"):
        b.winner()
    with pytest.raises(NotFound, match="no live host"):
        Auction([])


def test_free_hosts_all_bid_nothing_and_the_least_busy_wins() -> None:
    a = Auction(["urn:snipe:host:a", "urn:snipe:host:b"])
    for b in (bid(host("a", price=0.0, running=50), []), bid(host("b", price=0.0), [])):
        assert isinstance(b, Bid) and b.price == 0.0
        a.on_bid(b)
    assert a.winner().host == "urn:snipe:host:b"
    tiny = bid(host("c", price=1e-9), [])
    assert isinstance(tiny, Bid) and tiny.price > 0                  # not rounded away


def test_the_spawner_takes_no_daemons_word_on_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from snipe import runtime
    from snipe.daemonclient import DaemonClient
    from snipe.identity import Identity

    key = Identity.generate().key_id
    offers = {"tcp://127.0.0.1:1": {"bid": float("inf")}, "tcp://127.0.0.1:2": {"bid": 5.0, "busy": 1.0},
              "tcp://127.0.0.1:3": {"bid": 2.0, "busy": 0.5, "detail": "not a map"}, "tcp://127.0.0.1:4": {"bid": "0"}}

    def call(self: DaemonClient, kind: str, body: object = None, frames: object = (),
             timeout: float | None = None) -> tuple[dict[str, object], list[bytes]]:
        assert kind == "bid"
        return dict(offers[self.endpoint]), []

    monkeypatch.setattr(DaemonClient, "call", call)
    monkeypatch.setattr(runtime, "session", lambda: SimpleNamespace(identity=Identity.generate()))
    hosts = {f"urn:snipe:host:h{i}": SimpleNamespace(value=lambda name, now, a=address: f"{a}#{key}")
             for i, address in enumerate(offers, 1)}
    ranked = runtime._call_for_bids(hosts, [], 3.0)
    assert [(b.host, b.price, b.busy, dict(b.detail)) for b in ranked] == [("urn:snipe:host:h3", 2.0, 0.5, {})]
    with pytest.raises(NotFound, match=r"h1: answered no bid.*h2: its bid 5 is above the price cap 3"):
        runtime._call_for_bids({u: hosts[u] for u in ("urn:snipe:host:h1", "urn:snipe:host:h2")}, [], 3.0)


def test_quorum_is_all_but_a_quarter_of_the_hosts_asked_and_at_least_one() -> None:
    hosts = [f"urn:snipe:host:h{i}" for i in range(8)]
    a = Auction(hosts)
    assert a.enough == 6
    for h in hosts[:5]:
        a.on_bid(Bid(h, 1.0))
    a.on_refusal(Refusal(hosts[5], "draining"))            # refusals are not bids
    assert not a.quorum
    a.on_bid(Bid(hosts[6], 1.0))
    assert a.quorum and not a.done
    assert Auction(hosts[:1]).enough == 1 and Auction(hosts[:3]).enough == 3 and Auction(hosts[:4]).enough == 3
    assert Auction(hosts, enough=2).enough == 2
