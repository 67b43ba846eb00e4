"""The settlement contract from Python: compiled artifact, deployment and a typed client.

``Settlement.json`` (next to this module) holds the ABI and bytecode compiled from
``contracts/Settlement.vy``; a test recompiles the source and compares. Every entry point has
one method here; a revert becomes ``ContractRevert`` carrying the contract's named reason,
found by estimating gas before anything is sent, so a refused call costs nothing.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import BLSPubkey, BLSSignature
from eth_utils.abi import event_abi_to_log_topic
from py_ecc.bls.g2_primitives import pubkey_to_G1, signature_to_G2
from py_ecc.optimized_bls12_381.optimized_curve import normalize
from web3 import Web3
from web3.exceptions import ContractLogicError

from protocol.errors import InvalidInput
from protocol.genesis import Params

from .anvil import ChainError

log = logging.getLogger(__name__)

ARTIFACT_PATH = Path(__file__).with_name("Settlement.json")
SOURCE_PATH = Path(__file__).resolve().parents[2] / "contracts" / "Settlement.vy"
MAX_CHAIN_VERIFIERS = 256

TASK_STATUS = ("none", "open", "claimed", "paid", "refunded")
CLAIM_STATUS = ("none", "pending", "accepted", "paid", "slashed", "void")
DISPUTE_STATUS = ("none", "open", "upheld", "failed", "expired", "moot")


class ContractRevert(InvalidInput):
    """The contract refused the call; ``reason`` is its named revert reason."""

    def __init__(self, function: str, reason: str) -> None:
        self.function = function
        self.reason = reason
        super().__init__(f"{function}: {reason}")


# --- artifact ---------------------------------------------------------------------------------


def compile_settlement(source: Path = SOURCE_PATH) -> dict[str, Any]:
    """Compile the Vyper source (needs the ``vyper`` package); returns {abi, bytecode, ...}."""
    import vyper
    from vyper.compiler.input_bundle import FilesystemInputBundle

    bundle = FilesystemInputBundle([source.parent])
    out = vyper.compile_from_file_input(bundle.load_file(source.name),
                                        output_formats=["abi", "bytecode", "bytecode_runtime"])
    return {"contract": "Settlement", "compiler": f"vyper {vyper.__version__}", "source": "contracts/Settlement.vy",
            "abi": out["abi"], "bytecode": out["bytecode"], "bytecode_runtime": out["bytecode_runtime"]}


def load_artifact(path: Path = ARTIFACT_PATH) -> dict[str, Any]:
    artifact: dict[str, Any] = json.loads(path.read_text())
    return artifact


# --- BLS points in the EIP-2537 encoding ---------------------------------------------------------


def _fp(value: int) -> bytes:
    return int(value).to_bytes(64, "big")


def compute_g1_point(pubkey: bytes) -> bytes:
    """128-byte uncompressed G1 point of a 48-byte compressed BLS public key."""
    if len(pubkey) != 48:
        raise InvalidInput(f"public key is {len(pubkey)} bytes, expected 48")
    x, y = normalize(pubkey_to_G1(BLSPubkey(pubkey)))
    return _fp(int(x)) + _fp(int(y))


def compute_g2_point(signature: bytes) -> bytes:
    """256-byte uncompressed G2 point (x.c0, x.c1, y.c0, y.c1) of a 96-byte compressed signature."""
    if len(signature) != 96:
        raise InvalidInput(f"signature is {len(signature)} bytes, expected 96")
    x, y = normalize(signature_to_G2(BLSSignature(signature)))
    return b"".join(_fp(int(c)) for c in (*x.coeffs, *y.coeffs))


DOMAIN_CLAIM_BIND = b"pol/v1/claim-bind"


def compute_claim_binding_message(claim_id: bytes, chain_id: int, contract: str, prover: str) -> bytes:
    """What the claim's BLS key signs so that only ``prover`` (an Ethereum account) can register it."""
    return (DOMAIN_CLAIM_BIND + claim_id + chain_id.to_bytes(32, "big") + bytes.fromhex(contract[2:])
            + bytes.fromhex(prover[2:]))


