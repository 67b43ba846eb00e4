"""The node's JSON API on 127.0.0.1 (aiohttp).

GET  /status /peers /tasks /claims /votes /certificates /ledger /overview
GET  / (dashboard page)  /metrics (Prometheus text)  /health (readiness; ?live for liveness)
POST /tasks  {"message": "<hex of an encoded task_posted envelope>"} -> {"result": "accept" | "reject: …"}
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from protocol.constants import MAX_GOSSIP_BYTES, VERDICT_ACCEPT
from protocol.errors import InvalidInput
from protocol.ledger import TaskPosted
from protocol.messages import decode_message
from protocol.task import compute_task_id, decode_task

if TYPE_CHECKING:
    from .app import Node


def build_app(node: "Node") -> web.Application:
    app = web.Application(client_max_size=2 * MAX_GOSSIP_BYTES + 1024)

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
                       "resumes": node.worker.fetcher.stats.resumes, "by_peer": node.worker.fetcher.stats.by_peer,
                       "served": node.worker.chunk_server.served, "served_bytes": node.worker.chunk_server.served_bytes,
                       "fetching": node.worker.fetcher.current},
        })

    async def peers(_: web.Request) -> web.Response:
        return reply({"peers": node.net.connected_peers()})

    async def tasks(_: web.Request) -> web.Response:
        out = []
        for task_id, posting in node.chain.postings.items():
            record = node.chain.state.tasks.get(task_id)
            out.append({"task_id": task_id.hex(), "name": decode_task(posting.task).name, "reward": posting.reward,
                        "requester": posting.requester.hex(), "expires_at": posting.expires_at,
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
            doc = await request.json()
            data = bytes.fromhex(doc["message"])
            msg = decode_message(data, MAX_GOSSIP_BYTES)
            if not isinstance(msg, TaskPosted):
                raise ValueError("not a task posting")
        except (ValueError, KeyError, TypeError, InvalidInput) as exc:
            return web.json_response({"result": f"reject: {exc}"}, status=400)
        result = await node.handle_message(data, "http")
        if result == "accept":
            await node.gossip(msg, data)
        status_code = 200 if result == "accept" or result.startswith("ignore") else 400
        return web.json_response({"result": result, "task_id": compute_task_id(decode_task(msg.task)).hex()},
                                 status=status_code)

    app.router.add_get("/status", status)
    app.router.add_get("/peers", peers)
    app.router.add_get("/tasks", tasks)
    app.router.add_get("/claims", claims)
    app.router.add_get("/votes", votes)
    app.router.add_get("/certificates", certificates)
    app.router.add_get("/ledger", ledger)
    app.router.add_post("/tasks", post_task)
    from .dashboard import add_routes

    add_routes(app, node)  # / (dashboard), /metrics, /health, /overview
    return app


def _verdict_word(kind: int, verdict: int) -> str:
    """Verdicts are words in every JSON answer: accept/reject on claims, upheld/failed on disputes."""
    if kind == 0:
        return "accept" if verdict == VERDICT_ACCEPT else "reject"
    return "upheld" if verdict == VERDICT_ACCEPT else "failed"
