"""daemon/locations.py: which listed holders a fetch asks, and republishing a daemon's code
locations a batch a step (transcripts: puts in, what was put and what is left out)."""

from __future__ import annotations

import logging

import pytest
from snipe_daemon.locations import LiveDaemons, Republisher

from snipe.assertion import make_assertion
from snipe.catalog.entry import Entry
from snipe.errors import NotAuthorized, QuorumError
from snipe.identity import Identity

NOW = 1_700_000_000_000
A, B, GONE = (Identity.from_seed(bytes([n]) * 32) for n in (1, 2, 3))


def host(ident: Identity, name: str, daemon: str, *, alive: bool = True) -> tuple[str, Entry]:
    urn = f"urn:snipe:host:{name}"
    ttl = 10_000 if alive else 1             # a lease that lapsed long ago
    at = NOW if alive else NOW - 60_000
    values = {"alive": True, "daemon": daemon, "key": ident.key_id}
    return urn, Entry(urn, [make_assertion(ident, urn, k, v, at << 16, ttl) for k, v in values.items()])


def test_a_listed_holder_is_asked_where_its_daemon_is_now_and_others_are_skipped_saying_why() -> None:
    live = LiveDaemons.from_hosts(dict([host(A, "a", f"tcp://10.0.0.1:7002#{A.key_id}"),
                                        host(B, "b", f"tcp://10.0.0.2:7000#{B.key_id}"),
                                        host(GONE, "gone", f"tcp://10.0.0.3:7000#{GONE.key_id}", alive=False)]),
                                  NOW)
    listed = [f"tcp://10.0.0.1:7001#{A.key_id}",          # A's daemon, before it restarted on 7002
              f"tcp://10.0.0.1:7002#{A.key_id}",          # and after: asked once
              f"tcp://10.0.0.2:7000#{B.key_id}",          # this daemon: not asked
              f"tcp://10.0.0.3:7000#{GONE.key_id}",       # its host's lease lapsed
              "tcp://10.0.0.9:7000#" + "ab" * 32]         # no host has that key
    ask, skipped = live.holders(listed, besides=f"tcp://10.0.0.2:7000#{B.key_id}")
    assert ask == [f"tcp://10.0.0.1:7002#{A.key_id}"]
    assert [s.split(": ", 1)[0] for s in skipped] == [listed[3], listed[4]]
    assert all("skipped, no live host has the key it names" in s for s in skipped)


def test_locations_are_republished_in_batches_a_step() -> None:
    puts: list[list[str]] = []
    urns = [f"urn:snipe:code:sha256:{i:064x}" for i in range(5)]
    r = Republisher(urns, puts.append, batch=2)
    assert [r.step(0.0), r.step(0.1), r.step(0.2)] == [False, False, True]
    assert puts == [urns[0:2], urns[2:4], urns[4:5]]
    assert r.done and r.step(0.3) and len(puts) == 3


def test_a_refused_batch_is_put_record_by_record_and_the_refused_ones_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    urns = [f"urn:snipe:code:sha256:{i:064x}" for i in range(3)]
    puts: list[list[str]] = []

    def put(batch: list[str]) -> None:
        puts.append(batch)
        if urns[1] in batch:
            raise NotAuthorized(f"{urns[1]} has no owner yet; claim it first")
    r = Republisher(urns, put, batch=3)
    with caplog.at_level(logging.WARNING, "snipe.daemon"):
        done = [r.step(float(t)) for t in range(4)]
    assert done == [False, False, False, True]
    assert puts == [urns, [urns[0]], [urns[1]], [urns[2]]]
    assert r.refused == [f"{urns[1]} ({urns[1]} has no owner yet; claim it first)"]
    warnings = [rec.getMessage() for rec in caplog.records if rec.levelno == logging.WARNING]
    assert len(warnings) == 1 and "refused the new location of 1 of the 3 code blob(s)" in warnings[0]
    assert urns[1] in warnings[0]


def test_a_batch_no_replica_answered_is_tried_again_after_a_growing_backoff() -> None:
    urns = ["urn:snipe:code:sha256:" + "0" * 64]
    answers: list[Exception | None] = [QuorumError("no replica answered"), QuorumError("no replica answered"), None]
    tried: list[float] = []
    now = 0.0

    def put(batch: list[str]) -> None:
        tried.append(now)
        answer = answers.pop(0)
        if answer is not None:
            raise answer
    r = Republisher(urns, put)
    while not r.done and now < 10:
        r.step(now)
        now = round(now + 0.1, 1)
    assert tried == [0.0, 0.5, 1.5]             # waits 0.5 s, then 1 s
    assert r.done and r.refused == []
