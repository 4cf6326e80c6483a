"""The effects every protocol core returns; shells carry them out.

Cores take events (a message arrived, a timer fired, the application asked for something) with
the time passed in, and return a list of these. They never touch sockets, files or clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from snipe.wire import Envelope


@dataclass(frozen=True, slots=True)
class Send:
    to: str                      # a peer id, URN or endpoint, as the core's shell understands it
    envelope: Envelope
    frames: Sequence[bytes] = field(default=())


@dataclass(frozen=True, slots=True)
class StartTimer:
    key: str
    at: float                    # on the core's own clock (as passed in), never time.time()


Effect = Send | StartTimer
