"""A transparent TCP relay that adds delay: the harness's stand-in for netem on kernels without it.

Run inside a host's namespace by the harness (`Lab.delay`), never by hand in the root namespace:

    python -m snipe.netlab.relay --port 7901 --delay-ms 50 [--jitter-ms 20] --mark 0x5a1 --ready-file F

An nftables `redirect` rule in the same namespace sends new TCP connections leaving one interface
to this relay (except connections carrying the relay's own firewall mark, and the catalog and
daemon ports); the relay finds where each was going (SO_ORIGINAL_DST), connects there itself
(marked, so it is not redirected again) and copies bytes both ways, holding every chunk for
`delay` milliseconds before passing it on. So each direction of each connection is delayed by
`delay` ms (a round trip by 2 x delay), bytes are never lost, and the per-connection order is
kept, as TCP keeps it whatever the network does.

Reordering: with `--jitter-ms J` each connection draws its own delay in [delay, delay + J].
Inside one TCP connection nothing above TCP can ever see reordering (netem's reordering is undone
by TCP's resequencing); what an application can see is data sent on a later connection (after a
reconnect or a route change) overtaking data still held on an earlier one, and that is what the
jitter produces. Queues are bounded (`--max-buffer` bytes per direction): a full queue stops
reading, so back-pressure reaches the sender as it would on a slow link.

Forwarding (not transparent): `--forward LISTEN_ADDR:PORT=TARGET_ADDR:PORT` (repeatable) listens
there and copies every connection to the fixed target, with no delay unless one is given. The
harness runs it on a gateway host so a host reachable only through that gateway can reach the
catalog replicas (CurveZMQ inside is untouched: the forwarder sees ciphertext only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import sys
import time
from pathlib import Path

SO_ORIGINAL_DST = 80


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    address = socket.inet_ntoa(raw[4:8])
    return address, port


class Stats:
    def __init__(self) -> None:
        self.connections = 0
        self.active = 0
        self.bytes = 0
        self.failed = 0


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float, max_buffer: int,
               stats: Stats) -> None:
    """Copy reader -> writer, each chunk held `delay_s`; EOF passes through after the last chunk."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
    space = asyncio.Semaphore(max(1, max_buffer // 65536))

    async def pull() -> None:
        try:
            while True:
                await space.acquire()
                data = await reader.read(65536)
                await queue.put((time.monotonic() + delay_s, data))
                if not data:
                    return
        except (ConnectionError, OSError):
            await queue.put((time.monotonic(), b""))

    async def push() -> None:
        try:
            while True:
                due, data = await queue.get()
                space.release()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    with contextlib.suppress(OSError):
                        if writer.can_write_eof():
                            writer.write_eof()
                    return
                writer.write(data)
                stats.bytes += len(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    puller = asyncio.create_task(pull())
    try:
        await push()
    finally:
        puller.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await puller


async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, args: argparse.Namespace,
                 stats: Stats, target: tuple[str, int] | None = None) -> None:
    sock = client_w.get_extra_info("socket")
    stats.connections += 1
    stats.active += 1
    try:
        try:
            dst = target or original_destination(sock)
        except OSError:
            stats.failed += 1
            return
        delay_s = (args.delay_ms + random.uniform(0, args.jitter_ms)) / 1000.0
        out = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        out.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, args.mark)
        out.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(out, dst), args.connect_timeout)
        except (OSError, TimeoutError):
            out.close()
            stats.failed += 1
            return
        server_r, server_w = await asyncio.open_connection(sock=out)
        try:
            await asyncio.gather(pipe(client_r, server_w, delay_s, args.max_buffer, stats),
                                 pipe(server_r, client_w, delay_s, args.max_buffer, stats))
        finally:
            server_w.close()
    finally:
        stats.active -= 1
        client_w.close()


async def main_async(args: argparse.Namespace) -> None:
    stats = Stats()
    servers = []
    if args.port is not None:
        servers.append(await asyncio.start_server(lambda r, w: handle(r, w, args, stats), "0.0.0.0", args.port,
                                                  reuse_address=True))
    for listen, target in args.forward:
        servers.append(await asyncio.start_server(lambda r, w, t=target: handle(r, w, args, stats, t), listen[0],
                                                  listen[1], reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.ready_file:
        tmp = Path(args.ready_file + ".tmp")
        tmp.write_text(json.dumps({"port": args.port, "pid": os.getpid()}))
        tmp.replace(args.ready_file)
    deadline = time.monotonic() + args.max_lifetime
    while not stop.is_set() and time.monotonic() < deadline:     # bounded: a forgotten relay ends
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
        if args.stats_file:
            with contextlib.suppress(OSError):
                Path(args.stats_file).write_text(json.dumps(vars(stats)))
    for server in servers:
        server.close()


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not ADDRESS:PORT")
    return host, int(port)


def _forward(text: str) -> tuple[tuple[str, int], tuple[str, int]]:
    listen, sep, target = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r} is not LISTEN_ADDR:PORT=TARGET_ADDR:PORT")
    return _address(listen), _address(target)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="snipe-netlab-relay", description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, help="the transparent relay's port (nftables redirects to it)")
    ap.add_argument("--forward", action="append", default=[], type=_forward,
                    help="LISTEN_ADDR:PORT=TARGET_ADDR:PORT, a plain port forward (repeatable)")
    ap.add_argument("--delay-ms", type=float, default=50.0)
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--mark", type=lambda s: int(s, 0), default=0x5A1)
    ap.add_argument("--max-buffer", type=int, default=4 << 20)
    ap.add_argument("--connect-timeout", type=float, default=5.0)
    ap.add_argument("--max-lifetime", type=float, default=6 * 3600.0)
    ap.add_argument("--ready-file")
    ap.add_argument("--stats-file")
    args = ap.parse_args(argv)
    if args.port is None and not args.forward:
        ap.error("give --port (transparent relay) or --forward (port forwards), or both")
    asyncio.run(main_async(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
