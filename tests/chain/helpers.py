"""Building blocks for chain tests: claims with real Merkle commitments, votes, the money sum."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from node.evm.contract import SettlementClient
from protocol import bls
from protocol.claim import compute_commitment
from protocol.constants import VERDICT_ACCEPT, VERDICT_REJECT
from protocol.merkle import compute_merkle_proof
from protocol.vote import SUBJECT_CLAIM, compute_dispute_id, compute_evidence_message, compute_subject_message


@dataclass(frozen=True)
class ChainClaim:
    task_id: bytes
    claim_id: bytes
    roots: tuple[bytes, ...]  # checkpoint state roots; the commitment is their Merkle root
    prover_key: bytes  # BLS secret key

    @property
    def commitment(self) -> bytes:
        return compute_commitment(self.roots)

    @property
    def num_checkpoints(self) -> int:
        return len(self.roots)


def make_claim(label: str, num_checkpoints: int = 5) -> ChainClaim:
    h = lambda tag: hashlib.sha256(f"{label}/{tag}".encode()).digest()  # noqa: E731
    roots = tuple(h(f"root{i}") for i in range(num_checkpoints))
    return ChainClaim(h("task"), h("claim"), roots, bls.compute_secret_key(h("prover")))


def post_and_claim(client: SettlementClient, prover: SettlementClient, claim: ChainClaim, reward: int,
                   expires_at: int, bond: int) -> None:
    client.post_task(claim.task_id, reward, expires_at, claim.num_checkpoints)
    submit_claim(prover, claim, bond)


def submit_claim(prover: SettlementClient, claim: ChainClaim, bond: int) -> None:
    assert prover.account is not None
    message = prover.get_claim_binding_message(claim.claim_id, prover.account.address)
    prover.claim_task(claim.task_id, claim.claim_id, claim.commitment, claim.num_checkpoints,
                      bls.compute_public_key(claim.prover_key), bls.sign(claim.prover_key, message), value=bond)


def sign_certificate(keys: list[bytes], kind: int, subject: bytes, verdict: int) -> bytes:
    message = compute_subject_message(kind, subject, verdict)
    return bls.aggregate_signatures([bls.sign(sk, message) for sk in keys])


def accept_claim(client: SettlementClient, keys: list[bytes], signers: list[int], claim_id: bytes) -> int:
    sig = sign_certificate([keys[i] for i in signers], SUBJECT_CLAIM, claim_id, VERDICT_ACCEPT)
    return client.submit_certificate(SUBJECT_CLAIM, claim_id, VERDICT_ACCEPT, signers, sig).gas_used


def open_dispute(client: SettlementClient, verifier_key: bytes, verifier_index: int, claim: ChainClaim,
                 segment: int, replayed_root: bytes | None = None) -> bytes:
    replayed = replayed_root or hashlib.sha256(b"honest replay" + bytes([segment])).digest()
    claimed = claim.roots[segment + 1]
    path = compute_merkle_proof(list(claim.roots), segment + 1).path
    sig = bls.sign(verifier_key, compute_evidence_message(claim.claim_id, segment, claimed, replayed))
    client.open_dispute(claim.claim_id, verifier_index, segment, claimed, path, replayed, sig)
    return compute_dispute_id(claim.claim_id, segment)


def get_money_in_contract(client: SettlementClient, from_block: int = 0) -> tuple[int, int]:
    """(ether the contract holds, sum of balances + escrows + bonds + stakes + burned), from its events."""
    accounts: set[str] = set()
    tasks: set[bytes] = set()
    claims: set[bytes] = set()
    for event in client.get_events(from_block):
        for key in ("account", "requester", "prover"):
            if key in event.args:
                accounts.add(event.args[key])
        if "task_id" in event.args:
            tasks.add(bytes(event.args["task_id"]))
        if event.name == "ClaimRegistered":
            claims.add(bytes(event.args["claim_id"]))
    total = sum(client.get_balance(a) for a in accounts) + client.get_burned()
    total += sum(client.get_task(t).escrow for t in tasks) + sum(client.get_claim(c).bond for c in claims)
    total += sum(client.get_verifier(i).stake for i in range(client.get_verifier_count()))
    return client.get_contract_balance(), total


__all__ = ["VERDICT_ACCEPT", "VERDICT_REJECT"]
