"""A seeded fake network and a manual clock for reliable-channel cores (tests only).

Carries the `Send` effects of `Outbound`/`Inbound` pairs (snipe/messaging/channel.py) between
named endpoints, through the real wire codec, and fires each `Outbound`'s timer when the manual
clock reaches its `next_deadline()`. Faults, all drawn from one seeded `random.Random`: drop
(data and acks at their own rates) and duplicate, per packet at send time; delay (a latency plus
random jitter per packet, which also reorders); reorder (deliver a random packet in flight instead
of the next due); partitions (a cut link drops what crosses it at delivery time) that can heal by
themselves after a number of steps; stray timer firings. `heal()` ends every fault. Every loop is
bounded: `step` and `run` fail the test instead of spinning forever.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass

from snipe import wire
from snipe.effects import Send
from snipe.messaging.channel import Deliver, DeliveryFailed, Inbound, Outbound, parse_ack, parse_data

INF = float("inf")

Link = tuple[str, str]          # (sender, receiver)


@dataclass
class Packet:
    at: float
    n: int                      # send order, breaks ties between packets due at the same time
    src: str
    dst: str
    parts: list[bytes]


class ChannelNet:
    def __init__(self, seed: int = 0, *, latency: float = 0.01, jitter: float = 0.0, drop: float = 0.0,
                 ack_drop: float | None = None, duplicate: float = 0.0, reorder: float = 0.0,
                 stray_timers: float = 0.0, max_steps: int = 20_000) -> None:
        self.rng = random.Random(seed)
        self.now = 0.0
        self.latency, self.jitter = latency, jitter
        self.drop, self.ack_drop = drop, drop if ack_drop is None else ack_drop
        self.duplicate, self.reorder, self.stray_timers = duplicate, reorder, stray_timers
        self.max_steps = max_steps
        self.outbound: dict[Link, Outbound] = {}
        self.inbound: dict[Link, Inbound] = {}
        self.in_flight: list[Packet] = []
        self.cut: set[Link] = set()
        self.cut_until: int | None = None
        self.submitted: dict[Link, list[tuple[int, bytes]]] = defaultdict(list)
        self.delivered: dict[Link, list[Deliver]] = defaultdict(list)
        self.failed: dict[Link, list[DeliveryFailed]] = defaultdict(list)
        self.steps = self.packets = self.dropped = 0
        self.sends = {"data": 0, "ack": 0}

    # --- endpoints ---------------------------------------------------------------------------
    def link(self, src: str, dst: str, *, window: int = 4096, hwm: int = 65536, max_batch: int = 256,
             inbound_window: int | None = None) -> Outbound:
        """An Outbound at `src` for `dst` and the matching Inbound at `dst`."""
        out = Outbound(src, dst, window=window, hwm=hwm, max_batch=max_batch,
                       rng=random.Random(self.rng.getrandbits(64)))
        self.outbound[(src, dst)] = out
        self.inbound[(src, dst)] = Inbound(dst, src, window=inbound_window or window)
        return out

    def restart_receiver(self, src: str, dst: str) -> Inbound:
        """`dst` loses its Inbound state for `src` (what is in flight still arrives)."""
        old = self.inbound[(src, dst)]
        self.inbound[(src, dst)] = new = Inbound(dst, src, window=old.window)
        return new

    def restart_sender(self, src: str, dst: str) -> Outbound:
        """`src` loses its Outbound for `dst` and starts a new one (new session); the old one's
        packets in flight still arrive, its unacknowledged messages are gone."""
        old = self.outbound[(src, dst)]
        self.outbound[(src, dst)] = new = Outbound(src, dst, window=old.window, hwm=old.hwm,
                                                   max_batch=old.max_batch,
                                                   rng=random.Random(self.rng.getrandbits(64)))
        return new

    def submit(self, src: str, dst: str, tag: int, payload: bytes, deadline: float = INF) -> bool:
        """What the shell does for an application send: False (block) when there is no room."""
        out = self.outbound[(src, dst)]
        if out.room() <= 0:
            return False
        out.submit(tag, payload, self.now, deadline)
        self.submitted[(src, dst)].append((tag, payload))
        self.transmit(src, out.flush(self.now))
        return True

    # --- faults ------------------------------------------------------------------------------
    def partition(self, a: str, b: str, *, steps: int | None = None, one_way: bool = False) -> None:
        """Cut a -> b (and b -> a unless one_way); with `steps`, the cut heals by itself after that many."""
        self.cut.add((a, b))
        if not one_way:
            self.cut.add((b, a))
        if steps is not None:
            self.cut_until = self.steps + steps

    def heal(self) -> None:
        self.cut.clear()
        self.cut_until = None
        self.drop = self.ack_drop = self.duplicate = self.reorder = self.stray_timers = 0.0

    # --- delivery and time -------------------------------------------------------------------
    def transmit(self, src: str, sends: list[Send]) -> None:
        for s in sends:
            self.sends[s.envelope.kind] += 1
            if self.rng.random() < (self.ack_drop if s.envelope.kind == "ack" else self.drop):
                self.dropped += 1
                continue
            copies = 2 if self.rng.random() < self.duplicate else 1
            parts = wire.encode(s.envelope, s.frames)
            for _ in range(copies):
                self.packets += 1
                at = self.now + self.latency + self.rng.uniform(0, self.jitter)
                self.in_flight.append(Packet(at, self.packets, src, s.to, list(parts)))

    def arrive(self, p: Packet) -> None:
        if (p.src, p.dst) in self.cut:
            self.dropped += 1
            return
        env, frames = wire.decode(p.parts)
        if env.kind == "data":
            session, base, first, tags = parse_data(env, frames)
            delivers, ack = self.inbound[(p.src, p.dst)].on_data(session, base, first, tags, frames)
            self.delivered[(p.src, p.dst)].extend(delivers)
            self.transmit(p.dst, [ack])
        else:
            assert env.kind == "ack", env
            session, cum = parse_ack(env)
            self.transmit(p.dst, self.outbound[(p.dst, p.src)].on_ack(session, cum, self.now))

    def fire(self, link: Link) -> None:
        sends, failures = self.outbound[link].on_timer(self.now)
        self.failed[link].extend(failures)
        self.transmit(link[0], sends)

    def step(self) -> bool:
        """One event: a stray timer, the next due timer or the next packet (a random one when
        reordering). False when nothing is left to happen."""
        self.steps += 1
        assert self.steps <= self.max_steps, f"no quiet within {self.max_steps} steps"
        if self.cut_until is not None and self.steps >= self.cut_until:
            self.cut.clear()
            self.cut_until = None
        if self.stray_timers and self.rng.random() < self.stray_timers:
            self.fire(self.rng.choice(sorted(self.outbound)))
            return True
        timers = [(d, link) for link, o in self.outbound.items() if (d := o.next_deadline()) is not None]
        t_timer = min(timers)[0] if timers else None
        t_packet = min(p.at for p in self.in_flight) if self.in_flight else None
        if t_timer is None and t_packet is None:
            return False
        if t_packet is None or (t_timer is not None and t_timer < t_packet):
            self.now = max(self.now, t_timer)  # type: ignore[arg-type]
            for d, link in sorted(timers):
                if d <= self.now:
                    self.fire(link)
            return True
        self.now = max(self.now, t_packet)
        if self.reorder and self.rng.random() < self.reorder:
            i = self.rng.randrange(len(self.in_flight))
        else:
            i = min(range(len(self.in_flight)), key=lambda k: (self.in_flight[k].at, self.in_flight[k].n))
        self.arrive(self.in_flight.pop(i))
        return True

    def quiet(self) -> bool:
        return not self.in_flight and all(o.held() == 0 for o in self.outbound.values())

    def run(self, max_steps: int = 10_000) -> int:
        """Step until nothing is in flight or held; fail the test past `max_steps`."""
        for n in range(max_steps + 1):
            if self.quiet() or not self.step():
                assert self.quiet(), "the network stopped with messages still held"
                return n
        raise AssertionError(f"the channel did not go quiet within {max_steps} steps")

    def send_all(self, src: str, dst: str, messages: list[tuple[int, bytes]], *, steps_between: int = 0,
                 deadline: float = INF) -> None:
        """Submit in order, stepping the network whenever the sender has no room (back-pressure)."""
        for tag, payload in messages:
            while not self.submit(src, dst, tag, payload, self.now + deadline if deadline != INF else INF):
                self.step()
            for _ in range(steps_between):
                self.step()
