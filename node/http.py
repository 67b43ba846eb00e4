"""The node's JSON API on 127.0.0.1 (aiohttp).

GET  /status /peers /tasks /claims /votes /certificates /ledger /overview
GET  / (dashboard page)  /metrics (Prometheus text)  /health (readiness; ?live for liveness)
POST /tasks  {"message": "<hex of an encoded task_posted envelope>"} -> {"result": "accept" | "reject: …"}

Every POST needs ``Authorization: Bearer <token>`` (the token is ``<data_dir>/api_token``, node/auth.py) and
GET  /claims/{claim_id}/claim  the signed claim (canonical msgpack bytes)
GET  /claims/{claim_id}/model  its final checkpoint (safetensors bytes), if this node holds it; the client
     checks it against the claim's final_root (``pol fetch-model``)

Every POST needs ``Authorization: Bearer <token>`` (the token is ``<data_dir>/api_token``, node/auth.py) and
``Content-Type: application/json``; a bad request gets a 4xx with ``{"error": reason}``, never a 500.
"""

from __future__ import annotations

import hmac
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from protocol.bounded import decode_json
from protocol.claim import encode_claim
from protocol.constants import MAX_GOSSIP_BYTES, VERDICT_ACCEPT
from protocol.errors import InvalidInput
from protocol.ledger import TaskPosted, compute_posting_id
from protocol.messages import decode_message
from protocol.task import compute_task_id, decode_task

if TYPE_CHECKING:
    from .app import Node


MAX_BODY = 2 * MAX_GOSSIP_BYTES + 1024  # hex of the largest message, plus the JSON around it


