"""What a server (`rcds-server`, `snipe-daemon`) checks before it creates anything, and how a
start that fails anyway leaves the disk as it found it.

Invariants: the checks read the file system and never write to it; every error names the
setting, the value and where the value came from (a flag or a config file), and says what to
do. A `Footprint` removes only paths that did not exist when it noted them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

import zmq

from snipe.discovery import check_host
from snipe.errors import ConfigError, ListenError, SignatureError
from snipe.identity import Identity, usable_public_key_from_id

# The admin_key of conf/rcds-server.toml and conf/snipe-daemon.toml: 64 hex characters that are
# no Ed25519 key, so an example copied unedited cannot start (tests/unit/test_config_examples.py).
EXAMPLE_ADMIN_KEY = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
WHERE_ADMIN_KEYS_COME_FROM = ("the key id `snipe-console keygen` prints for the admin's key file; "
                              "`snipe-console cluster status --json` shows a local cluster's admin_key")


def source_of(flag: object, flag_name: str, config: str | None) -> str:
    """Where a setting's value came from, for messages: the flag if it was given, else the file."""
    return flag_name if flag is not None and flag != [] else f"config file {config}"


def admin_key_from(value: object, source: str) -> bytes:
    """The admin key id `value` as raw bytes; ConfigError naming admin_key and `source` unless it is
    a usable Ed25519 public key (64 hex characters of a point of the curve)."""
    text = str(value)
    try:
        return usable_public_key_from_id(text)
    except SignatureError as exc:
        problem = str(exc)
    file = source.removeprefix("config file ") if source.startswith("config file ") else None
    if file is None:
        raise ConfigError(f"admin_key ({source}): {problem}; give {source} your cluster's admin key id "
                          f"({WHERE_ADMIN_KEYS_COME_FROM})")
    if text.lower() == EXAMPLE_ADMIN_KEY:
        raise ConfigError(f"admin_key in {file} is the example's placeholder, not a key: replace the placeholder "
                          f"admin_key in {file} with your cluster's admin key id ({WHERE_ADMIN_KEYS_COME_FROM}), "
                          "or pass --admin-key")
    raise ConfigError(f"admin_key in {file}: {problem}; replace it with your cluster's admin key id "
                      f"({WHERE_ADMIN_KEYS_COME_FROM}), or pass --admin-key")


def peer_key_from(value: object, what: str) -> bytes:
    """A peer's or replica's key id as raw bytes; ConfigError naming `what` unless it is usable."""
    try:
        return usable_public_key_from_id(str(value))
    except SignatureError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def check_listen_endpoint(endpoint: object, setting: str, source: str, example_port: int) -> str:
    """`endpoint` if a server can be told to bind it: tcp://HOST:PORT (HOST an address, a name, an
    interface or *; PORT 0..65535 or *) or ipc://PATH. ConfigError naming the value otherwise."""
    text = str(endpoint)
    usage = f"write tcp://HOST:PORT (e.g. tcp://0.0.0.0:{example_port}) or ipc:///PATH"
    if text.startswith("ipc://"):
        if len(text) == len("ipc://"):
            raise ConfigError(f"{setting} {text!r} ({source}) has no path after ipc://; {usage}")
        return text
    if not text.startswith("tcp://"):
        raise ConfigError(f"{setting} {text!r} ({source}) is not an endpoint to listen on; {usage}")
    host, sep, port = text[len("tcp://"):].rpartition(":")
    if not sep or not (port == "*" or (port.isdigit() and int(port) <= 65535)):
        raise ConfigError(f"{setting} {text!r} ({source}) has no port (0..65535, or * for any); {usage}")
    if host != "*":
        try:
            check_host(host)
        except ConfigError as exc:
            raise ConfigError(f"{setting} {text!r} ({source}): {exc}; {usage}") from None
    return text


def log_level(text: str, source: str) -> str:
    """`text` upper-cased if it names a logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)."""
    level = str(text).upper()
    if level not in logging.getLevelNamesMapping() or level == "NOTSET":
        raise ConfigError(f"log level {text!r} ({source}) is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def check_folder(path: Path, setting: str, source: str) -> None:
    """ConfigError unless `path` is a folder this user can write in, or one it can make."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{setting} {path} ({source}) is a file, not a folder; give a folder (it is made if "
                          "missing)")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{setting} {path} ({source}) cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "write in it" if existing == path.absolute() else f"make it in {existing}"
        raise ConfigError(f"{setting} {path} ({source}): this user cannot {what}; give a folder it may write")


def check_key_file(path: Path, setting: str, source: str, example_name: str) -> None:
    """ConfigError unless `path` holds a key (read, not changed) or is a file that can be made."""
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{setting} {path} ({source}) is a folder; name the key file in it, e.g. "
                          f"{path / example_name}")
    if path.exists():
        Identity.load(path)
    else:
        check_folder(path.parent, f"the folder of {setting}", source)


_BIND_HINTS = {
    errno.EADDRINUSE: "another process listens there already; stop it or choose another port",
    errno.EADDRNOTAVAIL: "no interface of this host has that address; use one of its own, or 0.0.0.0 for all",
    errno.EACCES: "permission denied (a port below 1024 needs privileges; an ipc path, a folder this user "
                  "may write)",
    errno.ENOENT: "its folder does not exist",
    errno.EINVAL: "not an endpoint ZeroMQ can bind; write tcp://HOST:PORT or ipc:///PATH",
    errno.ENODEV: "no interface of this host has that name",
}


def listen_on(sock: zmq.Socket, endpoint: str, setting: str = "listen") -> None:
    """Bind `sock` to `endpoint`; ListenError naming the endpoint and the cause if it cannot."""
    try:
        sock.bind(endpoint)
    except zmq.ZMQError as exc:
        hint = _BIND_HINTS.get(exc.errno, exc.strerror)
        raise ListenError(f"cannot listen on {endpoint} ({setting}): {hint}") from None


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder (or the file) a creation of `path` would make; None if it exists."""
    path = path.expanduser().absolute()
    if path.exists() or path.is_symlink():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


class Footprint:
    """The paths a start is about to create, noted before it creates them; `undo` removes those a
    failed start made, so it leaves no half-made folder. A path that existed is never touched."""

    def __init__(self) -> None:
        self._new: list[Path] = []

    def note(self, *paths: Path) -> None:
        for p in paths:
            top = _topmost_missing(p)
            if top is not None and top not in self._new:
                self._new.append(top)

    def undo(self) -> None:
        for p in reversed(self._new):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
        self._new.clear()
