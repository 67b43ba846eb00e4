"""The node's chain view against the real settlement contract on anvil: it agrees with the contract's
own getters and with the ether the contract holds, and a reorg undoes what it removed."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("web3")

from node import devnet as dn  # noqa: E402
from node.chainview import ChainBackedState  # noqa: E402
from node.follower import ChainFollower, EventStore  # noqa: E402
from protocol import bls  # noqa: E402
from protocol.genesis import decode_genesis  # noqa: E402
from protocol.ledger import compute_task_posted, get_total_money  # noqa: E402
from protocol.task import compute_task_id, encode_task  # noqa: E402



def _agrees(view: ChainBackedState, client: Any) -> None:
    """Every task, claim and stake in the view equals what the contract reports; money adds up to its ether."""
    state = view.state
    for task_id, t in state.tasks.items():
        on_chain = client.get_task(task_id)
        assert (t.status, t.escrow, t.reward) == (on_chain.status, on_chain.escrow, on_chain.reward)
    for claim_id, c in state.claims.items():
        on_chain = client.get_claim(claim_id)
        assert (c.status, c.bond, c.registered_at) == (on_chain.status, on_chain.bond, on_chain.registered_at)
    assert [v.stake for v in state.verifiers] == list(client.get_registry().stakes)
    for account, balance in state.balances.items():
        assert balance == client.get_balance("0x" + account.hex())
    assert state.burned == client.get_burned()
    assert get_total_money(state) == client.get_contract_balance()


def test_view_follows_the_contract_and_undoes_a_reorg(tmp_path: Path) -> None:
    from eth_account import Account

    from node.evm.anvil import find_anvil, start_anvil
    from node.evm.contract import SettlementParams, connect, deploy_settlement

    if find_anvil() is None:
        pytest.skip("anvil is not installed (make installs it)")
    net = dn.create(tmp_path / "net", 2, 1, 0, availability_window_s=4)  # keys, genesis, a task spec; no processes
    genesis = decode_genesis((tmp_path / "net" / "genesis.msgpack").read_bytes())
    with start_anvil() as anvil:
        w3 = connect(anvil.url)
        owner, prover_account = Account.create(), Account.create()
        for acct in (owner, prover_account):
            w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**20)])
        client, _ = deploy_settlement(w3, owner, SettlementParams.from_params(net.params))
        for v in net.verifiers:  # both verifiers staked from one account each
            acct = Account.create()
            w3.provider.make_request("anvil_setBalance", [acct.address, hex(10**20)])
            client.with_account(acct).register(v.key.public_key, bls.compute_pop(v.key.bls_secret_key), 1000)
        task = net.tasks[0]
        task_id = compute_task_id(task)
        client.with_account(owner).post_task(task_id, 100, int(time.time()) + 3600, task.num_checkpoints)

        store = EventStore(tmp_path / "chain.sqlite")
        follower = ChainFollower(w3, client.address, client.contract.abi, store, confirmations=0)
        view = ChainBackedState(genesis)
        # The task's spec arrives by gossip; money never moves on gossip in chain mode.
        posting = compute_task_posted(net.requester.bls_secret_key, encode_task(task), 100, int(time.time()) + 3600)
        view.apply(posting, int(time.time()), time.time())
        follower.poll_once()
        view.set_events(list(store.events()), time.time())
        assert view.state.tasks[task_id].status == "open" and view.state.tasks[task_id].total_steps == task.total_steps
        assert [v.pubkey for v in view.state.verifiers] == [v.key.public_key for v in net.verifiers]
        _agrees(view, client)

        # A claim (the contract checks the prover's key binding, not the training).
        prover_key = net.provers[0].key
        claim_id = bytes(range(32))
        binding = bls.sign(prover_key.bls_secret_key,
                           client.get_claim_binding_message(claim_id, prover_account.address))

        def claim_task() -> None:
            client.with_account(prover_account).claim_task(task_id, claim_id, b"\x11" * 32, task.num_checkpoints,
                                                           prover_key.public_key, binding, value=net.params.prover_bond)

        claim_task()
        follower.poll_once()
        view.set_events(list(store.events()), time.time())
        claim = view.state.claims[claim_id]
        assert claim.status == "pending" and claim.prover == prover_key.public_key and claim.sample_milli > 0
        assert view.state.tasks[task_id].status == "claimed"
        _agrees(view, client)

        # Reorg away the claim's block: the view must forget the claim and give the bond back.
        assert w3.provider.make_request("anvil_reorg", [1, []]).get("error") is None
        result = follower.poll_once()
        assert result.reverted_to is not None
        view.set_events(list(store.events()), time.time())
        assert client.get_claim(claim_id).status == "none"  # anvil_reorg with no transactions drops them
        assert claim_id not in view.state.claims and view.state.tasks[task_id].status == "open"
        assert view.state.balances.get(bytes.fromhex(prover_account.address[2:]), 0) == 0  # bond deposit undone
        _agrees(view, client)

        # Claimed again, never certified: after the availability window anyone voids it; the bond comes
        # back less the unavailability slash and the task reopens with its escrow.
        claim_task()
        time.sleep(net.params.availability_window_s + 1)
        client.with_account(owner).settle_claim(claim_id)
        follower.poll_once()
        view.set_events(list(store.events()), time.time())
        assert view.state.claims[claim_id].status == "void"
        assert view.state.tasks[task_id].status == "open" and view.state.tasks[task_id].escrow == 100
        kept = net.params.prover_bond - net.params.prover_bond * net.params.slash_unavailable_bps // 10000
        assert view.state.balances[bytes.fromhex(prover_account.address[2:])] == kept
        _agrees(view, client)
        store.close()
