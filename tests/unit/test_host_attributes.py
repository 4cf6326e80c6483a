"""Placement requirements name only what hosts publish (snipe.placement.HOST_ATTRIBUTES, which
must agree with daemon/hostinfo.py), and one that cannot be met as written is an error naming it."""

from __future__ import annotations

from typing import Any

import pytest
from snipe_daemon.hostinfo import LoadSampler, collect_host_info

from snipe.errors import RequirementError
from snipe.placement import HOST_ATTRIBUTES, check_requirements
from snipe.runtime import _requirements

KIND_OF: dict[type, str] = {int: "number", float: "number", str: "text", bool: "bool", list: "list", dict: "map"}
# what the daemon adds to collect_host_info's map (daemon/server.py, _host_metadata); the
# integration test test_every_attribute_a_live_host_publishes_is_known checks a real daemon's
DAEMON_ADDS = {"daemon", "key", "alive", "draining", "price", "relay_port", "tasks", "comm", "instance", "msg_stats"}


def test_the_attribute_list_agrees_with_what_hostinfo_collects() -> None:
    info = collect_host_info()
    assert set(info) == set(HOST_ATTRIBUTES) - DAEMON_ADDS
    assert set(LoadSampler(4, loadavg=lambda: (1.0, 1.0, 1.0), memory_available=lambda: 1).sample()) <= set(info)
    for name, value in info.items():
        assert KIND_OF[type(value)] == HOST_ATTRIBUTES[name], name


@pytest.mark.parametrize("written, says", [
    (["memroy>=1"], ["'memroy>=1'", "names 'memroy'", "did you mean 'memory'", "hosts publish: alive, arch"]),
    ({"cpu": 4}, ["names 'cpu'", "did you mean 'cpus'"]),
    (["gpu?"], ["names 'gpu'", "memory"]),
    (["memory>>1"], ["'memory>>1' cannot be read", "memory>1"]),
    (["arch==x86_64"], ["'arch==x86_64' cannot be read", "arch=x86_64"]),
    (["arch=>x"], ["'arch=>x' cannot be read"]),
    (["memory>=1g"], ["memory holds a number", "'1g' is not one"]),
    (["python>=3.11"], ["python holds text", "pass it as a tuple"]),
    (["alive=yes"], ["alive is true or false"]),
    (["interfaces>3"], ["interfaces holds a list"]),
    ([("cpus", "~", 1)], ["'~' is no operator"]),
    ([5], ["requirement 5 is neither"]),
    ("memory>=1", ["a list of requirements"]),
    (["="], ["cannot read predicate '='"]),
])
def test_a_requirement_no_host_could_meet_as_written_is_an_error_naming_it(written: Any, says: list[str]) -> None:
    with pytest.raises(RequirementError) as info:
        _requirements(written)
    for part in says:
        assert part in str(info.value)
    assert isinstance(info.value, ValueError)


def test_requirements_hosts_can_meet_pass_in_every_form() -> None:
    assert _requirements(["cpus>=2", " arch=x86_64", "memory>=1073741824", "alive=true", "draining=false",
                          "playground~=rlimits", "hostname^=web", "python>=3.11.0", "interfaces?"]) == [
        ("cpus", ">=", 2), ("arch", "=", "x86_64"), ("memory", ">=", 1073741824), ("alive", "=", True),
        ("draining", "=", False), ("playground", "contains", "rlimits"), ("hostname", "prefix", "web"),
        ("python", ">=", "3.11.0"), ("interfaces", "exists", None)]
    assert _requirements({"arch": "x86_64"}) == [("arch", "=", "x86_64")]
    assert _requirements([("python", ">=", "3.11")]) == [("python", ">=", "3.11")]
    assert _requirements(None) == []
    check_requirements([("load_per_cpu", "<", 0.5), ("tasks", "<", 100), ("price", "<=", 2)])
