"""Netns suite task: stream N numbered messages to a peer at a steady pace, noting the routes used.

args: PEER_URN N INTERVAL_MS PROGRESS_FILE RESULT_FILE
"""

import json
import os
import sys
import time

import snipe

TAG, BYE = 5, 99
peer, n, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]) / 1000.0
progress_path, result_path = sys.argv[4], sys.argv[5]


def write(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


snipe.recv(timeout=0)                       # start the endpoint
t0 = time.time()
routes = []                                 # [message index, route endpoint, seconds since start]


def note(i):
    st = snipe.messaging_stats().get(peer, {})
    r = st.get("route")
    if r and (not routes or routes[-1][1] != r):
        routes.append([i, r, round(time.time() - t0, 3), st.get("route_net")])
    return st


pad = b"x" * 1016
due = time.monotonic()
st = {}
for i in range(n):
    snipe.send(peer, i.to_bytes(8, "big") + pad, tag=TAG, deadline=120)
    if i % 25 == 0:
        st = note(i)
        write(progress_path, {"sent": i + 1, "acked": st.get("acked", 0), "t": time.time(), "routes": routes})
    due += interval
    wait = due - time.monotonic()
    if wait > 0:
        time.sleep(wait)
sent_done = time.time()


def wait_acked(count, seconds):
    """Bounded: until `count` messages are acknowledged, or `seconds` pass; the last stats."""
    deadline = time.monotonic() + seconds
    while True:
        st = note(count)
        if st.get("acked", 0) >= count or time.monotonic() >= deadline:
            return st
        time.sleep(0.05)


st = wait_acked(n, 120)                     # every message acknowledged, or we report what was
acked_done = time.time()
failures = []
for _ in range(n + 10):                     # delivery failures come back as messages
    m = snipe.recv(timeout=0)
    if m is None:
        break
    if m.failed:
        failures.append({"tag": m.tag, "reason": m.reason})
st = note(n)
result = {"sent": n, "acked": st.get("acked", 0), "retransmitted": st.get("retransmitted", 0),
          "routes": routes, "failures": failures, "send_s": round(sent_done - t0, 3),
          "all_acked_s": round(acked_done - t0, 3), "stats": st}
write(result_path, result)
snipe.send(peer, b"", tag=BYE)
wait_acked(n + 1, 10)                       # the receiver has the BYE before we go
snipe.shutdown()
