"""`snipe-console web`: the console's web page, read-only.

One page (`/`) shows the live hosts, every task, the multicast groups and a picture of message
traffic per host over time; its script reads `/api/snapshot` every few seconds. The snapshot is
the data `hosts`, `ps` and `groups` print with --json, taken by one background thread every
`interval` seconds (however many browsers look, the daemons are asked once per interval), and
`/api/show?urn=...` is `show --json`. Nothing here changes the cluster: steering stays with the
CLI, whose key signs what it asks.

Security: it listens on loopback unless told otherwise. On any other address it demands a
token (`?token=` on the page's URL, which its script passes on as `Authorization: Bearer`), made
at start unless given, and printed with the URL. Every value the page shows may come from a
task's own records, so the script inserts them as text, never as HTML, and the page is served
with a Content-Security-Policy that allows no inline script and no other origin.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import snipe
from snipe import hlc
from snipe.catalog.client import CatalogClient
from snipe.console.traffic import TaskCounters, TrafficHistory, task_counters
from snipe.errors import ConfigError, SnipeError
from snipe.runtime import now_ms, session

log = logging.getLogger("snipe.console.web")

DEFAULT_PORT = 8470
DEFAULT_INTERVAL_S = 5.0
STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8")}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT", ":PORT" or "PORT" (on 127.0.0.1) as (host, port); port 0 picks a free one."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"--listen {text!r}: the port must be a number, as in 127.0.0.1:{DEFAULT_PORT}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"--listen {text!r}: the port must be 0-65535")
    return host, port


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bracketed(host: str) -> str:
    """`host` as a URL or Host header writes it (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def token_for(host: str, token: str | None) -> str | None:
    """The token a page served on `host` wants: `token` if given (an empty one is refused), none
    on loopback, and a random one anywhere else, where others can reach the port."""
    if token is not None:
        if len(token) < 8 or not token.isprintable() or " " in token:
            raise ConfigError("--token must be at least 8 printable characters without spaces")
        return token
    return None if is_loopback(host) else secrets.token_urlsafe(24)


def snapshot_tasks(catalog: Any, admin_key: bytes, now: int) -> dict[str, TaskCounters]:
    """Every task's published message counters (the traffic sampler's input). The counters are
    the task's own word; its host is its host's, and only tasks a host vouches for count (a key
    could otherwise claim a URN and post traffic for any host)."""
    from snipe.console.main import host_keys_of, vouching_host_key

    host_keys = host_keys_of(catalog, admin_key, now)
    counters = {}
    for urn, entry in catalog.query("urn:snipe:proc:", [("msg_stats", "exists", None)]).items():
        stats = max((a for a in entry.live(now) if a.name == "msg_stats"), key=lambda a: a.rank, default=None)
        host_key = vouching_host_key(entry, host_keys, admin_key, now)
        if stats is not None and host_key is not None:
            c = task_counters(stats.value, entry.values("host", now).get(host_key), hlc.physical_ms(stats.ts))
            if c is not None:
                counters[urn] = c
    return counters


class Snapshotter:
    """Takes the page's snapshot every `interval` seconds: hosts, tasks, groups and a traffic
    sample; a part that fails keeps its last good value and says why. All catalog reads, the
    snapshots' and the show requests', run on one thread of its own with a catalog client of
    its own (a client is one thread's), so the handlers' threads never touch one."""

    def __init__(self, interval: float = DEFAULT_INTERVAL_S) -> None:
        self.interval = interval
        self.traffic = TrafficHistory()
        self._latest: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="snipe-console-web-catalog")
        self._catalog: CatalogClient | None = None

    def _client(self) -> CatalogClient:
        """(On the reader thread.) Its catalog client, made there on first use."""
        if self._catalog is None:
            s = session()
            self._catalog = CatalogClient([c.address for c in s.catalog.conns.values()], s.identity, s.admin_key)
        return self._catalog

    def read(self, fn: Callable[[CatalogClient], Any], timeout: float = 30.0) -> Any:
        """`fn(client)` run on the reader thread; its result, or what it raised."""
        return self._reader.submit(lambda: fn(self._client())).result(timeout)

    def take(self) -> dict[str, Any]:
        from snipe.console.main import _all_tasks, groups_data

        parts: dict[str, Any] = {}
        errors: dict[str, str] = {}
        for name, fn in (("hosts", lambda c: snipe.hosts(catalog=c)),
                         ("ps", lambda c: _all_tasks(min(self.interval, 3.0), catalog=c)),
                         ("groups", groups_data),
                         ("counters", lambda c: snapshot_tasks(c, session().admin_key, now_ms()))):
            try:
                parts[name] = self.read(fn)
            except SnipeError as exc:
                errors[name] = str(exc)
            except Exception as exc:     # a bug or a record we could not digest: that part's, said on the page
                log.exception("the console's %s snapshot failed", name)
                errors[name] = f"{type(exc).__name__}: {exc}"
        with self._lock:
            snap = dict(self._latest)
            if "hosts" in parts:
                snap["hosts"] = parts["hosts"]
            if "ps" in parts:
                snap["tasks"], snap["unreachable"] = parts["ps"]
            if "groups" in parts:
                snap["groups"] = parts["groups"]
            if "counters" in parts:
                self.traffic.add(time.time(), parts["counters"])
            snap["traffic"] = self.traffic.series()
            snap["errors"] = errors
            snap["taken_at_ms"] = now_ms()
            snap["interval_s"] = self.interval
            self._latest = snap
        return snap

    def latest(self) -> dict[str, Any]:
        with self._lock:
            return dict(self._latest)

    def start(self) -> None:
        self.take()
        self._timer = threading.Thread(target=self._run, name="snipe-console-web-snapshot", daemon=True)
        self._timer.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.take()
            except Exception:       # a page that stops updating would hide why: say it, keep going
                log.exception("the console's snapshot failed")

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=self.interval + 35)

        def close() -> None:
            if self._catalog is not None:
                self._catalog.close()

        self._reader.submit(close)
        self._reader.shutdown(wait=True)


