"""What the benchmarks share to run: progress lines, the processes they start, files their workers
answer in, py-spy profiles, figures, and the command line's last step (a table or the JSON)."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

MIB = 1 << 20


def say(bench: str, msg: str) -> None:
    """A progress line on stderr (stdout is the result's)."""
    print(f"[{bench}-bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def percentile(values: Sequence[float], q: float, empty: float | None = float("nan")) -> float | None:
    """Nearest-rank percentile of `values` (q in 0..100); `empty` when there are none."""
    s = sorted(values)
    if not s:
        return empty
    return s[max(1, min(len(s), math.ceil(len(s) * q / 100))) - 1]


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def mib(n: float) -> float:
    return round(n / MIB, 2)


def fmt(v: Any, spec: str = "") -> str:
    """A table cell: "-" for a figure that is missing."""
    return "-" if v is None else format(v, spec)


def wait_json_file(path: Path, timeout: float, alive: Callable[[], bool] | None = None) -> dict[str, Any]:
    """The JSON a worker writes to `path` (it renames it into place whole), once it is there."""
    limit = time.monotonic() + timeout
    while not path.exists():
        if alive is not None and not alive():
            raise RuntimeError(f"a worker ended before writing {path.name}")
        if time.monotonic() > limit:
            raise TimeoutError(f"{path.name} did not appear within {timeout} s")
        time.sleep(0.01)
    return json.loads(path.read_text())


class Procs:
    """Every subprocess a benchmark starts, each in a session of its own; `close` kills them all.
    Tasks it spawns are kept in `tasks` for the benchmark's own way of stopping them."""

    def __init__(self) -> None:
        self.popen: list[subprocess.Popen[bytes]] = []
        self.tasks: list[Any] = []

    def start(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.popen.append(p)
        return p

    def close(self) -> None:
        for p in self.popen:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
        for p in self.popen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(5)
        self.popen.clear()


def py_spy_exe() -> str | None:
    """py-spy on PATH or beside this Python (the venv's), if installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return exe if Path(exe).exists() else None


@contextlib.contextmanager
def py_spy(pids: dict[str, int], out: Path, procs: Procs, *, flags: Sequence[str] = ("--threads",),
           waiting: Sequence[str] = ()) -> Iterator[dict[str, Any]]:
    """py-spy record (200 Hz) of each pid while the block runs; yields a dict filled then with each
    one's hot functions (`hot_functions`; `waiting`: more leaf frames that are waits)."""
    exe = py_spy_exe()
    result: dict[str, Any] = {}
    if exe is None:
        result["error"] = "py-spy is not installed"
        yield result
        return
    out.mkdir(parents=True, exist_ok=True)
    running = {}
    for name, pid in pids.items():
        raw = out / f"{name}.txt"
        running[name] = (procs.start([exe, "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
                                      *flags, "--nonblocking", "--output", str(raw)], out / f"{name}.py-spy.log"),
                         raw)
    time.sleep(1.0)                  # py-spy attaches: what the block does from here is sampled
    try:
        yield result
    finally:
        for name, (proc, raw) in running.items():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            result[name] = hot_functions(raw, waiting) if raw.exists() else {
                "error": (out / f"{name}.py-spy.log").read_text(errors="replace")[-500:]}


def _short(frame: str) -> str:
    """py-spy's "func (path/to/file.py:123)" as "func (file.py)": one entry per function."""
    name, sep, where = frame.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if sep else frame


# Leaf frames where a thread waits (py-spy's own idle detection misses some with --nonblocking).
_WAITING = ("Condition.wait (threading.py)", "Poller.poll (poll.py)", "EpollSelector.select (selectors.py)",
            "Event.wait (threading.py)", "poll (poll.py)", "select (selectors.py)", "sleep", "recv (socket.py)")


def hot_functions(raw: Path, waiting: Sequence[str] = (), top: int = 15) -> dict[str, Any]:
    """From py-spy's raw output (collapsed stacks, the thread first with --threads): busy samples
    per thread, and self and inclusive shares per function of the busy samples (a stack whose leaf
    waits counts as idle)."""
    waits = (*_WAITING, *waiting)
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    threads: dict[str, int] = {}
    total = idle = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        thread, frames = (parts[0], [_short(f) for f in parts[1:]]) if parts[0].startswith(("thread", "process")) \
            else ("?", [_short(f) for f in parts])
        if not frames or frames[-1].startswith(waits):
            idle += count
            continue
        total += count
        threads[thread] = threads.get(thread, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count
        for f in set(frames):
            inclusive[f] = inclusive.get(f, 0) + count

    def rank(d: dict[str, int]) -> list[dict[str, Any]]:
        ranked = sorted(d.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": f, "share": round(c / total, 3)} for f, c in ranked]
    if not total:
        return {"busy_samples": 0, "idle_samples": idle}
    return {"busy_samples": total, "idle_samples": idle, "busy_by_thread": rank(threads)[:6],
            "self": rank(own), "inclusive": rank(inclusive)}


def run_main(args: argparse.Namespace, run: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str]
             ) -> int:
    """The command line's last step: run (SIGTERM ends it as Ctrl-C does, so every process it
    started is stopped), then print the table (unless --json) and the JSON."""
    def on_term(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    result = run()
    if not args.json:
        print(table(result))
        print()
    print(json.dumps(result, indent=2))
    return 0
