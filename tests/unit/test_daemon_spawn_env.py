"""A spawn's `env` (daemon/server.py): what the daemon sets itself for every task is refused
with a message that says what to do instead, never dropped without a word."""

from __future__ import annotations

import pytest
from snipe_daemon.server import DAEMON_SET_ENV, _users_environment

from snipe.errors import CodecError
from snipe.wire import Envelope


def spawn(env: dict[str, str]) -> Envelope:
    return Envelope("daemon", 1, "spawn", 1, {"code": "urn:snipe:code:sha256:" + "0" * 64, "env": env})


def test_a_spawn_env_naming_a_variable_the_daemon_sets_is_refused_naming_it() -> None:
    assert _users_environment(spawn({"HOME": "/h", "MY_FLAG": "1"})) == {"HOME": "/h", "MY_FLAG": "1"}
    for name in sorted(DAEMON_SET_ENV - {"SNIPE_CHECKPOINT_EVERY"}):
        with pytest.raises(CodecError, match=f"env sets {name}, which the daemon sets itself"):
            _users_environment(spawn({name: "x", "HOME": "/h"}))


def test_a_checkpoint_period_in_the_spawn_env_points_to_checkpoint_every() -> None:
    with pytest.raises(CodecError, match=r"SNIPE_CHECKPOINT_EVERY.*pass checkpoint_every= to snipe.spawn"):
        _users_environment(spawn({"SNIPE_CHECKPOINT_EVERY": "5"}))
