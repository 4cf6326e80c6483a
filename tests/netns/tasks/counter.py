"""Netns suite task: count N numbered messages across migrations (its state moves with it through
the on_checkpoint/on_restore hooks); note, per move, how long the stream was silent for it.

args: N RESULT_FILE
"""

import json
import os
import sys
import time

import snipe

TAG, BYE = 5, 99
n, result_path = int(sys.argv[1]), sys.argv[2]
state = {"count": 0, "expected": 0, "duplicates": 0, "gaps": 0, "failed": 0, "first_bad": None,
         "hosts": [], "moves": [], "last_at": None, "source": None}
snipe.on_checkpoint(lambda: state)
snipe.on_restore(lambda saved: state.update(saved))   # in a clone: called at once with the saved state


def write(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


snipe.probe()                               # listen (in a clone: take over the process here)
state["hosts"].append(os.environ["SNIPE_HOST_URN"])
moved_in = len(state["hosts"]) > 1          # this process is a clone: time the silence up to its first message
snipe.catalog().set(snipe.me(), "listening", len(state["hosts"]))
deadline = time.monotonic() + 240           # bounded whatever happens (per process)
while state["count"] < n and time.monotonic() < deadline:
    m = snipe.recv(timeout=5)
    if m is None:
        continue
    if m.failed:
        state["failed"] += 1
        continue
    if m.tag != TAG:
        continue
    now = time.time()
    if moved_in:
        moved_in = False
        state["moves"].append({"to": state["hosts"][-1], "at_message": state["count"],
                               "silent_s": round(now - state["last_at"], 3) if state["last_at"] else None})
    state["source"], state["last_at"] = m.source, now
    seq = int.from_bytes(bytes(m.payload[:8]), "big")
    state["count"] += 1
    if seq < state["expected"]:
        state["duplicates"] += 1
        state["first_bad"] = state["first_bad"] or {"seq": seq, "expected": state["expected"], "kind": "duplicate"}
    elif seq > state["expected"]:
        state["gaps"] += seq - state["expected"]
        state["first_bad"] = state["first_bad"] or {"seq": seq, "expected": state["expected"], "kind": "gap"}
        state["expected"] = seq + 1
    else:
        state["expected"] += 1
result = {k: v for k, v in state.items() if k != "last_at"}
result["in_order"] = state["duplicates"] == 0 and state["gaps"] == 0 and state["expected"] == state["count"]
result["pid"] = os.getpid()
write(result_path, result)
bye_deadline = time.monotonic() + 30        # stay until the peer says it has every acknowledgement
while time.monotonic() < bye_deadline:
    m = snipe.recv(timeout=1)
    if m is not None and m.tag == BYE:
        break
