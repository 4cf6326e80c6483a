"""The messaging library's own state in a checkpoint, and how a restored receiver resumes.

What a checkpoint holds of the endpoint (`capture`, run in its I/O thread, so no packet lands
halfway; `Endpoint.export_state`, shared with migration): the unread inbox, per source the
session and next seq expected (everything before it is either read by the application or in
the inbox), per destination the messages not yet acknowledged, and sends not yet taken up.

What `restore` does in the restarted process:
- the restore gets an id of its own (random), its endpoint's `restore`;
- the inbox comes back first; each source's Inbound comes back `pinned` (channel.py), and so
  do the sessions of it the checkpoint had left;
- the unacknowledged sends go out again in a new session (the peer may see them twice: the
  restored task re-executes from its checkpoint, so sends after it are made again too);
- each source gets RESUME {s, c, n}: "of your session s I hold everything up to c; this is
  restore n". The source re-sends what it retained after c and reports the rest as delivery
  failures (channel.py, `Outbound.on_resume`), so a message sent to the task since its
  checkpoint is redelivered or reported lost at its sender, never silently dropped. The same
  for each session the checkpoint had left, after where it stopped (a sender still in it, e.g.
  when the checkpoint's current session was a late packet of an older one, answers; any other
  sender ignores it). A RESUME without "n" (a receiver from before restore ids) is answered
  each time it comes.
- a source the checkpoint does not know, or a session of it that began after the checkpoint,
  gets RESUME {s, 0, n} when its data first comes (channel.py, `Inbound`: a base above 1 says
  an incarnation that was lost acknowledged messages of it; `ask_resume`). A sender with
  nothing to send that retained such messages sends data without messages to the new
  incarnation when the catalog shows one (endpoint.py, `_resolve`). At most one such RESUME per
  source is outstanding (channel.py, `ResumeAsks`); a newer one waits for it to settle.

After a checkpoint is stored durably, each source gets CHECKPOINTED {s, c} and drops what it
retained up to c. Both travel as reserved-tag messages on the ordinary reliable channel.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import msgpack

from snipe.errors import CodecError
from snipe.messaging.channel import Deliver, Inbound, Outbound, ResumeAsks, ResumeWanted
from snipe.messaging.endpoint import DEFAULT_DEADLINE_S, MIN_RTO_S, Endpoint, Message, _Peer

log = logging.getLogger("snipe.messaging")

TAG_RESUME = -10
TAG_CHECKPOINTED = -11


def capture(ep: Endpoint) -> dict[str, Any]:
    """The library's state (call through `ep.run_in_io`): the endpoint's own export (the one
    migration uses), with its payloads."""
    state, payloads = ep.export_state()
    return {"state": state, "payloads": [bytes(p) for p in payloads]}


def positions(lib: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """Per source: (session, highest seq the checkpoint holds)."""
    return {str(src): (int(v["session"]), int(v["expected"]) - 1)
            for src, v, *_ in lib.get("state", {}).get("in", []) if v.get("session") is not None}


def restore(ep: Endpoint, lib: dict[str, Any]) -> None:
    """Put a checkpoint's library state into an endpoint before it starts (`Endpoint.start`'s
    `prepare`): no data may reach a source's channel before it is restored.

    Unlike a migration (the same process moving on), a restored task re-executes from its
    checkpoint, maybe differently: what it had not seen acknowledged goes out again in a new
    session, so nothing it sends again can be taken for a duplicate and dropped."""
    try:
        state, payloads = lib.get("state", {}), list(lib.get("payloads", []))
        at = 0
        unacked: dict[str, list[tuple[int, bytes]]] = {}
        for dest, out, *_ in state.get("out", []):       # [urn, channel, ...more migration keeps]
            held = [(int(tag), payloads[at + i]) for i, (_, tag, _) in enumerate(out["held"])]
            at += len(held)
            dest = str(dest).split("#", 1)[0]          # a copy of a URN in mode "all": to the URN again
            if len(held) > len(unacked.get(dest, [])):
                unacked[dest] = [(t, p) for t, p in held if t >= 0]
        inbox = []
        for source, tag, group, failed, reason, *_ in state.get("inbox", []):
            inbox.append(Message(str(source), int(tag), payloads[at], group, bool(failed), reason))
            at += 1
        commands = []
        for dest, tag, deadline_s, *_ in state.get("commands", []):
            commands.append((str(dest), int(tag), payloads[at], float(deadline_s)))
            at += 1
        inbound = positions(lib)
        left = {str(src): {int(s): int(n) for s, n in v.get("left", [])} for src, v, *_ in state.get("in", [])}
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise CodecError(f"a checkpoint's messaging state is malformed: {exc}") from exc
    with ep.cond:
        ep.inbox.extendleft(reversed(inbox))
        ep.cond.notify_all()
    ep.restore = restore_id = random.SystemRandom().randrange(2, 2**62)   # 1: "a restore" in data that names none
    for src, (session, cum) in inbound.items():
        ib = ep.inbound[src] = Inbound.restored(ep.me, src, session, cum + 1, window=ep.window, restore=restore_id,
                                                left=left.get(src))
        ep.submit(src, TAG_RESUME, msgpack.packb({"s": session, "c": cum, "n": restore_id}))
        for s, expected in ib.left.items():      # pinned as well: each asked where it stopped
            ep.submit(src, TAG_RESUME, msgpack.packb({"s": s, "c": expected - 1, "n": restore_id}))
    for dest, msgs in unacked.items():
        for tag, payload in msgs:
            ep.submit(dest, tag, payload)
    for dest, tag, payload, deadline_s in commands:
        ep.submit(dest, tag, payload, deadline_s)


def ask_resume(ep: Endpoint, wanted: list[ResumeWanted], now: float) -> None:
    """(I/O thread.) Ask sources to resume sessions our checkpoint knew nothing of: at most one
    RESUME per source outstanding (`ResumeAsks`); one that waits goes when that one settles
    (looked at on the next ask and every half second)."""
    asks = ep.resume_asks
    if asks is None:
        asks = ep.resume_asks = ResumeAsks()
        ep.periodic.append(lambda at: _send_owed_asks(ep, at))
    for w in wanted:
        p = _outbound(ep, w.source)
        if asks.want(w, p.out):
            _send_ask(ep, p, w, now)


def _send_owed_asks(ep: Endpoint, now: float) -> None:
    asks = ep.resume_asks
    if asks is None or not asks.owed:
        return
    for source in list(asks.owed):
        p = _outbound(ep, source)
        w = asks.due(source, p.out)
        if w is not None:
            _send_ask(ep, p, w, now)


def _send_ask(ep: Endpoint, p: _Peer, w: ResumeWanted, now: float) -> None:
    """On the channel itself rather than through `submit`: its seq tells when it settled."""
    assert ep.resume_asks is not None
    if ep._may_say("resume-ask", w.source, now):
        log.info("%s: %s's session %x began after our checkpoint; asking it to resume (said at most once a "
                 "minute for a source)", ep.me, w.source, w.session)
    with ep.lock:
        ep.accepted[w.source] = ep.accepted.get(w.source, 0) + 1
    ep.resume_asks.sent(w.source, p.out, p.out.next_seq)
    p.out.submit(TAG_RESUME, msgpack.packb({"s": w.session, "c": w.cum, "n": ep.restore}), now,
                 now + DEFAULT_DEADLINE_S)
    ep._pump_peer(p, now)


def tell_checkpointed(ep: Endpoint, where: dict[str, tuple[int, int]]) -> None:
    """Tell each source what the stored checkpoint holds of its messages (from any thread)."""
    for src, (session, cum) in where.items():
        ep.submit(src, TAG_CHECKPOINTED, msgpack.packb({"s": session, "c": cum}))
    ep._wake()


def install(ep: Endpoint) -> None:
    """Answer RESUME and CHECKPOINTED from restored or checkpointing receivers."""
    ep.system_handlers[TAG_RESUME] = ep.one_by_one(lambda m: _on_resume(ep, m))
    ep.system_handlers[TAG_CHECKPOINTED] = ep.one_by_one(lambda m: _on_checkpointed(ep, m))


def _position(m: Deliver) -> tuple[int, int, int]:
    """(session, cum, restore id: 0 when the message names none, as from a receiver before restore
    ids; a named one is at least 2)."""
    try:
        body = msgpack.unpackb(m.payload, raw=False)
        session, cum, restore = body["s"], body["c"], body.get("n", 0)
    except Exception as exc:
        raise CodecError(f"a resume position from {m.source} is malformed: {exc}") from exc
    if any(type(v) is not int for v in (session, cum, restore)) or not (
            0 <= session < 2**63 and 0 <= cum < 2**62 and (restore == 0 or 2 <= restore < 2**62)):
        raise CodecError(f"a resume position from {m.source} is out of range")
    return session, cum, restore


def _outbound(ep: Endpoint, dest: str) -> _Peer:
    p = ep.peers.get(dest)
    if p is None:
        p = ep.peers[dest] = _Peer(dest, Outbound(ep.me, dest, window=ep.window, hwm=ep.hwm * 2, min_rto=MIN_RTO_S))
    return p


def _on_resume(ep: Endpoint, m: Deliver) -> None:
    session, cum, restore = _position(m)
    p = _outbound(ep, m.source)
    now = time.monotonic()
    if session == p.out.session or now - p.resolved_at > 1.0:
        ep._resolve(p, now)      # it restarted elsewhere: its old routes lead nowhere (once for the
                                 # RESUMEs of the sessions we left, which it sends along: snapshot.restore)
    sends, failed = p.out.on_resume(session, cum, now, restore)
    if failed:
        log.warning("%s restarted from a checkpoint: %d message(s) it had acknowledged are lost", m.source,
                    len(failed))
        with ep.cond:       # already counted as settled when they were acknowledged
            ep.inbox.extend(Message(f.to, f.tag, b"", failed=True, reason=f.reason) for f in failed)
            ep.cond.notify_all()
    ep._transmit(p, sends)


def _on_checkpointed(ep: Endpoint, m: Deliver) -> None:
    session, cum, _ = _position(m)
    p = ep.peers.get(m.source)
    if p is not None:
        p.out.on_checkpointed(session, cum)
        p.checkpointed_at = time.monotonic()
        if p.out.strict:            # checkpointed: settled now, a sender blocked at the hwm may go on
            with ep.cond:
                ep.settled[p.urn] = p.out.acked + p.failed - p.out.retained_unsettled()
                ep.cond.notify_all()
