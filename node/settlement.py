"""The node's settlement on an EVM chain (``rpc_url`` in the node config).

At start-up ``Settlement.start`` runs the chain checks of ``node.onchain`` (a node refuses a chain
it cannot trust) and loads the operator's account. While the node runs, ``run`` polls the
contract's confirmed events (``node.follower``) and hands them to the node's chain view.
Everything that talks to the chain runs in a worker thread with a bounded timeout, so a slow or
dead RPC endpoint never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .onchain import ChainError, check_chain, connect, load_eth_key

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)


class Settlement:
    def __init__(self, node: "Node") -> None:
        self.node = node
        cfg = node.config
        self.w3: Any = connect(cfg.rpc_url)
        self.account: Any = None
        self.follower: Any = None

    async def start(self) -> None:
        """Refuse an unusable chain (``ChainError``); load the account."""
        cfg = self.node.config
        await asyncio.to_thread(check_chain, self.w3, cfg.chain_id, cfg.contract)
        if cfg.eth_key is not None:
            self.account = load_eth_key(cfg.eth_key)
            log.info("settlement on chain %d, contract %s, account %s, %d confirmations", cfg.chain_id,
                     cfg.contract, self.account.address, cfg.confirmations)
        else:
            log.info("settlement on chain %d, contract %s (no eth_key: following only, submitting nothing)",
                     cfg.chain_id, cfg.contract)


__all__ = ["ChainError", "Settlement"]
