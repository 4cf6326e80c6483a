"""The console's web page without a cluster: traffic rates from counters, --listen and --token."""

from __future__ import annotations

import pytest

from snipe.console.traffic import TaskCounters, TrafficHistory, task_counters
from snipe.console.web import is_loopback, parse_listen, token_for
from snipe.errors import ConfigError


def c(host: str, sent: int, received: int, at_s: float) -> TaskCounters:
    return TaskCounters(host, sent, received, int(at_s * 1000))


def test_a_rate_is_the_change_between_two_publications_over_the_time_between_them() -> None:
    h = TrafficHistory()
    h.add(100.0, {"a": c("h1", 10, 5, 99.0), "b": c("h2", 0, 0, 98.0)})      # first sight: no rate yet
    h.add(102.0, {"a": c("h1", 10, 5, 99.0), "b": c("h2", 0, 0, 98.0)})      # nothing newer published
    h.add(105.0, {"a": c("h1", 60, 55, 104.0), "b": c("h2", 8, 2, 103.0)})   # 100 in 5 s; 10 in 5 s
    h.add(107.0, {"a": c("h1", 60, 55, 104.0), "b": c("h2", 8, 2, 103.0)})   # rates hold between publications
    assert h.series() == {"t": [100.0, 102.0, 105.0, 107.0],
                          "hosts": {"h1": [0.0, 0.0, 20.0, 20.0], "h2": [0.0, 0.0, 2.0, 2.0]}}


def test_tasks_on_one_host_add_up_and_restarted_quiet_or_ended_ones_count_nothing() -> None:
    h = TrafficHistory(quiet_s=12.0)
    h.add(0.0, {"a": c("h1", 100, 0, 0.0), "b": c("h1", 0, 0, 0.0)})
    h.add(5.0, {"a": c("h1", 150, 0, 5.0), "b": c("h1", 25, 0, 5.0)})       # 10/s + 5/s
    h.add(10.0, {"a": c("h1", 3, 0, 10.0), "b": c("h1", 25, 0, 5.0)})       # a restarted; b went idle
    h.add(15.0, {"a": c("h1", 13, 0, 15.0), "b": c("h1", 25, 0, 5.0)})      # a: 2/s again; b still < quiet_s
    h.add(18.0, {"a": c("h1", 13, 0, 15.0), "b": c("h1", 25, 0, 5.0)})      # b quiet for 13 s: 0
    h.add(20.0, {"b": c("h1", 25, 0, 5.0)})                                 # a ended
    assert h.series()["hosts"] == {"h1": [0.0, 15.0, 5.0, 7.0, 2.0, 0.0]}


def test_the_window_is_bounded() -> None:
    h = TrafficHistory(max_samples=2)
    for i in range(5):
        h.add(float(i), {"a": c("h1", 10 * i, 0, float(i))})
    assert h.series() == {"t": [3.0, 4.0], "hosts": {"h1": [10.0, 10.0]}}
    with pytest.raises(ValueError):
        TrafficHistory(max_samples=0)


def test_published_counters_are_read_defensively() -> None:
    stats = {"urn:snipe:proc:x": {"sent": 7, "received": 2}, "urn:snipe:proc:y": {"sent": 1, "received": 1}}
    assert task_counters(stats, "urn:snipe:host:h1", 5) == TaskCounters("urn:snipe:host:h1", 8, 3, 5)
    odd = {"p": {"sent": "many", "received": -4}, "q": "not a map", "r": {"sent": True}}
    assert task_counters(odd, "h", 5) == TaskCounters("h", 0, 0, 5)
    assert task_counters(["not", "a", "map"], "h", 5) is None
    assert task_counters(stats, None, 5) is None


def test_listen_addresses_and_who_needs_a_token() -> None:
    assert parse_listen("127.0.0.1:8470") == ("127.0.0.1", 8470)
    assert parse_listen(":0") == ("127.0.0.1", 0)
    assert parse_listen("9000") == ("127.0.0.1", 9000)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("host:http", "127.0.0.1:70000", "127.0.0.1:-1"):
        with pytest.raises(ConfigError, match="--listen"):
            parse_listen(bad)
    assert is_loopback("127.0.0.3") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("10.0.0.1") and not is_loopback("0.0.0.0") and not is_loopback("example")
    assert token_for("127.0.0.1", None) is None
    made = token_for("0.0.0.0", None)
    assert made is not None and len(made) >= 24 and made != token_for("0.0.0.0", None)
    assert token_for("10.0.0.1", "a-long-secret") == "a-long-secret"
    for weak in ("", "short", "has a space in it"):
        with pytest.raises(ConfigError, match="--token"):
            token_for("127.0.0.1", weak)


def test_quiet_is_judged_by_the_samplers_clock_not_the_writers() -> None:
    h = TrafficHistory(quiet_s=12.0)
    skew = -100.0                                          # the task's host runs 100 s behind the console
    h.add(0.0, {"a": c("h1", 0, 0, 0.0 + skew)})
    h.add(5.0, {"a": c("h1", 50, 0, 5.0 + skew)})          # 10/s, though "published 95 s ago" by our clock
    h.add(10.0, {"a": c("h1", 50, 0, 5.0 + skew)})         # nothing newer yet: the rate holds
    h.add(18.0, {"a": c("h1", 50, 0, 5.0 + skew)})         # nothing newer for 13 s of ours: quiet
    assert h.series()["hosts"] == {"h1": [0.0, 10.0, 10.0, 0.0]}
