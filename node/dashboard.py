"""The operator's views served next to the JSON API: ``/`` (dashboard), ``/metrics``, ``/health``,
``/overview`` (who this node is, named accounts, its earnings and slashes).

The dashboard is one static page (``node/static/dashboard.html``) that polls the JSON API; it holds no
state of its own, so what it shows is what ``/claims``, ``/ledger`` and friends say.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .metrics import CONTENT_TYPE, get_health

if TYPE_CHECKING:
    from .app import Node


def get_overview(node: "Node") -> dict[str, Any]:
    state = node.chain.state
    genesis_stake = {v.pubkey: v.stake for v in node.genesis.verifiers}
    genesis_balance = {a.pubkey: a.balance for a in node.genesis.accounts}
    idx = node.verifier_index
    stake = state.verifiers[idx].stake if idx is not None else 0
    balance = state.balances.get(node.pubkey, 0)
    names = {a.pubkey.hex(): node.get_name(a.pubkey) for a in node.genesis.accounts}
    names.update({v.pubkey.hex(): node.get_name(v.pubkey) for v in node.genesis.verifiers})
    names.update({k: v for k, v in node.config.names.items()})
    return {
        "role": node.config.role, "name": node.get_name(node.pubkey), "public_key": node.pubkey.hex(),
        "peer_id": node.net.peer_id if node.net is not None else None,
        "listen_addrs": node.net.listen_addrs if node.net is not None else [],
        "announce_addrs": list(node.config.announce_addrs), "network": node.genesis.network,
        "verifier_index": idx, "stake": stake, "genesis_stake": genesis_stake.get(node.pubkey, 0),
        "balance": balance, "genesis_balance": genesis_balance.get(node.pubkey, 0),
        "earnings": max(0, balance - genesis_balance.get(node.pubkey, 0)),
        "slashed": max(0, genesis_stake.get(node.pubkey, 0) - stake),
        "verifiers": [{"index": i, "public_key": v.pubkey.hex(), "name": node.get_name(v.pubkey), "stake": v.stake,
                       "genesis_stake": genesis_stake.get(v.pubkey, 0)} for i, v in enumerate(state.verifiers)],
        "names": names, "burned": state.burned,
    }


def add_routes(app: web.Application, node: "Node") -> None:
    page = resources.files("node").joinpath("static/dashboard.html").read_bytes()

    async def index(_: web.Request) -> web.Response:
        return web.Response(body=page, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; "
                                     "style-src 'unsafe-inline'; connect-src 'self'"})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=node.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def health(request: web.Request) -> web.Response:
        ready, doc = get_health(node)
        # /health?live answers 200 while the process serves; the default is readiness (503 until ready).
        status = 200 if ready or "live" in request.query else 503
        return web.Response(text=json.dumps(doc, sort_keys=True), status=status, content_type="application/json")

    async def overview(_: web.Request) -> web.Response:
        return web.json_response(get_overview(node), dumps=lambda d: json.dumps(d, sort_keys=True))

    app.router.add_get("/", index)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/health", health)
    app.router.add_get("/overview", overview)
