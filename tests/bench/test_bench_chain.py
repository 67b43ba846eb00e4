"""Gas of the settlement contract on anvil: every entry point, and certificate verification with
4, 16 and 100 signers (goal: <= 500k gas at 100). Gas is exact and deterministic; the benchmark
timings beside it are the wall time of one submission (RPC + anvil), for orientation only.

Run: make bench, or .venv/bin/pytest tests/bench/test_bench_chain.py --benchmark-enable -s
(prints the table that docs/settlement.md quotes).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import pytest

from node.evm.anvil import AnvilProcess, find_anvil, start_anvil
from node.evm.contract import SettlementClient, SettlementParams, connect, deploy_settlement
from protocol import bls
from protocol.constants import VERDICT_ACCEPT, VERDICT_REJECT
from protocol.vote import SUBJECT_CLAIM, SUBJECT_DISPUTE, compute_subject_message
from tests.chain.conftest import get_test_account
from tests.chain.helpers import make_claim, open_dispute, post_and_claim, sign_certificate

PARAMS = SettlementParams(challenge_window=100, availability_window=1000, dispute_window=500, unbonding_delay=1600,
                          bond_reward_bps=2000)
MAX_SIGNERS = 100
GAS: dict[str, int] = {}


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilProcess]:
    if find_anvil() is None:
        pytest.skip("anvil is not installed (make anvil)")
    with start_anvil(accounts=MAX_SIGNERS + 10) as process:
        yield process
    print("\nsettlement gas (receipt gasUsed)")
    for name, gas in GAS.items():
        print(f"  {name:<44} {gas:>10,}")


@pytest.fixture(scope="module")
def keys() -> list[bytes]:
    return [bls.compute_secret_key(hashlib.sha256(b"bench-chain/%d" % i).digest()) for i in range(MAX_SIGNERS)]


def _deploy(anvil: AnvilProcess, keys: list[bytes], n: int, record: bool = False) -> SettlementClient:
    w3 = connect(anvil.url)
    client, deployed = deploy_settlement(w3, get_test_account(0), PARAMS)
    if record:
        GAS["deploy"] = deployed.gas_used
    for i in range(n):
        result = client.with_account(get_test_account(1 + i)).register(
            bls.compute_public_key(keys[i]), bls.compute_pop(keys[i]), 10)
        if record or i == n - 1:
            GAS[f"register (verifier #{i + 1})"] = result.gas_used
    return client


def _time(anvil: AnvilProcess) -> int:
    return int(connect(anvil.url).eth.get_block("latest")["timestamp"])


def test_bench_entry_points(benchmark, anvil: AnvilProcess, keys: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    client = _deploy(anvil, keys, 4, record=True)
    requester, prover = client.with_account(get_test_account(100)), client.with_account(get_test_account(101))
    GAS["deposit"] = requester.deposit(10_000).gas_used
    paid, cheat, failed, lonely = (make_claim(f"bench-{x}") for x in ("paid", "cheat", "failed", "lonely"))
    GAS["post_task"] = requester.post_task(paid.task_id, 1000, _time(anvil) + 10_000, paid.num_checkpoints).gas_used
    message = prover.get_claim_binding_message(paid.claim_id, prover.account.address)  # type: ignore[union-attr]
    GAS["claim_task"] = prover.claim_task(paid.task_id, paid.claim_id, paid.commitment, paid.num_checkpoints,
                                          bls.compute_public_key(paid.prover_key), bls.sign(paid.prover_key, message),
                                          value=PARAMS.prover_bond).gas_used
    sig = sign_certificate(keys[:3], SUBJECT_CLAIM, paid.claim_id, VERDICT_ACCEPT)
    GAS["submit_certificate (claim, 3 of 4 sign)"] = client.submit_certificate(
        SUBJECT_CLAIM, paid.claim_id, VERDICT_ACCEPT, [0, 1, 2], sig).gas_used
    for c in (cheat, failed):
        post_and_claim(requester, prover, c, 1000, _time(anvil) + 10_000, PARAMS.prover_bond)
    dispute = open_dispute(client, keys[3], 3, cheat, segment=2)
    GAS["open_dispute (9 checkpoints)"] = client.w3.eth.get_transaction_receipt(
        client.w3.eth.get_block("latest")["transactions"][0])["gasUsed"]
    sig = sign_certificate(keys[:3], SUBJECT_DISPUTE, dispute, VERDICT_ACCEPT)
    GAS["submit_certificate (dispute upheld)"] = client.submit_certificate(
        SUBJECT_DISPUTE, dispute, VERDICT_ACCEPT, [0, 1, 2], sig).gas_used
    dispute = open_dispute(client, keys[3], 3, failed, segment=1)
    sig = sign_certificate(keys[:3], SUBJECT_DISPUTE, dispute, VERDICT_REJECT)
    GAS["submit_certificate (dispute failed, slash)"] = client.submit_certificate(
        SUBJECT_DISPUTE, dispute, VERDICT_REJECT, [0, 1, 2], sig).gas_used
    subject = b"\x77" * 32
    accept = bls.sign(keys[2], compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_ACCEPT))
    reject = bls.sign(keys[2], compute_subject_message(SUBJECT_CLAIM, subject, VERDICT_REJECT))
    GAS["report_double_vote"] = client.report_double_vote(SUBJECT_CLAIM, subject, 2, accept, reject).gas_used
    start = _time(anvil)
    requester.post_task(lonely.task_id, 1000, start + 50, lonely.num_checkpoints)
    void = make_claim("bench-void")
    post_and_claim(requester, prover, void, 1000, start + 10_000, PARAMS.prover_bond)
    withheld = make_claim("bench-withheld")
    post_and_claim(requester, prover, withheld, 1000, start + 10_000, PARAMS.prover_bond)
    expiring = open_dispute(client, keys[0], 0, withheld, segment=0)
    client.w3.provider.make_request("evm_increaseTime", [PARAMS.availability_window + 10])
    GAS["settle_claim (paid)"] = client.settle_claim(paid.claim_id).gas_used
    GAS["settle_claim (void)"] = client.settle_claim(void.claim_id).gas_used
    GAS["expire_dispute (claim void)"] = client.expire_dispute(expiring).gas_used
    GAS["refund_task"] = client.refund_task(lonely.task_id).gas_used
    GAS["withdraw"] = prover.withdraw(1000).gas_used
    verifier = client.with_account(get_test_account(2))
    GAS["begin_unbonding"] = verifier.begin_unbonding().gas_used
    client.w3.provider.make_request("evm_increaseTime", [PARAMS.unbonding_delay])
    GAS["withdraw_stake"] = verifier.withdraw_stake().gas_used
    per_claim = GAS["post_task"] + GAS["claim_task"] + GAS["submit_certificate (claim, 3 of 4 sign)"] + \
        GAS["settle_claim (paid)"]
    GAS["per honest claim: post + claim + certificate + settle"] = per_claim
    benchmark.extra_info.update(GAS)
    benchmark.pedantic(client.get_registry, rounds=3, iterations=1)


@pytest.mark.parametrize("signers", [4, 16, 100])
def test_bench_certificate_gas(benchmark, anvil: AnvilProcess, keys: list[bytes], signers: int) -> None:  # type: ignore[no-untyped-def]
    client = _deploy(anvil, keys, signers)
    requester, prover = client.with_account(get_test_account(signers + 1)), client.with_account(
        get_test_account(signers + 2))
    claims = [make_claim(f"bench-cert-{signers}-{i}") for i in range(4)]
    for c in claims:
        post_and_claim(requester, prover, c, 1000, _time(anvil) + 10_000, PARAMS.prover_bond)
    registry = client.get_registry()
    pending = iter(claims)
    gas: list[int] = []

    def setup() -> tuple[tuple[object, ...], dict[str, object]]:
        c = next(pending)
        sig = sign_certificate(keys[:signers], SUBJECT_CLAIM, c.claim_id, VERDICT_ACCEPT)
        return (c.claim_id, sig), {}

    def submit(claim_id: bytes, sig: bytes) -> None:
        gas.append(client.submit_certificate(SUBJECT_CLAIM, claim_id, VERDICT_ACCEPT, list(range(signers)), sig,
                                             registry=registry).gas_used)

    benchmark.pedantic(submit, setup=setup, rounds=3, iterations=1)
    assert max(gas) - min(gas) < 1_000  # the same work each time; only calldata zero bytes differ
    GAS[f"submit_certificate ({signers} of {signers} sign)"] = max(gas)
    benchmark.extra_info["gas"] = max(gas)
    # the smallest quorum: every non-signer's key is subtracted from the stored aggregate
    quorum = -(-2 * signers // 3)
    last = next(pending)
    sig = sign_certificate(keys[:quorum], SUBJECT_CLAIM, last.claim_id, VERDICT_ACCEPT)
    GAS[f"submit_certificate ({quorum} of {signers} sign)"] = client.submit_certificate(
        SUBJECT_CLAIM, last.claim_id, VERDICT_ACCEPT, list(range(quorum)), sig, registry=registry).gas_used
