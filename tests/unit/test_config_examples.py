"""The example configuration in conf/ is what the programs read: each file loads as shipped
(only its file system paths pointed at a temporary folder), and a key they do not know is an
error that names it."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from snipe_daemon.main import load_config as load_daemon_config

from rcds.server_main import load_config as load_replica_config
from snipe.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf"


def test_the_daemon_example_loads_as_shipped(tmp_path: Path) -> None:
    cfg, _ = load_daemon_config(["--config", str(CONF / "snipe-daemon.toml"), "--state-dir", str(tmp_path),
                                 "--key-file", str(tmp_path / "host.key")])
    shipped = tomllib.loads((CONF / "snipe-daemon.toml").read_text())
    daemon, catalog = shipped["daemon"], shipped["catalog"]
    assert (cfg.host_id, cfg.listen, cfg.advertise, cfg.lease_s) == (
        daemon["host_id"], daemon["listen"], daemon["advertise"], daemon["lease_s"])
    assert cfg.admin_key.hex() == daemon["admin_key"]
    assert cfg.catalog == catalog["replicas"]                  # from the [catalog] section
    assert cfg.net_names == daemon["net_names"]
    assert cfg.link_speeds == {k: (v["bandwidth_mbps"], v["latency_us"]) for k, v in daemon["links"].items()}
    assert (tmp_path / "host.key").stat().st_mode & 0o777 == 0o600


def test_the_replica_example_loads_as_shipped(tmp_path: Path) -> None:
    cfg, _ = load_replica_config(["--config", str(CONF / "rcds-server.toml"), "--data-dir", str(tmp_path),
                                  "--key-file", str(tmp_path / "replica.key")])
    shipped = tomllib.loads((CONF / "rcds-server.toml").read_text())
    replica = shipped["replica"]
    assert (cfg.replica_id, cfg.listen, cfg.anti_entropy_s, cfg.log_retention, cfg.sync, cfg.map_budget_mib) == (
        replica["id"], replica["listen"], replica["anti_entropy_s"], replica["log_retention"], replica["sync"],
        replica["map_budget_mib"])
    assert [(p.id, p.endpoint, p.key.hex()) for p in cfg.peers] == [
        (p["id"], p["endpoint"], p["key"]) for p in shipped["peers"]]


@pytest.mark.parametrize(("text", "words"), [
    ("[daemon]\nhost_id = 'a'\nlease = 3.0\n", ["no key 'lease'", "lease_s"]),
    ("[daemon]\nhost_id = 'a'\n[playground]\nkind = 'bwrap'\n", ["unknown section", "playground"]),
    ("[daemon]\nhost_id = 'a'\nlease_s = 'ten'\n", ["daemon.lease_s must be int or float", "not str"]),
    ("[daemon]\nhost_id = 'a'\n[daemon.links.eth0]\nbandwidth = 1000\n", ["daemon.links.eth0", "bandwidth_mbps"]),
    ("[daemon]\nhost_id = 'a'\n[catalog]\nreplicas = 'tcp://x:1'\n", ["catalog.replicas must be a list"]),
    ("[daemon\n", ["not valid TOML"]),
])
def test_a_daemon_config_mistake_is_an_error_naming_it(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "d.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])
    assert all(w in str(info.value) for w in words), str(info.value)


def test_a_replica_config_mistake_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text("[replica]\nid = 'r1'\nsycn = true\n")
    with pytest.raises(ConfigError, match=r"unknown key.*replica\.sycn.*sync"):
        load_replica_config(["--config", str(path)])
    with pytest.raises(ConfigError, match="does not exist"):
        load_replica_config(["--config", str(tmp_path / "missing.toml")])
