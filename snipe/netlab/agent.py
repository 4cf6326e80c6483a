"""Catalog chores the harness runs inside a namespace (the root namespace never talks to a lab).

    python -m snipe.netlab.agent --lab RUN/lab.json admit          # admin admits host keys and the user
    python -m snipe.netlab.agent --lab RUN/lab.json replicas       # each replica's status (rev, count, digest)
    python -m snipe.netlab.agent --lab RUN/lab.json converge [--since T] [--timeout S]

Each prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from snipe.catalog.client import CatalogClient
from snipe.errors import SnipeError
from snipe.identity import Identity


def _admin(lab: dict[str, Any]) -> Identity:
    return Identity.load(lab["admin_key_file"])


def admit(lab: dict[str, Any], timeout: float) -> dict[str, Any]:
    admin = _admin(lab)
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    with CatalogClient(lab["catalog"], admin, admin.key_id, timeout=3.0) as c:
        recs = [c.sign(f"urn:snipe:host:{h}", "_owner", key) for h, key in lab["host_keys"].items()]
        recs.append(c.sign(lab["user_urn"], "_owner", lab["user_key"]))
        for _ in range(200):
            try:
                c.put(recs, w=len(lab["catalog"]))
                return {"admitted": [*sorted(lab["host_keys"]), lab["user_urn"]]}
            except SnipeError as exc:
                last = exc
                if time.monotonic() > deadline:
                    break
                time.sleep(0.1)
    raise SystemExit(f"could not admit the lab's keys: {last}")


def _status_of(c: CatalogClient, lab: dict[str, Any], timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for addr in lab["catalog"]:
        endpoint = addr.split("#")[0]
        try:
            st = c.status(endpoint, timeout=timeout)
            out[endpoint] = {k: st.get(k) for k in ("replica", "rev", "count", "digest", "repaired", "ae_rounds")}
        except SnipeError as exc:
            out[endpoint] = {"error": str(exc)}
    return out


def replica_status(lab: dict[str, Any], timeout: float = 2.0) -> dict[str, Any]:
    admin = _admin(lab)
    with CatalogClient(lab["catalog"], admin, admin.key_id, timeout=timeout) as c:
        return _status_of(c, lab, timeout)


def converge(lab: dict[str, Any], since: float | None, timeout: float) -> dict[str, Any]:
    """Poll every replica's status until all digests are equal (bounded by `timeout`); the time
    is counted from `since` (a time.time() value, default now)."""
    since = since or time.time()
    deadline = time.monotonic() + timeout
    polls = 0
    st: dict[str, Any] = {}
    admin = _admin(lab)
    with CatalogClient(lab["catalog"], admin, admin.key_id, timeout=1.0) as c:
        while time.monotonic() < deadline and polls < 100_000:
            polls += 1
            st = _status_of(c, lab, 1.0)
            digests = {v.get("digest") for v in st.values()}
            if len(digests) == 1 and None not in digests:
                return {"converged": True, "after_s": round(time.time() - since, 3), "polls": polls, "replicas": st}
            time.sleep(0.02)
    return {"converged": False, "after_s": round(time.time() - since, 3), "polls": polls, "replicas": st}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="snipe-netlab-agent")
    ap.add_argument("--lab", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("admit")
    a.add_argument("--timeout", type=float, default=30.0)
    sub.add_parser("replicas")
    c = sub.add_parser("converge")
    c.add_argument("--since", type=float)
    c.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args(argv)
    with open(args.lab) as f:
        lab = json.load(f)
    if args.cmd == "admit":
        out = admit(lab, args.timeout)
    elif args.cmd == "replicas":
        out = replica_status(lab)
    else:
        out = converge(lab, args.since, args.timeout)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
