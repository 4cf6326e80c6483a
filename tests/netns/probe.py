"""Small network probes the harness tests run INSIDE lab namespaces (bounded in time and count).

    probe.py listen PORT SECONDS            accept TCP connections, echo bytes back
    probe.py connect HOST:PORT [...]        one line of JSON: which connected within 1 s
    probe.py rtt HOST:PORT N                round-trip times (ms) of N 100-byte echoes
    probe.py push HOST:PORT BYTES           seconds to send BYTES and have them echoed back
    probe.py udp-sink PORT SECONDS          count datagrams (until 1 s quiet); prints the count
    probe.py udp-blast HOST:PORT N          send N datagrams, 0.2 ms apart
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time


def addr(text: str) -> tuple[str, int]:
    host, port = text.rsplit(":", 1)
    return host, int(port)


def listen(port: int, seconds: float) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(16)
    s.settimeout(0.2)
    end = time.monotonic() + seconds

    def echo(c: socket.socket) -> None:
        c.settimeout(max(0.1, end - time.monotonic()))
        try:
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
        except OSError:
            pass
        finally:
            c.close()

    print(json.dumps({"listening": port}), flush=True)
    while time.monotonic() < end:
        try:
            c, _ = s.accept()
        except TimeoutError:
            continue
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def connect(targets: list[str]) -> None:
    out = {}
    for t in targets:
        try:
            socket.create_connection(addr(t), timeout=1.0).close()
            out[t] = True
        except OSError:
            out[t] = False
    print(json.dumps(out))


def rtt(target: str, n: int) -> None:
    s = socket.create_connection(addr(target), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    times = []
    for _ in range(n):
        t = time.monotonic()
        s.sendall(b"x" * 100)
        got = 0
        while got < 100:
            got += len(s.recv(100 - got))
        times.append(round((time.monotonic() - t) * 1000, 2))
    print(json.dumps({"rtt_ms": times}))


def push(target: str, size: int) -> None:
    s = socket.create_connection(addr(target), timeout=30)
    t = time.monotonic()
    data = b"y" * size
    threading.Thread(target=s.sendall, args=(data,), daemon=True).start()
    got = 0
    while got < size:
        d = s.recv(65536)
        if not d:
            break
        got += len(d)
    print(json.dumps({"bytes": got, "seconds": round(time.monotonic() - t, 3)}))


def udp_sink(port: int, seconds: float) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.settimeout(0.2)
    print(json.dumps({"listening": port}), flush=True)
    n = 0
    end = time.monotonic() + seconds
    last = None
    while time.monotonic() < end:
        try:
            s.recv(2048)
            n += 1
            last = time.monotonic()
        except TimeoutError:
            if last is not None and time.monotonic() - last > 1.0:
                break                          # the blast is over
            continue
    print(json.dumps({"received": n}))


def udp_blast(target: str, n: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    refused = 0
    for i in range(n):
        try:
            s.sendto(i.to_bytes(4, "big") * 16, addr(target))
        except PermissionError:              # an nftables drop on output says EPERM to the sender
            refused += 1
        time.sleep(0.0002)
    print(json.dumps({"sent": n, "dropped_on_output": refused}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "listen":
        listen(int(args[0]), float(args[1]))
    elif cmd == "connect":
        connect(args)
    elif cmd == "rtt":
        rtt(args[0], int(args[1]))
    elif cmd == "push":
        push(args[0], int(args[1]))
    elif cmd == "udp-sink":
        udp_sink(int(args[0]), float(args[1]))
    elif cmd == "udp-blast":
        udp_blast(args[0], int(args[1]))
    else:
        raise SystemExit(f"unknown probe {cmd}")
