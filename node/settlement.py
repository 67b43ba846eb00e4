"""The node's settlement on an EVM chain (``rpc_url`` in the node config).

At start-up ``Settlement.start`` runs the chain checks of ``node.onchain`` (a node refuses a chain
it cannot trust), loads the operator's account and the contract's events confirmed so far. While
the node runs, ``run`` polls new confirmed events (``node.follower``; reorgs undo what they
removed), rebuilds the node's view (``node.chainview``) and submits the deadlines that have passed
in block time (payout, void, dispute expiry, task refund).

What the node does travels as transactions: a prover's claim (``claim_task``), a challenger's
evidence (``open_dispute``), the certificate this node aggregated (``submit_certificate``: any node
that gathers a quorum submits), a double-vote proof. Votes stay on gossip. Every transaction is
simulated first (``eth_estimateGas``): a call the contract would refuse because someone else got
there first ("already decided", "already exists"…) is dropped with one info line and costs nothing;
any other refusal is a warning. Everything that talks to the chain runs in a worker thread with
bounded timeouts, so a slow or dead RPC endpoint never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from protocol import bls
from protocol.certificate import Certificate
from protocol.claim import compute_claim_id, decode_claim, validate_claim_signature
from protocol.constants import MAX_GOSSIP_BYTES, VERDICT_ACCEPT
from protocol.errors import GossipIgnore, GossipReject, InvalidInput
from protocol.ledger import (
    CLAIM_ACCEPTED,
    CLAIM_PENDING,
    DISPUTE_OPEN,
    TASK_OPEN,
    TaskPosted,
    is_dispute_open_on,
    validate_task_posted,
)
from protocol.messages import (
    ClaimAnnounced,
    Message,
    decode_message,
    validate_fetch_hints,
    validate_gossip_verdict_message,
)
from protocol.task import decode_task
from protocol.vote import SUBJECT_CLAIM, DoubleVoteProof, Vote

from .chainview import ChainBackedState
from .evm.contract import ContractRevert
from .follower import ChainFollower, EventStore, ReorgDuringRead
from .onchain import ChainError, check_chain, connect, load_eth_key

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)
RESUBMIT_S = 10.0
CATCH_UP_ROUNDS = 20  # block ranges (of up to 2000 blocks) read per poll
STAGGER_S = 4.0  # between two nodes' turns to submit the same certificate or deadline (a few blocks)  # a deadline transaction still not reflected in the view is tried again after this
# Refusals that mean "someone else already did it": a lost race, not a fault.
QUIET_REASONS = ("already", "is not open", "no longer open", "reverted when mined")


@dataclass(frozen=True)
class TxRecord:
    what: str  # the contract function
    subject: str  # hex of the task, claim or dispute id it concerns
    tx: str
    gas_used: int
    status: int
    block: int
    sent_at: float
    mined_at: float


def load_contract_abi() -> list[dict[str, Any]]:
    """The settlement contract's ABI from its committed artifact (node/evm/Settlement.json)."""
    from .evm.contract import load_artifact

    try:
        return list(load_artifact()["abi"])
    except (OSError, ValueError, KeyError) as exc:
        raise ChainError(f"the settlement contract's artifact is unusable: {exc}") from None


