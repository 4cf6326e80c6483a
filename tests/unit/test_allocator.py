"""keep_freed_buffers: large buffers freed and allocated again come from the heap, not from fresh
pages (counted as the kernel's minor page faults, in a fresh process each time)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

# Several large buffers alive at once, freed and made again: what an endpoint receiving a window
# of large messages does. bytearray writes every page, so a fresh page is a fault.
_PROGRAM = """
import json, resource, sys
from snipe.messaging.allocator import keep_freed_buffers
tuned = keep_freed_buffers()
size, alive, rounds = 1 << 20, 8, 40
held = [bytearray(size) for _ in range(alive)]
held.clear()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(rounds):
    held = [bytearray(size) for _ in range(alive)]
    held.clear()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults_per_buffer": faults / (alive * rounds)}))
"""


def _run(tuning: str) -> dict[str, object]:
    env = {**os.environ, "SNIPE_MALLOC_TUNING": tuning}
    out = subprocess.run([sys.executable, "-c", _PROGRAM], env=env, capture_output=True, text=True, timeout=60,
                         check=True)
    return json.loads(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_large_buffers_freed_and_made_again_fault_no_fresh_pages_in() -> None:
    tuned = _run("1")
    if not tuned["tuned"]:
        pytest.skip("this libc has no mallopt (not glibc)")
    untuned = _run("0")
    assert untuned["tuned"] is False
    # 1 MiB is 256 pages: without the thresholds most of them are fresh every time
    assert untuned["faults_per_buffer"] > 64, untuned
    assert tuned["faults_per_buffer"] < 4, tuned
