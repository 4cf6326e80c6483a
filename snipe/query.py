"""Attribute predicates for catalog queries ("every host with arch=x86_64 and memory >= 8 GiB").

A predicate is `(name, op, value)`; a URN matches when, for every predicate, some live assertion
about it with that name satisfies the comparison. The same code runs on replicas (to filter) and
in clients (to check what replicas returned).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from snipe.assertion import Assertion
from snipe.errors import CodecError

_ORDERED: dict[str, Callable[[Any, Any], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt,
}
OPS = ("=", "!=", "prefix", "exists", "contains", *_ORDERED)

Predicate = tuple[str, str, Any]


def parse_predicates(raw: object) -> list[Predicate]:
    """Validate predicates from the wire or the console; raise CodecError naming the bad one."""
    if raw is None:
        return []
    if not isinstance(raw, list | tuple):
        raise CodecError("predicates must be a list of [name, op, value]")
    out: list[Predicate] = []
    for p in raw:
        if not isinstance(p, list | tuple) or len(p) != 3 or not isinstance(p[0], str) or p[1] not in OPS:
            raise CodecError(f"predicate {p!r} must be [name, op, value] with op one of {', '.join(OPS)}")
        out.append((p[0], p[1], p[2]))
    return out


def parse_predicate_text(text: str) -> Predicate:
    """`arch=x86_64`, `memory>=8589934592`, `name^=prefix`, `name?` (exists)."""
    if text.endswith("?"):
        return (text[:-1], "exists", None)
    for op, sym in ((">=", ">="), ("<=", "<="), ("!=", "!="), ("^=", "prefix"), ("~=", "contains"),
                    (">", ">"), ("<", "<"), ("=", "=")):
        name, sep, value = text.partition(op)
        if sep and name:
            return (name, sym, _literal(value))
    raise CodecError(f"cannot read predicate {text!r}; write name=value, name>=number, name^=prefix or name?")


def _literal(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text


def _same(value: Any, target: Any) -> bool:
    """Equality that never takes a bool for an int (True is not 1), also inside lists and maps."""
    if isinstance(value, bool) or isinstance(target, bool):
        return value is target
    if isinstance(value, list) and isinstance(target, list):
        return len(value) == len(target) and all(_same(v, t) for v, t in zip(value, target, strict=True))
    if isinstance(value, dict) and isinstance(target, dict):
        return value.keys() == target.keys() and all(_same(value[k], target[k]) for k in value)
    return bool(value == target)


def _holds(value: Any, op: str, target: Any) -> bool:
    if op == "exists":
        return True
    if op == "=":
        return _same(value, target)
    if op == "!=":
        return not _same(value, target)
    if op == "prefix":
        return isinstance(value, str | bytes) and isinstance(target, type(value)) and value.startswith(target)
    if op == "contains":
        if isinstance(value, list):
            return any(_same(v, target) for v in value)
        return isinstance(value, str | dict) and isinstance(target, str) and target in value
    numeric = (int, float)
    if isinstance(value, bool) or isinstance(target, bool):
        return False
    if (isinstance(value, numeric) and isinstance(target, numeric)) or type(value) is type(target):
        try:
            return _ORDERED[op](value, target)
        except TypeError:
            return False
    return False


def matches(live: Iterable[Assertion], predicates: Sequence[Predicate]) -> bool:
    by_name: dict[str, list[Any]] = {}
    for a in live:
        by_name.setdefault(a.name, []).append(a.value)
    return all(any(_holds(v, op, t) for v in by_name.get(name, ())) for name, op, t in predicates)
