"""Checkpoints of a task, and starting a task from one.

    snipe.checkpoint()                                  # now, from the task's own thread
    snipe.spawn(code, checkpoint_every=5.0,             # or periodically, at the next safe point
                restart="on-host-failure")              # and restarted from the last one elsewhere

A checkpoint is one blob (msgpack: format, proc, seq, at, the application's state from its
`on_checkpoint` hook, the messaging library's state from snipe/messaging/snapshot.py), named
by its content, `urn:snipe:file:sha256:<hex>`, and stored on COPIES daemons: this host's and
the next live hosts by rendezvous hashing on the task's URN, so losing the host loses no
checkpoint. The process's catalog entry names the latest one:

    checkpoint = {file, seq, at (ms), size, holders: [daemon addresses], hosts: [host URNs]}

Only then are the task's sources told what the checkpoint holds (they drop what they kept for a
restart). A checkpoint is taken only at a safe point: inside `checkpoint()` itself, or, when
periodic, when the application's thread enters `send`, `recv` or `probe` after the period.
A task started from a checkpoint (SNIPE_RESTORE_FILE, set by its daemon) hands the state to its
`on_restore` hook and restores the library state when it joins (`snipe.init`), its multicast
groups included (snipe/migration/groups.py: the groups joined, each origin's place): the routers'
channels to it resume as any source's do, so it gets every group message after its checkpoint
once and in order. As a sender it is a new incarnation (a new origin, numbered from the first):
what it multicasts again while it re-executes reaches the members again, as its unicast sends do.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import msgpack

from snipe import hooks
from snipe.errors import CodecError, ConfigError, IntegrityError, SnipeError, Unreachable
from snipe.urn import content_urn, validate_urn

log = logging.getLogger("snipe.checkpoint")

FORMAT = "snipe-checkpoint/1"
COPIES = 2                      # daemons holding each checkpoint (fewer if fewer hosts are live)
STORE_TIMEOUT_S = 60.0

# Periodic checkpoints: runtime.send/recv/probe compare `due` with the clock (inf: none).
due = float("inf")
_every: float | None = None
_seq = 0                        # the last checkpoint's sequence number (continues after a restart)
_last: dict[str, Any] | None = None


def set_period(seconds: float | None) -> None:
    """Checkpoint every `seconds` (at the next safe point after each period); None stops."""
    global due, _every
    if seconds is not None and not seconds > 0:
        raise ValueError(f"checkpoint_every must be a positive number of seconds, not {seconds!r}")
    _every = seconds
    due = time.monotonic() + seconds if seconds else float("inf")


def maybe_checkpoint() -> None:
    """Take a periodic checkpoint if one is due (a safe point: the application's own thread)."""
    global due
    if time.monotonic() < due:
        return
    due = time.monotonic() + (_every or float("inf"))
    try:
        checkpoint()
    except SnipeError as exc:       # the task goes on; the next period tries again
        log.warning("periodic checkpoint failed: %s", exc)


def last() -> dict[str, Any] | None:
    """The catalog record of this process's latest checkpoint (None before the first)."""
    return _last


def checkpoint() -> dict[str, Any]:
    """Save this task's state durably now; return the catalog record naming the checkpoint.

    Call from the application's own thread, where its state is consistent. The state is the
    `on_checkpoint` hook's value (None without a hook) plus the library's messaging state."""
    global _seq, _last
    from snipe.messaging import snapshot
    from snipe.runtime import now_ms, session

    s = session()
    if s.me is None or s.local_daemon is None:
        raise ConfigError("checkpoint() needs a task started by a daemon (snipe.spawn), which stores it")
    from snipe.migration.groups import export_groups

    app = hooks.save_state()
    ep = s.endpoint()
    # the groups' standing with the channels' in one I/O turn: a batch delivered between the two
    # would be in one and not the other
    lib, groups = ep.run_in_io(lambda: (snapshot.capture(ep), export_groups(s._membership)))
    seq = _seq + 1
    at = now_ms()
    try:
        blob = msgpack.packb({"format": FORMAT, "proc": s.me, "seq": seq, "at": at,
                              "hooked": hooks.has_checkpoint_hook(), "app": app, "lib": lib, "groups": groups},
                             use_bin_type=True)
    except (TypeError, ValueError) as exc:
        raise hooks.HookError(f"the on_checkpoint hook returned what msgpack cannot save: {exc}") from exc
    urn = content_urn("file", blob)
    holders, hosts, live = _store(s, urn, blob)
    record = {"file": urn, "seq": seq, "at": at, "size": len(blob), "holders": holders, "hosts": hosts}
    s.catalog.set(s.me, "checkpoint", record)
    previous, _seq, _last = _last, seq, record
    snapshot.tell_checkpointed(ep, snapshot.positions(lib))
    if previous is not None and previous.get("file") != urn:
        _drop(s, previous, live)
    return record


def _store(s: Any, urn: str, blob: bytes) -> tuple[list[str], list[str], dict[str, str]]:
    """Put the blob on COPIES daemons (ours first, then a replicated task's standbys); return
    their addresses and host URNs, and the live hosts' daemon addresses by host URN."""
    from snipe.runtime import now_ms

    now = now_ms()
    standbys = s.catalog.get(s.me).value("standbys", now)
    standbys = [str(h) for h in standbys] if isinstance(standbys, list) else []
    copies = max(COPIES, 1 + len(standbys))       # a replicated task's standbys each hold every checkpoint
    others = []
    live = {s.host or "": s.local_daemon}
    for host, entry in s.catalog.query("urn:snipe:host:").items():
        address = entry.value("daemon", now)
        if entry.value("alive", now) is True and isinstance(address, str):
            live[host] = address
        if host != s.host and entry.value("alive", now) is True and isinstance(address, str):
            rank = standbys.index(host) if host in standbys else len(standbys)
            others.append((rank, hashlib.sha256(f"{s.me}|{host}".encode()).digest(), host, address))
    # ours first, where the catalog says our daemon is now: it may have restarted on another
    # port since it started this task (whose SNIPE_DAEMON still names the old one)
    candidates = [(s.host or "", live[s.host or ""]), *[(h, a) for _, _, h, a in sorted(others)]]
    holders: list[str] = []
    hosts: list[str] = []
    errors: list[str] = []
    for host, address in candidates:
        if len(holders) >= copies:
            break
        try:
            s.daemon(address).call("put-file", {"urn": urn}, (blob,), timeout=STORE_TIMEOUT_S)
            holders.append(address)
            hosts.append(host)
        except SnipeError as exc:
            errors.append(f"{host or address}: {exc}")
    if not holders:
        raise Unreachable(f"no daemon would store checkpoint {urn}: " + "; ".join(errors))
    if len(holders) < copies:
        log.warning("checkpoint %s is held by %d daemon(s) only (%s)", urn, len(holders), "; ".join(errors) or
                    "no other live host")
    return holders, hosts, live


def _drop(s: Any, record: dict[str, Any], live: dict[str, str]) -> None:
    """Drop a superseded checkpoint at its holders that are alive (a dead one's copy dies with it),
    at their daemons' addresses now: one may have restarted on another port since it took it."""
    for host in record.get("hosts", []):
        if host in live:
            with contextlib.suppress(SnipeError):
                s.daemon(live[host]).call("drop-file", {"urn": record["file"]}, timeout=5)


def decode(blob: bytes, urn: str) -> dict[str, Any]:
    """A checkpoint blob checked against its URN and decoded."""
    urn = validate_urn(urn)
    if content_urn("file", blob) != urn:
        raise IntegrityError(f"checkpoint bytes do not hash to {urn}; refusing to restore from them")
    try:
        data = msgpack.unpackb(blob, raw=False)
    except Exception as exc:
        raise CodecError(f"checkpoint {urn} is not a msgpack map: {exc}") from exc
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CodecError(f"checkpoint {urn} has format {data.get('format') if isinstance(data, dict) else None!r}; "
                         f"this library reads {FORMAT}")
    return data


def resume_at_start(s: Any) -> None:
    """In a task its daemon started from a checkpoint: restore it (runtime.init calls this)."""
    global _seq, _last
    from snipe.messaging import snapshot

    path, urn = os.environ.get("SNIPE_RESTORE_FILE"), os.environ.get("SNIPE_RESTORE_URN")
    if path and urn:
        data = decode(Path(path).read_bytes(), urn)
        _seq = int(data.get("seq", 0))
        with contextlib.suppress(SnipeError):
            from snipe.runtime import now_ms
            record = s.catalog.get(s.me).value("checkpoint", now_ms())
            _last = record if isinstance(record, dict) and record.get("file") == urn else None
        if data.get("hooked"):
            hooks.hand_over(data.get("app"))
        groups = data.get("groups") or {}

        def prepare(ep: Any) -> None:
            snapshot.restore(ep, data.get("lib") or {})
            if groups:     # before the endpoint listens: a router's batch must find its group joined
                from snipe.migration.groups import restore_groups
                from snipe.multicast.groups import Membership
                assert s.me is not None
                s._membership = Membership(ep, s.catalog, s.me, s.host)
                restore_groups(s._membership, groups, same_incarnation=False)
        s.endpoint(prepare=prepare)
        if groups:
            from snipe.migration.groups import join_here, reregister
            reregister(s._membership, s.catalog, s.host)     # the same routers, from this host
            if s.local_daemon is not None:
                join_here(s._membership, lambda kind, body: s.call_local(kind, body, timeout=30))
    every = os.environ.get("SNIPE_CHECKPOINT_EVERY")
    if every:
        set_period(float(every))
