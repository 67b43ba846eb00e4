"""Key files: a BLS signing key (claims, samples, votes) and a libp2p identity seed.

JSON, mode 0600, never overwritten::

    {"version": 1, "bls_secret_key": "<64 hex>", "node_seed": "<64 hex>"}
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from protocol import bls
from protocol.bounded import decode_json
from protocol.errors import DecodeError

from .files import read_regular_file


class KeyFileError(Exception):
    """The key file is missing, unreadable or malformed (the operator's problem)."""


@dataclass(frozen=True)
class KeyFile:
    bls_secret_key: bytes
    node_seed: bytes

    @property
    def public_key(self) -> bytes:
        return bls.compute_public_key(self.bls_secret_key)


def generate_keyfile() -> KeyFile:
    return KeyFile(bls.compute_secret_key(secrets.token_bytes(32)), secrets.token_bytes(32))


MAX_KEYFILE_BYTES = 4096


def write_new_secret_json(path: Path, doc: dict[str, object], error: type[Exception]) -> None:
    """Write ``doc`` as JSON to a new file of mode 0600, synced to disk; an existing file is never
    overwritten (``error``): a key file replaced by mistake is a key lost."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise error(f"{path} already exists; refusing to overwrite a key") from None
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def save_keyfile(path: Path, key: KeyFile) -> None:
    doc: dict[str, object] = {"version": 1, "bls_secret_key": key.bls_secret_key.hex(), "node_seed": key.node_seed.hex()}
    write_new_secret_json(path, doc, KeyFileError)


def load_keyfile(path: Path) -> KeyFile:
    try:
        if not Path(path).exists():
            raise FileNotFoundError(path)
        doc = decode_json(read_regular_file(path, MAX_KEYFILE_BYTES, KeyFileError, f"key file {path}"), MAX_KEYFILE_BYTES,
                          max_depth=1)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("version") != 1:
            raise KeyFileError(f"{path}: unsupported key file version {doc.get('version')!r}")
        key = KeyFile(bytes.fromhex(doc["bls_secret_key"]), bytes.fromhex(doc["node_seed"]))
    except FileNotFoundError:
        raise KeyFileError(f"key file {path} does not exist (create one with `pol keys new --out {path}`)") from None
    except (ValueError, KeyError, TypeError, AttributeError, DecodeError) as exc:
        raise KeyFileError(f"key file {path} is malformed: {exc}") from None
    if len(key.bls_secret_key) != 32 or len(key.node_seed) != 32:
        raise KeyFileError(f"key file {path}: keys must be 32 bytes each")
    try:
        bls.compute_public_key(key.bls_secret_key)
    except Exception as exc:
        raise KeyFileError(f"key file {path}: BLS secret key is invalid: {exc}") from None
    return key
