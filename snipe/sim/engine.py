"""A deterministic discrete-event simulator for many virtual nodes. It knows no protocol.

The simulator owns virtual time, one queue of events, the seeded random streams, the nodes and
their timers and inboxes, and a `Network` (snipe/sim/network.py) that carries opaque payloads
between nodes. What a node does with a payload is its handler's business (`NodeHandler`): the
scenarios that wire protocol cores into nodes live with the benchmarks (benchmarks/sim/).

Invariants:
- Events run in order of time; events due at the same time run in the order they were
  scheduled (a sequence number breaks ties), so nothing depends on hashing or memory layout.
- All randomness comes from streams derived from the seed by name (`stream`): the same seed and
  the same calls give the same run, event for event; adding a stream does not shift another.
- A crashed node receives nothing and fires no timer: what was in its inbox, what arrives while
  it is down and every timer it had armed are dropped. `restart` brings it back with no timers;
  its handler's `on_restart` decides what survived (a durable store does, memory does not).
- A node's timer is named by a key; arming a key again replaces the earlier deadline.
- A node with a `service_time` handles one message at a time, each taking that long; messages
  that arrive while it is busy wait in its inbox (up to `inbox_limit`, beyond which they are
  dropped). With no service time a message is handled the instant it arrives.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from snipe.sim.network import Network


class NodeHandler(Protocol):
    """What the simulator calls on a node. A handler acts through the simulator it was given
    (`send`, `set_timer`), at `Simulator.now`."""

    def on_message(self, src: str, payload: Any) -> None: ...
    def on_timer(self, key: str) -> None: ...
    def on_crash(self) -> None: ...
    def on_restart(self) -> None: ...


class _Node:
    __slots__ = ("busy", "epoch", "handler", "inbox", "inbox_limit", "name", "service_time", "timers", "up")

    def __init__(self, name: str, handler: NodeHandler, service_time: float, inbox_limit: int | None) -> None:
        self.name = name
        self.handler = handler
        self.up = True
        self.timers: dict[str, int] = {}          # key -> the sequence number of its live event
        self.inbox: deque[tuple[str, Any]] = deque()
        self.busy = False
        self.epoch = 0                            # bumped by a crash: stale service events die
        self.service_time = service_time
        self.inbox_limit = inbox_limit


class Simulator:
    """Virtual time, an event queue, seeded randomness, nodes and a network.

    `seed` fixes every random draw; `network` defaults to a lossless 1 ms network; `trace`, if a
    list is given, receives one tuple per event that touched a node (for tests and debugging).
    """

    def __init__(self, seed: int, network: Network | None = None, *, start: float = 0.0,
                 trace: list[tuple[Any, ...]] | None = None) -> None:
        self.seed = seed
        self.now = start
        self.net = network or Network()
        self.rng = self.stream("scenario")
        self._net_rng = self.stream("network")
        self._queue: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0
        self._cancelled: set[int] = set()
        self._nodes: dict[str, _Node] = {}
        self._stopped = False
        self.events = 0
        self.trace = trace

    def stream(self, name: str) -> random.Random:
        """An independent random stream for `name`, fixed by the seed."""
        return random.Random(f"{self.seed}/{name}")

    # --- events ---------------------------------------------------------------------------------
    def call_at(self, when: float, fn: Callable[..., None], *args: Any) -> int:
        """Run `fn(*args)` at virtual time `when` (not before now); return an id for `cancel`."""
        if when < self.now:
            raise ValueError(f"cannot schedule at {when}: the clock is already at {self.now}")
        self._seq += 1
        heapq.heappush(self._queue, (when, self._seq, fn, args))
        return self._seq

    def call_later(self, delay: float, fn: Callable[..., None], *args: Any) -> int:
        return self.call_at(self.now + delay, fn, *args)

    def cancel(self, event_id: int) -> None:
        self._cancelled.add(event_id)

    def stop(self) -> None:
        """Make `run` return after the current event."""
        self._stopped = True

    def pending(self) -> int:
        return len(self._queue)

    def run(self, until: float | None = None, *, max_events: int | None = None) -> int:
        """Run events in order until none is left, the next is later than `until` (the clock
        then stands at `until`), `stop()` was called or `max_events` ran; return how many ran."""
        queue, cancelled, pop = self._queue, self._cancelled, heapq.heappop
        self._stopped = False
        ran = 0
        while queue and not self._stopped and (max_events is None or ran < max_events):
            if until is not None and queue[0][0] > until:
                break
            when, seq, fn, args = pop(queue)
            if cancelled and seq in cancelled:
                cancelled.discard(seq)
                continue
            self.now = when
            fn(*args)
            ran += 1
        if until is not None and not self._stopped and (max_events is None or ran < max_events) and until > self.now:
            self.now = until
        self.events += ran
        return ran

    # --- nodes --------------------------------------------------------------------------------
    def add_node(self, name: str, handler: NodeHandler, *, service_time: float = 0.0,
                 inbox_limit: int | None = None) -> None:
        if name in self._nodes:
            raise ValueError(f"node {name!r} already exists")
        self._nodes[name] = _Node(name, handler, service_time, inbox_limit)

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def handler(self, name: str) -> NodeHandler:
        return self._nodes[name].handler

    def is_up(self, name: str) -> bool:
        return self._nodes[name].up

    def crash(self, name: str) -> None:
        """Stop `name` dead: drop its inbox and timers; it receives nothing until `restart`."""
        n = self._nodes[name]
        if not n.up:
            return
        n.up = False
        n.timers.clear()
        self.net.stats.to_down_node += len(n.inbox)
        n.inbox.clear()
        n.busy = False
        n.epoch += 1
        self._record("crash", name)
        n.handler.on_crash()

    def restart(self, name: str) -> None:
        n = self._nodes[name]
        if n.up:
            return
        n.up = True
        self._record("restart", name)
        n.handler.on_restart()

    # --- timers ---------------------------------------------------------------------------------
    def set_timer(self, name: str, key: str, at: float) -> None:
        """Arm `name`'s timer `key` for time `at` (now, if `at` is past), replacing its earlier one."""
        n = self._nodes[name]
        if not n.up:
            return
        self._seq += 1
        n.timers[key] = self._seq
        heapq.heappush(self._queue, (max(at, self.now), self._seq, self._fire, (n, key, self._seq)))

    def cancel_timer(self, name: str, key: str) -> None:
        self._nodes[name].timers.pop(key, None)

    def _fire(self, n: _Node, key: str, token: int) -> None:
        if n.timers.get(key) != token:
            return                      # replaced, cancelled, or its node crashed since
        del n.timers[key]
        self._record("timer", n.name, key)
        n.handler.on_timer(key)

    # --- messages -------------------------------------------------------------------------------
    def send(self, src: str, dst: str, payload: Any, size: int, label: str = "") -> None:
        """Hand `payload` (`size` bytes on the wire) to the network, from `src` to `dst`.
        A crashed node sends nothing."""
        if not self._nodes[src].up:
            return
        if dst not in self._nodes:
            raise KeyError(f"no node {dst!r} in this simulation")
        for delay in self.net.transit(src, dst, size, label, self._net_rng):
            self._seq += 1
            heapq.heappush(self._queue, (self.now + delay, self._seq, self._arrive, (src, dst, payload, size)))

    def _arrive(self, src: str, dst: str, payload: Any, size: int) -> None:
        n = self._nodes[dst]
        st = self.net.stats
        if not n.up:
            st.to_down_node += 1
            self._record("drop-down", src, dst)
            return
        if self.net.blocked(src, dst):
            st.cut += 1
            self._record("drop-cut", src, dst)
            return
        if n.busy:
            if n.inbox_limit is not None and len(n.inbox) >= n.inbox_limit:
                st.inbox_full += 1
                self._record("drop-full", src, dst)
                return
            n.inbox.append((src, payload))
            st.delivered += 1
            st.bytes_delivered += size
            return
        st.delivered += 1
        st.bytes_delivered += size
        if n.service_time > 0:
            n.busy = True
            self.call_later(n.service_time, self._served, n, n.epoch, src, payload)
            return
        self._record("deliver", src, dst)
        n.handler.on_message(src, payload)

    def _served(self, n: _Node, epoch: int, src: str, payload: Any) -> None:
        if epoch != n.epoch:
            return                      # the node crashed while serving this message
        self._record("deliver", src, n.name)
        n.handler.on_message(src, payload)
        if n.epoch != epoch:
            return                      # the handler crashed its own node
        if n.inbox:
            nsrc, npayload = n.inbox.popleft()
            self.call_later(n.service_time, self._served, n, epoch, nsrc, npayload)
        else:
            n.busy = False

    def _record(self, *what: Any) -> None:
        if self.trace is not None:
            self.trace.append((self.now, *what))
