"""What a node does with what it learns: provers train and announce, verifiers fetch, replay and vote.

CPU work (training, replay, loading a task's data set) runs in worker threads so the event loop
stays responsive. The claim's checkpoint roots (``/pol/proof/1``, pages of at most 16384 roots) and checkpoints
(``/pol/chunk/2``, ``node.chunks``: 512 KiB chunks, each with its Merkle proofs) are fetched from the
claim's signed fetch hints first, then from any other connected peer (every verifier serves what it
fetched). Roots are checked against the claim's commitment and every chunk against its checkpoint's root
as it arrives, so a lying or vanished holder only costs a chunk and a move to the next one; a checkpoint
fetch resumes at the same chunk.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prover.transcript import ProofDir, read_transcript
from protocol.claim import compute_claim_id, compute_claim_training_seed, compute_commitment, decode_claim
from protocol.constants import VERDICT_ACCEPT, VERDICT_REJECT
from protocol.encoding import decode_canonical, encode_canonical
from protocol.budget import validate_task_cost
from protocol.errors import InvalidInput, InvalidMessage, OverBudget
from protocol.genesis import get_field, validate_keys
from protocol.ledger import TASK_OPEN, TaskPosted, compute_posting_id, get_claim_context
from protocol.merkle import compute_merkle_proof
from protocol.messages import ClaimAnnounced, decode_message, compute_claim_announced, encode_message
from protocol.state import get_sorted_leaves
from protocol.sampling import compute_sample_proof, compute_verifier_sample
from protocol.task import Task, compute_task_id, decode_task
from protocol.vote import compute_dispute_id, compute_dispute_vote, compute_evidence, compute_vote

from .chunks import ChunkFetcher, ChunkFetchFailed, ChunkServer, compute_root_path

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)
PROTO_PROOF = "/pol/proof/1"
ROOTS_PAGE = 16384  # 32-byte roots per /pol/proof/1 response: 512 KiB, one frame
RETRY_S = 2.0


class FetchFailed(Exception):
    pass


class Worker:
    def __init__(self, node: "Node") -> None:
        self.node = node
        self.sk = node.key.bls_secret_key
        self._runtimes: dict[bytes, Any] = {}
        self._runtime_lock = asyncio.Lock()
        self._cpu = asyncio.Semaphore(1)  # one training/replay at a time per node
        self._active: set[bytes] = set()
        self._roots: dict[bytes, list[bytes]] = {}
        self._replays: dict[tuple[bytes, int], bytes] = {}
        self.skipped: dict[bytes, str] = {}  # claims this verifier will not vote on, and why
        self._names: dict[bytes, list[str]] = {}  # task id -> tensor names of its training state
        self._layouts: dict[bytes, dict[str, tuple[str, tuple[int, ...]]]] = {}  # task id -> name -> dtype, shape
        self._fetching: dict[tuple[bytes, int], asyncio.Task[str]] = {}
        self._fetch_slots = asyncio.Semaphore(3)  # checkpoints fetched concurrently
        self.chunk_server = ChunkServer(self._lookup_checkpoint)
        self.fetcher = ChunkFetcher(self._request, node.config.fetch_chunks_per_s)

    # --- triggers ------------------------------------------------------------------------------

    def resume(self) -> None:
        """After a (re)start: pick up every unfinished duty found in the replayed log."""
        self._start(b"warm-imports", asyncio.to_thread(_import_training))
        for posting in list(self.node.chain.postings.values()):
            self.on_task(posting)
        for claim_id, info in list(self.node.chain.claims.items()):
            self.on_claim(ClaimAnnounced(b"", info.fetch, b""), claim_id)
        for dispute_id, dispute in list(self.node.chain.state.disputes.items()):
            if dispute.status == "open":
                self.on_dispute(dispute_id)

    def _staked(self) -> bool:
        index = self.node.verifier_index
        return index is not None and self.node.chain.state.verifiers[index].stake > 0

    def _start(self, key: bytes, coro: Any) -> None:
        if key in self._active:
            coro.close()
            return
        self._active.add(key)

        async def run() -> None:
            try:
                await coro
            finally:
                self._active.discard(key)

        self.node.spawn(run())

    def over_budget(self, task: Task) -> str | None:
        """Why this node will not train or replay ``task`` (its state or compute exceeds our budget), or None.

        Checked from the task spec alone, before any data set, tensor or fetch is allocated.
        """
        limits = self.node.limits
        try:
            validate_task_cost(task, limits.max_state_bytes, limits.max_segment_flops)
        except (OverBudget, InvalidInput) as exc:
            return str(exc)
        return None

    def on_task(self, posting: TaskPosted) -> None:
        cfg = self.node.config
        reason = self.over_budget(decode_task(posting.task))
        if reason is not None:
            log.warning("task %s is beyond this node's budget: %s", compute_task_id(decode_task(posting.task)).hex()[:12],
                        reason)
            return
        if cfg.role != "prover":
            # Loading a task's data set takes seconds: do it now, before a claim on it arrives.
            task = decode_task(posting.task)
            self._start(b"warm" + compute_task_id(task), self._runtime(task))
            return
        task_id = compute_task_id(decode_task(posting.task))
        if "*" not in cfg.prove_tasks and task_id.hex() not in cfg.prove_tasks:
            return
        record = self.node.chain.state.tasks.get(task_id)
        if record is None or record.status != TASK_OPEN:
            return
        self._start(b"task" + task_id, self.prove_task(task_id))

    def on_claim(self, msg: ClaimAnnounced, claim_id: bytes | None = None) -> None:
        if self.node.config.role != "verifier" or not self._staked():
            return
        if claim_id is None:
            claim_id = compute_claim_id(decode_claim(msg.claim).body)
        record = self.node.chain.state.claims.get(claim_id)
        if record is None or record.status != "pending":
            return
        posting = self.node.chain.postings.get(record.task_id)
        reason = None if posting is None else self.over_budget(decode_task(posting.task))
        if reason is not None:
            self.skipped[claim_id] = f"over budget: {reason}"
            log.warning("claim %s: not verifying, %s", claim_id.hex()[:12], self.skipped[claim_id])
            return
        mine = self.node.store.get_my_vote(claim_id)
        if mine is not None:
            if self.node.pubkey not in self.node.chain.votes.get(claim_id, {}):
                self.node.spawn(self.node.publish_local(decode_message(mine)))  # crashed before publishing
            return
        self._start(b"claim" + claim_id, self.verify_claim(claim_id))

    def on_dispute(self, dispute_id: bytes) -> None:
        if self.node.config.role != "verifier" or not self._staked():
            return
        mine = self.node.store.get_my_vote(dispute_id)
        if mine is not None:
            if self.node.pubkey not in self.node.chain.dispute_votes.get(dispute_id, {}):
                self.node.spawn(self.node.publish_local(decode_message(mine)))
            return
        self._start(b"dispute" + dispute_id, self.resolve_dispute(dispute_id))

    # --- prover ------------------------------------------------------------------------------

    async def prove_task(self, task_id: bytes) -> None:
        from .cheat import run_prove

        node = self.node
        posting = node.chain.postings[task_id]
        task = decode_task(posting.task)
        out = node.config.data_dir / "proofs" / task_id.hex()
        log.info("proving task %s (%d steps)%s", task_id.hex()[:12], task.total_steps,
                 f" [cheat: {node.config.cheat}]" if node.config.cheat else "")
        async with self._cpu:
            claim = await asyncio.to_thread(run_prove, task, out, self.sk, node.config.cheat,
                                            compute_posting_id(posting))
        claim_id = compute_claim_id(claim.body)
        node.store.put_proof(claim_id, task_id, str(out))
        hints = tuple(node.net.listen_addrs[:1])
        result = await node.publish_local(compute_claim_announced(claim, hints, self.sk))
        log.info("claim %s announced: %s", claim_id.hex()[:12], result)

    # --- verifier ----------------------------------------------------------------------------

    async def _runtime(self, task: Task, claim: Any = None) -> Any:
        """The task's runtime, keyed by ``claim``'s run seed (SPEC.md §9) when a claim is given."""
        task_id = compute_task_id(task)
        async with self._runtime_lock:
            if task_id not in self._runtimes:
                from prover.training import Runtime

                self._runtimes[task_id] = await asyncio.to_thread(Runtime.for_task, task)
        rt = self._runtimes[task_id]
        return rt if claim is None else rt.with_seed(compute_claim_training_seed(claim))

    def _deadline(self, claim_id: bytes) -> float:
        record = self.node.chain.state.claims[claim_id]
        return record.registered_at + self.node.chain.state.params.availability_window_s

    async def verify_claim(self, claim_id: bytes) -> None:
        node = self.node
        while True:
            record = node.chain.state.claims.get(claim_id)
            if record is None or record.status != "pending":
                return
            try:
                vote = await self._verify_once(claim_id)
                break
            except (FetchFailed, ChunkFetchFailed, InvalidInput) as exc:
                if node.now() >= self._deadline(claim_id):
                    self.skipped[claim_id] = f"unavailable: {exc}"
                    log.warning("claim %s: giving up, data unavailable (%s)", claim_id.hex()[:12], exc)
                    return
                log.info("claim %s: verification attempt failed (%s); retrying", claim_id.hex()[:12], exc)
                await asyncio.sleep(RETRY_S)
        if vote is None:
            return
        if vote.evidence is not None and node.store.get_my_vote(claim_id) is None:
            dispute_id = compute_dispute_id(claim_id, vote.evidence.segment)
            if dispute_id in node.chain.state.disputes:
                # Someone already challenges this segment. A second challenge could take the dispute over
                # (lowest index holds it) on some nodes but not on those that resolved it already, and
                # their ledgers would disagree on the challenger's reward: join the dispute instead.
                self.skipped[claim_id] = f"segment {vote.evidence.segment} already disputed; voting in the dispute"
                log.info("claim %s: %s", claim_id.hex()[:12], self.skipped[claim_id])
                self.on_dispute(dispute_id)
                return
        data = node.store.put_my_vote(claim_id, "vote", encode_message(vote), time.time())
        result = await node.publish_local(decode_message(data))
        log.info("voted %s on claim %s: %s", "accept" if vote.verdict == VERDICT_ACCEPT else "REJECT",
                 claim_id.hex()[:12], result)

    async def _verify_once(self, claim_id: bytes) -> Any:
        from prover.training import compute_root, init_state

        node = self.node
        info = node.chain.claims[claim_id]
        ctx = get_claim_context(node.chain.state, claim_id)
        task = decode_task(node.chain.postings[info.claim.body.task_id].task)
        rt = await self._runtime(task, info.claim)
        sample = compute_verifier_sample(compute_sample_proof(self.sk, claim_id).signature, ctx.num_segments,
                                         ctx.sample_milli)
        roots = await self.fetch_roots(claim_id)
        init_root = await asyncio.to_thread(lambda: compute_root(init_state(rt)))
        if roots[0] != init_root:
            # Evidence covers replayed segments only; a bad start earns no accept vote, so the claim voids.
            self.skipped[claim_id] = "checkpoint 0 is not the task's initial state"
            log.warning("claim %s: %s; not voting", claim_id.hex()[:12], self.skipped[claim_id])
            return None
        log.info("claim %s: replaying segments %s of %d", claim_id.hex()[:12], sample, ctx.num_segments)
        evidence = None
        final = ctx.num_segments  # the delivered model: an accept vote needs it fetched and checked
        self.prefetch(claim_id, roots, list(sample) + [final], rt)
        for s in sample:
            replayed = await self.replay(claim_id, rt, roots, s)
            if replayed != roots[s + 1]:
                path = compute_merkle_proof(roots, s + 1).path
                evidence = compute_evidence(self.sk, claim_id, s, roots[s + 1], path, replayed)
                log.warning("claim %s: segment %d does not replay (claimed %s, got %s)", claim_id.hex()[:12], s,
                            roots[s + 1].hex()[:12], replayed.hex()[:12])
                break
        if evidence is None:
            # Raises FetchFailed/ChunkFetchFailed while the final state is unavailable: no accept vote.
            await self.fetch_checkpoint(claim_id, final, roots[final], rt)
        return compute_vote(self.sk, ctx, evidence)

    async def resolve_dispute(self, dispute_id: bytes) -> None:
        node = self.node
        dispute = node.chain.state.disputes[dispute_id]
        claim_id, s = dispute.claim_id, dispute.segment
        info = node.chain.claims[claim_id]
        task = decode_task(node.chain.postings[info.claim.body.task_id].task)
        for _ in range(30):
            if node.chain.state.disputes[dispute_id].status != "open":
                return
            try:
                rt = await self._runtime(task, info.claim)
                roots = await self.fetch_roots(claim_id)
                replayed = await self.replay(claim_id, rt, roots, s)
                break
            except (FetchFailed, ChunkFetchFailed, InvalidInput) as exc:
                log.info("dispute %s: replay failed (%s); retrying", dispute_id.hex()[:12], exc)
                await asyncio.sleep(RETRY_S)
        else:
            return
        verdict = VERDICT_ACCEPT if replayed != dispute.claimed_root else VERDICT_REJECT
        vote = compute_dispute_vote(self.sk, dispute_id, verdict)
        data = node.store.put_my_vote(dispute_id, "dispute_vote", encode_message(vote), time.time())
        result = await node.publish_local(decode_message(data))
        log.info("dispute %s on segment %d: voted %s (%s)", dispute_id.hex()[:12], s,
                 "upheld" if verdict == VERDICT_ACCEPT else "failed", result)

    async def replay(self, claim_id: bytes, rt: Any, roots: list[bytes], s: int) -> bytes:
        key = (claim_id, s)
        if key in self._replays:
            return self._replays[key]
        path = await self.fetch_checkpoint(claim_id, s, roots[s], rt)

        def work() -> bytes:
            from prover.checkpoint import read_checkpoint
            from prover.training import get_state_from_leaves
            from verifier.replay import replay_segment

            state = get_state_from_leaves(rt, read_checkpoint(Path(path), expected_root=roots[s]))
            if state.step != s * rt.task.checkpoint_interval:
                raise InvalidMessage(f"checkpoint {s} holds step {state.step}")
            return replay_segment(rt, state, s, roots[s + 1]).replayed_root

        async with self._cpu:
            self._replays[key] = await asyncio.to_thread(work)
        return self._replays[key]

    # --- fetching ----------------------------------------------------------------------------

    def _candidates(self, claim_id: bytes) -> list[tuple[str, str | None]]:
        """(peer id, multiaddr to dial or None): the claim's hints first, then other connected peers."""
        info = self.node.chain.claims[claim_id]
        out: list[tuple[str, str | None]] = []
        for hint in info.fetch:
            peer = hint.rsplit("/p2p/", 1)[-1]
            out.append((peer, hint if hint.startswith("/") else None))
        others = [p for p in self.node.net.connected_peers() if p not in {o[0] for o in out}]
        random.shuffle(others)
        return out + [(p, None) for p in others if p != self.node.net.peer_id]

    async def _request(self, peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
        net = self.node.net
        if addr is not None and peer not in net.connected_peers():
            await net.connect(addr)
        return bytes(await net.request(peer, protocol, payload, timeout=self.node.config.fetch_timeout_s,
                                       max_response_bytes=limit))

    async def fetch_roots(self, claim_id: bytes) -> list[bytes]:
        if claim_id in self._roots:
            return self._roots[claim_id]
        body = self.node.chain.claims[claim_id].claim.body
        local = self.local_roots(claim_id)
        candidates: list[tuple[str, str | None]] = [] if local else self._candidates(claim_id)
        errors = []
        for peer, addr in [("local", None)] + candidates:
            try:
                if peer == "local":
                    if local is None:
                        continue
                    roots = local
                else:
                    roots = await self._fetch_roots_from(peer, addr, claim_id, body.num_checkpoints)
                if len(roots) != body.num_checkpoints or compute_commitment(roots) != body.commitment \
                        or roots[-1] != body.final_root:
                    raise InvalidMessage("roots do not match the claim's commitment")
            except Exception as exc:  # noqa: BLE001 - try the next holder
                errors.append(f"{peer[-8:]}: {exc}")
                continue
            self._roots[claim_id] = roots
            self.node.store.put_roots(claim_id, encode_canonical(roots))
            return roots
        raise FetchFailed("no holder served the checkpoint roots: " + "; ".join(errors[-3:]))

    async def _fetch_roots_from(self, peer: str, addr: str | None, claim_id: bytes, count: int) -> list[bytes]:
        roots: list[bytes] = []
        while len(roots) < count:
            raw = await self._request(peer, addr, PROTO_PROOF, encode_canonical(
                {"claim_id": claim_id, "what": "roots", "index": len(roots)}), 1 << 20)
            page = parse_roots(raw)
            if not page or len(roots) + len(page) > count:
                raise InvalidMessage("roots page is empty or too long")
            roots += page
        return roots

    async def _state_names(self, rt: Any) -> list[str]:
        """Names of the tensors of every checkpoint of ``rt``'s task, in canonical order."""
        task_id = compute_task_id(rt.task)
        if task_id not in self._names:
            from prover.training import get_state_leaves, init_state

            leaves = await asyncio.to_thread(lambda: get_sorted_leaves(get_state_leaves(init_state(rt))))
            self._layouts[task_id] = {leaf.name: (leaf.dtype, leaf.shape) for leaf in leaves}
            self._names[task_id] = [leaf.name for leaf in leaves]
        return self._names[task_id]

    def prefetch(self, claim_id: bytes, roots: list[bytes], indices: list[int], rt: Any) -> None:
        """Start fetching the checkpoints a replay will need, a few at a time, while earlier ones replay."""
        for index in indices:
            self._fetch_task(claim_id, index, roots[index], rt)

    def _fetch_task(self, claim_id: bytes, index: int, root: bytes, rt: Any) -> asyncio.Task[str]:
        key = (claim_id, index)
        task = self._fetching.get(key)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            # Not node.spawn: a failed fetch is the caller's to report (and retry), not a crashed task.
            task = asyncio.get_running_loop().create_task(self._fetch_checkpoint(claim_id, index, root, rt))
            self.node._tasks.add(task)
            self._fetching[key] = task

            def done(t: asyncio.Task[str]) -> None:
                self.node._tasks.discard(t)
                if not t.cancelled() and t.exception() is not None:
                    log.debug("fetch of checkpoint %d failed: %s", index, t.exception())

            task.add_done_callback(done)
        return task

    async def fetch_checkpoint(self, claim_id: bytes, index: int, root: bytes, rt: Any) -> str:
        local = self.local_checkpoint(claim_id, index)
        if local is not None:
            return local
        try:
            return await asyncio.shield(self._fetch_task(claim_id, index, root, rt))
        finally:
            task = self._fetching.get((claim_id, index))
            if task is not None and task.done():
                self._fetching.pop((claim_id, index), None)

    async def _fetch_checkpoint(self, claim_id: bytes, index: int, root: bytes, rt: Any) -> str:
        local = self.local_checkpoint(claim_id, index)
        if local is not None:
            return local
        async with self._fetch_slots:
            return await self._fetch_checkpoint_now(claim_id, index, root, rt)

    async def _fetch_checkpoint_now(self, claim_id: bytes, index: int, root: bytes, rt: Any) -> str:
        body = self.node.chain.claims[claim_id].claim.body
        names = await self._state_names(rt)
        shapes = self._layouts[compute_task_id(rt.task)]
        path = self.node.config.data_dir / "checkpoints" / claim_id.hex() / f"{index:06d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.fetcher.fetch(claim_id, index, root, body.commitment, body.num_checkpoints,
                                 [(name, *shapes[name]) for name in names], self._candidates(claim_id), path,
                                 body.task_id)
        self.node.store.put_checkpoint(claim_id, index, root, str(path))
        return str(path)

    # --- serving -----------------------------------------------------------------------------

    def local_roots(self, claim_id: bytes) -> list[bytes] | None:
        proof = self.node.store.get_proof(claim_id)
        if proof is not None:
            pdir = ProofDir(Path(proof))
            return [e.root for e in read_transcript(pdir, pdir.read_task())]
        raw = self.node.store.get_roots(claim_id)
        return None if raw is None else parse_roots(raw, wrapped=False)

    def local_checkpoint(self, claim_id: bytes, index: int) -> str | None:
        proof = self.node.store.get_proof(claim_id)
        if proof is not None:
            path = ProofDir(Path(proof)).checkpoint(index)
            return str(path) if path.exists() else None
        found = self.node.store.get_checkpoint(claim_id, index)
        return None if found is None else found[1]

    def _lookup_checkpoint(self, claim_id: bytes, index: int) -> tuple[str, bytes, tuple[bytes, ...]] | None:
        """For ``ChunkServer``: a held checkpoint's file, root and the root's path under the commitment."""
        path = self.local_checkpoint(claim_id, index)
        roots = self.local_roots(claim_id) if path is not None else None
        if path is None or roots is None or not 0 <= index < len(roots):
            return None
        return path, roots[index], compute_root_path(roots, index)

    async def serve_proof(self, peer: str, request: bytes) -> bytes:
        """``/pol/proof/1``: ``{claim_id, what: "roots", index}`` -> ``{"roots": roots[index:index + 16384]}``."""
        doc = validate_keys(decode_canonical(request, 1024), {"claim_id", "what", "index"}, "proof request",
                            InvalidMessage)
        claim_id = get_field(doc, "claim_id", bytes, "proof request", InvalidMessage, 32)
        what = get_field(doc, "what", str, "proof request", InvalidMessage)
        index = get_field(doc, "index", int, "proof request", InvalidMessage)
        if what == "roots":
            roots = await asyncio.to_thread(self.local_roots, claim_id)
            if roots is None:
                raise LookupError("no roots for that claim here")
            if not 0 <= index < len(roots):
                raise InvalidMessage("roots index out of range")
            return encode_canonical({"roots": roots[index:index + ROOTS_PAGE]})
        raise InvalidMessage("what must be roots")


def _import_training() -> None:
    import prover.training  # noqa: F401 - torch takes seconds to import; do it off the event loop
    import verifier.replay  # noqa: F401


def parse_roots(raw: bytes, wrapped: bool = True) -> list[bytes]:
    doc = decode_canonical(raw, 1 << 20)
    roots = doc.get("roots") if wrapped and isinstance(doc, dict) else doc
    if not isinstance(roots, list) or not all(isinstance(r, bytes) and len(r) == 32 for r in roots):
        raise InvalidMessage("roots must be a list of 32-byte hashes")
    return roots
