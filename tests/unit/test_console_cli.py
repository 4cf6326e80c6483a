"""The command-line tools without a cluster: `snipe-console ps` asks every host at once, each on
a daemon client of its own, and keeps the hosts' order; `snipe-netlab --help` says each thing once."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

import snipe
from snipe.console import main as console
from snipe.daemonclient import DaemonClient
from snipe.errors import Unreachable
from snipe.identity import Identity
from snipe.netlab.cli import parser as netlab_parser

HOSTS = ("a", "b", "c", "d")          # "b" never answers


def test_ps_asks_the_hosts_at_once_each_on_its_own_client(monkeypatch: pytest.MonkeyPatch) -> None:
    me = Identity.generate()
    addresses = {f"urn:snipe:host:{h}": f"tcp://127.0.0.1:{40000 + i}#{Identity.generate().key_id}"
                 for i, h in enumerate(HOSTS)}
    host_of = {a: u for u, a in addresses.items()}
    # Every call waits here until all the hosts have been asked: asked one after another, the
    # first call would wait alone and the barrier breaks at its deadline.
    everyone_asked = threading.Barrier(len(HOSTS), timeout=20)
    calls: list[tuple[str, int, int]] = []        # (host, client id, thread id)
    closed: list[int] = []

    def call(self: DaemonClient, kind: str, body: Any = None, frames: Any = (),
             timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        host = host_of[self.address]
        calls.append((host, id(self), threading.get_ident()))
        everyone_asked.wait()
        if host.endswith(":b"):
            raise Unreachable(f"daemon {self.endpoint} did not answer {kind!r} within {timeout} s")
        return {"tasks": [{"urn": f"urn:snipe:proc:{host[-1]}{n}", "host": host, "state": "running"}
                          for n in (1, 2)]}, []

    def close(self: DaemonClient) -> None:
        closed.append(id(self))
        self.link.close()

    monkeypatch.setattr(DaemonClient, "call", call)
    monkeypatch.setattr(DaemonClient, "close", close)
    monkeypatch.setattr(snipe, "hosts", lambda catalog=None: {u: {"daemon": a} for u, a in reversed(addresses.items())})
    monkeypatch.setattr(console, "session",
                        lambda: SimpleNamespace(identity=me, daemon=lambda address: DaemonClient(address, me)))

    tasks, unreachable = console._all_tasks(timeout=5.0)

    assert [t["urn"] for t in tasks] == ["urn:snipe:proc:a1", "urn:snipe:proc:a2", "urn:snipe:proc:c1",
                                         "urn:snipe:proc:c2", "urn:snipe:proc:d1", "urn:snipe:proc:d2"]
    assert [u["host"] for u in unreachable] == ["urn:snipe:host:b"]
    assert "did not answer" in unreachable[0]["reason"]
    assert sorted(h for h, _, _ in calls) == sorted(addresses)                       # each host asked once
    assert len({c for _, c, _ in calls}) == len(HOSTS) and len({t for _, _, t in calls}) == len(HOSTS)
    assert sorted(closed) == sorted(c for _, c, _ in calls)                          # and its client closed


def test_netlab_help_says_its_description_once() -> None:
    text = netlab_parser().format_help()
    assert text.count("several SNIPE hosts on this machine as network namespaces") == 1, text
    assert "snipe-netlab fault loss HOST NET PCT" in text and "Needs root." in text, text   # the usage stays


def test_ps_reports_a_host_whose_daemon_address_cannot_be_used_and_lists_the_rest(
        monkeypatch: pytest.MonkeyPatch) -> None:
    me = Identity.generate()
    key = Identity.generate().key_id
    hosts = {"urn:snipe:host:bad": {"daemon": f"garbage#{key}"}, "urn:snipe:host:worse": {"daemon": f"tcp://nohost#{key}"},
             "urn:snipe:host:good": {"daemon": f"tcp://127.0.0.1:1#{key}"}}

    def call(self: DaemonClient, kind: str, body: Any = None, frames: Any = (),
             timeout: float | None = None) -> tuple[dict[str, Any], list[bytes]]:
        return {"tasks": [{"urn": "urn:snipe:proc:g1", "host": "urn:snipe:host:good", "state": "running"}]}, []

    monkeypatch.setattr(DaemonClient, "call", call)
    monkeypatch.setattr(snipe, "hosts", lambda catalog=None: hosts)
    monkeypatch.setattr(console, "session", lambda: SimpleNamespace(identity=me))
    tasks, unreachable = console._all_tasks(timeout=1.0)
    assert [t["urn"] for t in tasks] == ["urn:snipe:proc:g1"]
    reasons = {u["host"]: u["reason"] for u in unreachable}
    assert "not a tcp:// or ipc:// endpoint" in reasons["urn:snipe:host:bad"]
    assert "cannot connect to 'tcp://nohost'" in reasons["urn:snipe:host:worse"]
