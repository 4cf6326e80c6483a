"""Choosing a host for a new task: a pure function over the hosts' catalog entries.

A host qualifies when its lease is live (`alive`), it is not draining, and its metadata meets
every requirement predicate (snipe/query.py). Among those the least loaded wins: fewest tasks
per CPU, then lowest load per CPU, then the URN (so the choice is deterministic).

Requirements may name only what hosts publish (HOST_ATTRIBUTES) and must compare it with a
value of its kind: `check_requirements` says which one cannot be met as written (a typo in a
name, a doubled operator), instead of a placement that finds no host.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping, Sequence
from typing import Any

from snipe import hlc
from snipe.catalog.entry import Entry
from snipe.errors import NotFound, RequirementError
from snipe.query import OPS, Predicate, matches

# What a host publishes about itself, by the kind of its value: what requirements may name.
# Collected by daemon/hostinfo.py (collect_host_info, LoadSampler) and added by the daemon
# (daemon/server.py: its address and key, lease, draining, price, relay port, task count; its
# messaging endpoint's comm, instance and msg_stats). snipe/ never imports daemon/:
# tests/unit/test_host_attributes.py and tests/integration/test_daemon.py check they agree.
HOST_ATTRIBUTES: dict[str, str] = {
    "cpus": "number", "arch": "text", "os": "text", "kernel": "text", "python": "text",
    "memory": "number", "memory_available": "number", "load": "number", "load_per_cpu": "number",
    "boot_time": "number", "hostname": "text", "interfaces": "list", "playground": "map",
    "daemon": "text", "key": "text", "alive": "bool", "draining": "bool", "price": "number",
    "relay_port": "number", "tasks": "number", "comm": "list", "instance": "text", "msg_stats": "map",
}
# the operators each kind of value can meet ("exists" fits every kind)
_OPS_FOR = {
    "number": ("=", "!=", ">=", "<=", ">", "<"),
    "text": ("=", "!=", "prefix", "contains", ">=", "<=", ">", "<"),
    "bool": ("=", "!="),
    "list": ("contains", "=", "!="),
    "map": ("contains", "=", "!="),
}
_SYMBOL = {"prefix": "^=", "contains": "~="}
_OPERATOR_CHARS = "=<>!^~?"


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and not (isinstance(v, float) and math.isnan(v))


def check_requirements(requires: Sequence[Predicate], written: Sequence[str | None] | None = None) -> None:
    """Raise RequirementError for the first requirement that names no host attribute or can
    never be met as written; `written[i]` is how the caller wrote requirement i (None: as a
    tuple), for the message."""
    for i, pred in enumerate(requires):
        text = written[i] if written is not None and i < len(written) else None
        if not isinstance(pred, tuple | list) or len(pred) != 3 or not isinstance(pred[0], str):
            raise RequirementError(f"requirement {pred!r} is neither (name, op, value) nor text such as "
                                   "'memory>=1073741824'")
        name, op, value = pred
        shown = repr(text) if text is not None else repr((name, op, value))
        if text is not None and any(c in _OPERATOR_CHARS for c in name):
            raise RequirementError(f"requirement {shown} cannot be read: {name!r} is no name (operators run "
                                   f"together?); write name=value, name>=number, name^=prefix, name~=part or name?")
        kind = HOST_ATTRIBUTES.get(name)
        if kind is None:
            close = difflib.get_close_matches(name, HOST_ATTRIBUTES, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RequirementError(f"requirement {shown} names {name!r}, which no host publishes{hint}; hosts "
                                   f"publish: {', '.join(sorted(HOST_ATTRIBUTES))}")
        if op not in OPS:
            raise RequirementError(f"requirement {shown}: {op!r} is no operator; use one of {', '.join(OPS)}")
        if op == "exists":
            continue
        if op not in _OPS_FOR[kind]:
            ops = ", ".join(_SYMBOL.get(o, o) for o in _OPS_FOR[kind])
            raise RequirementError(f"requirement {shown}: {name} holds a {kind}, which {_SYMBOL.get(op, op)} cannot "
                                   f"compare; use {ops} (or {name}? for 'has it')")
        if isinstance(value, str) and value[:1] and value[0] in _OPERATOR_CHARS:
            sym = {"=": "=", "!=": "!=", **_SYMBOL}.get(op, op)
            raise RequirementError(f"requirement {shown} cannot be read: its value {value!r} starts with an operator "
                                   f"(one too many?); write e.g. {name}{sym}{value.lstrip(_OPERATOR_CHARS)}")
        if kind == "number" and not _is_number(value):
            raise RequirementError(f"requirement {shown}: {name} holds a number, and {value!r} is not one; write e.g. "
                                   f"{name}>=4 (bytes for memory: memory>=1073741824)")
        if kind == "text" and not isinstance(value, str):
            raise RequirementError(f"requirement {shown}: {name} holds text, and {value!r} is not text, so no host "
                                   f"would ever match; pass it as a tuple ({name!r}, {op!r}, '...') to compare text "
                                   f"that reads like a number")
        if kind == "bool" and not isinstance(value, bool):
            raise RequirementError(f"requirement {shown}: {name} is true or false, not {value!r}; write {name}=true "
                                   f"or {name}=false")


def eligible(hosts: Mapping[str, Entry], requires: Sequence[Predicate], now_ms: int) -> list[str]:
    out = []
    for urn, entry in hosts.items():
        live = entry.live(now_ms)
        if entry.value("alive", now_ms) is not True or entry.value("draining", now_ms) is True:
            continue
        if entry.value("daemon", now_ms) is None or not matches(live, requires):
            continue
        out.append(urn)
    return out


def choose_host(hosts: Mapping[str, Entry], requires: Sequence[Predicate], now_ms: int,
                placed_since: Mapping[str, Sequence[int]] | None = None) -> str:
    """The URN of the best host for a new task, or NotFound saying why none fits.

    `placed_since` lists, per host, when (ms) this client placed tasks there: those newer than
    the host's own `tasks` count are added to it, so a burst of spawns spreads out instead of
    all landing on the host that looked idlest at its last lease refresh.
    """
    candidates = eligible(hosts, requires, now_ms)
    if not candidates:
        alive = [u for u, e in hosts.items() if e.value("alive", now_ms) is True]
        if not alive:
            raise NotFound("no host is alive in the catalog; start a snipe-daemon (or snipe.init() locally)")
        wanted = " and ".join(f"{n} {op} {v!r}" for n, op, v in requires) or "nothing"
        raise NotFound(f"no live, non-draining host meets the requirements ({wanted}); "
                       f"{len(alive)} host(s) are alive")

    def load(urn: str) -> tuple[float, float, str]:
        e = hosts[urn]
        cpus = max(1, int(e.value("cpus", now_ms, 1) or 1))
        tasks = float(e.value("tasks", now_ms, 0) or 0)
        counted_at = max((hlc.physical_ms(a.ts) for a in e.live(now_ms) if a.name == "tasks"), default=0)
        tasks += sum(1 for t in (placed_since or {}).get(urn, ()) if t > counted_at)
        per_cpu = float(e.value("load_per_cpu", now_ms, 0.0) or 0.0)
        return (tasks / cpus, per_cpu, urn)

    return min(candidates, key=load)
