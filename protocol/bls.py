"""BLS12-381 signatures, IETF ciphersuite ``BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_``.

py-ecc is the reference backend. milagro-bls-binding, when installed, is used for speed;
both give byte-identical keys and signatures (tests cross-check them). Secret keys are
32-byte big-endian integers, public keys 48-byte compressed G1 points, signatures 96-byte
compressed G2 points.
"""

from __future__ import annotations

import hashlib
import sys
from collections import OrderedDict
from typing import Any, Sequence

from .constants import BLS_PUBKEY_LEN, BLS_SIGNATURE_LEN
from .errors import InvalidSignature

_RECURSION_LIMIT = min(max(sys.getrecursionlimit(), 1000), 4000)
import py_ecc.bls as _py_ecc_bls  # noqa: E402 - the limit must be read before this import

try:  # optional fast backend
    import milagro_bls_binding as _milagro
except ImportError:  # pragma: no cover - depends on the environment
    _milagro = None

# py-ecc raises the interpreter's recursion limit to 100000 at import. With it, parsing a deeply
# nested document (JSON, TOML) overflows the C stack and kills the process with SIGSEGV instead of
# raising RecursionError. Its BLS code needs no deep recursion, so the limit is put back.
sys.setrecursionlimit(_RECURSION_LIMIT)

# py-ecc types keys and signatures as NewTypes of bytes; through Any we pass plain bytes.
_PyEcc: Any = getattr(_py_ecc_bls, "G2ProofOfPossession")

_backend: str = "milagro" if _milagro is not None else "py_ecc"


def get_backend() -> str:
    return _backend


def get_available_backends() -> tuple[str, ...]:
    return ("py_ecc", "milagro") if _milagro is not None else ("py_ecc",)


def set_backend(name: str) -> None:
    """Select ``"py_ecc"``, ``"milagro"`` or ``"auto"`` (fastest available)."""
    global _backend
    if name == "auto":
        name = "milagro" if _milagro is not None else "py_ecc"
    if name not in get_available_backends():
        raise ValueError(f"BLS backend {name!r} is not available; have {get_available_backends()}")
    _backend = name


def _fast() -> Any:
    return _milagro if _backend == "milagro" else None


def compute_secret_key(ikm: bytes) -> bytes:
    """IETF KeyGen from at least 32 bytes of input keying material."""
    if len(ikm) < 32:
        raise ValueError("KeyGen needs at least 32 bytes of keying material")
    return int(_PyEcc.KeyGen(ikm)).to_bytes(32, "big")


def _sk_int(secret_key: bytes) -> int:
    if len(secret_key) != 32:
        raise ValueError("a BLS secret key is 32 bytes")
    value = int.from_bytes(secret_key, "big")
    if value == 0:
        raise ValueError("BLS secret key is zero")
    return value


def compute_public_key(secret_key: bytes) -> bytes:
    fast = _fast()
    if fast is not None:
        return bytes(fast.SkToPk(secret_key))
    return bytes(_PyEcc.SkToPk(_sk_int(secret_key)))


def sign(secret_key: bytes, message: bytes) -> bytes:
    fast = _fast()
    if fast is not None:
        _sk_int(secret_key)
        return bytes(fast.Sign(secret_key, message))
    return bytes(_PyEcc.Sign(_sk_int(secret_key), message))


# Signatures already found valid, by SHA-256 of (keys, signature, message): a message is checked when it is
# validated and again when the ledger applies it, and sync re-delivers what gossip brought. Verification is
# a pure function, so remembering positive results changes no answer; only valid signatures are kept (an
# attacker cannot fill the memo without a key's signatures), and it is bounded.
_MEMO: OrderedDict[bytes, None] = OrderedDict()
_MEMO_SIZE = 16384


def _memo_key(public_keys: Sequence[bytes], message: bytes, signature: bytes) -> bytes:
    h = hashlib.sha256(len(public_keys).to_bytes(4, "big"))
    for key in public_keys:
        h.update(key)
    h.update(signature)
    h.update(message)
    return h.digest()


def _remembered(key: bytes) -> bool:
    if key in _MEMO:
        _MEMO.move_to_end(key)
        return True
    return False


def _remember(key: bytes) -> None:
    _MEMO[key] = None
    if len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)


def is_valid_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    if len(public_key) != BLS_PUBKEY_LEN or len(signature) != BLS_SIGNATURE_LEN:
        return False
    key = _memo_key((public_key,), message, signature)
    if _remembered(key):
        return True
    valid = _verify(public_key, message, signature)
    if valid:
        _remember(key)
    return valid


def _verify(public_key: bytes, message: bytes, signature: bytes) -> bool:
    fast = _fast()
    try:
        if fast is not None:
            return bool(fast.Verify(public_key, message, signature))
        return bool(_PyEcc.Verify(public_key, message, signature))
    except Exception:  # malformed points make some backends raise instead of returning False
        return False


def validate_signature(public_key: bytes, message: bytes, signature: bytes, what: str) -> None:
    """Raise ``InvalidSignature`` naming ``what`` unless the signature verifies."""
    if len(public_key) != BLS_PUBKEY_LEN:
        raise InvalidSignature(f"{what}: public key is {len(public_key)} bytes, expected {BLS_PUBKEY_LEN}")
    if len(signature) != BLS_SIGNATURE_LEN:
        raise InvalidSignature(f"{what}: signature is {len(signature)} bytes, expected {BLS_SIGNATURE_LEN}")
    if not is_valid_signature(public_key, message, signature):
        raise InvalidSignature(f"{what}: BLS signature does not verify under {public_key.hex()[:16]}…")


def aggregate_signatures(signatures: Sequence[bytes]) -> bytes:
    if not signatures:
        raise ValueError("cannot aggregate zero signatures")
    fast = _fast()
    if fast is not None:
        return bytes(fast.Aggregate(list(signatures)))
    return bytes(_PyEcc.Aggregate(list(signatures)))


def is_valid_aggregate(public_keys: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    """FastAggregateVerify: every key signed the same message (keys must have proven possession)."""
    if not public_keys or len(signature) != BLS_SIGNATURE_LEN:
        return False
    key = _memo_key(public_keys, message, signature)
    if _remembered(key):
        return True
    valid = _verify_aggregate(public_keys, message, signature)
    if valid:
        _remember(key)
    return valid


def _verify_aggregate(public_keys: Sequence[bytes], message: bytes, signature: bytes) -> bool:
    fast = _fast()
    try:
        if fast is not None:
            return bool(fast.FastAggregateVerify(list(public_keys), message, signature))
        return bool(_PyEcc.FastAggregateVerify(list(public_keys), message, signature))
    except Exception:
        return False


def compute_pop(secret_key: bytes) -> bytes:
    """Proof of possession: protects aggregation against rogue-key attacks."""
    return bytes(_PyEcc.PopProve(_sk_int(secret_key)))


def is_valid_pop(public_key: bytes, proof: bytes) -> bool:
    try:
        return bool(_PyEcc.PopVerify(public_key, proof))
    except Exception:
        return False