def compute_signer_bitmap(indices: Sequence[int]) -> int:
    bitmap = 0
    for index in indices:
        if not 0 <= index < MAX_CHAIN_VERIFIERS:
            raise InvalidInput(f"signer index {index} outside the chain's {MAX_CHAIN_VERIFIERS} verifiers")
        bitmap |= 1 << index
    return bitmap


# --- parameters and records -----------------------------------------------------------------------


@dataclass(frozen=True)
class SettlementParams:
    """Constructor arguments, in order. ``from_params`` takes the protocol's values."""

    challenge_window: int = 600
    availability_window: int = 3600
    dispute_window: int = 3600
    unbonding_delay: int = 4 * 3600
    quorum_numerator: int = 2
    quorum_denominator: int = 3
    prover_bond: int = 1000
    min_stake: int = 1
    slash_double_vote_bps: int = 5000
    slash_failed_challenge_bps: int = 1000
    challenger_reward_bps: int = 5000
    slash_unavailable_bps: int = 1000
    bond_reward_bps: int = 40000  # a claim's bond is max(prover_bond, reward * bond_reward_bps / BPS)

    @classmethod
    def from_params(cls, p: Params, min_stake: int = 1, unbonding_delay: int | None = None) -> SettlementParams:
        life = p.availability_window_s + p.challenge_window_s + p.dispute_window_s
        return cls(p.challenge_window_s, p.availability_window_s, p.dispute_window_s,
                   life if unbonding_delay is None else unbonding_delay, p.quorum_numerator,
                   p.quorum_denominator, p.prover_bond, min_stake, p.slash_double_vote_bps,
                   p.slash_failed_challenge_bps, p.challenger_reward_bps, p.slash_unavailable_bps,
                   p.bond_reward_bps)

    def as_args(self) -> list[int]:
        return [getattr(self, f.name) for f in fields(self)]


@dataclass(frozen=True)
class VerifierRecord:
    index: int
    account: str
    pubkey: bytes
    stake: int
    exit_at: int
    withdrawn: bool


@dataclass(frozen=True)
class TaskRecord:
    task_id: bytes
    requester: str
    reward: int
    escrow: int
    expires_at: int
    num_checkpoints: int
    status: str
    claim_id: bytes | None


@dataclass(frozen=True)
class ClaimRecord:
    claim_id: bytes
    task_id: bytes
    prover: str
    commitment: bytes
    num_checkpoints: int
    bond: int
    registered_at: int
    certified_at: int | None
    status: str
    open_disputes: int


@dataclass(frozen=True)
class DisputeRecord:
    dispute_id: bytes
    claim_id: bytes
    segment: int
    challenger: int
    claimed_root: bytes
    replayed_root: bytes
    opened_at: int
    status: str  # as dispute_status(): an open dispute of a settled claim reads "moot"


@dataclass(frozen=True)
class Registry:
    """What submit_certificate takes: three words per key and the active stakes, by index."""

    keys: tuple[int, ...]
    stakes: tuple[int, ...]


@dataclass(frozen=True)
class ContractEvent:
    """One decoded log: event name, its arguments, and where it sits in the chain."""

    name: str
    args: dict[str, Any]
    block_number: int
    block_hash: bytes
    transaction_hash: bytes
    log_index: int


@dataclass(frozen=True)
class TxResult:
    transaction_hash: bytes
    block_number: int
    gas_used: int
    events: tuple[ContractEvent, ...]


# --- client ---------------------------------------------------------------------------------------


def _reason(exc: ContractLogicError) -> str:
    text = str(exc.message if getattr(exc, "message", None) else exc)
    for prefix in ("execution reverted: ", "execution reverted"):
        if text.startswith(prefix):
            return text[len(prefix):] or "reverted without a reason"
    return text


