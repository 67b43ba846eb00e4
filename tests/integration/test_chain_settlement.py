"""A node's settlement on anvil, in process: its certificate is submitted once and a second
submission loses quietly; the payout deadline is applied in block time by a transaction; a
double-vote proof slashes on chain once."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

pytest.importorskip("web3")

from node import devnet as dn  # noqa: E402
from node.config import load_config  # noqa: E402
from protocol.certificate import compute_certificate  # noqa: E402
from protocol.ledger import get_claim_context  # noqa: E402
from protocol.task import compute_task_id  # noqa: E402
from protocol.vote import compute_dispute_vote, compute_double_vote_proof, compute_vote  # noqa: E402


def test_certificate_submitted_once_duplicate_quiet_and_payout_by_deadline(tmp_path: Path,
                                                                           caplog: pytest.LogCaptureFixture) -> None:
    from node import devnet_chain as dc
    from node.app import Node
    from node.evm.anvil import find_anvil
    from protocol import bls

    if find_anvil() is None:
        pytest.skip("anvil is not installed (make installs it)")
    net = dn.create(tmp_path / "net", 2, 1, 0, challenge_window_s=2)
    chain = dc.start_chain(net)
    try:
        dc.register_verifiers(chain, net)
        dc.post_tasks_on_chain(chain, net, dn.REWARD, int(time.time()) + 3600)
        task = net.tasks[0]
        prover = net.provers[0]
        claim_id = bytes(range(32))
        prover_client = chain.client.with_account(chain.accounts[prover.name])
        binding = bls.sign(prover.key.bls_secret_key,
                           prover_client.get_claim_binding_message(claim_id, chain.accounts[prover.name].address))
        prover_client.claim_task(compute_task_id(task), claim_id, b"\x22" * 32, task.num_checkpoints,
                                 prover.key.public_key, binding, value=net.params.prover_bond)

        async def scenario() -> None:
            v0, v1 = (Node(load_config(tmp_path / "net" / f"{v.name}.toml")) for v in net.verifiers)
            for node in (v0, v1):
                await node.settlement_start()
            deadline = time.monotonic() + 20
            while claim_id not in v0.chain.state.claims:  # one block of confirmation
                assert time.monotonic() < deadline, "claim never reached the view"
                await asyncio.sleep(0.3)
                await v0.settlement.poll(notify=False)
            ctx = get_claim_context(v0.chain.state, claim_id)
            votes = [compute_vote(v.key.bls_secret_key, ctx) for v in net.verifiers]
            cert = compute_certificate(votes, v0.chain.state.verifiers)
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="node.settlement"):
                first = await v0.settlement.submit_certificate(cert)
                second = await v1.settlement.submit_certificate(cert)  # another node gathered the same quorum
            assert first is not None and first.gas_used > 0
            assert second is None
            lines = [r for r in caplog.records if "submit_certificate" in r.getMessage()]
            assert [r.levelno for r in lines] == [logging.INFO, logging.INFO]  # sent; lost quietly
            assert "not needed" in lines[1].getMessage() and "already decided" in lines[1].getMessage()
            # The challenge window passes in block time; the node submits the payout itself.
            deadline = time.monotonic() + 30
            while v0.chain.state.claims[claim_id].status != "paid":
                assert time.monotonic() < deadline, f"not paid: {v0.chain.state.claims[claim_id]}"
                await asyncio.sleep(0.5)
                await v0.settlement.poll(notify=False)
                await v0.settlement.apply_deadlines()
            assert [r.what for r in v0.settlement.txs] == ["submit_certificate", "settle_claim"]
            assert chain.client.get_claim(claim_id).status == "paid"
            # A verifier that signed both verdicts is slashed on chain, once; the repeat is quiet.
            sk1 = net.verifiers[1].key.bls_secret_key
            proof = compute_double_vote_proof(compute_dispute_vote(sk1, b"\x33" * 32, 1),
                                              compute_dispute_vote(sk1, b"\x33" * 32, 0))
            stake = v0.chain.state.verifiers[1].stake
            assert await v0.settlement.submit_double_vote(proof) is not None
            assert await v1.settlement.submit_double_vote(proof) is None
            expected = stake - stake * net.params.slash_double_vote_bps // 10000
            deadline = time.monotonic() + 20
            while v0.chain.state.verifiers[1].stake != expected:
                assert time.monotonic() < deadline, "slash never reached the view"
                await asyncio.sleep(0.3)
                await v0.settlement.poll(notify=False)
            assert chain.client.get_registry().stakes[1] == expected
            await asyncio.sleep(1.5)  # let the last block confirm, then take the view
            await v0.settlement.poll(notify=False)
            before = v0.chain.get_ledger_report()
            for node in (v0, v1):
                node.settlement.close()
                node.store.close()
            # A restart rebuilds the same view from the events it stored (and any new ones: none here).
            again = Node(load_config(tmp_path / "net" / "v0.toml"))
            await again.settlement_start()
            assert again.chain.get_ledger_report() == before
            again.settlement.close()
            again.store.close()

        asyncio.run(scenario())
    finally:
        dc.stop_chain(chain)


def test_node_refuses_a_contract_with_other_rules_than_its_genesis(tmp_path: Path) -> None:
    import dataclasses

    from node import devnet_chain as dc
    from node.app import Node
    from node.evm.anvil import find_anvil
    from node.evm.contract import SettlementParams, deploy_settlement
    from node.onchain import ChainError

    if find_anvil() is None:
        pytest.skip("anvil is not installed (make installs it)")
    net = dn.create(tmp_path / "net", 1, 0, 0)
    chain = dc.start_chain(net)
    try:
        other = dataclasses.replace(SettlementParams.from_params(net.params), challenge_window=99, unbonding_delay=10_000)
        client, _ = deploy_settlement(chain.client.w3, chain.accounts["requester"], other)
        config = tmp_path / "net" / "v0.toml"
        config.write_text(config.read_text().replace(chain.contract, client.address))
        node = Node(load_config(config))
        with pytest.raises(ChainError, match=r"other parameters than the genesis: challenge_window 99 \(genesis 3\)"):
            asyncio.run(node.settlement_start())
        node.store.close()
    finally:
        dc.stop_chain(chain)


def test_prover_claim_missing_on_chain_is_sent_again(tmp_path: Path) -> None:
    import os

    from node import devnet_chain as dc
    from node.app import Node
    from node.evm.anvil import find_anvil
    from protocol.claim import compute_claim_body, compute_claim_id, compute_signed_claim
    from protocol.messages import compute_claim_announced

    if find_anvil() is None:
        pytest.skip("anvil is not installed (make installs it)")
    net = dn.create(tmp_path / "net", 1, 1, 0)
    chain = dc.start_chain(net)
    try:
        dc.register_verifiers(chain, net)
        dc.post_tasks_on_chain(chain, net, dn.REWARD, int(time.time()) + 3600)
        task, prover = net.tasks[0], net.provers[0]
        task_id = compute_task_id(task)

        async def scenario() -> None:
            p0 = Node(load_config(tmp_path / "net" / "p0.toml"))
            await p0.settlement_start()
            roots = [os.urandom(32) for _ in range(task.num_checkpoints)]
            claim = compute_signed_claim(prover.key.bls_secret_key,
                                         compute_claim_body(task, task_id, prover.key.public_key, roots))
            claim_id = compute_claim_id(claim.body)
            # Announced, but its transaction never went out (say the endpoint was down): only the record.
            p0.chain.apply(compute_claim_announced(claim, (), prover.key.bls_secret_key), int(time.time()), time.time())
            deadline = time.monotonic() + 30
            while claim_id not in p0.chain.state.claims:
                assert time.monotonic() < deadline, "claim never registered on chain"
                p0.settlement._retry_own_claims()
                await asyncio.sleep(0.5)
                await p0.settlement.poll(notify=False)
            assert [r.what for r in p0.settlement.txs] == ["claim_task"]  # sent once, not per round
            assert chain.client.get_claim(claim_id).status == "pending"
            assert p0.chain.state.claims[claim_id].prover == prover.key.public_key
            p0.settlement.close()
            p0.store.close()

        asyncio.run(scenario())
    finally:
        dc.stop_chain(chain)
