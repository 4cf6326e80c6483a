"""The example configuration in conf/ is what the programs read: each file loads as shipped
(only its file system paths pointed at a temporary folder, and its placeholder admin key replaced
by a real one, which the programs refuse to start without), and a key they do not know is an
error that names it."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from snipe_daemon.main import load_config as load_daemon_config

from rcds.server_main import load_config as load_replica_config
from snipe.errors import ConfigError
from snipe.identity import Identity
from snipe.localcluster import toml_document
from snipe.startup import EXAMPLE_ADMIN_KEY

CONF = Path(__file__).resolve().parents[2] / "conf"
ADMIN = Identity.from_seed(bytes(range(32))).key_id       # a real key, where the examples hold a placeholder
REPLICA = Identity.from_seed(bytes(range(1, 33))).key_id


def test_the_daemon_example_loads_as_shipped(tmp_path: Path) -> None:
    cfg, _ = load_daemon_config(["--config", str(CONF / "snipe-daemon.toml"), "--state-dir", str(tmp_path),
                                 "--key-file", str(tmp_path / "host.key"), "--admin-key", ADMIN])
    shipped = tomllib.loads((CONF / "snipe-daemon.toml").read_text())
    daemon, catalog = shipped["daemon"], shipped["catalog"]
    assert (cfg.host_id, cfg.listen, cfg.advertise, cfg.lease_s) == (
        daemon["host_id"], daemon["listen"], daemon["advertise"], daemon["lease_s"])
    assert cfg.admin_key.hex() == ADMIN and daemon["admin_key"] == EXAMPLE_ADMIN_KEY
    assert cfg.catalog == catalog["replicas"]                  # from the [catalog] section
    assert cfg.net_names == daemon["net_names"]
    assert cfg.link_speeds == {k: (v["bandwidth_mbps"], v["latency_us"]) for k, v in daemon["links"].items()}
    assert cfg.takeover_backoff_s == daemon["takeover_backoff_s"]
    assert (tmp_path / "host.key").stat().st_mode & 0o777 == 0o600


def test_the_replica_example_loads_as_shipped(tmp_path: Path) -> None:
    cfg, _ = load_replica_config(["--config", str(CONF / "rcds-server.toml"), "--data-dir", str(tmp_path),
                                  "--key-file", str(tmp_path / "replica.key"), "--admin-key", ADMIN])
    shipped = tomllib.loads((CONF / "rcds-server.toml").read_text())
    replica = shipped["replica"]
    assert (cfg.replica_id, cfg.listen, cfg.anti_entropy_s, cfg.log_retention, cfg.sync, cfg.map_budget_mib) == (
        replica["id"], replica["listen"], replica["anti_entropy_s"], replica["log_retention"], replica["sync"],
        replica["map_budget_mib"])
    assert [(p.id, p.endpoint, p.key.hex()) for p in cfg.peers] == [
        (p["id"], p["endpoint"], p["key"]) for p in shipped["peers"]]
    assert (cfg.admin_key.hex(), replica["admin_key"]) == (ADMIN, EXAMPLE_ADMIN_KEY)


@pytest.mark.parametrize(("load", "name", "folder"), [(load_replica_config, "rcds-server.toml", "--data-dir"),
                                                      (load_daemon_config, "snipe-daemon.toml", "--state-dir")])
def test_the_examples_placeholder_admin_key_is_refused_before_anything_is_made(
        tmp_path: Path, load: Any, name: str, folder: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(["--config", str(CONF / name), folder, str(tmp_path / "made"), "--key-file", str(tmp_path / "k")])
    assert f"replace the placeholder admin_key in {CONF / name} with your cluster's admin key id" in str(info.value)
    assert "snipe-console keygen" in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("text", "words"), [
    ("[daemon]\nhost_id = 'a'\nlease = 3.0\n", ["no key 'lease'", "lease_s"]),
    ("[daemon]\nhost_id = 'a'\n[playground]\nkind = 'bwrap'\n", ["unknown section", "playground"]),
    ("[daemon]\nhost_id = 'a'\nlease_s = 'ten'\n", ["daemon.lease_s must be int or float", "not str"]),
    ("[daemon]\nhost_id = 'a'\n[daemon.links.eth0]\nbandwidth = 1000\n", ["daemon.links.eth0", "bandwidth_mbps"]),
    ("[daemon]\nhost_id = 'a'\n[catalog]\nreplicas = 'tcp://x:1'\n", ["catalog.replicas must be a list"]),
    ("[daemon]\nhost_id = 'a'\n[catalog]\ndns_sever = '10.0.0.1'\n", ["no key 'dns_sever'", "dns_server"]),
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
    path.write_text("[replica]\nid = 'r1'\nlisten = 'tcp://127.0.0.1:1'\ndata_dir = 'x'\nadmin_key = '" + "ab" * 32
                    + "'\n[[peers]]\nid = 'r2'\nendpoint = 'tcp://a:1'\nkye = 'ab'\n")
    with pytest.raises(ConfigError, match=r"peers\[0\] has no key 'kye'"):
        load_replica_config(["--config", str(path)])
    base = f"[replica]\nid = 'r1'\nlisten = 'tcp://127.0.0.1:1'\ndata_dir = '{tmp_path}'\nadmin_key = '{ADMIN}'\n"
    for line, words in (("anti_entropy_s = 'often'", "anti_entropy_s = 'often' must be a number"),
                        ("anti_entropy_s = -1", "at least 0.01"),
                        ("log_retention = 2.5", "log_retention = 2.5 must be a whole number"),
                        ("map_budget_mib = true", "map_budget_mib = True must be a whole number")):
        path.write_text(base + line + "\n")
        with pytest.raises(ConfigError, match=re.escape(words)):
            load_replica_config(["--config", str(path)])


def test_flags_naming_the_replicas_leave_the_files_catalog_section_unresolved(tmp_path: Path) -> None:
    """An SRV-only [catalog] whose DNS is down does not stop a daemon told its replicas."""
    path = tmp_path / "d.toml"
    path.write_text("[daemon]\nhost_id = 'a'\n[catalog]\nsrv_domain = 'nowhere.invalid'\n"
                    "dns_server = '127.0.0.1:9'\ndns_timeout = 0.2\n")
    admin = ADMIN
    cfg, _ = load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path), "--listen", "tcp://127.0.0.1:1",
                                 "--admin-key", admin, "--catalog", "tcp://127.0.0.1:2"])
    assert cfg.catalog == ["tcp://127.0.0.1:2"]


def test_a_config_file_keeps_any_path_a_local_cluster_writes() -> None:
    tables = {"daemon": {"state_dir": '/tmp/\U0001f600 é "q" \\ x\x7fy\tz', "lease_s": 2.0, "n": 3},
              "catalog": {"replicas": ["tcp://a:1#ab"]}}
    assert tomllib.loads(toml_document(tables)) == tables
    with pytest.raises(ConfigError, match="finite"):
        toml_document({"daemon": {"lease_s": float("inf")}})


def test_a_daemon_price_must_be_a_number_of_at_least_zero(tmp_path: Path) -> None:
    base = (f"[daemon]\nhost_id = 'a'\nlisten = 'tcp://127.0.0.1:1'\nadmin_key = '{ADMIN}'\n"
            f"catalog = ['tcp://127.0.0.1:2#{REPLICA}']\n")
    path = tmp_path / "d.toml"
    path.write_text(base + "price = 2.5\n")
    cfg, _ = load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])
    assert cfg.price == 2.5
    path.write_text(base)
    assert load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])[0].price == 1.0
    path.write_text(base + "price = -1\n")
    with pytest.raises(ConfigError, match=r"\[daemon\] price must be a number >= 0, not -1"):
        load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])


def test_a_daemon_takeover_backoff_must_be_a_number_of_seconds_above_zero(tmp_path: Path) -> None:
    base = (f"[daemon]\nhost_id = 'a'\nlisten = 'tcp://127.0.0.1:1'\nadmin_key = '{ADMIN}'\n"
            f"catalog = ['tcp://127.0.0.1:2#{REPLICA}']\n")
    path = tmp_path / "d.toml"
    path.write_text(base)
    assert load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])[0].takeover_backoff_s == 1.0
    path.write_text(base + "takeover_backoff_s = 0.25\n")
    assert load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])[0].takeover_backoff_s == 0.25
    for bad in ("0", "-1", "nan"):
        path.write_text(base + f"takeover_backoff_s = {bad}\n")
        with pytest.raises(ConfigError, match=rf"\[daemon\] takeover_backoff_s must be a number of seconds above 0, "
                                              rf"not {bad}"):
            load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])


def test_a_bad_snipe_retained_resolve_s_stops_the_daemon_before_it_starts(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "d.toml"
    path.write_text(f"[daemon]\nhost_id = 'a'\nlisten = 'tcp://127.0.0.1:1'\nadmin_key = '{ADMIN}'\n"
                    f"catalog = ['tcp://127.0.0.1:2#{REPLICA}']\n")
    monkeypatch.setenv("SNIPE_RETAINED_RESOLVE_S", "30s")
    with pytest.raises(ConfigError, match="SNIPE_RETAINED_RESOLVE_S must be a number of seconds"):
        load_daemon_config(["--config", str(path), "--state-dir", str(tmp_path)])
