"""Netns suite task: receive N numbered messages; check none is lost, duplicated or reordered.

args: N RESULT_FILE
"""

import json
import os
import sys
import time

import snipe

TAG, BYE = 5, 99
n, result_path = int(sys.argv[1]), sys.argv[2]


def write(path, value):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(value, f)
    os.replace(tmp, path)


snipe.recv(timeout=0)
snipe.catalog().set(snipe.me(), "listening", True)
expected, dups, gaps, received, first_bad, source = 0, 0, 0, 0, None, None
t0 = t_first = None
t0 = time.time()
bye = False
deadline = time.monotonic() + 240           # bounded whatever happens
while time.monotonic() < deadline:
    m = snipe.recv(timeout=5)
    if m is None:
        if received >= n:
            break
        continue
    if m.tag == BYE:
        bye = True
        break
    source = m.source
    if t_first is None:
        t_first = time.time()
    seq = int.from_bytes(bytes(m.payload[:8]), "big")
    received += 1
    if seq < expected:
        dups += 1
        first_bad = first_bad or {"seq": seq, "expected": expected, "kind": "duplicate or reordered"}
    elif seq > expected:
        gaps += seq - expected
        first_bad = first_bad or {"seq": seq, "expected": expected, "kind": "gap"}
        expected = seq + 1
    else:
        expected += 1
write(result_path, {"received": received, "next_expected": expected, "duplicates": dups, "gaps": gaps,
                    "in_order": dups == 0 and gaps == 0 and expected == received, "first_bad": first_bad,
                    "bye": bye, "source": source, "first_at": t_first, "done_at": time.time()})
snipe.shutdown()                            # sends the acknowledgements still owed, then closes
