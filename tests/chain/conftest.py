"""A real anvil chain with the settlement contract deployed and four verifiers registered.

One anvil per test session; each test runs inside ``evm_snapshot``/``evm_revert`` so tests do
not see each other's state. Block times are set exactly with ``evm_setNextBlockTimestamp``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_account import Account
from eth_account.signers.local import LocalAccount

from node.evm.anvil import AnvilProcess, find_anvil, rpc_call, start_anvil
from node.evm.contract import SettlementClient, SettlementParams, connect, deploy_settlement
from protocol import bls

Account.enable_unaudited_hdwallet_features()
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's default accounts
STAKES = (100, 100, 100, 100)
PARAMS = SettlementParams(challenge_window=100, availability_window=1000, dispute_window=500,
                          unbonding_delay=1600, prover_bond=1000, min_stake=1, bond_reward_bps=2000)


def get_test_account(index: int) -> LocalAccount:
    account: LocalAccount = Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
    return account


def get_bls_key(label: str) -> bytes:
    return bls.compute_secret_key(hashlib.sha256(b"pol-test-key/" + label.encode()).digest())


@dataclass
class Chain:
    anvil: AnvilProcess
    client: SettlementClient  # sends from the deployer (account 0)
    accounts: list[LocalAccount]
    verifier_keys: list[bytes]  # BLS secret keys of verifiers 0..3 (accounts 1..4)
    genesis_block: int
    cache: dict[str, Any] = field(default_factory=dict)

    def rpc(self, method: str, *params: Any) -> Any:
        return rpc_call(self.anvil.url, method, list(params))

    def as_account(self, index: int) -> SettlementClient:
        return self.client.with_account(self.accounts[index])

    def now(self) -> int:
        return int(self.client.w3.eth.get_block("latest")["timestamp"])

    def set_next_time(self, timestamp: int) -> None:
        """The next mined block (and the pending block gas is estimated on) gets this time."""
        self.rpc("evm_setNextBlockTimestamp", timestamp)

    def mine_at(self, timestamp: int) -> None:
        self.rpc("evm_mine", timestamp)


@pytest.fixture(scope="session")
def chain_session() -> Iterator[Chain]:
    if find_anvil() is None:
        pytest.skip("anvil is not installed (run `make anvil`, or set POL_ANVIL to an anvil binary)")
    with start_anvil(accounts=20) as anvil:
        w3 = connect(anvil.url)
        accounts = [get_test_account(i) for i in range(20)]
        client, _ = deploy_settlement(w3, accounts[0], PARAMS)
        keys = [get_bls_key(f"verifier-{i}") for i in range(len(STAKES))]
        pops = [bls.compute_pop(sk) for sk in keys]  # py-ecc: slow, so computed once per session
        for i, (sk, pop, stake) in enumerate(zip(keys, pops, STAKES)):
            client.with_account(accounts[1 + i]).register(bls.compute_public_key(sk), pop, stake)
        yield Chain(anvil, client, accounts, keys, int(w3.eth.block_number), {"pops": pops})


@pytest.fixture
def chain(chain_session: Chain) -> Iterator[Chain]:
    snapshot = chain_session.rpc("evm_snapshot")
    try:
        yield chain_session
    finally:
        assert chain_session.rpc("evm_revert", snapshot) is True
