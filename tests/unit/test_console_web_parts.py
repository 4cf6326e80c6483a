"""The console's web page without a cluster: traffic rates from counters, --listen and --token."""

from __future__ import annotations

import pytest

from snipe.console.traffic import TaskCounters, TrafficHistory, task_counters
from snipe.console.web import is_loopback, parse_listen, token_for
from snipe.errors import ConfigError


def test_rates_are_per_host_messages_per_second_between_samples() -> None:
    h = TrafficHistory()
    h.add(100.0, {"a": TaskCounters("h1", 10, 5), "b": TaskCounters("h2", 0, 0)})
    assert h.series() == {"t": [], "hosts": {}}                       # one sample is no interval yet
    h.add(102.0, {"a": TaskCounters("h1", 30, 25), "b": TaskCounters("h2", 4, 0)})
    h.add(104.0, {"a": TaskCounters("h1", 30, 25), "b": TaskCounters("h2", 8, 2)})
    assert h.series() == {"t": [102.0, 104.0], "hosts": {"h1": [20.0, 0.0], "h2": [2.0, 3.0]}}


def test_a_new_task_counts_from_its_first_sample_and_a_restarted_or_ended_one_adds_nothing() -> None:
    h = TrafficHistory()
    h.add(0.0, {"a": TaskCounters("h1", 100, 0)})
    h.add(1.0, {"a": TaskCounters("h1", 3, 0),                        # restarted: its counters went down
                "new": TaskCounters("h1", 5000, 0)})                  # what it sent before is not this second's
    h.add(2.0, {"new": TaskCounters("h1", 5010, 0)})                  # "a" ended
    assert h.series()["hosts"] == {"h1": [0.0, 10.0]}


def test_samples_out_of_order_are_skipped_and_the_window_is_bounded() -> None:
    h = TrafficHistory(max_samples=3)
    h.add(5.0, {"a": TaskCounters("h1", 0, 0)})
    h.add(5.0, {"a": TaskCounters("h1", 50, 0)})                      # no time passed: no rate
    for i in range(1, 6):
        h.add(5.0 + i, {"a": TaskCounters("h1", 50 + i, 0)})
    assert h.series() == {"t": [9.0, 10.0], "hosts": {"h1": [1.0, 1.0]}}
    with pytest.raises(ValueError):
        TrafficHistory(max_samples=1)


def test_published_counters_are_read_defensively() -> None:
    stats = {"urn:snipe:proc:x": {"sent": 7, "received": 2}, "urn:snipe:proc:y": {"sent": 1, "received": 1}}
    assert task_counters(stats, "urn:snipe:host:h1") == TaskCounters("urn:snipe:host:h1", 8, 3)
    odd = {"p": {"sent": "many", "received": -4}, "q": "not a map", "r": {"sent": True}}
    assert task_counters(odd, "h") == TaskCounters("h", 0, 0)
    assert task_counters(["not", "a", "map"], "h") is None
    assert task_counters(stats, None) is None


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
