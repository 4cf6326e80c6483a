"""Netns suite task: stay alive (bounded), writing a heartbeat file with its pid.

args: HEARTBEAT_FILE [SECONDS]
"""

import json
import os
import sys
import time

path = sys.argv[1]
seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 300.0
end = time.monotonic() + seconds
beat = 0
while time.monotonic() < end:
    beat += 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"pid": os.getpid(), "beat": beat, "t": time.time()}, f)
    os.replace(tmp, path)
    time.sleep(0.2)
