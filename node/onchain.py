"""The node's connection to the settlement chain: start-up checks and the operator's account.

A node configured with ``rpc_url`` refuses to start (``ChainError``, one line for the operator) when
the chain is unreachable, reports another chain id than the configured one, has no code at the
contract address, or lacks the EIP-2537 BLS12-381 precompiles. The last check matters because a
chain without them answers a call to the precompile address with *empty success*: a contract that
trusted such a call's status would accept any certificate. The probe is a pairing check
``e(G1, G2) · e(-G1, G2) == 1`` whose answer must be exactly 32 bytes ending in 1.

web3's HTTP provider is synchronous; callers on the event loop run these functions in a thread,
and every request carries a timeout.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from protocol.errors import PolError

log = logging.getLogger(__name__)

# EIP-2537 as activated in Prague: 0x0b G1ADD, 0x0c G1MSM, 0x0d G2ADD, 0x0e G2MSM, 0x0f PAIRING_CHECK,
# 0x10 MAP_FP_TO_G1, 0x11 MAP_FP2_TO_G2.
BLS12_PAIRING_CHECK = "0x000000000000000000000000000000000000000f"
RPC_TIMEOUT_S = 10.0


class ChainError(PolError):
    """The settlement chain or the contract is unusable (the operator's problem; one line)."""


@dataclass(frozen=True)
class ChainSettings:
    rpc_url: str
    chain_id: int
    contract: str  # 0x-address
    eth_key: Path | None
    confirmations: int


def connect(rpc_url: str, timeout: float = RPC_TIMEOUT_S) -> Any:
    """A web3 client for ``rpc_url`` (HTTP only; every request bounded by ``timeout``)."""
    from web3 import Web3

    if not rpc_url.startswith(("http://", "https://")):
        raise ChainError(f"rpc_url must be an http:// or https:// URL, not {rpc_url!r}")
    return Web3(Web3.HTTPProvider(rpc_url, request_kwargs={"timeout": timeout}))


def load_eth_key(path: Path) -> Any:
    """The operator's Ethereum account: a key file of ``pol chain key-new`` (node/evm/ethkey.py), or a
    file holding only the private key as 64 hex digits (0x optional)."""
    from eth_account import Account

    from pol.files import read_regular_text
    from pol.keyfile import MAX_KEYFILE_BYTES

    if not path.exists():
        raise ChainError(f"eth_key file {path} does not exist")
    text = read_regular_text(path, MAX_KEYFILE_BYTES, ChainError, f"eth_key file {path}").strip()
    if text.startswith("{"):
        from .evm.ethkey import EthKeyFileError, load_eth_keyfile

        try:
            return load_eth_keyfile(path)
        except EthKeyFileError as exc:
            raise ChainError(str(exc)) from None
    hexkey = text[2:] if text.startswith(("0x", "0X")) else text
    if not re.fullmatch(r"[0-9a-fA-F]{64}", hexkey):
        raise ChainError(f"eth_key file {path} must hold a 32-byte private key as 64 hex digits")
    try:
        return Account.from_key(bytes.fromhex(hexkey))
    except (ValueError, TypeError) as exc:
        raise ChainError(f"eth_key file {path}: not a valid secp256k1 key ({exc})") from None


@lru_cache(maxsize=1)
def get_pairing_probe() -> bytes:
    """Input of the EIP-2537 probe: the pairs (G1, G2) and (-G1, G2), whose product is the identity."""
    from py_ecc.optimized_bls12_381 import G1, G2, neg, normalize  # type: ignore[attr-defined]

    def fp(x: int) -> bytes:
        return int(x).to_bytes(64, "big")

    def g1(p: Any) -> bytes:
        x, y = normalize(p)
        return fp(x.n) + fp(y.n)

    def g2(p: Any) -> bytes:
        x, y = normalize(p)
        return fp(x.coeffs[0]) + fp(x.coeffs[1]) + fp(y.coeffs[0]) + fp(y.coeffs[1])

    return g1(G1) + g2(G2) + g1(neg(G1)) + g2(G2)


def has_bls_precompiles(w3: Any) -> bool:
    """True when the chain's pairing-check precompile gives the right 32-byte answer to the probe."""
    from web3 import Web3

    try:
        out = bytes(w3.eth.call({"to": Web3.to_checksum_address(BLS12_PAIRING_CHECK),
                                 "data": "0x" + get_pairing_probe().hex()}))
    except Exception as exc:  # noqa: BLE001 - a failing call is as good as a missing precompile
        log.info("pairing-check probe failed: %r", exc)
        return False
    return out == (1).to_bytes(32, "big")


def check_chain(w3: Any, chain_id: int, contract: str) -> None:
    """Raise ``ChainError`` unless the chain answers, has ``chain_id``, code at ``contract`` and EIP-2537."""
    from web3 import Web3

    url = getattr(w3.provider, "endpoint_uri", "?")
    try:
        actual = int(w3.eth.chain_id)
    except Exception as exc:  # noqa: BLE001 - connection refused, timeout, garbage: all mean unreachable
        raise ChainError(f"settlement chain at {url} is unreachable: {type(exc).__name__}: {exc}") from None
    if actual != chain_id:
        raise ChainError(f"settlement chain at {url} has chain id {actual}, the config says {chain_id}")
    if not Web3.is_address(contract):
        raise ChainError(f"contract {contract!r} is not an Ethereum address")
    try:
        code = bytes(w3.eth.get_code(Web3.to_checksum_address(contract)))
    except Exception as exc:  # noqa: BLE001
        raise ChainError(f"settlement chain at {url} did not return the contract's code: {exc}") from None
    if not code:
        raise ChainError(f"no contract code at {contract} on chain {chain_id} (wrong address, or not deployed)")
    if not has_bls_precompiles(w3):
        raise ChainError(f"settlement chain at {url} lacks the EIP-2537 BLS12-381 precompiles "
                         f"(pairing check at 0x0f); certificates cannot be verified on it")
