"""The shell every simulated node uses to host I/O-free cores: it carries out their effects.

A core returns `Send` and `StartTimer` effects (snipe/effects.py); `CoreNode.apply` turns a
`Send` into a simulated message and a `StartTimer` into a node timer. Messages go through the
real wire codec (`snipe.wire`): the envelope is encoded on send and decoded on arrival, payload
frames travel as they are, and the bytes counted are those ZeroMQ would carry (envelope plus
frames, without transport framing). A scenario subclasses `CoreNode` and fills in `handle`,
`on_timer`, `on_crash` and `on_restart`; that is all a new protocol core needs to run here.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from snipe import wire
from snipe.effects import Effect, Send, StartTimer
from snipe.sim import Simulator
from snipe.wire import Envelope

T0_MS = 1_700_000_000_000        # virtual time 0 on cores' millisecond clocks (a plausible epoch)


class CoreNode:
    """One virtual host: carries out core effects and hands arriving messages to `handle`."""

    def __init__(self, sim: Simulator, name: str) -> None:
        self.sim = sim
        self.name = name

    @property
    def now_ms(self) -> int:
        """The simulator's clock as a core's millisecond wall clock."""
        return T0_MS + round(self.sim.now * 1000)

    def apply(self, effects: Iterable[Effect]) -> None:
        for e in effects:
            if isinstance(e, Send):
                self.send(e)
            elif isinstance(e, StartTimer):
                self.sim.set_timer(self.name, e.key, e.at)
            else:
                raise TypeError(f"{self.name}: a core returned {e!r}, which this shell cannot carry out")

    def send(self, e: Send) -> None:
        env = e.envelope
        head = wire.encode_envelope(env)
        size = len(head)
        for f in e.frames:
            size += len(f)
        self.sim.send(self.name, e.to, (head, *e.frames), size, f"{env.protocol}/{env.version} {env.kind}")

    def on_message(self, src: str, payload: Sequence[bytes]) -> None:
        env, frames = wire.decode(payload)
        self.handle(src, env, frames)

    # --- what a scenario's node fills in ---------------------------------------------------------
    def handle(self, src: str, env: Envelope, frames: Sequence[bytes]) -> None:
        raise NotImplementedError

    def on_timer(self, key: str) -> None:
        raise NotImplementedError

    def on_crash(self) -> None:
        """The process died: drop what lived only in memory."""

    def on_restart(self) -> None:
        """The process came back: rebuild from what survived."""


class World(Protocol):
    """A scenario's world: builds its nodes, runs the simulation, reports its figures."""

    def build(self) -> None: ...
    def run(self) -> None: ...
    def report(self) -> dict[str, Any]: ...


def run_world(make: Callable[[], World]) -> dict[str, Any]:
    """Make, build, run and report a world, with the wall and CPU time of each part and the
    process's peak memory (every scenario reports these the same way)."""
    t0 = time.perf_counter()
    c0 = time.process_time()
    world = make()
    world.build()
    t1 = time.perf_counter()
    world.run()
    t2 = time.perf_counter()
    out = world.report()
    out["setup_wall_s"] = round(t1 - t0, 2)
    out["wall_s"] = round(t2 - t1, 2)
    out["cpu_s"] = round(time.process_time() - c0, 2)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out