MAX_CONNECTIONS = 32         # served at once; more are closed at once (threads are not free)
MAX_SHOWS = 4                # /api/show requests waiting on the catalog at once; more get 503
REQUEST_TIMEOUT_S = 10.0     # a connection silent this long is closed


class ConsoleServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], snapshots: Snapshotter, token: str | None) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, Handler)
        self.snapshots = snapshots
        self.token = token
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self.shows = threading.BoundedSemaphore(MAX_SHOWS)
        port = self.server_address[1]
        # Without a token, only requests naming this server as the browser reached it: a page
        # elsewhere that rebinds its own name to 127.0.0.1 sends its own name (DNS rebinding).
        self.hosts = {f"{h}:{port}" for h in ("127.0.0.1", "localhost", "[::1]", _bracketed(address[0]))}

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class Handler(BaseHTTPRequestHandler):
    server: ConsoleServer
    server_version = "snipe-console"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S

    def log_message(self, format: str, *args: Any) -> None:     # the base class names it `format`
        log.info("%s %s", self.address_string(), (format % args).replace(self.path, urlsplit(self.path).path))

    def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: HTTPStatus, data: Any) -> None:
        from snipe.console.main import to_json
        self._send(status, to_json(data).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str, kind: str) -> None:
        self._json(status, {"error": message, "kind": kind})

    def _authorized(self, query: dict[str, list[str]]) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "").removeprefix("Bearer ").strip() or \
            (query.get("token") or [""])[0]
        return hmac.compare_digest(given.encode(), token.encode())

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path in STATIC:
            name, content_type = STATIC[url.path]
            # The page and its script carry no data: served to anyone who can reach the port, so
            # the token in the page's URL is read by the script, never put in the HTML.
            self._send(HTTPStatus.OK, resources.files("snipe.console").joinpath("static", name).read_bytes(),
                       content_type)
            return
        if not url.path.startswith("/api/"):
            self._error(HTTPStatus.NOT_FOUND, f"no page {url.path!r}: the console serves /, /api/snapshot and "
                                              "/api/show?urn=URN", "not-found")
            return
        if not self._authorized(query):
            self._error(HTTPStatus.UNAUTHORIZED, "this console wants its token: open the URL it printed at start",
                        "unauthorized")
            return
        if self.server.token is None and self.headers.get("Host", "").lower() not in self.server.hosts:
            self._error(HTTPStatus.FORBIDDEN, f"this console answers requests for {sorted(self.server.hosts)[0]}, "
                                              f"not {self.headers.get('Host')!r}", "wrong-host")
            return
        if url.path == "/api/snapshot":
            self._json(HTTPStatus.OK, self.server.snapshots.latest())
        elif url.path == "/api/show":
            urns = query.get("urn") or []
            if len(urns) != 1:
                self._error(HTTPStatus.BAD_REQUEST, "/api/show wants one urn=URN", "bad-request")
                return
            from snipe.console.main import show_data
            if not self.server.shows.acquire(blocking=False):
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, "busy with other show requests: ask again", "busy")
                return
            try:
                self._json(HTTPStatus.OK, self.server.snapshots.read(lambda c: show_data(urns[0], catalog=c)[0],
                                                                     REQUEST_TIMEOUT_S))
            except SnipeError as exc:
                status = HTTPStatus.NOT_FOUND if exc.code == "not-found" else HTTPStatus.BAD_REQUEST
                self._error(status, str(exc), exc.code)
            except (FutureTimeout, RuntimeError):       # the catalog is slow, or the console is stopping
                self._error(HTTPStatus.SERVICE_UNAVAILABLE, "the catalog did not answer in time: ask again",
                            "unavailable")
            finally:
                self.server.shows.release()
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no API {url.path!r}: there are /api/snapshot and /api/show",
                        "not-found")

    def _not_allowed(self) -> None:
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"{self.command} is not served: the console's web page is "
                                                   "read-only (steer the cluster with the CLI)", "read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed


def serve(listen: str, *, token: str | None = None, interval: float = DEFAULT_INTERVAL_S,
          ready: Any = None, stop: threading.Event | None = None) -> None:
    """Serve the page until `stop` is set (or forever). `ready(url, token)` is called once it
    listens. A token is required off loopback, and made here if none was given."""
    if interval <= 0:
        raise ConfigError(f"--interval must be more than 0 s, not {interval:g}")
    host, port = parse_listen(listen)
    token = token_for(host, token)
    snapshots = Snapshotter(interval)
    try:
        server = ConsoleServer((host, port), snapshots, token)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    url = f"http://{_bracketed(host)}:{server.server_address[1]}/" + (f"?token={token}" if token else "")
    worker = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              name="snipe-console-web", daemon=True)
    try:
        worker.start()                 # (shutdown() waits for serve_forever: it must have started)
        snapshots.start()
        if ready is not None:
            ready(url, token)
        (stop or threading.Event()).wait()
    finally:
        if worker.is_alive():
            server.shutdown()
        server.server_close()
        snapshots.stop()
