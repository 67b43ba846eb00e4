"""libp2p peer ids computed without importing libp2p (only node.p2p may import it).

An Ed25519 peer id is the base58btc identity multihash of the protobuf-encoded public key
(``08 01 12 20 || pk``). The devnet needs the ids before any node runs, to write the genesis.
"""

from __future__ import annotations

import base58
from nacl.signing import SigningKey


def compute_peer_id(seed: bytes) -> str:
    """Peer id of the Ed25519 identity that ``node.p2p`` derives from the 32-byte ``seed``."""
    if len(seed) != 32:
        raise ValueError("a node seed is 32 bytes")
    public = bytes(SigningKey(seed).verify_key)
    encoded = b"\x08\x01\x12\x20" + public
    return base58.b58encode(b"\x00" + bytes([len(encoded)]) + encoded).decode()