def build_app(node: "Node", token: str | None = None) -> web.Application:
    """The API; ``token`` None means no POST is accepted at all (401)."""

    @web.middleware
    async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            given = request.headers.get("Authorization", "")
            if token is None or not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return web.json_response({"error": "missing or wrong bearer token (see <data_dir>/api_token)"},
                                         status=401, headers={"WWW-Authenticate": "Bearer"})
            if request.content_type != "application/json":
                return web.json_response({"error": "Content-Type must be application/json"}, status=415)
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPException as exc:
            if exc.status >= 500:
                raise
            return web.json_response({"error": exc.reason}, status=exc.status)

    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard])

    def reply(doc: Any) -> web.Response:
        return web.json_response(doc, dumps=lambda d: json.dumps(d, sort_keys=True))

    async def status(_: web.Request) -> web.Response:
        chain = node.chain
        return reply({
            "role": node.config.role, "public_key": node.pubkey.hex(), "verifier_index": node.verifier_index,
            "peer_id": node.net.peer_id, "listen_addrs": node.net.listen_addrs,
            "peers": len(node.net.connected_peers()), "log_seq": node.store.last_seq(),
            "applied": chain.applied, "claims": len(chain.claims), "tasks": len(chain.postings),
            "stats": node.stats, "uptime_s": round(time.time() - node.started_at, 1), "now": node.now(),
            "skipped": {k.hex(): v for k, v in node.worker.skipped.items()},
            "chunks": {"fetched": node.worker.fetcher.stats.chunks, "fetched_bytes": node.worker.fetcher.stats.bytes,
                       "resumes": node.worker.fetcher.stats.resumes, "refused": node.worker.fetcher.stats.refused,
                       "by_peer": node.worker.fetcher.stats.by_peer,
                       "served": node.worker.chunk_server.served, "served_bytes": node.worker.chunk_server.served_bytes,
                       "fetching": node.worker.fetcher.current},
            "guard": node.guard.report(),
        })

    async def peers(_: web.Request) -> web.Response:
        return reply({"peers": node.net.connected_peers()})

    async def tasks(_: web.Request) -> web.Response:
        out = []
        for task_id, posting in node.chain.postings.items():
            record = node.chain.state.tasks.get(task_id)
            out.append({"task_id": task_id.hex(), "name": decode_task(posting.task).name, "reward": posting.reward,
                        "requester": posting.requester.hex(), "expires_at": posting.expires_at,
                        "posting_id": compute_posting_id(posting).hex(),
                        "status": record.status if record else None,
                        "claim_id": record.claim_id.hex() if record and record.claim_id else None})
        return reply({"tasks": out})

    async def claims(_: web.Request) -> web.Response:
        return reply({"claims": [node.chain.get_claim_report(c) for c in node.chain.claims]})

    async def votes(_: web.Request) -> web.Response:
        out = [{"claim_id": c.hex(), "verifier": v.verifier.hex(), "verdict": "accept" if v.verdict == VERDICT_ACCEPT
                else "reject", "segments": list(v.segments),
                "evidence_segment": None if v.evidence is None else v.evidence.segment}
               for c, by in node.chain.votes.items() for v in by.values()]
        disputes = [{"dispute_id": d.hex(), "verifier": v.verifier.hex(),
                     "verdict": "upheld" if v.verdict == VERDICT_ACCEPT else "failed"}
                    for d, by in node.chain.dispute_votes.items() for v in by.values()]
        return reply({"votes": out, "dispute_votes": disputes})

    async def certificates(_: web.Request) -> web.Response:
        return reply({"certificates": [
            {"kind": "claim" if c.kind == 0 else "dispute", "subject": s.hex(),
             "verdict": _verdict_word(c.kind, verdict),
             "signers": list(c.signers)} for (s, verdict), c in node.chain.certificates.items()]})

    async def ledger(_: web.Request) -> web.Response:
        return reply(node.chain.get_ledger_report())

    async def post_task(request: web.Request) -> web.Response:
        try:
            doc = decode_json(await request.read(), MAX_BODY, max_depth=1)
            if not isinstance(doc, dict) or set(doc) != {"message"} or not isinstance(doc["message"], str):
                raise ValueError('expected {"message": "<hex>"}')
            data = bytes.fromhex(doc["message"])
            msg = decode_message(data, MAX_GOSSIP_BYTES)
            if not isinstance(msg, TaskPosted):
                raise ValueError("not a task posting")
            task_id = compute_task_id(decode_task(msg.task))  # an undecodable task was a 500 before
        except (ValueError, KeyError, TypeError, InvalidInput) as exc:
            return web.json_response({"result": f"reject: {exc}", "error": str(exc)}, status=400)
        result = await node.handle_message(data, "http")
        if result == "accept":
            await node.gossip(msg, data)
        status_code = 200 if result == "accept" or result.startswith("ignore") else 400
        return web.json_response({"result": result, "task_id": task_id.hex()}, status=status_code)

    def _claim_id(request: web.Request) -> bytes:
        raw = request.match_info["claim_id"]
        if len(raw) != 64 or any(c not in "0123456789abcdef" for c in raw):
            raise web.HTTPBadRequest(text="claim id is 64 lowercase hex")
        claim_id = bytes.fromhex(raw)
        if claim_id not in node.chain.claims:
            raise web.HTTPNotFound(text="unknown claim")
        return claim_id

    async def claim_bytes(request: web.Request) -> web.Response:
        claim_id = _claim_id(request)
        return web.Response(body=encode_claim(node.chain.claims[claim_id].claim),
                            content_type="application/octet-stream")

    async def model(request: web.Request) -> web.StreamResponse:
        claim_id = _claim_id(request)
        final = node.chain.claims[claim_id].claim.body.num_checkpoints - 1
        path = node.worker.local_checkpoint(claim_id, final)
        if path is None:
            raise web.HTTPNotFound(text="this node does not hold the final checkpoint of that claim")
        return web.FileResponse(path, headers={"Content-Type": "application/octet-stream"})

    app.router.add_get("/claims/{claim_id}/claim", claim_bytes)
    app.router.add_get("/claims/{claim_id}/model", model)
    app.router.add_get("/status", status)
    app.router.add_get("/peers", peers)
    app.router.add_get("/tasks", tasks)
    app.router.add_get("/claims", claims)
    app.router.add_get("/votes", votes)
    app.router.add_get("/certificates", certificates)
    app.router.add_get("/ledger", ledger)
    app.router.add_post("/tasks", post_task)

    async def settlement(_: web.Request) -> web.Response:
        if node.settlement is None:
            return reply({"settlement": "gossip model (not for money)"})
        return reply(node.settlement.get_report())

    app.router.add_get("/settlement", settlement)

    from .dashboard import add_routes

    add_routes(app, node)  # / (dashboard), /metrics, /health, /overview
    return app


def _verdict_word(kind: int, verdict: int) -> str:
    """Verdicts are words in every JSON answer: accept/reject on claims, upheld/failed on disputes."""
    if kind == 0:
        return "accept" if verdict == VERDICT_ACCEPT else "reject"
    return "upheld" if verdict == VERDICT_ACCEPT else "failed"
