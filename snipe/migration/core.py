"""Process migration (SNIPE 4.6) as three I/O-free state machines, one per party.

- `Source`: the source host's daemon, which runs one migration of one of its tasks: it has the
  clone started on the target (the clone starts, binds a transfer socket and says where, all
  before the task is disturbed, so process start is outside the blackout), then asks the task
  to move to it, then waits for the task's verdict. It answers the caller with that verdict.
- `Origin`: the migrating process itself. At its next safe point (a snipe call in its own
  thread) it freezes its messaging, sends its state to the clone and waits for the clone's
  `ready`; only then does it commit: redirect its peers, tell the clone to run, and stay a
  while to redirect stragglers. A failure before the commit thaws it: it carries on as before.
- `Clone`: the new process. It waits for the state, restores it (still silent), answers
  `ready` with where it listens, and runs once told `commit`. Without a commit in time it
  exits: the original is still the process, so there is never more than one.

The commit point is the original receiving `ready`: before it, the original is the process and
the clone can be dropped; after it, the clone is. The clone runs only after `commit`, so the two
never run at once. A clone that got `ready` out but never hears `commit` exits at its deadline
(the original then either aborted, or committed and died: the process is lost, as with a host
failure).

Each core takes events with the time passed in and returns effects; every transition is in
its class's `_TRANSITIONS` table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from snipe.errors import MigrationFailed


# --- effects ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StartClone:            # Source -> target daemon: start the clone, tell me its transfer endpoint
    target: str


@dataclass(frozen=True)
class AskTask:               # Source -> the task: move to this clone at your next safe point
    endpoints: tuple[str, ...]


@dataclass(frozen=True)
class DropClone:             # Source -> target daemon: the clone will not be used; end it
    target: str


@dataclass(frozen=True)
class Finish:                # Source -> caller (and its records): the verdict
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class Freeze:                # Origin: stop delivering and sending, take the state
    pass


@dataclass(frozen=True)
class SendState:             # Origin -> clone: the state (over the connection AskTask made)
    pass


@dataclass(frozen=True)
class Commit:                # Origin: redirect the peers to `location`, tell the clone to run
    location: dict[str, Any]


@dataclass(frozen=True)
class Thaw:                  # Origin: the migration failed; carry on here
    reason: str


@dataclass(frozen=True)
class Report:                # Origin -> its daemon: the verdict
    ok: bool
    reason: str | None = None


@dataclass(frozen=True)
class Restore:               # Clone: take the state in (not running yet)
    pass


@dataclass(frozen=True)
class SayReady:              # Clone -> origin: restored; here is where I listen
    pass


@dataclass(frozen=True)
class Run:                   # Clone: announce in the catalog and run the application
    pass


@dataclass(frozen=True)
class Exit:                  # Clone: give up; the original is still the process
    reason: str


Effect = StartClone | AskTask | DropClone | Finish | Freeze | SendState | Commit | Thaw | Report | Restore \
    | SayReady | Run | Exit


# --- the source daemon's side ------------------------------------------------------------------------
class _Machine:
    """A state and its transition table; `_go(event)` moves along it (False: not from here)."""

    state: str
    _TRANSITIONS: ClassVar[dict[tuple[str, str], str]] = {}

    def _go(self, event: str) -> bool:
        nxt = self._TRANSITIONS.get((self.state, event))
        if nxt is None:
            return False
        self.state = nxt
        return True


@dataclass
class Source(_Machine):
    """One migration of `urn` from this host to `target`. States: new -> cloning -> moving ->
    done | failed. `clone_timeout` bounds the clone's start, `move_timeout` the task's move
    (reaching a safe point plus the transfer)."""

    urn: str
    target: str
    clone_timeout: float
    move_timeout: float
    state: str = "new"
    deadline: float = 0.0
    reason: str | None = None
    endpoints: tuple[str, ...] = field(default=())

    _TRANSITIONS: ClassVar[dict[tuple[str, str], str]] = {
        ("new", "start"): "cloning",
        ("cloning", "clone-ready"): "moving",
        ("cloning", "clone-failed"): "failed",
        ("cloning", "timeout"): "failed",
        ("moving", "task-moved"): "done",
        ("moving", "task-failed"): "failed",
        ("moving", "timeout"): "failed",
    }

    def start(self, now: float) -> list[Effect]:
        if not self._go("start"):
            return []
        self.deadline = now + self.clone_timeout
        return [StartClone(self.target)]

    def on_clone_ready(self, endpoints: list[str], now: float) -> list[Effect]:
        if not endpoints:
            return self.on_clone_failed("the clone reported no endpoint to send the state to", now)
        if not self._go("clone-ready"):
            return [DropClone(self.target)] if self.state in ("done", "failed") else []
        self.endpoints = tuple(endpoints)
        self.deadline = now + self.move_timeout
        return [AskTask(self.endpoints)]

    def on_clone_failed(self, reason: str, now: float) -> list[Effect]:
        if not self._go("clone-failed"):
            return []
        return self._fail(f"could not start a clone on {self.target}: {reason}")

    def on_task_report(self, ok: bool, reason: str | None, now: float) -> list[Effect]:
        if not self._go("task-moved" if ok else "task-failed"):
            return []
        if ok:
            return [Finish(True)]
        return self._fail(reason or "the task gave no reason")

    def on_timer(self, now: float) -> list[Effect]:
        if now < self.deadline or not self._go("timeout"):
            return []
        if self.state == "failed" and not self.endpoints:
            return self._fail(f"the clone on {self.target} did not start within {self.clone_timeout:g} s")
        # The task may still be about to move: it is told nothing more, and refuses a move it
        # was not asked for in time (Origin.deadline) -- so the clone is dropped.
        return self._fail(f"the task did not move within {self.move_timeout:g} s (its state is taken when it "
                          "calls snipe.recv, probe or safe_point)")

    def _fail(self, reason: str) -> list[Effect]:
        self.state, self.reason = "failed", reason
        return [Finish(False, reason), DropClone(self.target)]      # the caller need not wait for the drop


# --- the migrating process ---------------------------------------------------------------------------
@dataclass
class Origin(_Machine):
    """The original process's side. States: asked -> sending -> committed | aborted.
    `deadline` (on the caller's clock) is when it gives up waiting for the clone's `ready`."""

    endpoints: tuple[str, ...]
    ready_timeout: float
    bytes_per_s: float = 5e6         # the slowest transfer to wait for (CurveZMQ on a loaded host)
    state: str = "asked"
    deadline: float = 0.0
    reason: str | None = None

    _TRANSITIONS: ClassVar[dict[tuple[str, str], str]] = {
        ("asked", "safe-point"): "sending",
        ("asked", "expired"): "aborted",
        ("sending", "ready"): "committed",
        ("sending", "refused"): "aborted",
        ("sending", "send-failed"): "aborted",
        ("sending", "timeout"): "aborted",
    }

    def at_safe_point(self, now: float, asked_until: float) -> list[Effect]:
        """The application's thread is in a snipe call. `asked_until`: the source's deadline
        for this move; past it the source has given up and dropped the clone."""
        if now >= asked_until:
            self._go("expired")
            return [Report(False, "the task reached a safe point after the migration had timed out")]
        if not self._go("safe-point"):
            return []
        self.deadline = now + self.ready_timeout
        return [Freeze(), SendState()]

    def on_sending(self, nbytes: int, now: float) -> None:
        """The state is `nbytes` long: give the transfer its time on top of `ready_timeout`."""
        if self.state == "sending":
            self.deadline = now + self.ready_timeout + nbytes / self.bytes_per_s

    def on_ready(self, location: dict[str, Any], now: float) -> list[Effect]:
        if not self._go("ready"):
            return []
        return [Commit(location), Report(True)]

    def on_refused(self, reason: str, now: float) -> list[Effect]:
        return self._abort("refused", f"the clone refused the state: {reason}")

    def on_send_failed(self, reason: str, now: float) -> list[Effect]:
        return self._abort("send-failed", f"could not send the state to the clone: {reason}")

    def on_timer(self, now: float) -> list[Effect]:
        if now < self.deadline:
            return []
        return self._abort("timeout", "the clone did not confirm the state in time (its host died, or the "
                                      "transfer was cut)")

    def _abort(self, event: str, reason: str) -> list[Effect]:
        if not self._go(event):
            return []
        self.reason = reason
        return [Thaw(reason), Report(False, reason)]


# --- the clone -----------------------------------------------------------------------------------------
@dataclass
class Clone(_Machine):
    """The new process's side. States: waiting -> ready -> running | gone. It waits
    `state_timeout` for the state and `commit_timeout` after `ready` for the commit."""

    state_timeout: float
    commit_timeout: float
    state: str = "waiting"
    deadline: float = 0.0
    reason: str | None = None

    _TRANSITIONS: ClassVar[dict[tuple[str, str], str]] = {
        ("waiting", "state"): "ready",
        ("waiting", "timeout"): "gone",
        ("waiting", "abort"): "gone",
        ("waiting", "bad-state"): "gone",
        ("ready", "commit"): "running",
        ("ready", "abort"): "gone",
        ("ready", "timeout"): "gone",
    }

    def start(self, now: float) -> list[Effect]:
        self.deadline = now + self.state_timeout
        return []

    def on_state(self, now: float) -> list[Effect]:
        if not self._go("state"):
            return []
        self.deadline = now + self.commit_timeout
        return [Restore(), SayReady()]

    def on_bad_state(self, reason: str, now: float) -> list[Effect]:
        if not self._go("bad-state"):
            return []
        self.reason = reason
        return [Exit(reason)]

    def on_commit(self, now: float) -> list[Effect]:
        if not self._go("commit"):
            return []
        return [Run()]

    def on_abort(self, reason: str, now: float) -> list[Effect]:
        if not self._go("abort"):
            return []
        self.reason = f"the original aborted the migration: {reason}"
        return [Exit(self.reason)]

    def on_timer(self, now: float) -> list[Effect]:
        if now < self.deadline:
            return []
        waited = "the state" if self.state == "waiting" else "the commit"
        if not self._go("timeout"):
            return []
        self.reason = f"{waited} did not come in time; the original is still the process"
        return [Exit(self.reason)]


__all__ = ["Clone", "Effect", "MigrationFailed", "Origin", "Source"]