def connect(rpc_url: str, timeout: float = 30.0) -> Web3:
    # eth_chainId and the like are cached: every contract call would otherwise ask again
    w3 = Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True))
    try:
        _ = w3.eth.chain_id
    except Exception as exc:  # any transport failure: the operator's URL or node is wrong
        raise ChainError(f"no EVM chain answers at {rpc_url}: {exc}") from None
    return w3


class SettlementClient:
    """Typed calls to a deployed settlement contract, sent from ``account`` (or read-only)."""

    def __init__(self, w3: Web3, address: str, account: LocalAccount | None = None,
                 artifact: dict[str, Any] | None = None) -> None:
        self.w3 = w3
        self.address = Web3.to_checksum_address(address)
        self.account = account
        self.contract = w3.eth.contract(address=self.address, abi=(artifact or load_artifact())["abi"])
        self._chain_id: int | None = None
        abi: list[dict[str, Any]] = list(self.contract.abi)  # type: ignore[arg-type]
        self._event_by_topic = {bytes(event_abi_to_log_topic(e)): str(e["name"]) for e in abi  # type: ignore[arg-type]
                                if e.get("type") == "event"}

    @property
    def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def with_account(self, account: LocalAccount) -> SettlementClient:
        return SettlementClient(self.w3, self.address, account, {"abi": self.contract.abi})

    # -- sending --

    def _transact(self, name: str, *args: Any, value: int = 0, gas: int | None = None) -> TxResult:
        if self.account is None:
            raise ChainError(f"{name}: this client has no account to send from")
        fn = getattr(self.contract.functions, name)(*args)
        tx: dict[str, Any] = {"from": self.account.address, "value": value}
        try:
            estimate = fn.estimate_gas(tx, block_identifier="pending")
        except ContractLogicError as exc:
            raise ContractRevert(name, _reason(exc)) from None
        tx.update({"gas": gas or int(estimate * 1.2) + 20_000, "chainId": self.chain_id,
                   "nonce": self.w3.eth.get_transaction_count(self.account.address, "pending")})
        fees = self._fees()
        tx.update(fees)
        built = fn.build_transaction(tx)
        signed = self.account.sign_transaction(built)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60, poll_latency=0.02)
        if receipt["status"] != 1:
            raise ContractRevert(name, "reverted when mined (the chain changed since the estimate)")
        return TxResult(bytes(tx_hash), receipt["blockNumber"], receipt["gasUsed"], self.decode_events(receipt))

    def _fees(self) -> dict[str, int]:
        block = self.w3.eth.get_block("latest")
        base = int(block.get("baseFeePerGas", 0) or 0)
        tip = 1_000_000_000
        return {"maxFeePerGas": 2 * base + tip, "maxPriorityFeePerGas": tip}

    # -- entry points (one method each) --

    def deposit(self, amount: int) -> TxResult:
        return self._transact("deposit", value=amount)

    def withdraw(self, amount: int) -> TxResult:
        return self._transact("withdraw", amount)

    def register(self, pubkey: bytes, pop: bytes, stake: int, point: bytes | None = None,
                 pop_point: bytes | None = None) -> TxResult:
        """``point``/``pop_point`` override the uncompressed forms (tests of malformed input)."""
        return self._transact("register", pubkey, point if point is not None else compute_g1_point(pubkey),
                              pop_point if pop_point is not None else compute_g2_point(pop), value=stake)

    def begin_unbonding(self) -> TxResult:
        return self._transact("begin_unbonding")

    def withdraw_stake(self) -> TxResult:
        return self._transact("withdraw_stake")

    def post_task(self, task_id: bytes, reward: int, expires_at: int, num_checkpoints: int,
                  value: int | None = None) -> TxResult:
        """Escrow ``reward``; sends ``value`` (default: all of it) and takes the rest from the balance."""
        return self._transact("post_task", task_id, reward, expires_at, num_checkpoints,
                              value=reward if value is None else value)

    def get_claim_bond(self, task_id: bytes) -> int:
        """The bond a claim on this task locks: ``max(prover_bond, reward * bond_reward_bps / BPS)``."""
        reward = self.get_task(task_id).reward
        f = self.contract.functions
        return max(int(f.prover_bond().call()), reward * int(f.bond_reward_bps().call()) // 10_000)

    def claim_task(self, task_id: bytes, claim_id: bytes, commitment: bytes, num_checkpoints: int,
                   prover_pubkey: bytes, binding_signature: bytes, value: int = 0,
                   prover_point: bytes | None = None, binding_point: bytes | None = None,
                   top_up: bool = True) -> TxResult:
        """Sends ``value``; with ``top_up``, more if the bond exceeds it plus the sender's balance."""
        if top_up and self.account is not None:
            missing = self.get_claim_bond(task_id) - self.get_balance(self.account.address)
            value = max(value, missing)
        return self._transact(
            "claim_task", task_id, claim_id, commitment, num_checkpoints, prover_pubkey,
            prover_point if prover_point is not None else compute_g1_point(prover_pubkey),
            binding_point if binding_point is not None else compute_g2_point(binding_signature), value=value)

    def submit_certificate(self, kind: int, subject: bytes, verdict: int, signers: Sequence[int],
                           signature: bytes, registry: Registry | None = None,
                           signature_point: bytes | None = None) -> TxResult:
        registry = registry or self.get_registry()
        point = signature_point if signature_point is not None else compute_g2_point(signature)
        return self._transact("submit_certificate", kind, subject, verdict, compute_signer_bitmap(signers), point,
                              list(registry.keys), list(registry.stakes))

    def open_dispute(self, claim_id: bytes, challenger: int, segment: int, claimed_root: bytes,
                     claimed_root_path: Sequence[bytes], replayed_root: bytes, evidence_signature: bytes,
                     signature_point: bytes | None = None) -> TxResult:
        point = signature_point if signature_point is not None else compute_g2_point(evidence_signature)
        return self._transact("open_dispute", claim_id, challenger, segment, claimed_root,
                              list(claimed_root_path), replayed_root, point)

    def report_double_vote(self, kind: int, subject: bytes, verifier: int, accept_signature: bytes,
                           reject_signature: bytes) -> TxResult:
        return self._transact("report_double_vote", kind, subject, verifier, compute_g2_point(accept_signature),
                              compute_g2_point(reject_signature))

    def expire_dispute(self, dispute_id: bytes) -> TxResult:
        return self._transact("expire_dispute", dispute_id)

    def settle_claim(self, claim_id: bytes) -> TxResult:
        return self._transact("settle_claim", claim_id)

    def refund_task(self, task_id: bytes) -> TxResult:
        return self._transact("refund_task", task_id)

    # -- reading --

    def get_balance(self, account: str) -> int:
        return int(self.contract.functions.balances(Web3.to_checksum_address(account)).call())

    def get_burned(self) -> int:
        return int(self.contract.functions.burned().call())

    def get_total_stake(self) -> int:
        return int(self.contract.functions.total_stake().call())

    def get_verifier_count(self) -> int:
        return int(self.contract.functions.verifier_count().call())

    def get_verifier(self, index: int) -> VerifierRecord:
        account, stake, exit_at, withdrawn = self.contract.functions.verifiers(index).call()
        pubkey = bytes(self.contract.functions.verifier_pubkey(index).call())
        return VerifierRecord(index, account, pubkey, stake, exit_at, withdrawn)

    def get_registry(self) -> Registry:
        keys, stakes = self.contract.functions.get_registry().call()
        return Registry(tuple(keys), tuple(stakes))

    def get_task(self, task_id: bytes) -> TaskRecord:
        requester, reward, escrow, expires_at, num_checkpoints, status, claim_id = \
            self.contract.functions.tasks(task_id).call()
        return TaskRecord(task_id, requester, reward, escrow, expires_at, num_checkpoints, TASK_STATUS[status],
                          bytes(claim_id) if any(claim_id) else None)

    def get_claim(self, claim_id: bytes) -> ClaimRecord:
        (task_id, prover, commitment, num_checkpoints, bond, registered_at, certified_at, status,
         open_disputes) = self.contract.functions.claims(claim_id).call()
        return ClaimRecord(claim_id, bytes(task_id), prover, bytes(commitment), num_checkpoints, bond, registered_at,
                           certified_at or None, CLAIM_STATUS[status], open_disputes)

    def get_dispute(self, dispute_id: bytes) -> DisputeRecord:
        claim_id, segment, challenger, claimed, replayed, opened_at, _ = \
            self.contract.functions.disputes(dispute_id).call()
        status = self.contract.functions.dispute_status(dispute_id).call()
        return DisputeRecord(dispute_id, bytes(claim_id), segment, challenger, bytes(claimed), bytes(replayed),
                             opened_at, DISPUTE_STATUS[status])

    def is_double_vote_slashed(self, verifier: int, kind: int, subject: bytes) -> bool:
        key = Web3.keccak(verifier.to_bytes(32, "big") + bytes([kind]) + subject)
        return bool(self.contract.functions.double_vote_slashed(key).call())

    def get_contract_balance(self) -> int:
        return int(self.w3.eth.get_balance(self.address))

    def get_claim_binding_message(self, claim_id: bytes, prover: str) -> bytes:
        return compute_claim_binding_message(claim_id, self.chain_id, self.address, prover)

    # -- events --

    def decode_events(self, receipt: Any) -> tuple[ContractEvent, ...]:
        found: list[ContractEvent] = []
        for entry in receipt["logs"]:
            if Web3.to_checksum_address(entry["address"]) != self.address:
                continue
            event = self._decode_log(entry)
            if event is not None:
                found.append(event)
        return tuple(found)

    def _decode_log(self, entry: Any) -> ContractEvent | None:
        topics = entry.get("topics") or []
        name = self._event_by_topic.get(bytes(topics[0])) if topics else None
        if name is None:
            return None
        decoded = getattr(self.contract.events, name)().process_log(entry)
        return ContractEvent(decoded["event"], dict(decoded["args"]), decoded["blockNumber"],
                             bytes(decoded["blockHash"]), bytes(decoded["transactionHash"]), decoded["logIndex"])

    def get_events(self, from_block: int, to_block: int | str = "latest") -> list[ContractEvent]:
        """Every event of the contract in the block range, in chain order."""
        query: Any = {"address": self.address, "fromBlock": from_block, "toBlock": to_block}
        logs = self.w3.eth.get_logs(query)
        events = [self._decode_log(entry) for entry in logs]
        return [e for e in events if e is not None]


def deploy_settlement(w3: Web3, account: LocalAccount, params: SettlementParams | None = None,
                      artifact: dict[str, Any] | None = None) -> tuple[SettlementClient, TxResult]:
    """Deploy a fresh contract from ``account``; returns its client and the deployment receipt."""
    artifact = artifact or load_artifact()
    params = params or SettlementParams()
    factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
    ctor = factory.constructor(*params.as_args())
    try:
        gas = ctor.estimate_gas({"from": account.address})
    except ContractLogicError as exc:
        raise ContractRevert("constructor", _reason(exc)) from None
    block = w3.eth.get_block("latest")
    base = int(block.get("baseFeePerGas", 0) or 0)
    tx = ctor.build_transaction({"from": account.address, "gas": int(gas * 1.2) + 50_000, "chainId": w3.eth.chain_id,
                                 "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                                 "maxFeePerGas": 2 * base + 1_000_000_000, "maxPriorityFeePerGas": 1_000_000_000})
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=120)
    if receipt["status"] != 1:
        raise ChainError("contract deployment reverted when mined")
    address = receipt["contractAddress"]
    if address is None:
        raise ChainError("deployment receipt names no contract address")
    client = SettlementClient(w3, address, account, artifact)
    return client, TxResult(bytes(tx_hash), receipt["blockNumber"], receipt["gasUsed"], ())


def get_account(private_key: bytes | str) -> LocalAccount:
    account: LocalAccount = Account.from_key(private_key)
    return account
