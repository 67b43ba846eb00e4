"""The devnet's settlement chain: a local anvil, the deployed contract, funded and registered accounts.

``start_chain`` runs anvil on 127.0.0.1 (a free port, a block every second so that block time and
confirmations advance), deploys the settlement contract with the genesis parameters, gives every
node and the requester an Ethereum account (``keys/<name>.eth.json``) funded by ``anvil_setBalance``,
and points every node's config at the chain. ``register_verifiers`` stakes each verifier with its
BLS key and proof of possession, in genesis order (so chain indices equal genesis indices);
``post_tasks_on_chain`` escrows each task's reward. ``get_receipt_gas`` lets the report show what
each settlement step cost.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from web3.types import RPCEndpoint

from protocol import bls
from protocol.task import compute_task_id

from .devnet import Devnet, DevnetError
from .evm.ethkey import generate_eth_key, save_eth_keyfile
from .onchain import load_eth_key

log = logging.getLogger(__name__)
FUNDS_WEI = 10**21  # 1000 ether per devnet account: gas for a long run
STAKE_WEI = 1000  # the genesis stake; money on the devnet is counted in wei, as in the gossip model
CHAIN_ID = 31337
BLOCK_TIME_S = 1  # blocks keep coming without transactions, so block time and confirmations advance
CONFIRMATIONS = 1


@dataclass
class DevChain:
    anvil: Any  # node.evm.anvil.AnvilProcess
    client: Any = None  # node.evm.contract.SettlementClient (read-only)
    accounts: dict[str, Any] = field(default_factory=dict)  # node name / "requester" -> LocalAccount
    deploy_tx: str = ""
    deploy_gas: int = 0

    @property
    def url(self) -> str:
        return str(self.anvil.url)

    @property
    def contract(self) -> str:
        return str(self.client.address)


def start_chain(net: Devnet) -> DevChain:
    """Start anvil, deploy the contract, create and fund every account, point every config at it."""
    from .evm.anvil import ChainError, start_anvil
    from .evm.contract import SettlementParams, connect, deploy_settlement

    try:
        anvil = start_anvil(chain_id=CHAIN_ID, block_time=BLOCK_TIME_S, log_path=net.directory / "anvil.log")
    except ChainError as exc:
        raise DevnetError(str(exc)) from None
    chain = DevChain(anvil)
    try:
        w3 = connect(anvil.url)
        for name in [n.name for n in net.nodes] + ["requester"]:
            path = net.directory / "keys" / f"{name}.eth.json"
            save_eth_keyfile(path, generate_eth_key())  # the `pol chain key-new` format: usable with `pol stake`…
            chain.accounts[name] = load_eth_key(path)
            w3.provider.make_request(RPCEndpoint("anvil_setBalance"), [chain.accounts[name].address, hex(FUNDS_WEI)])
        client, receipt = deploy_settlement(w3, chain.accounts["requester"], SettlementParams.from_params(net.params))
        chain.client = client
        chain.deploy_tx, chain.deploy_gas = "0x" + receipt.transaction_hash.hex(), int(receipt.gas_used)
        for n in net.nodes:  # top-level keys go before any [table] of the file
            path = net.directory / f"{n.name}.toml"
            path.write_text(f'rpc_url = "{chain.url}"\nchain_id = {CHAIN_ID}\ncontract = "{chain.contract}"\n'
                            f'eth_key = "keys/{n.name}.eth.json"\nconfirmations = {CONFIRMATIONS}\n'
                            f'chain_poll_s = 0.5\nchain_start_block = {receipt.block_number}\n' + path.read_text())
        return chain
    except BaseException:
        stop_chain(chain)
        raise


def _step(step: str, node: str, result: Any) -> dict[str, Any]:
    return {"step": step, "node": node, "tx": "0x" + result.transaction_hash.hex(), "gas": int(result.gas_used)}


def register_verifiers(chain: DevChain, net: Devnet) -> list[dict[str, Any]]:
    """Stake every verifier with its BLS key, in genesis order; returns the transactions and their gas."""
    return [_step("register", n.name, chain.client.with_account(chain.accounts[n.name]).register(
        n.key.public_key, bls.compute_pop(n.key.bls_secret_key), STAKE_WEI)) for n in net.verifiers]


def post_tasks_on_chain(chain: DevChain, net: Devnet, reward: int, expires_at: int) -> dict[str, dict[str, Any]]:
    """Escrow each devnet task's reward from the requester's account; task id hex -> transaction and gas."""
    requester = chain.client.with_account(chain.accounts["requester"])
    out = {}
    for task in net.tasks:
        task_id = compute_task_id(task)
        out[task_id.hex()] = _step("post_task", "requester",
                                   requester.post_task(task_id, reward, expires_at, task.num_checkpoints))
    return out


def wait_tasks_seen(net: Devnet, posted: dict[str, Any], deadline: float) -> None:
    """Wait until the first verifier's view holds every posted task (its confirmation)."""
    from .devnet import http_get

    while True:
        try:
            if set(posted) <= set(http_get(net.verifiers[0], "/ledger")["tasks"]):
                return
        except (OSError, ValueError, KeyError):
            pass
        if time.monotonic() > deadline:
            raise DevnetError("the nodes never saw the tasks posted on chain")
        time.sleep(0.3)


def get_receipt_gas(chain: DevChain, tx: str) -> int | None:
    try:
        return int(chain.client.w3.eth.get_transaction_receipt(tx)["gasUsed"])
    except Exception:  # noqa: BLE001 - a report without one figure is still a report
        return None


def stop_chain(chain: DevChain) -> None:
    chain.anvil.stop(timeout=10)
