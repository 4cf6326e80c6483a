"""`snipe-console web` against a real cluster: the page, its snapshot and show APIs, its token and
its refusals, served by the same code the command runs, on a loopback port."""

from __future__ import annotations

import contextlib
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import snipe
from snipe.console import web
from snipe.localcluster import LocalCluster
from snipe.runtime import Process, now_ms
from tests.integration.test_daemon import SLEEPER
from tests.support import wait_for

TOKEN = "test-token-1234"
GROUP = "urn:snipe:group:web-page"


class Page:
    def __init__(self, url: str) -> None:
        self.base = url.split("?", 1)[0]

    def get(self, path: str, *, token: str | None = TOKEN, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
        req = urllib.request.Request(self.base + path.lstrip("/"), method=method)
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read()

    def json(self, path: str, **kw: Any) -> Any:
        status, _, body = self.get(path, **kw)
        assert status == 200, (path, status, body)
        return json.loads(body)


@contextlib.contextmanager
def serving(token: str | None) -> Iterator[Page]:
    stop = threading.Event()
    ready: dict[str, str] = {}
    errors: list[BaseException] = []

    def run() -> None:
        try:
            web.serve("127.0.0.1:0", token=token, interval=0.5, stop=stop,
                      ready=lambda url, token: ready.update(url=url))
        except BaseException as exc:       # reported by the test, not lost in the thread
            errors.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    try:
        wait_for(lambda: "url" in ready or errors, 30, "the console's page to listen")
        assert not errors, errors
        assert ready["url"].endswith(f"?token={token}" if token else "/")
        yield Page(ready["url"])
    finally:
        stop.set()
        t.join(15)
        assert not t.is_alive(), "the console's page did not stop"


@pytest.fixture
def page(cluster: LocalCluster) -> Iterator[Page]:
    with serving(TOKEN) as p:
        yield p


def test_the_page_shows_hosts_tasks_and_groups(page: Page, tmp_path: Path) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    sleeper = snipe.spawn(snipe.publish(tmp_path / "sleeper.py"), "600", host="h2")
    snipe.join(GROUP)
    try:
        def snapshot_with_both() -> dict[str, Any] | None:
            s = page.json("/api/snapshot")
            urns = [t["urn"] for t in s.get("tasks", [])]
            groups = [g["group"] for g in s.get("groups", [])]
            return s if sleeper.urn in urns and GROUP in groups else None

        snap = wait_for(snapshot_with_both, 30, "the snapshot to list the sleeper and the group")
        assert sorted(u.rsplit(":", 1)[1] for u in snap["hosts"]) == ["h1", "h2", "h3"]
        task = next(t for t in snap["tasks"] if t["urn"] == sleeper.urn)
        assert task["host"] == "urn:snipe:host:h2" and task["state"] == "running"
        assert snap["unreachable"] == [] and snap["errors"] == {}
        assert set(snap["traffic"]) == {"t", "hosts"} and snap["interval_s"] == 0.5

        shown = page.json(f"/api/show?urn={sleeper.urn}")
        assert shown["urn"] == sleeper.urn and shown["verified"] is True
        assert {"name": "host", "value": "urn:snipe:host:h2"}.items() <= next(
            r for r in shown["records"] if r["name"] == "host").items()
        group = page.json(f"/api/show?urn={GROUP}")["group"]
        assert snipe.me() in [m["member"] for m in group["members"]]
    finally:
        snipe.leave(GROUP)
        Process(sleeper.urn).kill()


def test_the_page_is_static_its_data_wants_the_token_and_it_is_read_only(page: Page) -> None:
    status, headers, body = page.get("/", token=None)             # the page carries no data
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert b"<script src=\"app.js\"></script>" in body and b"<script>" not in body     # no inline script
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    status, headers, body = page.get("/app.js", token=None)
    assert status == 200 and b"textContent" in body and b"innerHTML" not in body

    for token in (None, "wrong-token-1234"):
        status, _, body = page.get("/api/snapshot", token=token)
        assert status == 401 and json.loads(body)["kind"] == "unauthorized"
    assert page.get(f"/api/snapshot?token={TOKEN}", token=None)[0] == 200   # the page's URL form

    status, _, body = page.get("/api/snapshot", method="POST")
    assert status == 405 and json.loads(body)["kind"] == "read-only"
    status, _, body = page.get("/nowhere")
    assert status == 404 and "/api/snapshot" in json.loads(body)["error"]
    status, _, body = page.get("/api/show?urn=not-a-urn")
    assert status == 400 and "urn" in json.loads(body)["error"].lower()
    status, _, body = page.get("/api/show")
    assert status == 400 and json.loads(body)["kind"] == "bad-request"


def test_a_port_in_use_is_a_clear_error(cluster: LocalCluster) -> None:
    import socket

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(snipe.errors.ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            web.serve(f"127.0.0.1:{port}", stop=threading.Event())


def test_without_a_token_only_requests_for_the_console_itself_are_answered(cluster: LocalCluster) -> None:
    """On loopback no token is asked, so a page elsewhere that rebinds its own name to 127.0.0.1
    could read the API: requests naming another host are refused (DNS rebinding)."""
    with serving(None) as page:
        assert page.get("/api/snapshot", token=None)[0] == 200
        port = page.base.rsplit(":", 1)[1].strip("/")
        req = urllib.request.Request(page.base + "api/snapshot", headers={"Host": f"evil.example:{port}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=10)
        assert refused.value.code == 403 and json.loads(refused.value.read())["kind"] == "wrong-host"


def test_records_any_task_can_write_on_a_group_do_not_break_the_page(page: Page) -> None:
    """Every admitted key may write router.* names on a group: a router record of the wrong
    shape is shown as what it is, and the snapshot goes on."""
    snipe.join(GROUP)
    try:
        snipe.catalog().set(GROUP, "router.bogus", {"relayed": "lots", "history_bytes": [1, 2], "daemon": 7})
        written = now_ms()

        def listed() -> dict[str, Any] | None:
            s = page.json("/api/snapshot")
            if s["taken_at_ms"] < written + 1000:     # a snapshot begun after the write (snapshots go on)
                return None
            return next((g for g in s.get("groups", []) if g["group"] == GROUP), None) if not s["errors"] else s

        group = wait_for(listed, 30, "the group in the snapshot")
        assert group.get("group") == GROUP and isinstance(group["relayed"], int), group
        bogus = next(r for r in page.json(f"/api/show?urn={GROUP}")["group"]["routers"] if r["router"] == "bogus")
        assert bogus["relayed"] == "lots" and bogus["daemon"] == 7             # shown as written, as data
    finally:
        snipe.leave(GROUP)
