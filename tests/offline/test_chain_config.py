"""Node config keys of the settlement chain: all or nothing, validated, paths relative to the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from node.config import ConfigError, load_config

BASE = 'role = "verifier"\nkey = "k.json"\ngenesis = "g.msgpack"\ndata_dir = "d"\n'
CHAIN = 'rpc_url = "http://127.0.0.1:8545"\nchain_id = 31337\ncontract = "0x' + "ab" * 20 + '"\n'


def _load(tmp_path: Path, text: str) -> object:
    path = tmp_path / "sub" / "node.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(BASE + text)
    return load_config(path)


def test_chain_keys_parsed_and_eth_key_relative_to_the_config(tmp_path: Path) -> None:
    cfg = _load(tmp_path, CHAIN + 'eth_key = "keys/op.eth"\nconfirmations = 0\n')
    assert (cfg.rpc_url, cfg.chain_id, cfg.confirmations) == ("http://127.0.0.1:8545", 31337, 0)  # type: ignore[attr-defined]
    assert cfg.eth_key == tmp_path / "sub" / "keys" / "op.eth"  # type: ignore[attr-defined]
    assert _load(tmp_path, "").rpc_url == ""  # type: ignore[attr-defined]  # no chain: the gossip model


@pytest.mark.parametrize("text, reason", [
    ('chain_id = 1\n', "without rpc_url"),
    ('rpc_url = "http://x"\ncontract = "0x' + "ab" * 20 + '"\n', "needs 'chain_id'"),
    ('rpc_url = "http://x"\nchain_id = 1\n', "needs 'contract'"),
    (CHAIN.replace("31337", "0"), "chain_id must be a positive integer"),
    (CHAIN.replace("ab" * 20, "ab" * 19), "20-byte hex address"),
    (CHAIN + "confirmations = -1\n", "confirmations must be an integer"),
    (CHAIN + 'confirmations = "2"\n', "confirmations must be an integer"),
    (CHAIN + "chain_start_block = -5\n", "chain_start_block must be a block number"),
])
def test_bad_chain_keys_are_refused_with_the_reason(tmp_path: Path, text: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        _load(tmp_path, text)
