"""A process's messaging endpoint: the socket shell around the reliable-channel core.

Whoever holds `Endpoint.io` (a lock) owns the sockets and the channels' state: the I/O thread,
which polls the sockets' file descriptors without holding it, or an application thread that
found it free (a lone send transmits at once; a recv with nothing waiting reads the sockets
itself for a moment): no hand-off between threads on a round trip. The endpoint receives on a
ROUTER bound to TCP on all interfaces and to an ipc socket only its user can open (both
CurveZMQ, admitting keys the cluster admitted), and sends through one DEALER per route to each
peer. Application threads otherwise hand messages over through a queue and read deliveries from
the inbox; `send` blocks at the high-water mark.

Per peer the shell keeps one `Outbound` (sequence numbers, retransmission; snipe/messaging/
channel.py) whatever the route, so changing routes mid-stream neither loses nor reorders:
what was in flight on the old route is retransmitted on the new one and deduplicated by the
receiver. Routes come from the catalog (both processes' `comm` and their hosts' interfaces,
snipe/messaging/routes.py), best first; a route that stops getting acknowledgements is left
for the next, and the peer is re-resolved periodically so a better route is taken when one
appears. A message not acknowledged by its deadline, or sent to a process the catalog says has
ended, comes back to the sender as a delivery-failure message, never silence.

A peer whose host shares no network with ours is reached through a gateway daemon (a `relay`
route): the same channel, its messages and acks sealed end to end (snipe/messaging/gateway.py).

An endpoint made with `application=False` (a host daemon's, which serves only reserved tags:
multicast relaying, migration) has no inbox anyone reads: application messages (tag >= 0) sent
to it are acknowledged and dropped, counted per source in its stats (`dropped`) and said in its
log at most once per SAY_EVERY_S, and its own application sends that fail are logged, not kept.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import math
import operator
import os
import random
import select
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import zmq

from snipe.admission import CatalogAdmission
from snipe.catalog.client import CatalogClient, now_ms
from snipe.errors import CodecError, ConfigError, HighWaterMark, NotFound, ProtocolVersionError, SnipeError
from snipe.identity import Identity, public_key_from_id
from snipe.messaging.allocator import keep_freed_buffers
from snipe.messaging.channel import (
    PROTOCOL,
    VERSION,
    Deliver,
    DeliveryFailed,
    Inbound,
    Outbound,
    ResumeAsks,
    ack_is_busy,
    busy_ack,
    pack_frames,
    parse_ack,
    parse_data,
    resumed_of,
    ri_malformed,
    unpack_frames,
)
from snipe.messaging.gateway import RELAY, Sealer, parse_relay, relay_parts
from snipe.messaging.routes import ProcView, Route, advertised_comm, choose_routes
from snipe.privatedir import default_runtime_dir, private_dir, short_ipc_dir
from snipe.transport import (
    KeyGate,
    Link,
    ipc_server_socket,
    remove_stale_ipc_sockets,
    send_parts,
    send_two,
    server_socket,
)
from snipe.wire import Envelope, decode, encode, envelope_of, unpack_envelope

log = logging.getLogger("snipe.messaging")
ReplyTo = tuple[zmq.Socket, bytes]       # where a message came from: our ROUTER and the link's identity there
SystemHandler = Callable[[list[Deliver]], None]    # takes a run of one reserved tag's messages, in order
Decoded = TypeVar("Decoded")

ENDED_STATES = ("exited", "killed", "lost")
DEFAULT_DEADLINE_S = 30.0
RESOLVE_EVERY_S = 5.0
# A peer we only retain acknowledged messages for (it may be restored from a checkpoint, and then
# needs to hear from us: `_resolve`'s probe) has its entry re-read every RETAINED_RESOLVE_EVERY_S
# times 0.75 to 1.25 (its own jitter, so many such peers do not all come due together), in the I/O
# thread with a timeout of RETAINED_RESOLVE_TIMEOUT_S (no answer in time: tried again at the next
# interval). So an idle sender tells a receiver restored from a checkpoint that does not know its
# session, at worst, 37.5 s after the receiver's new incarnation is in the catalog (plus 37.5 s for
# each re-read the catalog did not answer in time); a sender with anything to send does at once.
# SNIPE_RETAINED_RESOLVE_S sets the interval (fewer catalog reads against a quicker resend).
RETAINED_RESOLVE_EVERY_S = 30.0
RETAINED_RESOLVE_TIMEOUT_S = 0.5
SAY_EVERY_S = 60.0           # a log line about what a peer keeps doing (_may_say): at most this often
STUCK_CHECKPOINT_S = 30.0    # a standby replica's messages waiting this long for a checkpoint: say so
STATS_EVERY_S = 5.0          # per-peer counters published on our own URN (a lease), for the console
UNCLAIMED_GRACE_S = 3.0      # messages for a URN nobody ever claimed wait this long, then a quorum read decides
UNCLAIMED_READ_TIMEOUT_S = 1.0   # ... in the I/O thread, at most this long, at most every RESOLVE_EVERY_S per peer
FAILOVER_SILENCE_S = 2.0     # a route with data outstanding and no acknowledgement for this long has failed
SHUN_ROUTE_S = 30.0          # ... and is not taken again for this long (then it is probed again)
# Our links are reliable streams (ZeroMQ over TCP or ipc): a message is lost only when a
# connection breaks, a route changes or the peer restarts. A busy process (the GIL handed over
# every 5 ms, a receiver draining a long queue) easily takes more than the channel's 20 ms floor to
# acknowledge, and a spurious timeout resends the whole window and, after a few, fails over to a
# worse route; so retransmit no sooner than this.
MIN_RTO_S = 0.2
# Acknowledgements wait a moment for more to acknowledge: one ack then covers many batches (and
# many round trips of a ping-pong) instead of one ZeroMQ message, one wake-up and one turn of the
# sender's I/O thread each. Nothing delivered (a duplicate, a gap) is acknowledged at once.
ACK_DELAY_S = 0.005
CLOSE_LINGER_MS = 250             # how long close() lets owed acknowledgements leave
ACK_EVERY = 1024             # messages delivered since the last ack: acknowledge now
# Bytes delivered since the last ack: acknowledge now. Half the sender's byte window (8 MiB): an
# ack per 1 MiB message cost each side a wake-up and a turn per message, a third of the CPU of a
# stream of them; at half the window the sender still never waits for one.
ACK_EVERY_BYTES = 4 << 20
# While the inbox is at its hwm (this shell stops reading), tell the recent senders so this often
# that we are busy, not gone: they hold their retransmissions and do not fail over.
BUSY_EVERY_S = 0.25
# Acknowledged messages kept for a peer that may be restarted from a checkpoint (its catalog entry
# has `restart`), until it says it checkpointed them: redelivered if it is (snipe/checkpoints.py).
RETAIN_FOR_RESTART = 65536
# An application thread does the socket work itself when the I/O thread is idle (no hand-off of the
# message between threads, the cost of a round trip): a send that follows the previous one by at
# least DIRECT_GAP_S (a lone message; a burst is left to the I/O thread, which packs what queued
# meanwhile into one frame), and a recv that finds nothing waiting, which then reads the sockets for
# up to DIRECT_HOLD_S before handing over to the I/O thread.
# While application threads do that (the last time within APP_ACTIVE_S), the I/O thread leaves the
# sockets and the delayed acks to them (it would wake for every message they read, and take the GIL
# from them) and looks at the sockets only when woken, when a retransmission or deadline is due, or
# APP_ACTIVE_S after the application last did.
DIRECT_GAP_S = 50e-6
DIRECT_HOLD_S = 0.005
APP_ACTIVE_S = 0.02
# A direct recv looks at the EVENTS of the links (our DEALERs: what comes on them is acknowledgements
# and redirects, nothing a recv waits for) at most this often: a look costs two system calls, and
# the send of each round trip takes a link out of `_clean`. An acknowledgement whose readiness signal
# a send took waits for the next look: after a sleep of up to DIRECT_HOLD_S, or for the I/O thread's
# next turn, at most APP_ACTIVE_S (far below MIN_RTO_S either way: nothing is resent for it).
LINK_LOOK_S = 0.001
_EVENTS, _POLLIN, _NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
_wait_fds = type(select.poll()).poll     # a direct recv's sleep: (its poll object, timeout in ms)
# A look at one socket's EVENTS without a Python call: zmq_poll([(socket, POLLIN)], 0) (pyzmq's
# getsockopt makes an enum of the option first, two Python calls; this costs a poll(0) more)
_zmq_poll = zmq.backend.zmq_poll
_DEADLINE_S = operator.itemgetter(3)    # of a queued command (dest, tag, payload, deadline_s)
_Watched = tuple[zmq.Socket, Callable[[], None], list[tuple[zmq.Socket, int]]]   # (socket, its reader, its look)
# (links version, poll of the descriptors, descriptor -> (socket, its reader), the routers', the links')
_AppWatch = tuple[int, select.poll, dict[int, tuple[zmq.Socket, Callable[[], None]]], list[_Watched], list[_Watched]]


@dataclass(slots=True)
class Message:
    """A received message, or (failed=True) a message of ours that could not be delivered."""

    source: str
    tag: int
    payload: bytes
    group: str | None = None
    failed: bool = False
    reason: str | None = None

    def obj(self) -> Any:
        """The payload decoded from msgpack (what `send_obj` sent)."""
        return msgpack.unpackb(self.payload, raw=False)


@dataclass
class _Peer:
    urn: str
    out: Outbound
    routes: list[Route] = field(default_factory=list)
    route_index: int = 0
    links: dict[str, Link] = field(default_factory=dict)
    key: bytes | None = None
    resolved_at: float = -1e9
    waiting_since: float | None = None       # unresolved: since when we have messages for it
    failed: int = 0                          # messages reported failed (with out.acked: settled)
    heard_at: float = 0.0                    # last acknowledgement, or when the current route was taken
    shunned: dict[str, float] = field(default_factory=dict)   # route endpoint -> not before (monotonic)
    gone: set[str] = field(default_factory=set)  # instances that redirected us elsewhere (they migrated)
    view: dict[str, Any] | None = None           # its comm, host, instance and key as last resolved
    copies: list[str] = field(default_factory=list)     # a replicated URN in mode "all": its copies' peers
    parent: str | None = None                # this peer is copy `copy_index` of the replicated URN `parent`
    copy_index: int = -1
    unclaimed_asked_at: float = -1e9         # when a quorum read last asked whether anyone claimed it
    jitter: float = field(default_factory=lambda: random.uniform(0.75, 1.25))   # of its retained-only re-reads
    checkpointed_at: float | None = None     # when its last checkpoint reached us (a standby replica's)
    created_at: float = field(default_factory=time.monotonic)   # made for our first message to it

    @property
    def route(self) -> Route | None:
        return self.routes[self.route_index] if self.routes else None

    @property
    def checkpoint_wait_since(self) -> float:
        """Since when its retained messages have waited for a checkpoint of it (a standby replica)."""
        return self.checkpointed_at if self.checkpointed_at is not None else self.created_at


def retained_resolve_every_s(environ: dict[str, str] | os._Environ[str] = os.environ) -> float:
    """RETAINED_RESOLVE_EVERY_S, or what SNIPE_RETAINED_RESOLVE_S says: seconds, no fewer than a
    re-read may wait for its answer (RETAINED_RESOLVE_TIMEOUT_S)."""
    text = environ.get("SNIPE_RETAINED_RESOLVE_S")
    if text is None:
        return RETAINED_RESOLVE_EVERY_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not RETAINED_RESOLVE_TIMEOUT_S <= value < math.inf:
        raise ConfigError(f"SNIPE_RETAINED_RESOLVE_S must be a number of seconds, at least "
                          f"{RETAINED_RESOLVE_TIMEOUT_S:g}, not {text!r}")
    return value


def resolve_due(p: _Peer, now: float, retained_every_s: float = RETAINED_RESOLVE_EVERY_S) -> float | None:
    """Whether `_timers` re-reads the entry of `p` (it holds or retains messages) now, and how
    long it waits for the catalog: None if not now; 0.0 for the catalog client's own timeout (a
    peer with messages to deliver: every RESOLVE_EVERY_S, as a peer may move or end); a short
    RETAINED_RESOLVE_TIMEOUT_S for one we only retain messages for (every
    `retained_every_s` times its jitter) or owe a probe (every RESOLVE_EVERY_S, until it
    acknowledges)."""
    since = now - p.resolved_at
    if p.out.held():
        return 0.0 if since > RESOLVE_EVERY_S else None
    if p.out.probe_owed is not None:
        return RETAINED_RESOLVE_TIMEOUT_S if since > RESOLVE_EVERY_S else None
    if p.out.retained and since > retained_every_s * p.jitter:
        return RETAINED_RESOLVE_TIMEOUT_S
    return None


class Endpoint:
    def __init__(self, me: str, identity: Identity, catalog: list[str], admin_key: bytes, *,
                 host_urn: str | None = None, runtime_dir: Path | None = None, hwm: int = 65536,
                 window: int = 4096, session_seed: str | None = None, application: bool = True) -> None:
        self.me, self.identity, self.catalog_addrs, self.admin_key = me, identity, catalog, admin_key
        self.application = application          # False: no inbox for tags >= 0 (see the module docstring)
        self.dropped: dict[str, int] = {}        # source -> application messages dropped (application=False)
        # A copy of a replicated task (mode "all"): every copy numbers its messages to a peer in the
        # same session, so the peer's channel keeps the first of each and drops the others' copies.
        self.session_seed = session_seed
        self.host_urn = host_urn
        self.instance = uuid.uuid4().hex
        self.hwm, self.window = hwm, window
        self.retained_resolve_s = retained_resolve_every_s()
        self.ipc_path = self._ipc_socket_path(runtime_dir)    # before anything that would need closing
        keep_freed_buffers()                     # before the first large message: see allocator.py
        self.ctx = zmq.Context()
        self.admission = CatalogAdmission(catalog, identity, admin_key)
        self.gate = KeyGate(self.ctx, self.admission.admit, self.admission.resolve, server_key=identity.public_key)
        self.gate.install()
        # Two listeners: TCP with CurveZMQ, ipc with signed PLAIN credentials (same user only; why
        # that is as safe there: snipe/transport.py).
        self.router = server_socket(self.ctx, zmq.ROUTER, identity)
        self.ipc_router = ipc_server_socket(self.ctx, zmq.ROUTER)
        for sock in (self.router, self.ipc_router):
            sock.rcvhwm = sock.sndhwm = 100_000
            sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.routers = (self.router, self.ipc_router)
        self.port = self.router.bind_to_random_port("tcp://*")
        old_umask = os.umask(0o077)              # the socket file: this user only
        try:
            self.ipc_router.bind(f"ipc://{self.ipc_path}")
        finally:
            os.umask(old_umask)
        # Application threads wake the I/O thread through a file descriptor it polls with its
        # sockets (an eventfd, else a pipe): one write, no ZeroMQ socket, no lock.
        if hasattr(os, "eventfd"):
            self.wake_rx = self.wake_tx = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        else:                                    # pragma: no cover (not Linux)
            self.wake_rx, self.wake_tx = os.pipe()
            os.set_blocking(self.wake_rx, False)
            os.set_blocking(self.wake_tx, False)

        # One plain lock guards the queues between application threads and the I/O thread (a
        # Condition over it for the waits): the fast paths of send and recv take it once.
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        # The sockets, peers, channels and pending acks belong to whoever holds `io` (taken before
        # `lock` when both are needed).
        self.io = threading.Lock()
        self._sent_at = 0.0                      # the last send's time (lone sends go direct)
        self._io_sleep_until = 0.0               # the I/O thread's poll ends by then, its timers due (monotonic)
        # peers sent to since the I/O thread last reckoned every timer (an application thread's
        # direct sends may have set one sooner than the I/O thread's poll ends)
        self._touched: set[str] = set()
        # Packs data envelopes as snipe.wire.encode_envelope does, from their fields in a list (the
        # data path makes no Envelope only to take it apart again; one packer, not one a message)
        self._data_packer = msgpack.Packer(use_bin_type=True)
        self._delivered = 0                      # data messages that delivered something (direct recvs' progress)
        self._recv_waiting = 0                   # threads in recv waiting for the I/O thread to deliver
        self._app_active_until = 0.0             # application threads read the sockets until then
        self._io_wants = False                   # the I/O thread waits for io: no new direct work
        self._turn_over = threading.Event()      # cleared while it wants io or has it for that turn
        self._turn_over.set()
        # The I/O thread's next wait watches the sockets' descriptors (not only its wake-up): set by
        # it while it holds io, so stable for whoever holds io (_read_after_send).
        self._io_polls_fds = True
        # (links version, a poll of the wake-up and the sockets' descriptors, descriptor -> socket,
        # (socket, the call that reads it) for each) for direct recvs
        self._app_watch: _AppWatch | None = None
        self._links_look_due = 0.0               # a direct recv looks at the links' EVENTS then (LINK_LOOK_S)
        # Sockets a direct recv may sleep on by their descriptors alone (ZMQ_FD is edge-triggered):
        # their EVENTS were looked at, nothing waited, and nothing has used them since. Whatever
        # sends or reads on a socket takes it out; the I/O thread's turns empty it. (Holding io.)
        self._clean: set[zmq.Socket] = set()
        self.commands: deque[tuple[str, int, bytes, float]] = deque()    # (dest, tag, payload, deadline_s)
        self.inbox: deque[Message] = deque()
        # Per destination: messages accepted (send, submit) and settled (acknowledged or reported
        # failed, written by the I/O thread); a sender blocks while the difference is at the hwm.
        self.accepted: dict[str, int] = {}
        self.settled: dict[str, int] = {}
        self._blocked = 0                        # senders waiting at the hwm
        self._wake_pending = False               # a wake-up is on its way to the I/O thread
        self._checks_at = 0.0
        self._timers_at = 0.0                    # when the I/O thread last looked at its timers (every 0.25 s at least)
        self._links_version = 0                  # bumped when a link (socket) is made or remade
        # source -> [ReplyTo, its Inbound, messages, bytes, due]: an ack owed (made when sent: Inbound.ack)
        self._acks: dict[str, list[Any]] = {}
        self._acks_due = float("inf")
        self._last_data: dict[str, float] = {}  # source -> when its data last came (busy notices)
        self._busy_at = 0.0
        self.peers: dict[str, _Peer] = {}
        self.inbound: dict[str, Inbound] = {}
        # Restored from a checkpoint (snipe/messaging/snapshot.py): that restore's id, else 0. A source
        # whose session the checkpoint does not know is asked to resume it (channel.py, Inbound).
        self.restore = 0
        self.resume_asks: ResumeAsks | None = None   # the RESUMEs that asks sent (snapshot.py), once it asks
        self._said: dict[tuple[str, str], float] = {}   # (what, peer) -> when last logged (_may_say)
        self.reply_to: dict[str, ReplyTo] = {}   # source URN -> its latest link (our ROUTER, its identity)
        self.sources_ok: dict[tuple[str, str], float] = {}
        self.sealer = Sealer(identity)
        self.relayed: dict[str, bytes] = {}      # source URN -> its key, while its data comes through a gateway
        self._gateways: tuple[float, dict[str, Any]] = (-1e9, {})   # (when read, relaying hosts' values)
        self.received: dict[str, int] = {}
        self.bytes_received: dict[str, int] = {}
        self.paused = False
        self.system_handlers: dict[int, SystemHandler] = {}
        # Migration (snipe/migration): the application's own thread runs `at_safe_point` at its
        # next recv/probe (or snipe.safe_point) once `safe_point_due` is set (not in send: a send
        # is mostly half-way through handling a message, which the application's state rarely
        # says); while `frozen` this endpoint delivers
        # nothing (senders are told it is busy) and after `moved` it answers with redirects.
        self.safe_point_due = False
        self.at_safe_point: Callable[[], None] | None = None
        self.frozen = False
        self.moved: dict[str, Any] | None = None
        self.periodic: list[Callable[[float], None]] = []      # run by the I/O thread about every 0.5 s
        # run likewise, and while frozen too (catalog writes that keep the process's standing, such as
        # its group memberships' leases, not messaging), until the process has moved
        self.leases: list[Callable[[float], None]] = []
        # run by the I/O thread after each turn's reads, before it sends what they queued: a
        # multicast router sends what it relayed this turn as one batch per member
        self.turn_end: list[Callable[[], None]] = []
        self._periodic_at = 0.0
        self._stats_at = 0.0
        self._stats_published: dict[str, Any] = {}
        self._io_calls: deque[tuple[Callable[[], Any], Future[Any]]] = deque()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.catalog: CatalogClient | None = None   # the I/O thread's own
        from snipe.messaging import snapshot  # the resume protocol of restored receivers
        snapshot.install(self)

    # --- lifecycle ------------------------------------------------------------------------------
    def _ipc_socket_path(self, runtime_dir: Path | None) -> str:
        """Where our ipc socket goes: `runtime_dir` as given (made if missing; whoever named it
        judged it: a daemon its own folder, the user SNIPE_HOME), else this user's default
        runtime folder, made ours alone (snipe/privatedir.py). Sockets that processes killed
        there left behind are removed."""
        if runtime_dir is not None:
            runtime_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        else:
            runtime_dir = private_dir(default_runtime_dir())
        path = str(runtime_dir / f"msg-{self.instance[:16]}.sock")
        if len(path) > 100:                # sockaddr_un holds 107 bytes: fall back to a short folder
            runtime_dir = short_ipc_dir(runtime_dir)
            path = str(runtime_dir / f"msg-{self.instance[:16]}.sock")
        remove_stale_ipc_sockets(runtime_dir, "msg-*.sock")
        self.runtime_dir = runtime_dir
        return path

    def start(self, publish: Callable[[dict[str, Any]], None],
              prepare: Callable[[Endpoint], None] | None = None, *, announce: bool = True) -> None:
        """Publish where we listen (through `publish`, which writes our own catalog entry) and
        start the I/O thread. `prepare` runs first, before anyone can reach us (a restored task
        puts its channels back: snipe/messaging/snapshot.py). A migration's clone does the steps
        itself: `learn_comm`, restore, `run`, and `announce` once it owns the process."""
        if prepare is not None:
            prepare(self)
        self.learn_comm(publish)
        if announce:
            self.announce()
        self.run()

    def learn_comm(self, publish: Callable[[dict[str, Any]], None]) -> None:
        """Learn our host's interfaces and so the `comm` we will publish."""
        interfaces: list[dict[str, Any]] = []
        if self.host_urn:
            with CatalogClient(self.catalog_addrs, self.identity, self.admin_key) as c:
                ifs = c.get(self.host_urn).value("interfaces", now_ms(), [])
                interfaces = ifs if isinstance(ifs, list) else []
        self.publish = publish
        self.comm = advertised_comm(self.port, self.ipc_path, interfaces)

    def location(self) -> dict[str, Any]:
        """Where this endpoint is: what `announce` publishes, what a redirect carries."""
        values: dict[str, Any] = {"comm": self.comm, "instance": self.instance, "key": self.identity.key_id}
        if self.host_urn:
            values["host"] = self.host_urn
        return values

    def announce(self) -> None:
        self.publish(self.location())

    def run(self) -> None:
        self._thread = threading.Thread(target=self._run, name="snipe-messaging", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(5)
        self.gate.stop()
        self.admission.close()
        with self.io:                            # not while an application thread reads it
            # the acknowledgements the I/O thread flushed on its way out still go out (bounded:
            # a peer that is gone costs CLOSE_LINGER_MS at most)
            self.router.close(CLOSE_LINGER_MS)
            self.ipc_router.close(CLOSE_LINGER_MS)
        for fd in {self.wake_rx, self.wake_tx}:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(self.ipc_path)
        self.ctx.term()

    def withdraw(self, transport: str) -> None:
        """Stop offering a transport ("ipc" or "tcp"): republish `comm` without it, then close
        its listener. Senders move to their next route without losing or reordering anything."""
        self.comm = [c for c in self.comm if c.get("transport") != transport]
        self.publish({"comm": self.comm})
        self._clean.clear()
        with contextlib.suppress(zmq.ZMQError):
            if transport == "ipc":
                self.ipc_router.unbind(f"ipc://{self.ipc_path}")
            else:
                self.router.unbind(f"tcp://0.0.0.0:{self.port}")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):      # full (a wake-up is pending anyway) or closed
            os.write(self.wake_tx, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    # --- the application's side ------------------------------------------------------------------
    def send(self, dest: str, payload: bytes, tag: int = 0, *, timeout: float | None = None,
             deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        """Queue a message; blocks while `dest` already holds `hwm` unsettled messages (raising
        HighWaterMark, an Unreachable, after `timeout`)."""
        if dest == self.me:
            with self.cond:
                self.inbox.append(Message(self.me, tag, payload))
                self.cond.notify_all()
            return
        now = time.monotonic()
        lone, self._sent_at = now - self._sent_at >= DIRECT_GAP_S, now
        if lone and not self.commands and not self._io_wants and self.io.acquire(False):
            try:                                 # (_try_direct's steps, for the usual send without its calls)
                soonest = self._send_now(dest, tag, payload, now, deadline_s)
            finally:
                self.io.release()
            if soonest is not None:
                self._app_active_until = now + APP_ACTIVE_S
                if soonest < self._io_sleep_until - APP_ACTIVE_S:     # (_nudge_io)
                    self._wake()
                return
        with self.lock:
            n = self.accepted.get(dest, 0)
            if n - self.settled.get(dest, 0) >= self.hwm:
                n = self._wait_for_room(dest, timeout)
            self.accepted[dest] = n + 1
            self.commands.append((dest, tag, payload, deadline_s))
            alone = len(self.commands) == 1
        if alone and lone and self._try_direct(now, self._send_direct, dest, now):
            return
        if not self._wake_pending:  # the I/O thread takes the whole queue at once: one wake-up per burst
            self._wake_pending = True
            self._wake()

    def _try_direct(self, now: float, send: Callable[..., bool], *args: Any) -> bool:
        """(An application thread.) `send(*args)` holding io, if the I/O thread neither has nor
        wants it; True if that sent (the application then serves the sockets for APP_ACTIVE_S)."""
        if self._io_wants or not self.io.acquire(blocking=False):
            return False
        soonest = math.inf
        try:
            done = send(*args)
            if done:
                soonest = self._touched_soonest()
        finally:
            self.io.release()
        if done:
            self._app_active_until = now + APP_ACTIVE_S
            self._nudge_io(soonest)
        return done

    def _send_now(self, dest: str, tag: int, payload: bytes, now: float, deadline_s: float) -> float | None:
        """(Holding io.) The usual send, in one step: nothing is queued before it (it would go
        first: FIFO), `dest` holds fewer than hwm unsettled messages, and its route is direct and
        up (`_direct_link`): the message goes to its channel (`send_one`) and out, never through
        the queue; returns the soonest timer that may need the I/O thread sooner than its poll
        ends (`_touched_soonest`). None, having done nothing, in any other case (`send`'s queue
        then takes it)."""
        p = self.peers.get(dest)
        link = self._direct_link(p, now) if p is not None else None
        if link is None:
            return None
        with self.lock:
            if self.commands:
                return None
            n = self.accepted.get(dest, 0)
            if n - self.settled.get(dest, 0) >= self.hwm:
                return None                      # the queue's path waits for room
            self.accepted[dest] = n + 1
        # What this send sets is due MIN_RTO_S from now at the soonest (a retransmission: no
        # channel's RTO is shorter, also for what the acks read after it let go), or at its own
        # deadline. After the I/O thread's poll ends anyway, with nothing earlier to reckon, the
        # reckoning (`_touched_soonest`, a few calls a peer) is not needed.
        touched = self._touched
        reckon = bool(touched) or now + min(MIN_RTO_S, deadline_s) < self._io_sleep_until - APP_ACTIVE_S
        self._send_one(p, link, tag, payload, now, deadline_s)
        if self._io_polls_fds:                   # (_read_after_send's own first look, without a call)
            self._read_after_send()
        if reckon:
            return self._touched_soonest()
        touched.clear()
        return math.inf

    def _direct_link(self, p: _Peer, now: float) -> Link | None:
        """(Holding io.) The link an application thread may send on to `p` itself: its route is
        resolved, fresh and direct (not a relay's, not a replicated URN's copies), its link made,
        and we neither migrate nor have moved. None leaves the work to the I/O thread (resolving
        means asking the catalog; a new link, a relay or copies mean the queue's full path)."""
        if self.catalog is None or not p.routes or p.waiting_since is not None or p.copies \
                or now - p.resolved_at > RESOLVE_EVERY_S or self.frozen or self.moved is not None:
            return None
        route = p.routes[p.route_index]
        return p.links.get(route.endpoint) if route.kind != "relay" else None

    def _send_one(self, p: _Peer, link: Link, tag: int, payload: bytes, now: float, deadline_s: float) -> None:
        """(Holding io.) One message to `p`'s channel and, if its window lets it go, straight out
        on `link` (what `_direct_link` gave)."""
        body = p.out.send_one(tag, payload, now, now + deadline_s)
        if body is None:                # it went to the channel's queue: what the window lets go, goes
            self._transmit(p, p.out.flush(now))
        else:                           # _send_data for one payload, direct: its two frames at once
            body["f"] = self.me
            sock = link.sock
            self._clean.discard(sock)
            try:  # noqa: SIM105 (suppress() costs three calls a message)
                send_two(sock, self._data_packer.pack([PROTOCOL, VERSION, "data", 0, body]), payload, _NOBLOCK)
            except zmq.Again:                   # the link's queue is full: retransmission resends it
                pass
        self._touched.add(p.urn)

    def _read_after_send(self) -> None:
        """(Holding io, after a direct send.) A send on a socket may take its descriptor's
        readiness signal (ZMQ_FD is edge-triggered): while the I/O thread sleeps on the
        descriptors, read what waits on the sockets this send went out on (no other socket's
        signal moved). While it watches only its wake-up (an application thread serves the
        sockets) it reads every socket's EVENTS before it watches their descriptors again
        (`_io_polls_fds`), and the look (two system calls a socket) is spared."""
        if self._io_polls_fds:
            for urn in tuple(self._touched):      # (reading a link may send more: to the same peers)
                q = self.peers.get(urn)
                if q is not None:
                    for link in list(q.links.values()):   # (a redirect read here replaces links)
                        if link.sock.getsockopt(_EVENTS) & _POLLIN:
                            self._read_link(q, link)

    def _send_direct(self, dest: str, now: float) -> bool:
        """(Holding io.) Transmit what is queued from this thread, if `dest` is resolved and its
        route is up; False leaves it to the I/O thread (resolving means asking the catalog)."""
        p = self.peers.get(dest)
        if self.catalog is None or p is None or not p.routes or p.waiting_since is not None \
                or now - p.resolved_at > RESOLVE_EVERY_S or self.frozen or self.moved is not None:
            return False
        if not self._send_alone(p, now):
            self._take_commands()
        self._read_after_send()
        return True

    def _send_alone(self, p: _Peer, now: float) -> bool:
        """(Holding io.) The usual direct send in one step: the only command queued, to `p`, whose
        route is direct and whose link is made, goes out without the queue's batching (the channel's
        `send_one`). False, having done nothing, when anything else is the case (`_take_commands`)."""
        route = p.routes[p.route_index]
        link = p.links.get(route.endpoint) if route.kind != "relay" and not p.copies else None
        if link is None:
            return False
        with self.lock:
            if len(self.commands) != 1 or self.commands[0][0] != p.urn:
                return False
            _, tag, payload, deadline_s = self.commands.popleft()
            self._wake_pending = False
        self._send_one(p, link, tag, payload, now, deadline_s)
        return True

    def _touched_soonest(self) -> float:
        """(Holding io.) The soonest retransmission or deadline of the peers sent to since this
        was last asked: what an application thread's I/O work may have moved up (the acks it owes
        are its own to send while it reads the sockets). Only those peers, not every one: this
        runs after every direct send and recv."""
        soonest = math.inf
        for urn in self._touched:
            p = self.peers.get(urn)
            due = p.out.next_deadline() if p is not None else None
            if due is not None and due < soonest:
                soonest = due
        self._touched.clear()
        return soonest

    def _nudge_io(self, soonest: float) -> None:
        """Wake the I/O thread if `soonest` (from `_touched_soonest`) comes before its poll ends."""
        if soonest < self._io_sleep_until - APP_ACTIVE_S:
            self._wake()

    def _wait_for_room(self, dest: str, timeout: float | None) -> int:
        """(Holding the lock.) Wait until `dest` holds fewer than hwm unsettled messages."""
        limit = None if timeout is None else time.monotonic() + timeout
        self._app_active_until = 0.0             # the I/O thread reads the acknowledgements meanwhile
        self._wake()
        self._blocked += 1
        try:
            while self.accepted.get(dest, 0) - self.settled.get(dest, 0) >= self.hwm:
                left = None if limit is None else limit - time.monotonic()
                if left is not None and left <= 0:
                    raise HighWaterMark(f"{dest} has {self.hwm} messages unsettled (the high-water mark); "
                                        f"send timed out after {timeout} s{self.why_unsettled(dest)}")
                self.cond.wait(left)
        finally:
            self._blocked -= 1
        return self.accepted.get(dest, 0)

    def why_unsettled(self, dest: str) -> str:
        """For a standby replica, why its messages are not settled: acknowledged, they wait for
        a checkpoint of it to hold them (a read of the I/O thread's state: figures, not a lock)."""
        p = self.peers.get(dest)
        if p is None or not p.out.strict or not p.out.retained:
            return ""
        return (f"; {len(p.out.retained)} of them were acknowledged but wait for a checkpoint of it (a standby "
                f"replica settles a message only once a checkpoint holds it), and none has come for "
                f"{time.monotonic() - p.checkpoint_wait_since:.0f} s: its checkpoints are failing or it is stuck")

    def recv(self, source: str | None = None, tag: int | None = None, timeout: float | None = None) -> Message | None:
        if self.safe_point_due:
            self._safe_point()
        if source is None and tag is None:
            with self.lock:                      # the common case: the oldest message, if any
                if self.inbox:
                    m = self.inbox.popleft()
                    if self.paused and len(self.inbox) < self.hwm // 2:
                        self._wake()
                    return m
        limit = None if timeout is None else time.monotonic() + timeout
        if timeout is None or timeout > 0:
            m = self._recv_direct(source, tag, limit)
            if m is not None:
                return m
        with self.cond:
            while True:
                # A migration asks for us while we wait: checked before each wait, not only after
                # one, for the ask may have come while this thread read the sockets itself
                # (_recv_direct runs the handler that asks), when no wait was there to wake.
                if self.safe_point_due:
                    self.cond.release()
                    try:
                        self._safe_point()
                    finally:
                        self.cond.acquire()
                for i, m in enumerate(self.inbox):
                    if (source is None or m.source == source) and (tag is None or m.tag == tag):
                        del self.inbox[i]
                        if self.paused and len(self.inbox) < self.hwm // 2:
                            self._wake()
                        return m
                left = None if limit is None else limit - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._recv_waiting += 1          # (under the lock) the I/O thread must watch the sockets
                if self._recv_waiting == 1 and self._app_active_until > time.monotonic():
                    self._wake()                 # it may have stopped watching them for other threads' work
                try:
                    self.cond.wait(left)
                finally:
                    self._recv_waiting -= 1

    def unread(self, m: Message) -> None:
        """Put back a message a caller took but could not use (an asyncio recv cancelled while
        its worker thread took it): at the head of the inbox, where it was."""
        with self.cond:
            self.inbox.appendleft(m)
            self.cond.notify_all()

    def _take_match(self, source: str | None, tag: int | None) -> Message | None:
        if not self.inbox:          # (a look without the lock: what comes meanwhile, the next look sees)
            return None
        with self.lock:
            for i, m in enumerate(self.inbox):
                if (source is None or m.source == source) and (tag is None or m.tag == tag):
                    del self.inbox[i]
                    return m
        return None

    def _recv_direct(self, source: str | None, tag: int | None, limit: float | None) -> Message | None:
        """Wait for a message by reading the sockets in this thread, while the I/O thread is
        idle, for up to DIRECT_HOLD_S: None then, or if the I/O thread stays busy, and the caller
        waits for it to deliver. A turn the I/O thread wants meanwhile (its timers, periodic
        jobs) it gets (`_take_io`), and the wait goes on after it.

        It sleeps on the sockets' descriptors (ZMQ_FD), which are edge-triggered: a send or read
        on a socket may take its readiness signal. So before sleeping it looks at the EVENTS of
        each router used since it was last looked at (`_clean`; two system calls a look, not a
        look at every socket), and at the links' (acknowledgements, redirects: nothing a recv
        waits for) at most every LINK_LOOK_S. A socket whose descriptor woke it is read at once,
        without a look."""
        if self.catalog is None or self.paused \
                or not ((not self._io_wants and self.io.acquire(False)) or self._take_io()):
            self._hand_back()
            return None
        m = None
        held = True
        now = time.monotonic()
        try:
            hold = now + DIRECT_HOLD_S
            if limit is not None and limit < hold:
                hold = limit
            watch = self._app_watch
            if watch is None or watch[0] != self._links_version:
                watch = self._watch_for_app()
            _, waiter, by_fd, routers, links = watch
            clean = self._clean
            polled = False
            while True:
                if self.commands or self._wake_pending:    # (_take_commands's own first look, without a call)
                    self._take_commands()
                now = time.monotonic()
                if now >= self._acks_due:
                    self._flush_acks(now)
                quiet = True
                for sock, reader, look in routers:
                    if sock not in clean:
                        if not _zmq_poll(look, 0):
                            clean.add(sock)
                        elif not self.paused:
                            reader()
                            quiet = False
                if now >= self._links_look_due:
                    self._links_look_due = now + LINK_LOOK_S
                    for sock, reader, look in links:
                        if sock not in clean:
                            if not _zmq_poll(look, 0):
                                clean.add(sock)
                            else:
                                reader()
                                quiet = False
                if self.inbox:                   # (_take_match's own first look, without a call)
                    m = self._take_match(source, tag)
                if m is not None or self.paused or (polled and now >= hold) or self.safe_point_due:
                    return m
                if self._io_wants:
                    # Its turn, then ours again: handing the wait over instead (the caller waiting
                    # for the I/O thread to deliver) costs a hand-off of the message between the
                    # threads, and has the I/O thread watch the sockets' descriptors for a while.
                    held = False                 # (set first: an interrupt in _take_io must not release io)
                    self.io.release()
                    held = self._take_io()
                    if not held:
                        return None
                    _, waiter, by_fd, routers, links = self._watch_for_app()
                    continue
                if not quiet and now < hold:    # what a read sent may have used a socket looked at before it
                    continue
                for fd, _ in _wait_fds(waiter, max(0, math.ceil((min(hold, self._acks_due) - now) * 1000))):
                    woke = by_fd.get(fd)
                    if woke is None:
                        with contextlib.suppress(OSError):
                            os.read(self.wake_rx, 4096)
                    elif not (self.paused and woke[0] in self.routers):
                        woke[1]()                # (the read takes the socket out of `_clean`)
                polled = True
                m = self._take_match(source, tag)
                if m is not None:
                    return m
        finally:
            soonest = self._touched_soonest() if m is not None and self._touched else math.inf
            if held:
                self.io.release()
            if m is None:
                self._hand_back()
            else:
                self._app_active_until = now + APP_ACTIVE_S     # (when it took the message)
                if soonest < self._io_sleep_until - APP_ACTIVE_S:     # (_nudge_io, without a call)
                    self._wake()

    def _take_io(self) -> bool:
        """Take io for a direct recv, waiting up to DIRECT_HOLD_S. The I/O thread holds it for a
        turn at a time (it may have woken for this very message): wait for the turn to end rather
        than for it to hand the message over; when it waits for io itself (`_io_wants`), let it
        have its turn first (`_turn_over`), rather than take io back before it could (False if it
        still wants io after that)."""
        if self._io_wants:
            self._turn_over.wait(DIRECT_HOLD_S)
            if self._io_wants:
                return False
        return self.io.acquire(timeout=DIRECT_HOLD_S)

    def _hand_back(self) -> None:
        """The caller will wait for the I/O thread to deliver: it must watch the sockets again
        (while it thinks an application thread serves them, it sleeps without them for up to
        APP_ACTIVE_S; a recv that found it busy and did not say so waited that long, the 20 ms
        tail of the round trips)."""
        if self._app_active_until:
            self._app_active_until = 0.0
            self._wake()

    def _watch_for_app(self) -> _AppWatch:
        """(Holding io.) For a direct recv, as of this links version: a poll of the wake-up
        descriptor and of every socket's descriptor (ZMQ_FD) the endpoint reads, each
        descriptor's socket and the call that reads it, and for the routers and for the links
        each socket, its reader and the item for a look at its EVENTS (`_zmq_poll`)."""
        watch = self._app_watch
        if watch is None or watch[0] != self._links_version:
            routers: list[_Watched] = [(router, functools.partial(self._read_router, router, True),
                                        [(router, _POLLIN)]) for router in self.routers]
            links: list[_Watched] = [(link.sock, functools.partial(self._read_link, p, link), [(link.sock, _POLLIN)])
                                     for p in self.peers.values() for link in p.links.values()]
            waiter = select.poll()
            waiter.register(self.wake_rx, select.POLLIN)
            by_fd: dict[int, tuple[zmq.Socket, Callable[[], None]]] = {}
            for sock, reader, _ in routers + links:
                fd = sock.getsockopt(zmq.FD)
                by_fd[fd] = (sock, reader)
                waiter.register(fd, select.POLLIN)
            self._clean.clear()
            watch = self._app_watch = (self._links_version, waiter, by_fd, routers, links)
        return watch

    def _input_sockets(self) -> list[zmq.Socket]:
        return [*self.routers, *(link.sock for p in self.peers.values() for link in p.links.values())]

    def probe(self, source: str | None = None, tag: int | None = None) -> bool:
        if self.safe_point_due:
            self._safe_point()
        with self.cond:
            return any((source is None or m.source == source) and (tag is None or m.tag == tag) for m in self.inbox)

    def _safe_point(self) -> None:
        """The application's thread is in a call of ours, between its own updates: a migration
        may take its state now (snipe/migration/origin.py)."""
        self.safe_point_due = False
        fn = self.at_safe_point
        if fn is not None:
            fn()

    def ask_safe_point(self) -> None:
        """(Any thread.) Have the application's thread call `at_safe_point` at its next call;
        wakes it if it is waiting in recv."""
        with self.cond:
            self.safe_point_due = True
            self.cond.notify_all()

    # --- migration: freeze, export, restore, redirect (I/O thread unless said otherwise) ----------
    def freeze(self) -> None:
        """Stop delivering and sending new messages: from here on the state export is exact.
        Acknowledgements due for what was delivered go out first."""
        self._flush_acks(float("inf"))
        self.frozen = True

    def thaw(self) -> None:
        """A migration failed: carry on here as if nothing happened."""
        self.frozen = False
        self._wake()

    def export_state(self) -> tuple[dict[str, Any], list[bytes]]:
        """(I/O thread, frozen.) Every channel, unread message and unsent command, exactly."""
        now = time.monotonic()
        payloads: list[bytes] = []
        outs = []
        for urn, p in self.peers.items():
            if p.out.held() or p.out.next_seq > 1:
                outs.append([urn, p.out.export_state(now), p.view])
                payloads.extend(p.out.held_payloads())
        with self.lock:
            inbox = list(self.inbox)
            commands = list(self.commands)
        for m in inbox:
            payloads.append(bytes(m.payload) if not isinstance(m.payload, bytes) else m.payload)
        for _, _, payload, _ in commands:
            payloads.append(payload)
        state = {"out": outs, "in": [[src, ib.export_state()] for src, ib in self.inbound.items()],
                 "inbox": [[m.source, m.tag, m.group, m.failed, m.reason] for m in inbox],
                 "commands": [[d, t, dl] for d, t, _, dl in commands], "restore": self.restore,
                 "received": dict(self.received), "bytes_received": dict(self.bytes_received)}
        return state, payloads

    def restore_state(self, state: dict[str, Any], payloads: list[bytes]) -> None:
        """(Before run().) Continue the channels and the inbox of a process that migrated here."""
        now = time.monotonic()
        at = 0
        for urn, out_state, view in state["out"]:
            n = len(out_state["held"])
            out = Outbound(self.me, urn, window=self.window, hwm=self.hwm * 2, min_rto=MIN_RTO_S)
            out.restore_state(out_state, payloads[at:at + n], now)
            at += n
            p = self.peers[urn] = _Peer(urn, out)
            if isinstance(view, dict):      # the peer's routes from here, without asking the catalog
                self._take_view(p, view, now)
            self.accepted[urn] = self.settled[urn] = 0
            self.accepted[urn] = out.held()
        self.restore = int(state.get("restore", 0))
        for src, in_state in state["in"]:
            ib = self.inbound[src] = Inbound(self.me, src, window=self.window, restore=self.restore)
            ib.restore_state(in_state)
        for (source, tag, group, failed, reason) in state["inbox"]:
            self.inbox.append(Message(source, tag, payloads[at], group, failed, reason))
            at += 1
        for dest, tag, deadline_s in state["commands"]:
            self.accepted[dest] = self.accepted.get(dest, 0) + 1
            self.commands.append((dest, tag, payloads[at], deadline_s))
            at += 1
        if at != len(payloads):
            raise CodecError(f"migrated messaging state names {at} payloads but {len(payloads)} came")
        self.received.update(state.get("received", {}))
        self.bytes_received.update(state.get("bytes_received", {}))

    def _take_view(self, p: _Peer, view: dict[str, Any], now: float) -> None:
        with contextlib.suppress(SnipeError, ValueError):
            p.key = public_key_from_id(str(view.get("key")))
            p.routes = self._routes_to(ProcView.from_values(p.urn, view), now)
            p.route_index, p.heard_at, p.resolved_at, p.view = 0, now, now, view

    def peer_keys(self) -> list[bytes]:
        """(I/O thread.) The keys of the processes we talk to: a clone admits them ahead."""
        keys = {p.key for p in self.peers.values() if p.key is not None}
        for (_, key), _until in list(self.sources_ok.items()):
            with contextlib.suppress(ValueError):
                keys.add(bytes.fromhex(key))
        return sorted(keys)

    def move_to(self, location: dict[str, Any]) -> int:
        """(I/O thread.) This process now lives at `location` (a clone's `location()`): tell every
        peer we know of, and from now on answer any message with that redirect. Returns how
        many peers were told."""
        self.moved = location
        self.paused = False           # keep reading: every straggler gets the redirect
        told = 0
        env = self._redirect_envelope()
        for source, ident in list(self.reply_to.items()):   # those who send to us
            self._send_ack(ident, env, source)
            told += 1
        for p in self.peers.values():                   # those we send to
            for link in p.links.values():
                self._clean.discard(link.sock)
                with contextlib.suppress(zmq.ZMQError, zmq.Again):
                    link.sock.send_multipart(encode(env), zmq.NOBLOCK)
                    told += 1
        return told

    def _redirect_envelope(self) -> Envelope:
        return Envelope(PROTOCOL, VERSION, "redirect", 0, {"f": self.me, "from": self.instance, "to": self.moved})

    def _on_redirect(self, urn: str, env: Envelope) -> None:
        """A process we talk to moved: take the routes to its new place at once and send it
        everything it has not acknowledged (it continues our channel where it stood)."""
        to, old = env.body.get("to"), env.body.get("from")
        if not isinstance(to, dict) or not isinstance(old, str):
            raise CodecError("msg/1 redirect needs to: {comm, host, instance, key} and from: instance")
        p = self.peers.get(urn)
        if p is None or to.get("instance") in p.gone:
            return
        p.gone.add(old)
        now = time.monotonic()
        peer = ProcView.from_values(urn, to)
        key = to.get("key")
        if isinstance(key, str):
            with contextlib.suppress(SnipeError):
                p.key = public_key_from_id(key)
        routes = self._routes_to(peer, now)
        if not routes:
            return
        p.routes, p.route_index, p.heard_at, p.resolved_at = routes, 0, now, now
        p.shunned.clear()
        log.info("%s: %s moved; route is now %s", self.me, urn, routes[0].endpoint)
        self._transmit(p, p.out.resend_all(now))

    def stats(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        now = time.monotonic()
        for urn, p in list(self.peers.items()):
            r = p.route
            out[urn] = {"sent": p.out.sent, "acked": p.out.acked, "retransmitted": p.out.retransmitted,
                        "bytes_sent": p.out.sent_bytes, "route": r.endpoint if r else None,
                        "route_kind": r.kind if r else None, "route_net": r.net if r else None,
                        "in_flight": p.out.held()}
            if p.out.strict:        # a standby replica: what waits for its next checkpoint, and since when
                out[urn]["awaiting_checkpoint"] = len(p.out.retained)
                out[urn]["checkpoint_age_s"] = None if p.checkpointed_at is None else round(now - p.checkpointed_at, 1)
        for urn, n in list(self.received.items()):
            out.setdefault(urn, {})["received"] = n
            out[urn]["bytes_received"] = self.bytes_received.get(urn, 0)
        for urn, n in list(self.dropped.items()):
            out.setdefault(urn, {})["dropped"] = n
        return out

    def run_in_io(self, fn: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Run `fn` in the I/O thread between two turns and return what it returns: a view of the
        channels no packet changes halfway (checkpoints take the library's state this way)."""
        done: Future[Any] = Future()
        self._io_calls.append((fn, done))
        self._wake()
        return done.result(timeout)

    # --- the I/O thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        self.catalog = CatalogClient(self.catalog_addrs, self.identity, self.admin_key, timeout=2.0)
        # The poller watches file descriptors only (the wake-up, each socket's ZMQ_FD), never the
        # sockets themselves: it runs without `io`, while an application thread may be using them.
        # ZMQ_FD only says something happened; each turn reads what the sockets' EVENTS say waits.
        poller = zmq.Poller()
        poller.register(self.wake_rx, zmq.POLLIN)
        idle_poller = zmq.Poller()               # the wake-up alone: while the application has the sockets
        idle_poller.register(self.wake_rx, zmq.POLLIN)
        watched: set[int] = set()
        fds: set[int] = set()
        fds_for: tuple[int, bool, bool] = (-1, False, False)    # (links version, paused, app) of fds
        try:
            for p in list(self.peers.values()):     # channels a migration brought: carry on at once
                self._pump_peer(p, time.monotonic())
            served_at = time.monotonic()
            while not self._stop:
                # While an application thread serves the sockets, do not queue behind it (its
                # next send would wait for our turn): look again shortly, but take a turn at
                # least every APP_ACTIVE_S (timers, acks, catalog work).
                now = time.monotonic()
                # (A thread waiting in recv has only us to read for it: direct work of others does
                # not make us stop watching the sockets then.)
                if now < self._app_active_until and now - served_at < APP_ACTIVE_S and not self._recv_waiting:
                    if not self.io.acquire(blocking=False):
                        # Sleep until our turn is due, or until the application hands the sockets
                        # back (it writes the wake-up then): trying every millisecond cost each
                        # side of a round trip two wake-ups and the GIL handoffs they bring.
                        if idle_poller.poll(math.ceil((served_at + APP_ACTIVE_S - now) * 1000)):
                            with contextlib.suppress(OSError):
                                os.read(self.wake_rx, 4096)
                        continue
                else:
                    self._turn_over.clear()     # (before _io_wants: who sees that waits for this)
                    self._io_wants = True       # application threads leave io to us until we had it
                    self.io.acquire()
                    self._io_wants = False
                served_at = now
                try:
                    waiting = self._turn()
                    now = time.monotonic()
                    app_until = self._app_active_until     # once: application threads change it
                    app = now < app_until and not self._recv_waiting
                    if fds_for != (self._links_version, self.paused, app):
                        fds_for = (self._links_version, self.paused, app)
                        fds = set() if app else {s.getsockopt(zmq.FD) for s in self._input_sockets()
                                                 if s not in self.routers or not self.paused}
                    self._io_polls_fds = bool(fds)
                    timeout = 0.0 if waiting else self._next_timer(acks=not app)
                    self._touched.clear()                # reckoned in: every peer's timers
                    if app:
                        timeout = max(0.0, min(timeout, app_until - now))
                    self._io_sleep_until = now + timeout
                finally:
                    self.io.release()
                    if not self._turn_over.is_set():
                        self._turn_over.set()   # a direct recv that waited for this turn carries on
                for fd in fds - watched:
                    poller.register(fd, zmq.POLLIN)
                for fd in watched - fds:
                    with contextlib.suppress(KeyError):
                        poller.unregister(fd)
                watched = fds
                # whole milliseconds, rounded up: a timeout under 1 ms would poll without waiting
                ready = dict(poller.poll(math.ceil(timeout * 1000)))
                if self.wake_rx in ready:
                    with contextlib.suppress(OSError):
                        os.read(self.wake_rx, 4096)     # an eventfd: one read clears it
        except Exception:  # the thread must say why it died; the application then sees failures
            log.exception("the messaging thread failed")
        finally:
            with self.io:
                with contextlib.suppress(Exception):
                    self._flush_acks(float("inf"))
                for p in self.peers.values():
                    for link in p.links.values():
                        link.close()
            if self.catalog is not None:
                self.catalog.close()

    def _turn(self) -> bool:
        """(Holding io.) One round of the I/O thread's work; True if input is still waiting."""
        self._clean.clear()             # it may use any socket (and tells nobody which)
        if self.paused and len(self.inbox) < self.hwm // 2:
            self.paused = False         # the application has read half of it (recv wakes us)
        self._take_commands()
        while self._io_calls:
            fn, done = self._io_calls.popleft()
            try:
                done.set_result(fn())
            except Exception as exc:
                done.set_exception(exc)
        self._read_input()
        now = time.monotonic()
        if now >= self._acks_due:
            self._flush_acks(now)
        if self.paused and now - self._busy_at >= BUSY_EVERY_S:
            self._say_busy(now)
        if self.moved is not None:
            return self._input_waiting()        # the process lives elsewhere: only redirects from here
        if now >= self._io_sleep_until or now - self._timers_at >= 0.25:   # a retry or deadline is due
            self._timers()
        self._publish_stats()
        for hook in self.turn_end:
            hook()
        if self.commands:
            self._take_commands()       # what handlers and relays queued this turn
        now = time.monotonic()
        if now - self._periodic_at >= 0.5:
            self._periodic_at = now
            for job in self.leases if self.frozen else [*self.leases, *self.periodic]:
                try:
                    job(now)
                except SnipeError as exc:
                    log.warning("periodic job failed: %s", exc)
        if self.commands:
            self._take_commands()
        return self._input_waiting()

    def _read_input(self) -> None:
        """(Holding io.) Read every socket that has messages waiting."""
        if not self.paused:
            for router in self.routers:
                if router.getsockopt(_EVENTS) & _POLLIN:
                    self._read_router(router)
        for p in list(self.peers.values()):
            for link in list(p.links.values()):
                if link.sock.getsockopt(_EVENTS) & _POLLIN:
                    self._read_link(p, link)

    def _input_waiting(self) -> bool:
        """(Holding io.) Whether a socket we read has messages waiting (after our own sends, which
        may have consumed the readiness signal of its descriptor)."""
        if not self.paused and any(router.getsockopt(_EVENTS) & _POLLIN for router in self.routers):
            return True
        return any(link.sock.getsockopt(_EVENTS) & _POLLIN for p in self.peers.values() for link in p.links.values())

    def _next_timer(self, acks: bool = True) -> float:
        """Seconds until the next timer is due (at most 0.5); `acks`: counting acknowledgements
        waiting to be sent (an application thread that reads the sockets sends them)."""
        times = [t for p in self.peers.values() if (t := p.out.next_deadline()) is not None]
        if any(p.waiting_since is not None for p in self.peers.values()):
            times.append(time.monotonic() + 0.05)
        if self._acks and acks:
            times.append(self._acks_due)
        if self.paused:
            times.append(self._busy_at + BUSY_EVERY_S)
        if not times:
            return 0.5
        return max(0.0, min(min(times) - time.monotonic(), 0.5))

    def _take_commands(self) -> None:
        if self.frozen or self.moved is not None:
            return                              # they stay queued: a migration takes them along
        if not self.commands and not self._wake_pending:
            return      # nothing queued (a send queues before it asks for a wake-up): no lock needed
        with self.lock:
            self._wake_pending = False           # before taking: a send after this wakes us again
            if not self.commands:
                return
            batch = list(self.commands)
            self.commands.clear()
        now = time.monotonic()
        # A deadline runs from here, at most one turn of this thread after the send: one float per
        # burst, so the channel keeps one deadline entry for the burst. Each peer's messages go to
        # its channel together, in their order, a call per run of one deadline (a sender writing
        # to many peers in turn gives each its share at once).
        by_dest: dict[str, list[tuple[str, int, bytes, float]]] = {}
        for command in batch:
            held = by_dest.get(command[0])
            if held is None:
                by_dest[command[0]] = [command]
            else:
                held.append(command)
        touched: list[_Peer] = []
        for dest, commands in by_dest.items():
            p = self.peers.get(dest)
            if p is None:
                p = self.peers[dest] = self._new_peer(dest)
            touched.append(p)
            for deadline_s, run in itertools.groupby(commands, key=_DEADLINE_S):
                p.out.submit_many([(tag, payload) for _, tag, payload, _ in run], now, now + deadline_s)
        for p in touched:
            self._pump_peer(p, now)

    def _new_peer(self, dest: str, parent: str | None = None, copy_index: int = -1) -> _Peer:
        rng = random.Random(f"{self.session_seed}|{dest}") if self.session_seed else None
        return _Peer(dest, Outbound(self.me, dest, window=self.window, hwm=self.hwm * 2, min_rto=MIN_RTO_S, rng=rng),
                     parent=parent, copy_index=copy_index)

    def _fan_out(self, p: _Peer, now: float) -> None:
        """A replicated URN in mode "all": what was sent to it goes to each copy, in order."""
        held = list(p.out.queue)
        p.out.queue.clear()
        p.out.deadlines.clear()
        for i, key in enumerate(p.copies):
            sub = self.peers.get(key)
            if sub is None:
                sub = self.peers[key] = self._new_peer(key, p.urn, i)
            for h in held:
                sub.out.submit(h.tag, h.payload, now, h.deadline)
            self._pump_peer(sub, now)

    def _pump_peer(self, p: _Peer, now: float) -> None:
        if not p.routes or now - p.resolved_at > RESOLVE_EVERY_S:
            self._resolve(p, now)
        if p.copies:
            self._fan_out(p, now)
            return
        if not p.routes:
            if p.waiting_since is None:
                p.waiting_since = now
            return
        p.waiting_since = None
        self._transmit(p, p.out.flush(now))

    def _resolve(self, p: _Peer, now: float, timeout: float | None = None) -> None:
        """Find the peer's routes in the catalog (waiting up to `timeout`, else the catalog
        client's own). A peer that has ended fails its messages."""
        assert self.catalog is not None
        p.resolved_at = now
        urn = p.parent or p.urn
        try:
            self.catalog.invalidate(urn)
            entry = self.catalog.get(urn, r=1, timeout=timeout)
        except SnipeError as exc:
            log.debug("cannot resolve %s: %s", p.urn, exc)
            return
        values = entry.as_dict(now_ms())
        if not values and entry.owner(self.admin_key, now_ms()) is None:
            self._unclaimed(p, urn, now)
            return
        replicas = values.get("replicas")
        if values.get("mode") == "all" and isinstance(replicas, int) and p.parent is None:
            p.copies = [f"{urn}#{i}" for i in range(min(replicas, 64))]
            return
        if p.parent is not None:                # a copy: its own comm, instance and host
            mine_of = values.get(f"copy.{p.copy_index}")
            mine_of = mine_of if isinstance(mine_of, dict) else {}
            values = {**values, **{k: mine_of.get(k) for k in ("comm", "instance", "host")}}
        state = values.get("state")
        if state in ENDED_STATES:
            self._fail(p, f"{p.urn} has {state}" + (f": {values['reason']}" if values.get("reason") else ""))
            return
        if values.get("restart") and not p.out.retain:      # it may be restored from a checkpoint
            p.out.retain = RETAIN_FOR_RESTART
            p.out.strict = values.get("mode") == "standby"  # replicated: nothing acknowledged may be lost
        peer = ProcView.from_values(urn, values)
        key = values.get("key")
        if peer.instance in p.gone:
            return                              # a stale entry: the process told us it moved
        if not peer.comm or not isinstance(key, str):
            return                              # not listening yet: keep the messages, retry shortly
        try:
            p.key = public_key_from_id(key)
        except SnipeError:
            return
        known_as = p.view.get("instance") if p.view else None
        p.view = {"comm": values.get("comm"), "host": values.get("host"), "instance": values.get("instance"),
                  "key": key}
        routes = self._routes_to(peer, now)
        usable = [i for i, r in enumerate(routes) if p.shunned.get(r.endpoint, 0.0) <= now]
        best_index = usable[0] if usable else 0
        best = routes[best_index] if routes else None
        if best is not None and (p.route is None or p.route.endpoint != best.endpoint):
            was = p.route.endpoint if p.route else None
            p.routes, p.route_index = routes, best_index
            p.heard_at = now
            log.info("%s: route to %s is now %s (was %s)", self.me, p.urn, best.endpoint, was)
        else:
            p.routes = routes
            p.route_index = min(p.route_index, max(0, len(routes) - 1))
        if known_as is not None and known_as != peer.instance:
            # Another incarnation of it listens now: if it was restored from a checkpoint that does
            # not know our session, only our data tells it the session exists (it then asks us to
            # resume), and we may have nothing else to send it for a long time. The probe is owed
            # until it acknowledges our session: a lost one goes again on the next look here.
            p.out.instance_changed(peer.instance)
        if p.out.probe_owed is not None:
            self._transmit(p, p.out.probes())

    def _routes_to(self, peer: ProcView, now: float) -> list[Route]:
        """The routes to `peer`, best first; through a gateway daemon when our hosts share no
        network (whether the peer was resolved, restored after a migration, or redirected)."""
        mine = ProcView(self.me, self.host_urn, self.instance, [])
        my_host = self._host_values(self.host_urn)
        peer_host = self._host_values(peer.host)
        routes = choose_routes(mine, peer, my_host, peer_host)
        if peer_host and my_host and peer.host != self.host_urn and not any(r.net for r in routes):
            routes = choose_routes(mine, peer, my_host, peer_host, self._gateway_hosts(now))
        return routes

    def _host_values(self, host: str | None) -> dict[str, Any] | None:
        if not host or self.catalog is None:
            return None
        try:
            entry = self.catalog.cached(host, max_age=RESOLVE_EVERY_S)
        except SnipeError:
            return None
        values = entry.as_dict(now_ms())
        if "interfaces" not in values:
            # The host's daemon let its lease lapse (it died): its network did not go with it and
            # its tasks live on, so route by the interfaces it last published (a task there whose
            # only endpoints share a network with us would otherwise be unreachable).
            last = max((a for a in entry.records if a.name == "interfaces" and not a.deleted),
                       key=lambda a: a.ts, default=None)
            if last is not None:
                values["interfaces"] = last.value
        return values

    def _gateway_hosts(self, now: float) -> dict[str, Any]:
        """Hosts whose daemons relay (publish `relay_port`), read at most every RESOLVE_EVERY_S."""
        at, hosts = self._gateways
        if now - at < RESOLVE_EVERY_S or self.catalog is None:
            return hosts
        self._gateways = (now, hosts)           # asked at most every RESOLVE_EVERY_S, answered or not
        try:
            found = self.catalog.query("urn:snipe:host:", [("relay_port", ">=", 1)])   # replicas filter
        except SnipeError as exc:
            log.debug("cannot list gateway hosts: %s", exc)
            return hosts
        t = now_ms()
        hosts = {u: v for u, e in found.items() if "relay_port" in (v := e.as_dict(t))}
        self._gateways = (now, hosts)
        return hosts

    def _link(self, p: _Peer) -> Link | None:
        r = p.route
        if r is None or p.key is None:
            return None
        link = p.links.get(r.endpoint)
        if link is None:
            try:     # a relay route authenticates the gateway on the link; the messages are sealed for the peer
                server_key = public_key_from_id(r.via_key) if r.kind == "relay" and r.via_key else p.key
            except SnipeError:
                return None
            link = p.links[r.endpoint] = Link(self.ctx, self.identity, r.endpoint, server_key, immediate=False,
                                              signed_ipc=r.kind == "ipc",
                                              hwm=100_000)
            self._links_version += 1
        return link

    def _transmit(self, p: _Peer, sends: list[Any]) -> None:
        if not sends:
            return
        link = self._link(p)
        if link is None:
            return
        sealed_for = p.key if p.route is not None and p.route.kind == "relay" else None
        for s in sends:
            self._send_data(p, link, s.envelope.body, s.frames, sealed_for)
        self._touched.add(p.urn)

    def _send_data(self, p: _Peer, link: Link, body: dict[str, Any], payloads: Sequence[bytes],
                   sealed_for: bytes | None) -> None:
        """Put the body of a data envelope the channel made for this send (ours to complete) and
        its payloads on the link to `p`: sealed for `p` when the route is a relay's."""
        body["f"] = self.me
        if len(payloads) == 1:                   # (what pack_frames gives a lone payload)
            frames: Sequence[bytes] = payloads
        else:
            sizes, frames = pack_frames(payloads)    # small payloads: one frame for the batch
            if sizes is not None:
                body["z"] = sizes
        parts = [self._data_packer.pack([PROTOCOL, VERSION, "data", 0, body]), *frames]    # wire.encode's bytes
        if sealed_for is not None:
            parts = relay_parts(self.me, p.urn, self.sealer.seal(sealed_for, self.me, p.urn, parts))
        self._clean.discard(link.sock)
        try:  # noqa: SIM105 (suppress() costs three calls a message)
            send_parts(link.sock, parts, _NOBLOCK)
        except zmq.Again:                        # the link's queue is full: retransmission resends it
            pass

    def _timers(self) -> None:
        now = self._timers_at = time.monotonic()
        check_links = now - self._checks_at >= 0.05      # handshake events: no need to look every turn
        if check_links:
            self._checks_at = now
        for p in list(self.peers.values()):
            if p.waiting_since is not None and now - p.resolved_at > 0.2:
                self._pump_peer(p, now)
            if p.waiting_since is not None and p.out.queue and p.out.queue[0].deadline <= now:
                self._fail(p, f"{p.urn} has no messaging endpoint in the catalog (not a process, or it never listened)")
                continue
            if check_links:
                for link in p.links.values():
                    if link.check(now):
                        self._links_version += 1
            sends, failed = p.out.on_timer(now)
            if failed:
                self._settle(p.urn, failed)
            if sends:
                self._failover_if_silent(p, now)
                if p.out.flight and p.out.flight[0].attempts % 4 == 0:
                    self._resolve(p, now)      # re-read the catalog: the peer may have moved or ended
                self._transmit(p, sends)
            elif (p.out.held() or p.out.retained) and (due := resolve_due(p, now, self.retained_resolve_s)) is not None:
                self._resolve(p, now, due or None)  # retained: a restarted receiver must hear from us (_resolve)
            if p.out.strict and p.out.retained:
                self._say_if_stuck(p, now)

    def _say_if_stuck(self, p: _Peer, now: float) -> None:
        """A standby replica whose acknowledged messages wait long for a checkpoint holds its
        senders at the high-water mark: say so (once a minute) rather than let them wait unsaid."""
        waited = now - p.checkpoint_wait_since
        if waited > STUCK_CHECKPOINT_S and self._may_say("no-checkpoint", p.urn, now):
            log.warning("%s: %d acknowledged message(s) wait for a checkpoint of it and none has come for %.0f s "
                        "(its checkpoints are failing, or it is stuck); senders stop at the high-water mark",
                        p.urn, len(p.out.retained), waited)

    def _may_say(self, what: str, peer: str, now: float) -> bool:
        """Whether a log line about `what` a peer keeps doing may be said now (once per
        SAY_EVERY_S per peer: a peer cannot fill the log)."""
        at = self._said.get((what, peer))
        if at is not None and now - at < SAY_EVERY_S:
            return False
        if len(self._said) >= 4096:
            self._said.clear()
        self._said[(what, peer)] = now
        return True

    def _failover_if_silent(self, p: _Peer, now: float) -> None:
        """Loss and delay make retransmissions; only silence makes a dead route. A route that
        carried nothing back for max(2 s, 8 RTT) while data waited is shunned for a while and
        the next route taken; the channel's sequence numbers keep the stream intact."""
        if not p.out.flight or len(p.routes) < 2 or p.route is None:
            return
        silence = max(FAILOVER_SILENCE_S, 8 * (p.out.srtt or 0.0))
        if now - p.heard_at < silence:
            return
        p.shunned[p.route.endpoint] = now + SHUN_ROUTE_S
        for step in range(1, len(p.routes) + 1):
            i = (p.route_index + step) % len(p.routes)
            if p.shunned.get(p.routes[i].endpoint, 0.0) <= now or step == len(p.routes):
                p.route_index = i
                break
        p.heard_at = now
        log.info("%s: no acknowledgement from %s for %.1f s; failing over to %s", self.me, p.urn, silence,
                 p.route and p.route.endpoint)

    def _publish_stats(self) -> None:
        now = time.monotonic()
        if now - self._stats_at < STATS_EVERY_S:
            return
        self._stats_at = now
        stats = {urn: {k: v for k, v in s.items() if v is not None} for urn, s in self.stats().items()}
        if stats == self._stats_published or self.catalog is None:
            return
        try:
            self.catalog.set(self.me, "msg_stats", stats, ttl=3 * STATS_EVERY_S)
            self._stats_published = stats
        except SnipeError as exc:
            log.debug("could not publish messaging counters: %s", exc)

    # --- multicast hooks (snipe/multicast) -------------------------------------------------------
    def _on_system(self, messages: list[Deliver]) -> None:
        """Reserved-tag messages from one source, in order: each run of one tag to its handler at
        once (a router takes a sender's burst as one, not message by message)."""
        start = 0
        for end in range(1, len(messages) + 1):
            if end < len(messages) and messages[end].tag == messages[start].tag:
                continue
            run = messages[start:end]
            start = end
            handler = self.system_handlers.get(run[0].tag)
            if handler is None:
                log.debug("no handler for reserved tag %s from %s", run[0].tag, run[0].source)
                continue
            try:
                handler(run)
            except SnipeError as exc:
                log.warning("dropping %d tag %s message(s) from %s: %s", len(run), run[0].tag, run[0].source, exc)

    @staticmethod
    def one_by_one(handle: Callable[[Deliver], None]) -> SystemHandler:
        """A system handler that takes the messages of a run one at a time; a malformed one is
        logged and dropped without the rest of the run."""
        def run(messages: list[Deliver]) -> None:
            for m in messages:
                try:
                    handle(m)
                except SnipeError as exc:
                    log.warning("dropping a tag %s message from %s: %s", m.tag, m.source, exc)
        return run

    @staticmethod
    def decoded(messages: list[Deliver], decode: Callable[[bytes], Decoded], what: str
                ) -> list[tuple[Deliver, Decoded]]:
        """For a system handler: each message with its payload decoded; one that `decode` finds
        malformed (CodecError) is logged, naming its source, and left out."""
        out = []
        for m in messages:
            try:
                out.append((m, decode(m.payload)))
            except CodecError as exc:
                log.warning("dropping a %s from %s: %s", what, m.source, exc)
        return out

    def deliver_local(self, messages: list[Message]) -> None:
        """Put messages in the application's inbox (from the I/O thread)."""
        with self.cond:
            self.inbox.extend(messages)
            if self._recv_waiting or self._blocked:   # the only waits on cond, counted under it (as _on_data)
                self.cond.notify_all()

    def submit(self, dest: str, tag: int, payload: bytes, deadline_s: float = DEFAULT_DEADLINE_S) -> None:
        """`send` for the I/O thread itself (relays): never blocks; memory is bounded by the
        relays' own flow (each relayed message was accepted from a bounded channel)."""
        with self.lock:
            self.accepted[dest] = self.accepted.get(dest, 0) + 1
            self.commands.append((dest, tag, payload, deadline_s))

    def _unclaimed(self, p: _Peer, urn: str, now: float) -> None:
        """Nobody has claimed `urn`, as far as one replica knows. A process's URN is claimed before
        anyone can learn it (a spawn registers the task first), so after UNCLAIMED_GRACE_S of
        waiting, a quorum read (it sees every acknowledged claim) decides: still unclaimed, the
        messages fail now, naming why, rather than at their deadline."""
        if (p.waiting_since is None or now - p.waiting_since < UNCLAIMED_GRACE_S
                or now - p.unclaimed_asked_at < RESOLVE_EVERY_S):
            return
        assert self.catalog is not None
        p.unclaimed_asked_at = now
        try:
            entry = self.catalog.get(urn, timeout=UNCLAIMED_READ_TIMEOUT_S)
        except SnipeError as exc:
            log.debug("cannot read %s at a quorum: %s", urn, exc)
            return
        if not entry.as_dict(now_ms()) and entry.owner(self.admin_key, now_ms()) is None:
            self._fail(p, f"{p.urn} is not in the catalog: no process has that URN (a quorum of replicas says so)")

    def _fail(self, p: _Peer, reason: str) -> None:
        self._settle(p.urn, p.out.fail_all(reason))
        if not p.out.queue:
            p.waiting_since = None          # nothing left to find it for: no more catalog reads until a send

    def _settle(self, dest: str, failed: list[DeliveryFailed]) -> None:
        p = self.peers.get(dest)
        with self.cond:
            for f in failed:
                if f.tag < 0:       # a relay hop of the multicast layer: the other routers cover it
                    log.info("multicast hop to %s failed: %s", dest, f.reason)
                    continue
                if not self.application:        # nobody would read it in the inbox
                    if self._may_say("undelivered", dest, time.monotonic()):
                        log.info("a tag %d message to %s could not be delivered: %s", f.tag, dest, f.reason)
                    continue
                if p is not None and p.parent is not None:      # one copy of a replicated URN
                    self.inbox.append(Message(p.parent, f.tag, b"", failed=True,
                                              reason=f"copy {p.copy_index}: {f.reason}"))
                else:
                    self.inbox.append(Message(dest, f.tag, b"", failed=True, reason=f.reason))
            if p is not None:
                p.failed += len(failed)
                key, n = self._settled(p)
                self.settled[key] = n
            self.cond.notify_all()

    def _settled(self, p: _Peer) -> tuple[str, int]:
        """(the URN senders block on, how many of its messages are settled): for a copy of a
        replicated URN, the fewest any copy has settled."""
        if p.parent is None:
            return p.urn, p.out.acked + p.failed - p.out.retained_unsettled()
        parent = self.peers.get(p.parent)
        subs = [self.peers[k] for k in (parent.copies if parent else []) if k in self.peers] or [p]
        return p.parent, min(q.out.acked + q.failed - q.out.retained_unsettled() for q in subs)

    def _read_link(self, p: _Peer, link: Link) -> None:
        now = time.monotonic()
        self._clean.discard(link.sock)
        for _ in range(1000):
            try:
                parts = link.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            try:
                env, frames = decode(parts)
                if env.kind == "error":
                    log.warning("%s refused our messages: %s", p.urn, env.body.get("message"))
                    continue
                if env.kind == RELAY:              # an ack sealed by the peer, through a gateway
                    source, dest, sealed = parse_relay(env, frames)
                    if source != p.urn or dest != self.me or p.key is None:
                        raise CodecError(f"a relayed ack from {source} to {dest} came on the link to {p.urn}")
                    env, _ = decode(self.sealer.open(p.key, source, dest, sealed))
                if env.kind == "redirect":
                    self._on_redirect(p.urn, env)
                    continue
                if self.moved is not None:
                    continue                            # our channels live on in the clone
                session, cum = parse_ack(env)
            except SnipeError as exc:
                log.warning("bad acknowledgement from %s: %s", p.urn, exc)
                continue
            p.heard_at = now
            self._transmit(p, p.out.on_ack(session, cum, now, busy=ack_is_busy(env)))
        key, settled = self._settled(p)
        if settled != self.settled.get(key, 0):
            with self.lock:
                self.settled[key] = settled
                if self._blocked:
                    self.cond.notify_all()

    def _read_router(self, router: zmq.Socket, until_delivered: bool = False) -> None:
        """Read what waits on `router`; `until_delivered` (a direct recv): stop once a message
        reached the inbox, rather than ask for the next one (which costs a zmq.Again when there
        is none, the usual case for a lone message). What stays (its readiness signal taken) is
        read by this thread's next recv, which looks at the EVENTS of a router it used before it
        sleeps, or else by the I/O thread's next turn, at most APP_ACTIVE_S after its last: the
        wait any message arriving while the application is active has. Not when another thread
        waits in recv: the I/O thread would not know it is there, so it is read now."""
        delivered = self._delivered
        self._clean.discard(router)
        now = time.monotonic()          # (one look at the clock a read: sources' checks, acks' delays)
        recv = router.recv
        for _ in range(1000):
            if until_delivered and self._delivered != delivered and not self._recv_waiting:
                return
            # A ROUTER's message is its sender's routing id (always followed by more), then what
            # the sender sent; ZeroMQ delivers a message whole, so after the first part the rest is
            # there. The key the sender authenticated with rides on every part (`sender_key`).
            try:
                ident = (router, recv(_NOBLOCK))
            except zmq.Again:
                return
            try:
                envelope = recv(_NOBLOCK, False)
                parts = []
                more = envelope.more
                while more:
                    f = recv(_NOBLOCK, False)
                    parts.append(f)
                    more = f.more
            except zmq.Again:
                # What we took for a routing id was the rest of a message whose read an interrupt
                # cut short (KeyboardInterrupt in an application thread's direct recv): dropped,
                # and the next read starts at a message again (its sender retransmits it).
                continue
            try:                                        # (sender_key, without a call)
                key = envelope.get("User-Id") or ""
            except zmq.ZMQError:
                key = ""
            try:
                head = unpack_envelope(envelope.bytes)
                # Large payloads stay in ZeroMQ's buffer (no copy); small ones become bytes.
                if len(parts) == 1:                     # one payload (no comprehension's call)
                    f = parts[0]
                    payload = f.buffer if len(f) > 65536 else f.bytes
                    if self._take_usual(ident, key, head, payload, now):
                        if self.paused:
                            return
                        continue
                    frames = [payload]
                else:
                    frames = [f.buffer if len(f) > 65536 else f.bytes for f in parts]
                env = envelope_of(head)
                if env.kind == RELAY:
                    key, env, frames = self._unseal(env, frames)
                    self._on_data(ident, key, env, frames, now)
                else:
                    self._on_data(ident, key, env, frames, now)
                    if self.relayed:            # it came directly: its acks go back unsealed
                        self.relayed.pop(env.body.get("f"), None)
            except SnipeError as exc:
                self._send_ack(ident, Envelope(PROTOCOL, VERSION, "error", 0, {"code": exc.code, "message": str(exc)}),
                               "")
            if self.paused:
                return

    def _take_usual(self, ident: ReplyTo, key: str, head: Any, payload: Any, now: float) -> bool:
        """(Holding io.) The usual message, in one step: msg/1 data (`head`, its envelope as
        unpacked) carrying one application message (`payload`) that is the next in order of its
        source's session, from a source whose key was checked lately, to an application endpoint
        that neither migrates nor has moved: into the inbox (no Envelope, Deliver or lists made
        for it), True. False, having changed nothing, in any other case: `_on_data` takes it
        then (and says what is wrong with it)."""
        if type(head) is not list or len(head) != 5 or head[2] != "data" or head[0] != PROTOCOL \
                or head[1] != VERSION or type(head[1]) is not int or type(head[3]) is not int:
            return False
        body = head[4]
        if type(body) is not dict or len(body) != 5:   # f, s, b, q, t only: not packed ("z"), no resume ("r")
            return False
        source, session, base, first, tags = body.get("f"), body.get("s"), body.get("b"), body.get("q"), body.get("t")
        if type(tags) is not list or len(tags) != 1 or type(source) is not str or type(session) is not int \
                or type(base) is not int or type(first) is not int or not 1 <= base <= first:
            return False
        tag = tags[0]
        if type(tag) is not int or tag < 0 or not self.application or self.moved is not None or self.frozen:
            return False
        checked = self.sources_ok.get((source, key))
        inbound = self.inbound.get(source)
        if checked is None or checked <= now or inbound is None or not inbound.accept_next(session, first):
            return False
        self.reply_to[source] = ident
        nbytes = len(payload)
        self._delivered += 1                    # (_count_delivered, without a call)
        self.received[source] = self.received.get(source, 0) + 1
        self.bytes_received[source] = self.bytes_received.get(source, 0) + nbytes
        self._to_inbox([Message(source, tag, payload)])
        self._owe_ack(source, ident, inbound, 1, nbytes, now)
        if self.relayed:                        # it came directly: its acks go back unsealed
            self.relayed.pop(source, None)
        return True

    def _unseal(self, env: Envelope, frames: list[Any]) -> tuple[str, Envelope, list[bytes]]:
        """Open a message a gateway relayed: (the source's key id, the inner envelope, its frames).
        Its acks will be sealed and go back through the gateway (`relayed`)."""
        source, dest, sealed = parse_relay(env, frames)
        if dest != self.me:
            raise CodecError(f"a relayed message for {dest} reached {self.me}")
        key = self._key_of(source)
        if key is None:
            raise CodecError(f"a relayed message names {source}, which has no key in the catalog")
        inner, inner_frames = decode(self.sealer.open(key, source, dest, sealed))
        if inner.body.get("f") != source:
            raise CodecError(f"a sealed message from {source} says it is from {inner.body.get('f')!r}")
        self.relayed[source] = key
        self.sources_ok[(source, key.hex())] = time.monotonic() + 60
        return key.hex(), inner, inner_frames

    def _key_of(self, urn: str) -> bytes | None:
        """The public key a process publishes (`key`), from the catalog."""
        assert self.catalog is not None
        try:
            value = self.catalog.cached(urn, max_age=RESOLVE_EVERY_S).as_dict(now_ms()).get("key")
            return public_key_from_id(value) if isinstance(value, str) else None
        except SnipeError:
            return None

    def _resumed(self, source: str, body: dict[str, Any]) -> int:
        """Which restore data from `source` answers (channel.py, `resumed_of`); a malformed "ri"
        is said (now and then) and ignored."""
        if ri_malformed(body) and self._may_say("bad-ri", source, time.monotonic()):
            log.warning("%s: data from %s names no restore in 'ri' (%r, not an int in [2, 2**62)); ignored",
                        self.me, source, body.get("ri"))
        return resumed_of(body)

    def _on_data(self, ident: ReplyTo, key: str, env: Envelope, frames: list[Any], now: float) -> None:
        if env.protocol != PROTOCOL or env.version != VERSION:
            raise ProtocolVersionError(f"this endpoint speaks {PROTOCOL}/{VERSION}, not {env.protocol}/{env.version}"
                                       f"; versions on offer: {VERSION}")
        if env.kind not in ("data", "redirect"):
            raise CodecError(f"msg/1 has no message kind {env.kind!r} here (expected data or redirect)")
        body = env.body
        source = body.get("f")
        if not isinstance(source, str) or not self._source_is(source, key, now):
            raise CodecError(f"data claims to come from {source!r}, which key {key[:16]}… does not speak for")
        if env.kind == "redirect":
            self._on_redirect(source, env)
            return
        if self.moved is not None:            # a straggler: tell it where we are now
            self._send_ack(ident, self._redirect_envelope(), source)
            return
        if self.frozen:                       # migrating: deliver nothing, and say we are busy, not gone
            held = self.inbound.get(source)
            if held is not None and held.session is not None:
                self._send_ack(ident, busy_ack(held.session, held.expected - 1), source)
            return
        payloads = frames if "z" not in body else unpack_frames(env, frames)    # (one payload a frame: as they are)
        session, base, first, tags = parse_data(env, payloads)
        inbound = self.inbound.get(source)
        if inbound is None:
            inbound = self.inbound[source] = Inbound(self.me, source, window=self.window, restore=self.restore)
        self.reply_to[source] = ident
        resumed = 0 if "r" not in body else self._resumed(source, body)
        delivered = inbound.accept(session, base, first, tags, payloads, resumed)
        if inbound.wanted:
            from snipe.messaging import snapshot  # (a cycle at module level: snapshot builds on this module)
            snapshot.ask_resume(self, inbound.take_resume_wanted(), now)
        if not delivered:                       # a duplicate, a gap: acknowledged at once
            self._acks.pop(source, None)
            self._send_ack(ident, inbound.ack().envelope, source)
            return
        n, nbytes = len(delivered), sum([len(d.payload) for d in delivered])
        self._count_delivered(source, n, nbytes)
        plain = [Message(source, d.tag, d.payload) for d in delivered if d.tag >= 0]
        if len(plain) != n:                     # reserved tags: the multicast layer's traffic
            self._on_system([d for d in delivered if d.tag < 0])
        if plain and not self.application:
            self._drop_application(source, len(plain))
            plain = []
        self._to_inbox(plain)
        self._owe_ack(source, ident, inbound, n, nbytes, now)

    def _count_delivered(self, source: str, n: int, nbytes: int) -> None:
        """Count `n` messages of `nbytes` from `source` as delivered: before they become visible
        (a reader that got them and then reads the counters, another thread having done the I/O,
        must see them counted)."""
        self._delivered += 1
        self.received[source] = self.received.get(source, 0) + n
        self.bytes_received[source] = self.bytes_received.get(source, 0) + nbytes

    def _to_inbox(self, plain: list[Message]) -> None:
        with self.lock:                     # (cond's lock: `with self.cond` costs two calls more)
            self.inbox.extend(plain)
            paused = len(self.inbox) >= self.hwm
            if paused and not self.paused:
                self._busy_at = 0.0         # tell the senders at once
            self.paused = paused
            if self._recv_waiting or self._blocked:   # the only waits on cond, counted under it
                self.cond.notify_all()

    def _owe_ack(self, source: str, ident: ReplyTo, inbound: Inbound, n: int, nbytes: int, now: float) -> None:
        """`n` messages (`nbytes`) from `source` delivered: their ack waits ACK_DELAY_S for more to
        cover, unless ACK_EVERY messages or ACK_EVERY_BYTES wait for one."""
        pending = self._acks.get(source)
        if pending is None:
            self._last_data[source] = now       # (busy notices: at least once an ack, fine enough)
            due = now + ACK_DELAY_S
            pending = self._acks[source] = [ident, inbound, 0, 0, due]
            if due < self._acks_due:
                self._acks_due = due
        else:
            pending[0], pending[1] = ident, inbound      # the latest ack covers the earlier
        pending[2] += n
        pending[3] += nbytes
        if pending[2] >= ACK_EVERY or pending[3] >= ACK_EVERY_BYTES:
            del self._acks[source]
            self._send_ack(ident, inbound.ack().envelope, source)

    def _drop_application(self, source: str, n: int) -> None:
        """(application=False) Nobody reads an inbox here: count and drop, saying so now and then."""
        self.dropped[source] = self.dropped.get(source, 0) + n
        if self._may_say("application", "", time.monotonic()):
            log.warning("%s takes no application messages (tag >= 0); dropped %d from %s (%d in all from %d "
                        "source(s)); send them to a process, not to a host daemon", self.me, n, source,
                        sum(self.dropped.values()), len(self.dropped))

    def _send_ack(self, to: ReplyTo, ack: Envelope, source: str) -> None:
        """Answer (an ack, or an error) on the connection `to` a message from `source` came on."""
        parts = encode(ack)
        key = self.relayed.get(source) if self.relayed else None
        if key is not None:                      # it came through a gateway: seal the ack for it
            parts = relay_parts(self.me, source, self.sealer.seal(key, self.me, source, parts))
        self._clean.discard(to[0])
        try:  # noqa: SIM105 (suppress() costs three calls a message)
            send_parts(to[0], [to[1], *parts], _NOBLOCK)
        except zmq.ZMQError:                     # the connection is gone (ROUTER_MANDATORY), or its queue full
            pass

    def _say_busy(self, now: float) -> None:
        """Tell each source that sent data lately that we are busy (with what we delivered)."""
        self._busy_at = now
        for source, at in list(self._last_data.items()):
            inbound, ident = self.inbound.get(source), self.reply_to.get(source)
            if now - at > DEFAULT_DEADLINE_S:      # long quiet: forget it
                del self._last_data[source]
            elif inbound is not None and inbound.session is not None and ident is not None:
                self._acks.pop(source, None)     # this ack covers the pending one
                self._send_ack(ident, busy_ack(inbound.session, inbound.expected - 1), source)

    def _flush_acks(self, now: float) -> None:
        """Send the acknowledgements that have waited long enough."""
        due = float("inf")
        for source, (ident, inbound, _, _, at) in list(self._acks.items()):
            if at <= now:
                del self._acks[source]
                self._send_ack(ident, inbound.ack().envelope, source)   # where it stands now: covers all before
            else:
                due = min(due, at)
        self._acks_due = due

    def _source_is(self, urn: str, key: str, now: float) -> bool:
        """Does `key` speak for process `urn`? (Its own key, or the key that owns the URN.)"""
        hit = self.sources_ok.get((urn, key))
        if hit is not None and hit > now:
            return True
        assert self.catalog is not None
        try:
            entry = self.catalog.get(urn, r=1)
        except SnipeError:
            return False
        values = entry.as_dict(now_ms())
        ok = values.get("key") == key or entry.owner(self.admin_key, now_ms()) == key
        if ok:
            self.sources_ok[(urn, key)] = time.monotonic() + 60
        return ok


__all__ = ["Endpoint", "Message", "NotFound"]
