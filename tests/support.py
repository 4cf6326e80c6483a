"""Helpers for tests: waiting on conditions with a deadline (never a bare sleep), stand-in hosts,
raw daemon requests, a daemon's multicast status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from snipe.daemonclient import DaemonClient
    from snipe.identity import Identity
    from snipe.localcluster import LocalCatalog, LocalCluster
    from snipe.wire import Envelope

# The name of the test-report property that carries a netns case's report (tests/netns/conftest.py's
# `report` fixture) to the terminal summary (tests/conftest.py), also from an xdist worker.
NETNS_REPORT = "netns report"


def wait_for(condition: Callable[[], object], timeout: float = 20.0, what: str = "condition",
             interval: float = 0.02) -> object:
    """Poll `condition` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # the condition may fail while the system settles
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}" + (f" (last error: {last_exc})"
                                                                              if last_exc else ""))


class PortBlock:
    """Drop every TCP packet to or from a loopback port with nftables, in a table of its own
    (named by this process and a counter) that `close()` deletes. Needs root and nft."""

    _count = 0

    def __init__(self, port: int) -> None:
        import os
        import shutil
        import subprocess

        if os.geteuid() != 0 or shutil.which("nft") is None:
            raise PermissionError("needs root and nft (nftables) to cut a connection")
        PortBlock._count += 1
        self.table = f"snipe_test_{os.getpid()}_{PortBlock._count}"
        self.port = port
        rules = (f"table inet {self.table} {{\n chain output {{\n  type filter hook output priority 0;\n"
                 f"  tcp dport {port} drop\n  tcp sport {port} drop\n }}\n}}\n")
        subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True, capture_output=True)

    def close(self) -> None:
        import subprocess

        subprocess.run(["nft", "delete", "table", "inet", self.table], check=False, capture_output=True)

    def __enter__(self) -> PortBlock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pose_as_host(catalog: LocalCatalog, identity: Identity, name: str, daemon: str, lease_s: float = 120.0) -> str:
    """Admit `identity` as host `name` and publish that host live, its daemon at `daemon`: a
    stand-in holder (a fake daemon, or one that died within its lease) that a daemon fetching
    code or a checkpoint asks, as it asks only the live hosts' daemons. Returns the host URN."""
    urn = catalog.admit(identity, name, kind="host")
    with catalog.client(identity) as c:
        c.put([c.sign(urn, k, v, ttl=lease_s) for k, v in
               {"alive": True, "daemon": daemon, "key": identity.key_id}.items()])
    return urn


def send_request(client: DaemonClient, kind: str, body: dict[str, Any], frames: list[bytes] | None = None) -> int:
    """Send one daemon request as is, without waiting (DaemonClient.call would wait, and raise on
    an error reply, which tests of errors look at); its request id."""
    from snipe.daemonclient import PROTOCOL, VERSION
    from snipe.wire import Envelope, encode

    rid = next(client._ids)
    client.link.sock.send_multipart(encode(Envelope(PROTOCOL, VERSION, kind, rid, body), frames or []))
    return rid


def await_answer(client: DaemonClient, rid: int, timeout: float, what: str = "") -> Envelope:
    """The daemon's reply to request `rid` (others are skipped); fail after `timeout` s."""
    from snipe.wire import decode

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.link.sock.poll(100):
            env, _ = decode(client.link.sock.recv_multipart())
            if env.request_id == rid:
                return env
    raise AssertionError(f"the daemon did not answer request {rid}{' (' + what + ')' if what else ''} within "
                         f"{timeout} s")


def mcast_status(cluster: LocalCluster, i: int) -> dict[str, Any]:
    """The multicast status of the cluster's daemon `i` (what `snipe-console show` reads)."""
    from snipe.daemonclient import DaemonClient

    with DaemonClient(cluster.daemons[i].address, cluster.user, timeout=5) as d:
        return d.call("mcast-status")[0]
