"""Placement by bids on a real cluster: the daemons bid from what they know, the spawner takes
the cheapest, a price cap and requirements are honoured, and every refusal says why."""

from __future__ import annotations

from pathlib import Path

import pytest

import snipe
from snipe.daemonclient import DaemonClient
from snipe.errors import CodecError, NotFound
from snipe.localcluster import LocalCluster
from snipe.runtime import Process
from tests.integration.test_daemon import SLEEPER
from tests.support import wait_for


def test_the_cheapest_bid_wins_and_a_cap_or_requirement_no_host_meets_is_a_clear_error(
        cluster: LocalCluster, tmp_path: Path) -> None:
    # h3's operator asks a tenth of the others' price: it wins while idle...
    cluster.stop_daemon(2)
    cluster.daemons[2].settings = {"price": 0.1}
    cluster.start_daemon(2)
    wait_for(lambda: snipe.hosts().get("urn:snipe:host:h3", {}).get("price") == 0.1, 30,
             "h3 to publish its price")
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    code = snipe.publish(tmp_path / "sleeper.py")
    first = snipe.spawn(code, "600", placement="bids")
    assert first.host == "urn:snipe:host:h3"
    # ... and a cap below every bid is refused by every host, each saying its bid
    with pytest.raises(NotFound, match=r"no host bid for the task \(h1: its bid [0-9.]+ is above the price cap 0\.01"):
        snipe.spawn(code, "1", placement="bids", max_price=0.01)
    with pytest.raises(NotFound, match="no live, non-draining host meets the requirements"):
        snipe.spawn(code, "1", placement="bids", requires={"arch": "no-such-arch"})
    with pytest.raises(ValueError, match="max_price caps bids"):
        snipe.spawn(code, "1", max_price=1.0)
    with pytest.raises(ValueError, match="placement must be one of"):
        snipe.spawn(code, "1", placement="random")
    with pytest.raises(ValueError, match="bids choose one"):
        snipe.spawn(code, "1", host="h1", placement="bids")
    # the daemons judge requirements on what they publish (tasks, alive, ...), as the catalog does
    third = snipe.spawn(code, "600", placement="bids", requires=["tasks<100", "alive=true"])
    assert third.host == "urn:snipe:host:h3"
    # a malformed call for bids is refused, and the daemon goes on bidding
    with DaemonClient(cluster.daemons[0].address, cluster.user) as d:
        for body, words in (({"max_price": "cheap"}, "max_price must be a number"),
                            ({"max_price": -1}, "max_price must be a number"),
                            ({"requires": "arch=x86_64"}, "requires")):
            with pytest.raises(CodecError, match=words):
                d.call("bid", body)
        assert d.call("bid", {})[0]["bid"] > 0
    # a draining host does not bid: with h3 draining, the next cheapest (h1 or h2, price 1) wins
    with DaemonClient(cluster.daemons[2].address, cluster.admin) as admin:     # draining is the admin's
        admin.call("drain", {"on": True})
    second = snipe.spawn(code, "600", placement="bids")
    assert second.host in ("urn:snipe:host:h1", "urn:snipe:host:h2")
    for p in (first, second, third):
        Process(p.urn).kill()
