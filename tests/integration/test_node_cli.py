"""`pol node` fails loudly and early: one line naming the file and key, exit 2, nothing started."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node import devnet as dn
from node.config import ConfigError, format_config_toml, load_config

REPO = Path(__file__).resolve().parents[2]


def pol(*args: str, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pol.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=timeout)


@pytest.fixture()
def net(tmp_path: Path) -> dn.Devnet:
    return dn.create(tmp_path / "net", 2, 1, 0, steps=10)


def _config(net: dn.Devnet, name: str = "v0") -> Path:
    return net.directory / f"{name}.toml"


@pytest.mark.parametrize("edit, key, words", [
    ({"role": "verfier"}, "role", "must be one of"),
    ({"listen_port": 99999}, "listen_port", "0..65535"),
    ({"http_port": "8080"}, "http_port", "integer"),
    ({"bootsrap": []}, "bootsrap", "unknown key"),
    ({"listen_host": "localhost:41000"}, "listen_host", "IPv4"),
    ({"log_level": "LOUD"}, "log_level", "must be one of"),
    ({"tick_s": -1}, "tick_s", "seconds"),
    ({"announce_addrs": ["203.0.113.7:41000"]}, "announce_addrs", "multiaddr"),
])
def test_config_mistakes_name_file_and_key(net: dn.Devnet, edit: dict[str, object], key: str, words: str) -> None:
    path = _config(net)
    import tomllib

    doc = tomllib.loads(path.read_text())
    doc.update(edit)
    path.write_text(format_config_toml(doc))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and repr(key) in msg and words in msg and "\n" not in msg


def test_relative_paths_resolve_against_the_config_file(net: dn.Devnet) -> None:
    cfg = load_config(_config(net))
    assert cfg.key == net.directory / "keys" / "v0.json" and cfg.data_dir == net.directory / "v0"
    assert cfg.names  # the devnet names its accounts


def test_node_cli_errors_exit_2_with_one_line(tmp_path: Path, net: dn.Devnet) -> None:
    r = pol("node", "--config", str(tmp_path / "missing.toml"))
    assert r.returncode == 2 and "does not exist" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("role = \n")
    r = pol("node", "--config", str(bad))
    assert r.returncode == 2 and "not valid TOML" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    # Missing key and genesis files name the config key.
    (net.directory / "genesis.msgpack").rename(tmp_path / "g")
    r = pol("node", "--config", str(_config(net)), "--check")
    assert r.returncode == 2 and "'genesis'" in r.stderr and "does not exist" in r.stderr
    (tmp_path / "g").rename(net.directory / "genesis.msgpack")
    # A relative --config from another working directory finds its key and genesis (resolved against the file).
    r = pol("node", "--config", "net/v0.toml", "--check", cwd=tmp_path)
    assert r.returncode == 0 and "ok (verifier" in r.stdout, r.stderr


def test_node_refuses_unstaked_key_and_taken_port(net: dn.Devnet, tmp_path: Path) -> None:
    # A prover's key run as a verifier is not in the genesis: refused before anything binds.
    import tomllib

    path = _config(net, "p0")
    doc = tomllib.loads(path.read_text())
    doc["role"] = "verifier"
    doc.pop("prove_tasks"), doc.pop("cheat")
    path.write_text(format_config_toml(doc))
    r = pol("node", "--config", str(path))
    assert r.returncode == 2 and "not a verifier in the genesis" in r.stderr and "Traceback" not in r.stderr
    # A p2p port held by someone else.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        path = _config(net, "v0")
        doc = tomllib.loads(path.read_text())
        doc["listen_port"] = port
        path.write_text(format_config_toml(doc))
        r = pol("node", "--config", str(path), timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "'listen_port'" in r.stderr and "cannot listen" in r.stderr and "Traceback" not in r.stderr


def test_log_format_json_and_console_filter(net: dn.Devnet, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import logging

    from node.cli import setup_node_logging
    from node.events import emit

    cfg = load_config(_config(net))
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_node_logging(cfg, 0, "json")
        emit("escrow_released", "escrow released: 100 paid to p0", claim="ab" * 32, amount=100)
        logging.getLogger("node.app").info("an info line the terminal does not show without -v")
        logging.getLogger("libp2p.transport.tcp.tcp").error("failed dial the terminal does not show")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
    lines = [json.loads(x) for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert len(lines) == 1, lines
    assert lines[0]["event"] == "escrow_released" and lines[0]["amount"] == 100 and lines[0]["claim"] == "ab" * 32
    assert "failed dial" in cfg.log_file.read_text() and "info line" in cfg.log_file.read_text()  # type: ignore[union-attr]
