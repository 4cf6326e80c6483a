"""Scenario B, the reliable channel: many sender/receiver pairs over a hostile network.

Each pair is two virtual hosts: the sender runs `snipe.messaging.channel.Outbound` towards its
receiver, the receiver `Inbound` from its sender; both speak msg/1 through the real wire codec
(benchmarks/sim/shell.py). The network loses, duplicates and (through a long-tailed latency)
reorders packets, and the links of some pairs are cut for a while. Senders submit messages as a
Poisson stream, respecting `Outbound.room()` (back-pressure); the shell arms the channel's timer
at `Outbound.next_deadline()` after every event, as the real endpoint does.

What must hold, and is checked: every receiver delivers exactly the sequence its sender
submitted, each message once, in order, and no sender reports a delivery failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchmarks.sim.shell import CoreNode, run_world
from snipe.messaging.channel import Deliver, DeliveryFailed, Inbound, Outbound, parse_ack, parse_data
from snipe.sim import Latency, LogNormal, Network, Simulator
from snipe.wire import Envelope

TIMER_PREFIX = "rto:"


@dataclass(frozen=True)
class ChannelConfig:
    pairs: int = 1000
    messages: int = 100              # per pair
    rate: float = 200.0              # messages per second per sender (Poisson arrivals)
    payload_bytes: int = 100
    latency: Latency = field(default_factory=lambda: LogNormal(0.02, 0.8, floor=0.001))
    loss: float = 0.05
    duplicate: float = 0.02
    cut_fraction: float = 0.05       # pairs whose link is cut from cut_at for cut_for seconds
    cut_at: float = 0.2
    cut_for: float = 2.0
    window: int = 64                 # Outbound window (messages in flight)
    hwm: int = 256                   # Outbound high-water mark (messages held)
    max_batch: int = 16
    deadline: float = 120.0          # per message: far beyond the cuts, so none may fail
    give_up_after: float = 600.0


QUICK = ChannelConfig(pairs=50, messages=60)


class ChannelNode(CoreNode):
    """A host with one Outbound per destination and one Inbound per source."""

    def __init__(self, world: ChannelWorld, name: str) -> None:
        super().__init__(world.sim, name)
        self.world = world
        self.out: dict[str, Outbound] = {}
        self.inb: dict[str, Inbound] = {}
        self.delivered: dict[str, list[Deliver]] = {}
        self.failed: list[DeliveryFailed] = []

    def outbound(self, to: str) -> Outbound:
        o = self.out.get(to)
        if o is None:
            c = self.world.cfg
            o = self.out[to] = Outbound(self.name, to, window=c.window, hwm=c.hwm, max_batch=c.max_batch,
                                        rng=self.sim.stream(f"channel/{self.name}/{to}"))
        return o

    def submit(self, to: str, tag: int, payload: bytes) -> bool:
        """Queue one message for `to`; False (and nothing queued) when the channel is full."""
        o = self.outbound(to)
        if o.room() <= 0:
            return False
        now = self.sim.now
        o.submit(tag, payload, now, now + self.world.cfg.deadline)
        self.apply(o.flush(now))
        self._arm(to)
        return True

    def handle(self, src: str, env: Envelope, frames: Sequence[bytes]) -> None:
        if env.kind == "data":
            session, base, first, tags = parse_data(env, frames)
            i = self.inb.get(src)
            if i is None:
                i = self.inb[src] = Inbound(self.name, src)
            delivers, ack = i.on_data(session, base, first, tags, frames)
            if delivers:
                self.delivered.setdefault(src, []).extend(delivers)
            self.apply([ack])
        elif env.kind == "ack":
            session, cum = parse_ack(env)
            o = self.out.get(src)
            if o is not None:
                self.apply(o.on_ack(session, cum, self.sim.now))
                self._arm(src)
                self.world.progress(self, src)

    def on_timer(self, key: str) -> None:
        to = key[len(TIMER_PREFIX):]
        sends, failed = self.out[to].on_timer(self.sim.now)
        self.apply(sends)
        self.failed.extend(failed)
        self._arm(to)

    def _arm(self, to: str) -> None:
        at = self.out[to].next_deadline()
        if at is None:
            self.sim.cancel_timer(self.name, TIMER_PREFIX + to)
        else:
            # A deadline already past would fire at once; never let it spin at one instant.
            self.sim.set_timer(self.name, TIMER_PREFIX + to, max(at, self.sim.now + 1e-6))


class ChannelWorld:
    def __init__(self, cfg: ChannelConfig, seed: int) -> None:
        self.cfg = cfg
        self.sim = Simulator(seed, Network(cfg.latency, loss=cfg.loss, duplicate=cfg.duplicate))
        self.rng = self.sim.stream("channel-workload")
        self.pairs: list[tuple[ChannelNode, ChannelNode]] = []
        self.submitted: list[list[bytes]] = []
        self.blocked = 0
        self.done = [False] * cfg.pairs
        self.finish: list[float | None] = [None] * cfg.pairs
        self.cut_pairs: set[int] = set()
        self.unfinished = cfg.pairs
        self.finished_at: float | None = None

    def build(self) -> None:
        cfg, sim, rng = self.cfg, self.sim, self.rng
        for p in range(cfg.pairs):
            s, r = ChannelNode(self, f"s{p}"), ChannelNode(self, f"r{p}")
            sim.add_node(s.name, s)
            sim.add_node(r.name, r)
            self.pairs.append((s, r))
            self.submitted.append([])
            sim.call_at(rng.expovariate(cfg.rate), self._send_next, p)
        self.index = {s.name: p for p, (s, _) in enumerate(self.pairs)}
        for p in rng.sample(range(cfg.pairs), round(cfg.cut_fraction * cfg.pairs)):
            self.cut_pairs.add(p)
            s, r = self.pairs[p]
            sim.call_at(cfg.cut_at, sim.net.cut, s.name, r.name)
            sim.call_at(cfg.cut_at + cfg.cut_for, sim.net.restore, s.name, r.name)

    def _send_next(self, p: int) -> None:
        s, r = self.pairs[p]
        sent = self.submitted[p]
        j = len(sent)
        head = f"{p}:{j}:".encode()
        payload = head + b"." * max(0, self.cfg.payload_bytes - len(head))
        if s.submit(r.name, j, payload):
            sent.append(payload)
            if j + 1 < self.cfg.messages:
                self.sim.call_later(self.rng.expovariate(self.cfg.rate), self._send_next, p)
        else:
            self.blocked += 1                        # back-pressure: try again shortly
            self.sim.call_later(0.01, self._send_next, p)

    def progress(self, sender: ChannelNode, to: str) -> None:
        p = self.index[sender.name]
        if not self.done[p] and len(self.submitted[p]) == self.cfg.messages and sender.out[to].held() == 0:
            self.done[p] = True
            self.finish[p] = self.sim.now
            self.unfinished -= 1
            if self.unfinished == 0:
                self.finished_at = self.sim.now
                self.sim.stop()

    def run(self) -> None:
        self.sim.run(until=self.cfg.give_up_after)

    def report(self) -> dict[str, Any]:
        cfg, st = self.cfg, self.sim.net.stats
        submitted = sum(len(x) for x in self.submitted)
        delivered = exact = 0
        for p, (s, r) in enumerate(self.pairs):
            got = r.delivered.get(s.name, [])
            delivered += len(got)
            exact += [d.payload for d in got] == self.submitted[p] and [d.tag for d in got] == list(range(len(got)))
        outs = [o for s, _ in self.pairs for o in s.out.values()]
        ins = [i for _, r in self.pairs for i in r.inb.values()]
        labels = st.by_label
        return {
            "pairs": cfg.pairs,
            "messages_per_pair": cfg.messages,
            "latency": repr(cfg.latency),
            "loss": cfg.loss,
            "duplicate": cfg.duplicate,
            "cut_pairs": round(cfg.cut_fraction * cfg.pairs),
            "cut_s": [cfg.cut_at, cfg.cut_at + cfg.cut_for],
            "submitted": submitted,
            "delivered": delivered,
            "delivery_ratio": round(delivered / submitted, 6) if submitted else None,
            "exactly_once_in_order": exact == cfg.pairs and delivered == submitted,
            "pairs_exact": exact,
            "delivery_failures": sum(len(s.failed) for s, _ in self.pairs),
            "all_acknowledged": self.finished_at is not None,
            "completion_s": round(self.finished_at, 3) if self.finished_at is not None else None,
            "pair_completion_s": {
                "uncut": _spread([t for p, t in enumerate(self.finish) if p not in self.cut_pairs]),
                "cut": _spread([t for p, t in enumerate(self.finish) if p in self.cut_pairs]),
            },
            "retransmissions": sum(o.retransmitted for o in outs),
            "duplicates_suppressed": sum(i.duplicates for i in ins),
            "sender_blocked": self.blocked,
            "data_packets": labels.get("msg/1 data", [0, 0])[0],
            "ack_packets": labels.get("msg/1 ack", [0, 0])[0],
            "messages": st.sent,
            "bytes": st.bytes_sent,
            "network": st.as_dict(),
            "virtual_s": round(self.sim.now, 3),
            "events": self.sim.events,
        }


def _spread(times: list[float | None]) -> dict[str, float | int | None]:
    """Median and maximum of the finished times; how many never finished."""
    done = sorted(t for t in times if t is not None)
    return {"median": round(done[len(done) // 2], 3) if done else None,
            "max": round(done[-1], 3) if done else None, "unfinished": len(times) - len(done)}


def run_channel(cfg: ChannelConfig, seed: int) -> dict[str, Any]:
    """Build, run and report scenario B, with the wall time of each part."""
    return run_world(lambda: ChannelWorld(cfg, seed))