class Settlement:
    def __init__(self, node: "Node") -> None:
        self.node = node
        cfg = node.config
        self.w3: Any = connect(cfg.rpc_url)
        self.account: Any = None
        self.client: Any = None
        self.follower: ChainFollower | None = None
        self.store: EventStore | None = None
        self.txs: list[TxRecord] = []
        self.head = self.cursor = self.block_time = 0
        self.reorgs = self.reverted = 0
        self._loaded = False
        self._lock = asyncio.Lock()  # one transaction in flight per node: nonces stay in order
        self._tried: dict[tuple[str, bytes], float] = {}
        self._in_turn: set[bytes] = set()  # subjects whose certificate waits for this node's turn

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Refuse an unusable chain (``ChainError``); load the account and the events so far."""
        cfg = self.node.config
        await asyncio.to_thread(check_chain, self.w3, cfg.chain_id, cfg.contract)
        from .evm.contract import SettlementClient

        abi = load_contract_abi()
        if cfg.eth_key is not None:
            self.account = load_eth_key(cfg.eth_key)
        self.client = SettlementClient(self.w3, cfg.contract, self.account, {"abi": abi})
        await asyncio.to_thread(self.check_params)
        self.store = EventStore(cfg.data_dir / "chain.sqlite")
        try:
            self.follower = ChainFollower(self.w3, cfg.contract, abi, self.store, confirmations=cfg.confirmations,
                                          start_block=cfg.chain_start_block)
        except ValueError as exc:
            raise ChainError(str(exc)) from None
        try:
            await self.poll(notify=False)  # nothing else runs yet; Node.run wakes the duties once up
        except Exception as exc:  # noqa: BLE001 - the endpoint answered the checks but not this
            raise ChainError(f"reading the contract's events failed: {type(exc).__name__}: {exc}") from None
        log.info("settlement on chain %d, contract %s, account %s, %d confirmations; %d events up to block %d",
                 cfg.chain_id, cfg.contract, self.account.address if self.account else "none (follow only)",
                 cfg.confirmations, self.store.count(), self.cursor)

    @property
    def view(self) -> ChainBackedState:
        chain = self.node.chain
        assert isinstance(chain, ChainBackedState)  # Node builds one whenever the config names a chain
        return chain

    def check_params(self) -> None:
        """The contract must run the genesis rules: its deadlines, quorum, bond and slashing are what
        this node computes samples and submits deadlines with."""
        p = self.node.genesis.params
        expected = {"challenge_window": p.challenge_window_s, "availability_window": p.availability_window_s,
                    "dispute_window": p.dispute_window_s, "quorum_numerator": p.quorum_numerator,
                    "quorum_denominator": p.quorum_denominator, "prover_bond": p.prover_bond,
                    "slash_double_vote_bps": p.slash_double_vote_bps,
                    "slash_failed_challenge_bps": p.slash_failed_challenge_bps,
                    "challenger_reward_bps": p.challenger_reward_bps, "slash_unavailable_bps": p.slash_unavailable_bps,
                    "bond_reward_bps": p.bond_reward_bps}
        functions = self.client.contract.functions
        try:
            actual = {name: int(getattr(functions, name)().call()) for name in expected}
        except Exception as exc:  # noqa: BLE001 - not this contract, or the endpoint failed
            raise ChainError(f"contract {self.node.config.contract} does not answer as the settlement contract: "
                             f"{type(exc).__name__}: {exc}") from None
        differ = [f"{k} {actual[k]} (genesis {v})" for k, v in expected.items() if actual[k] != v]
        if differ:
            raise ChainError(f"contract {self.node.config.contract} runs other parameters than the genesis: "
                             + ", ".join(differ))

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.node.config.chain_poll_s)
            try:
                await self.poll()
                if self.account is not None:
                    self._retry_own_claims()
                    await self.apply_deadlines()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - an RPC hiccup costs one round, never the node
                log.warning("chain poll failed: %r", exc)

    async def poll(self, notify: bool = True) -> bool:
        """Read newly confirmed events; rebuild the view when anything changed. True if it did."""
        assert self.follower is not None and self.store is not None
        changed = False
        for _ in range(CATCH_UP_ROUNDS):  # a node far behind reads several ranges per round, boundedly
            try:
                result = await asyncio.to_thread(self.follower.poll_once)
            except ReorgDuringRead as exc:
                log.info("chain changed during a read (%s); retrying next round", exc)
                break
            self.head, self.cursor = result.head, result.cursor
            changed = changed or bool(result.events) or result.reverted_to is not None
            if result.reverted_to is not None:
                self.reorgs += 1
            if result.cursor >= result.head - self.node.config.confirmations:
                break
        latest = await asyncio.to_thread(self.w3.eth.get_block, "latest")
        self.block_time = int(latest["timestamp"])
        if not changed and self._loaded:
            return False
        self._loaded = True
        events = await asyncio.to_thread(lambda: list(self.store.events()))  # type: ignore[union-attr]
        self.view.set_events(events, time.time())
        if notify:
            self.on_view_changed()
        return True

    def on_view_changed(self) -> None:
        """New chain facts: wake every duty they may enable (each trigger is idempotent)."""
        node = self.node
        node._pending_event.set()  # votes that waited for their claim's event
        for task_id, posting in list(node.chain.postings.items()):
            task = node.chain.state.tasks.get(task_id)
            if task is not None and task.status == TASK_OPEN:
                node.worker.on_task(posting)
        for claim_id, info in list(node.chain.claims.items()):
            claim = node.chain.state.claims.get(claim_id)
            if claim is not None and claim.status == CLAIM_PENDING:
                node.worker.on_claim(ClaimAnnounced(b"", info.fetch, b""), claim_id)
        if self.account is not None:
            self._resubmit_certificates()
        for dispute_id, dispute in list(node.chain.state.disputes.items()):
            if dispute.status == DISPUTE_OPEN and dispute.claim_id in node.chain.claims:
                node.worker.on_dispute(dispute_id)

    # --- gossip in chain mode ----------------------------------------------------------------

    def validate(self, data: bytes, now: int) -> Message:
        """Gossip checks when the chain holds the ledger: postings and claims are data (their money
        moves on chain), so they need a valid signature, not a balance; votes and certificates are
        checked against the contract's registry and claims, as in the model."""
        if len(data) > MAX_GOSSIP_BYTES:
            raise GossipReject(f"gossip message of {len(data)} bytes exceeds {MAX_GOSSIP_BYTES}")
        try:
            msg = decode_message(data, MAX_GOSSIP_BYTES)
        except InvalidInput as exc:
            raise GossipReject(f"{type(exc).__name__}: {exc}") from None
        chain, state = self.node.chain, self.node.chain.state
        try:
            if isinstance(msg, TaskPosted):
                # The task id is the hash of the spec, so any valid posting of an id the contract holds
                # carries that task's spec; one the contract does not hold (yet) waits in the pending queue.
                task_id = validate_task_posted(msg)
                if task_id in chain.postings:
                    raise GossipIgnore("task already known")
                record = state.tasks.get(task_id)
                if record is None:
                    raise GossipIgnore("task is not posted on the settlement chain (yet)")
                if record.num_checkpoints != decode_task(msg.task).num_checkpoints:
                    raise GossipReject("posting's checkpoints differ from the task's on chain")
            elif isinstance(msg, ClaimAnnounced):
                claim = decode_claim(msg.claim)
                validate_claim_signature(claim)
                validate_fetch_hints(msg, claim)
                claim_id = compute_claim_id(claim.body)
                if claim_id in chain.claims:
                    raise GossipIgnore("claim already known")
                record = state.tasks.get(claim.body.task_id)
                if record is None:
                    raise GossipIgnore("claim names a task not posted on the settlement chain (yet)")
                if record.claim_id is not None and record.claim_id != claim_id:
                    raise GossipIgnore("the chain gave the task to another claim")
                posting = chain.postings.get(claim.body.task_id)
                if posting is not None:
                    task = decode_task(posting.task)
                    if (claim.body.num_checkpoints, claim.body.total_steps, claim.body.checkpoint_interval) != (
                            task.num_checkpoints, task.total_steps, task.checkpoint_interval):
                        raise GossipReject("claim's lengths disagree with its task")
            else:  # a forced-error reveal is relayed; it settles nothing on this contract
                validate_gossip_verdict_message(msg, state, now)
        except InvalidInput as exc:
            raise GossipReject(f"{type(exc).__name__}: {exc}") from None
        return msg

    def on_message(self, msg: Message, source: str) -> None:
        """After a message was accepted: turn this node's own acts into transactions."""
        if self.account is None:
            return
        node = self.node
        if isinstance(msg, ClaimAnnounced):
            claim = decode_claim(msg.claim)
            if claim.body.prover == node.pubkey and source == "local":
                node.spawn(self.submit_claim(claim))
        elif isinstance(msg, Vote):
            if msg.evidence is not None and msg.verifier == node.pubkey:
                node.spawn(self.submit_dispute(msg))
        elif isinstance(msg, Certificate):
            # This node gathered the quorum. A reject quorum on a claim settles nothing (SPEC.md §16.5):
            # money moves only through a dispute on one segment, so it is not worth a transaction.
            if source == "local" and (msg.kind != SUBJECT_CLAIM or msg.verdict == VERDICT_ACCEPT):
                node.spawn(self._submit_certificate_in_turn(msg))
        elif isinstance(msg, DoubleVoteProof):
            if source == "local":
                node.spawn(self.submit_double_vote(msg))

    def get_turn(self, subject: bytes) -> int:
        """This node's place in the order in which nodes submit for ``subject``.

        Every verifier gathers the same quorum and sees the same deadlines; if all submitted at once,
        all but one transaction would revert and still cost gas. The verifiers take turns instead,
        in a rotation that starts at a subject-derived index; a node that is not a verifier comes
        last. Each turn waits ``STAGGER_S`` longer and submits only if the chain still needs it."""
        verifiers = self.node.chain.state.verifiers
        index = self.node.verifier_index
        if index is None or not verifiers:
            return len(verifiers)
        return (index - int.from_bytes(subject[:4], "big")) % len(verifiers)

    def _resubmit_certificates(self) -> None:
        """A quorum this node holds whose subject the chain still shows undecided goes (back) on chain:
        its aggregator may have crashed, or a reorg dropped the transaction. In turn, at most every
        ``RESUBMIT_S``."""
        state = self.node.chain.state
        for (subject, verdict), cert in list(self.node.chain.certificates.items()):
            claim, dispute = state.claims.get(subject), state.disputes.get(subject)
            undecided = (claim is not None and claim.status == CLAIM_PENDING and verdict == VERDICT_ACCEPT
                         and cert.kind == SUBJECT_CLAIM) or (dispute is not None and dispute.status == DISPUTE_OPEN)
            last = self._tried.get(("submit_certificate", subject))
            if undecided and subject not in self._in_turn and (last is None or time.monotonic() - last >= RESUBMIT_S):
                self.node.spawn(self._submit_certificate_in_turn(cert))

    async def _submit_certificate_in_turn(self, cert: Certificate) -> TxRecord | None:
        if cert.subject in self._in_turn:
            return None
        self._in_turn.add(cert.subject)
        try:
            await asyncio.sleep(self.get_turn(cert.subject) * STAGGER_S)
            state = self.node.chain.state
            claim, dispute = state.claims.get(cert.subject), state.disputes.get(cert.subject)
            if (claim is not None and claim.status != CLAIM_PENDING) or \
                    (dispute is not None and dispute.status != DISPUTE_OPEN):
                log.info("certificate on %s: already on chain, not submitted", cert.subject.hex()[:12])
                return None
            return await self.submit_certificate(cert)
        finally:
            self._tried[("submit_certificate", cert.subject)] = time.monotonic()
            self._in_turn.discard(cert.subject)

    def _index(self, pubkey: bytes) -> int:
        for i, v in enumerate(self.node.chain.state.verifiers):
            if v.pubkey == pubkey:
                return i
        raise ValueError("key is not a registered verifier")

    # --- transactions ------------------------------------------------------------------------

    def _retry_own_claims(self) -> None:
        """This prover's announced claim that the chain does not show while its task is still open (the
        transaction failed or a reorg dropped it) is sent again, at most every ``RESUBMIT_S``."""
        state = self.node.chain.state
        for claim_id, info in list(self.node.chain.claims.items()):
            body = info.claim.body
            task = state.tasks.get(body.task_id)
            if body.prover != self.node.pubkey or claim_id in state.claims or task is None or task.status != TASK_OPEN:
                continue
            last = self._tried.get(("claim_task", claim_id))
            if last is None or time.monotonic() - last >= RESUBMIT_S:
                self._tried[("claim_task", claim_id)] = time.monotonic()
                self.node.spawn(self.submit_claim(info.claim))

    async def submit_claim(self, claim: Any) -> TxRecord | None:
        claim_id = compute_claim_id(claim.body)
        self._tried[("claim_task", claim_id)] = time.monotonic()
        message = await asyncio.to_thread(self.client.get_claim_binding_message, claim_id, self.account.address)
        binding = bls.sign(self.node.key.bls_secret_key, bytes(message))
        return await self.submit("claim_task", claim_id, claim.body.task_id, claim_id, claim.body.commitment,
                                 claim.body.num_checkpoints, self.node.pubkey, binding,
                                 value=self.node.chain.state.params.prover_bond)

    async def submit_dispute(self, vote: Vote) -> TxRecord | None:
        ev = vote.evidence
        assert ev is not None
        from protocol.vote import compute_dispute_id

        return await self.submit("open_dispute", compute_dispute_id(vote.claim_id, ev.segment), vote.claim_id,
                                 self._index(vote.verifier), ev.segment, ev.claimed_root, list(ev.claimed_root_path),
                                 ev.replayed_root, ev.signature)

    async def submit_certificate(self, cert: Certificate) -> TxRecord | None:
        return await self.submit("submit_certificate", cert.subject, cert.kind, cert.subject, cert.verdict,
                                 list(cert.signers), cert.signature)

    async def submit_double_vote(self, proof: DoubleVoteProof) -> TxRecord | None:
        return await self.submit("report_double_vote", proof.subject, proof.kind, proof.subject,
                                 self._index(proof.verifier), proof.accept_signature, proof.reject_signature)

    async def apply_deadlines(self) -> None:
        """Submit every deadline that has passed in block time and that nobody has applied yet."""
        state, now, p = self.node.chain.state, self.block_time, self.node.chain.state.params
        due: list[tuple[str, bytes, int]] = []  # (function, subject, deadline in block time)
        for dispute_id, d in state.disputes.items():
            if d.status == DISPUTE_OPEN:
                due.append(("expire_dispute", dispute_id, d.opened_at + p.dispute_window_s))
        for claim_id, c in state.claims.items():
            if is_dispute_open_on(state, claim_id):
                continue
            if c.status == CLAIM_ACCEPTED and c.certified_at is not None:
                due.append(("settle_claim", claim_id, c.certified_at + p.challenge_window_s))
            elif c.status == CLAIM_PENDING:
                due.append(("settle_claim", claim_id, c.registered_at + p.availability_window_s))
        for task_id, t in state.tasks.items():
            if t.status == TASK_OPEN:
                due.append(("refund_task", task_id, t.expires_at))
        for fn, subject, at in due:
            if now < at + self.get_turn(subject) * STAGGER_S:
                continue
            last = self._tried.get((fn, subject))
            if last is not None and time.monotonic() - last < RESUBMIT_S:
                continue
            self._tried[(fn, subject)] = time.monotonic()
            await self.submit(fn, subject, subject)

    async def submit(self, fn: str, subject: bytes, *args: Any, value: int = 0) -> TxRecord | None:
        """Simulate, sign, send and wait for one contract call; None when it was refused or lost a race."""
        if self.account is None:
            return None
        async with self._lock:
            try:
                record = await asyncio.to_thread(self._send, fn, subject, args, value)
            except ContractRevert as exc:
                if "when mined" in exc.reason:
                    self.reverted += 1  # a lost race that reached the chain: it cost gas
                if any(q in exc.reason for q in QUIET_REASONS):
                    log.info("%s on %s: not needed (%s)", fn, subject.hex()[:12], exc.reason)
                else:
                    log.warning("%s on %s refused by the contract: %s", fn, subject.hex()[:12], exc.reason)
                return None
            except Exception as exc:  # noqa: BLE001 - RPC failure: the deadline loop or a later event retries
                log.warning("%s on %s failed: %r", fn, subject.hex()[:12], exc)
                return None
        self.txs.append(record)
        level = logging.INFO if record.status == 1 else logging.WARNING
        log.log(level, "%s on %s: tx %s, gas %d, status %d", fn, subject.hex()[:12], record.tx, record.gas_used,
                record.status)
        return record

    def _send(self, fn: str, subject: bytes, args: tuple[Any, ...], value: int) -> TxRecord:
        sent_at = time.time()
        kwargs = {"value": value} if value else {}
        result = getattr(self.client, fn)(*args, **kwargs)  # simulates first: ContractRevert names the reason
        return TxRecord(fn, subject.hex(), "0x" + result.transaction_hash.hex(), int(result.gas_used), 1,
                        int(result.block_number), sent_at, time.time())

    def get_report(self) -> dict[str, Any]:
        return {"chain_id": self.node.config.chain_id, "contract": self.node.config.contract,
                "account": self.account.address if self.account else None, "head": self.head,
                "cursor": self.cursor, "block_time": self.block_time, "confirmations": self.node.config.confirmations,
                "reorgs": self.reorgs, "reverted_when_mined": self.reverted, "events": len(self.view.events),
                "txs": [dataclasses.asdict(r) for r in self.txs]}


__all__ = ["ChainError", "Settlement", "load_contract_abi"]
