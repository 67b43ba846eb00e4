"""``pol chain deploy``, ``pol stake``, ``pol unstake``, ``pol post-task``, ``pol balance`` on a real anvil."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.evm.ethkey import EthKeyFileError, load_eth_keyfile, save_eth_keyfile
from pol.cli import main
from pol.keyfile import KeyFile, save_keyfile
from protocol import bls
from protocol.task import compute_task_id

from .conftest import Chain, get_bls_key


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | str]:  # type: ignore[type-arg]
    code = main(list(argv))
    out, err = capsys.readouterr()
    if code != 0:
        return code, err
    return code, json.loads(out) if "--json" in argv else out


def test_chain_commands(chain: Chain, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = chain.anvil.url
    deployer, operator = tmp_path / "deployer.json", tmp_path / "operator.json"
    save_eth_keyfile(deployer, chain.accounts[0])
    save_eth_keyfile(operator, chain.accounts[17])
    bls_file = tmp_path / "verifier-key.json"
    save_keyfile(bls_file, KeyFile(get_bls_key("cli-verifier"), b"\x01" * 32))

    code, doc = run(capsys, "chain", "deploy", "--rpc", url, "--key", str(deployer), "--out",
                    str(tmp_path / "deployment.json"), "--json")
    assert code == 0 and isinstance(doc, dict)
    record = json.loads((tmp_path / "deployment.json").read_text())
    assert record["address"] == doc["address"] and record["chain_id"] == 31337
    contract = str(tmp_path / "deployment.json")
    common = ["--rpc", url, "--contract", contract, "--key", str(operator), "--json"]

    code, doc = run(capsys, "stake", *common, "--bls-key", str(bls_file), "--amount", "5000")
    assert code == 0 and isinstance(doc, dict) and doc["verifier"] == 0
    assert doc["pubkey"] == bls.compute_public_key(get_bls_key("cli-verifier")).hex()

    code, doc = run(capsys, "post-task", *common, "digits-mlp", "--reward", "777", "--expires-in", "600")
    assert code == 0 and isinstance(doc, dict)
    from pol.cli import _read_task
    assert doc["task_id"] == compute_task_id(_read_task("digits-mlp")).hex()
    assert [e["name"] for e in doc["events"]] == ["Deposited", "TaskPosted"]

    code, doc = run(capsys, "balance", *common)
    assert code == 0 and isinstance(doc, dict)
    assert doc["balance"] == 0 and doc["verifier"]["stake"] == 5000 and doc["verifier"]["exit_at"] == 0

    code, doc = run(capsys, "unstake", *common)
    assert code == 0 and isinstance(doc, dict) and doc["exit_at"] > 0
    code, err = run(capsys, "unstake", *common, "--withdraw")
    assert code == 2 and "unbonding delay has not passed" in str(err)
    chain.mine_at(int(doc["exit_at"]))
    code, doc = run(capsys, "unstake", *common, "--withdraw")
    assert code == 0 and isinstance(doc, dict) and doc["withdrawn"] == 5000
    code, doc = run(capsys, "balance", "--rpc", url, "--contract", contract, "--address",
                    chain.accounts[17].address, "--json")
    assert code == 0 and isinstance(doc, dict) and doc["balance"] == 5000
    code, doc = run(capsys, "balance", *common, "--withdraw")
    assert code == 0 and isinstance(doc, dict) and doc["withdraw"]["events"][0]["name"] == "Withdrawn"

    code, err = run(capsys, "balance", "--rpc", url, "--contract", "0x" + "ab" * 20, "--address",
                    chain.accounts[17].address)
    assert code == 2 and "no contract at" in str(err)


def test_eth_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "eth.json"
    code, doc = run(capsys, "chain", "key-new", "--out", str(path), "--json")
    assert code == 0 and isinstance(doc, dict)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_eth_keyfile(path).address == doc["address"]
    code, err = run(capsys, "chain", "key-new", "--out", str(path))
    assert code == 2 and "refusing to overwrite" in str(err)
    os.chmod(path, 0o644)
    with pytest.raises(EthKeyFileError, match="accessible by other users"):
        load_eth_keyfile(path)
    os.chmod(path, 0o600)
    doc_on_disk = json.loads(path.read_text())
    doc_on_disk["address"] = "0x" + "00" * 20
    path.write_text(json.dumps(doc_on_disk))
    with pytest.raises(EthKeyFileError, match="does not belong to the key"):
        load_eth_keyfile(path)
    path.write_text(json.dumps({"version": 1, "eth_private_key": "zz", "address": "x"}))
    with pytest.raises(EthKeyFileError, match="64 hex digits"):
        load_eth_keyfile(path)
