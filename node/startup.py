"""Start-up checks of ``pol node``: refuse to run rather than run uselessly.

A verifier whose key has no stake in the genesis, or a port already in use, stops the node before
it joins the network with one ``NodeStartError`` line (exit 2) instead of a node that says "up"
and never votes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .config import NodeStartError

if TYPE_CHECKING:
    from .app import Node

log = logging.getLogger(__name__)


def check_membership(node: "Node") -> None:
    """A verifier must be a staked genesis verifier; a prover needs a balance for its bond."""
    where = f"{node.config.config_file or 'config'}: key {str(node.config.key)!r}"
    state = node.chain.state
    if node.config.role == "verifier":
        index = node.verifier_index
        if index is None:
            raise NodeStartError(f"{where}: public key {node.pubkey.hex()[:16]}… is not a verifier in the genesis "
                                 f"{node.config.genesis} (add it with `pol genesis add-verifier`, or run as a prover)")
        if state.verifiers[index].stake <= 0:
            raise NodeStartError(f"{where}: verifier #{index} has no stake left (slashed); it cannot vote")
    elif state.balances.get(node.pubkey, 0) < state.params.prover_bond:
        log.warning("prover %s has balance %d, less than the bond %d: it cannot claim tasks until funded",
                    node.pubkey.hex()[:12], state.balances.get(node.pubkey, 0), state.params.prover_bond)


async def start_p2p(node: "Node") -> None:
    cfg = node.config
    try:
        await node.net.start()
    except Exception as exc:  # noqa: BLE001 - libp2p raises assorted types for one cause: we cannot listen
        raise NodeStartError(f"{cfg.config_file or 'config'}: key 'listen_port': cannot listen on "
                             f"{cfg.listen_host}:{cfg.listen_port} for p2p: {_cause(exc)}") from None
    if not node.net.listen_addrs:  # py-libp2p logs a failed listen and carries on without an address
        await node.net.stop()
        raise NodeStartError(f"{cfg.config_file or 'config'}: key 'listen_port': cannot listen on "
                             f"{cfg.listen_host}:{cfg.listen_port} for p2p (address in use or not on this machine)")


async def start_http(node: "Node", runner: Any) -> int:
    """Start the HTTP API; returns its port. Stops the p2p side again when the port is taken."""
    from aiohttp import web

    cfg = node.config
    site = web.TCPSite(runner, cfg.http_host, cfg.http_port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        await node.net.stop()
        raise NodeStartError(f"{cfg.config_file or 'config'}: key 'http_port': cannot listen on "
                             f"{cfg.http_host}:{cfg.http_port} for HTTP: {exc.strerror or exc}") from None
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


def _cause(exc: BaseException) -> str:
    """The innermost useful message of an exception group or chain (libp2p nests them)."""
    seen = 0
    while seen < 10:
        seen += 1
        inner = getattr(exc, "exceptions", None)
        if inner:
            exc = inner[0]
            continue
        if exc.__cause__ is not None:
            exc = exc.__cause__
            continue
        break
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def check_files(config: Any) -> None:
    """The key and genesis files exist and parse; errors name the config file and the key."""
    from pol.keyfile import KeyFileError, load_keyfile
    from protocol.errors import InvalidInput
    from protocol.genesis import decode_genesis, validate_genesis

    where = config.config_file or "config"
    try:
        load_keyfile(config.key)
    except KeyFileError as exc:
        raise NodeStartError(f"{where}: key 'key': {exc}") from None
    try:
        genesis = decode_genesis(config.genesis.read_bytes())
        validate_genesis(genesis)
    except FileNotFoundError:
        raise NodeStartError(f"{where}: key 'genesis': {config.genesis} does not exist") from None
    except OSError as exc:
        raise NodeStartError(f"{where}: key 'genesis': cannot read {config.genesis}: {exc.strerror or exc}") from None
    except InvalidInput as exc:
        raise NodeStartError(f"{where}: key 'genesis': {config.genesis} is not a usable genesis: {exc}") from None
    if config.data_dir.exists() and not config.data_dir.is_dir():
        raise NodeStartError(f"{where}: key 'data_dir': {config.data_dir} exists and is not a directory")
