"""The node's settlement-chain plumbing against a real anvil: start-up refusals, confirmed events, reorgs."""

from __future__ import annotations

import os

import subprocess
import sys
import time
from pathlib import Path

import pytest

from node import devnet as dn
from node.follower import ChainFollower, EventStore
from node.onchain import ChainError, check_chain, has_bls_precompiles, load_eth_key

from .chain_helpers import REPO, deploy_ping, free_port, running_anvil

pytest.importorskip("web3")
pytest.importorskip("vyper")

ANVIL_KEY0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's first dev account


def test_start_up_checks_refuse_each_unusable_chain() -> None:
    with running_anvil() as chain:
        w3 = chain.web3()
        ping = deploy_ping(w3)
        check_chain(w3, 31337, ping.address)  # the good case passes
        with pytest.raises(ChainError, match="chain id 31337, the config says 5"):
            check_chain(w3, 5, ping.address)
        with pytest.raises(ChainError, match="no contract code at"):
            check_chain(w3, 31337, "0x" + "12" * 20)
        with pytest.raises(ChainError, match="not an Ethereum address"):
            check_chain(w3, 31337, "0x1234")
    from node.onchain import connect

    with pytest.raises(ChainError, match="unreachable"):
        check_chain(connect(f"http://127.0.0.1:{free_port()}", timeout=2), 31337, "0x" + "12" * 20)
    # Before Prague there are no BLS precompiles: the probe gets empty success, which must not pass.
    with running_anvil("--hardfork", "cancun") as old:
        w3 = old.web3()
        ping = deploy_ping(w3)
        assert not has_bls_precompiles(w3)
        with pytest.raises(ChainError, match="lacks the EIP-2537"):
            check_chain(w3, 31337, ping.address)


def test_eth_key_file_formats(tmp_path: Path) -> None:
    (tmp_path / "a").write_text(ANVIL_KEY0 + "\n")
    from eth_account import Account

    from node.evm.ethkey import save_eth_keyfile

    save_eth_keyfile(tmp_path / "b", Account.from_key(ANVIL_KEY0))  # `pol chain key-new`'s format
    for name in ("a", "b"):
        assert load_eth_key(tmp_path / name).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    (tmp_path / "b").chmod(0o644)
    with pytest.raises(ChainError, match="accessible by other users"):
        load_eth_key(tmp_path / "b")
    (tmp_path / "bad").write_text("0x1234")
    with pytest.raises(ChainError, match="64 hex digits"):
        load_eth_key(tmp_path / "bad")
    with pytest.raises(ChainError, match="does not exist"):
        load_eth_key(tmp_path / "missing")


def test_eth_key_file_that_is_not_a_small_regular_file_is_refused_unread(tmp_path: Path) -> None:
    """A FIFO named as eth_key must not hang start-up, nor a huge or deeply nested file exhaust it."""
    from node.evm.ethkey import EthKeyFileError, load_eth_keyfile

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo, 0o600)
    huge = tmp_path / "huge"
    huge.write_bytes(b"{" + b" " * (1 << 20) + b"}")
    nested = tmp_path / "nested"
    nested.write_text("[" * 100_000 + "]" * 100_000)
    for path in (huge, nested):
        path.chmod(0o600)
    with pytest.raises(ChainError, match="not a regular file"):
        load_eth_key(fifo)
    for path in (huge, nested):
        with pytest.raises(ChainError, match="limit"):
            load_eth_key(path)
    with pytest.raises(EthKeyFileError, match="not a regular file"):
        load_eth_keyfile(fifo)
    with pytest.raises(EthKeyFileError, match="limit"):
        load_eth_keyfile(huge)
    small_nested = tmp_path / "small_nested"
    small_nested.write_text('{"a": ' * 40 + "1" + "}" * 40)
    small_nested.chmod(0o600)
    with pytest.raises(EthKeyFileError, match="unreadable"):
        load_eth_keyfile(small_nested)


def test_node_process_refuses_a_chain_without_bls_with_one_line(tmp_path: Path) -> None:
    net = dn.create(tmp_path / "net", 1, 0, 0)
    with running_anvil("--hardfork", "cancun") as old:
        ping = deploy_ping(old.web3())
        (tmp_path / "net" / "v0.eth").write_text(ANVIL_KEY0)
        config = tmp_path / "net" / "v0.toml"
        # One process (each costs seconds of imports); the other refusals are the same path, tested above.
        for rpc, chain_id, expect in ((old.url, 31337, b"lacks the EIP-2537"),):
            config.write_text(f'rpc_url = "{rpc}"\nchain_id = {chain_id}\ncontract = "{ping.address}"\n'
                              'eth_key = "v0.eth"\n' + config.read_text())  # before any [table]
            proc = subprocess.run([sys.executable, "-m", "pol.cli", "node", "--config", str(config)], cwd=REPO,
                                  capture_output=True, timeout=60)
            assert proc.returncode == 2, proc.stderr.decode()[-2000:]
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and expect in lines[0], proc.stderr.decode()[-2000:]
    assert net.verifiers[0].proc is None  # nothing left running


def test_follower_waits_for_confirmations_and_undoes_reorged_events(tmp_path: Path) -> None:
    with running_anvil() as chain:
        w3 = chain.web3()
        ping = deploy_ping(w3)
        sender = {"from": w3.eth.accounts[0]}
        store = EventStore(tmp_path / "events.sqlite")
        follower = ChainFollower(w3, ping.address, ping.abi, store, confirmations=2)
        for n in range(3):  # blocks 2, 3, 4 (automine: one block per transaction)
            w3.eth.wait_for_transaction_receipt(ping.functions.ping(n, bytes([n]) * 32).transact(sender))
        result = follower.poll_once()
        assert [e.args["n"] for e in result.events] == [0]  # blocks 3 and 4 are not yet 2 deep
        assert result.events[0].args["tag"] == "0x" + "00" * 32 and result.events[0].name == "Ping"
        w3.provider.make_request("anvil_mine", [2])
        assert [e.args["n"] for e in follower.poll_once().events] == [1, 2]
        assert follower.poll_once().events == ()  # nothing new: nothing twice

        # A reorg deeper than the confirmation depth replaces the last 4 blocks (holding n=1 and n=2,
        # both already confirmed): the follower must notice and drop them.
        head = w3.eth.block_number
        assert w3.provider.make_request("anvil_reorg", [4, []]).get("error") is None
        assert w3.eth.block_number == head
        result = follower.poll_once()
        assert result.reverted_to is not None and result.reverted_to < head - 3
        assert [e.args["n"] for e in store.events()] == [0]

        # The store survives a restart, and new events after the reorg arrive once.
        store.close()
        store = EventStore(tmp_path / "events.sqlite")
        follower = ChainFollower(w3, ping.address, ping.abi, store, confirmations=0)
        w3.eth.wait_for_transaction_receipt(ping.functions.ping(7, b"\x07" * 32).transact(sender))
        deadline = time.monotonic() + 10
        while 7 not in [e.args["n"] for e in store.events()] and time.monotonic() < deadline:
            follower.poll_once()
        assert [e.args["n"] for e in store.events()] == [0, 7]
        store.close()


def test_follower_refuses_a_store_of_another_contract(tmp_path: Path) -> None:
    with running_anvil() as chain:
        w3 = chain.web3()
        a, b = deploy_ping(w3), deploy_ping(w3)
        store = EventStore(tmp_path / "events.sqlite")
        ChainFollower(w3, a.address, a.abi, store, confirmations=0)
        with pytest.raises(ValueError, match="fresh data_dir"):
            ChainFollower(w3, b.address, b.abi, store, confirmations=0)
        store.close()
