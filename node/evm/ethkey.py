"""Ethereum account key files (SPEC.md §16.7): who pays gas, stakes, posts and receives payouts.

JSON, mode 0600, never overwritten::

    {"version": 1, "eth_private_key": "<64 hex>", "address": "0x<checksummed>"}

``address`` is redundant and checked on load, so a truncated or edited key is caught before it
signs anything.
"""

from __future__ import annotations

import secrets
import stat
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount

from pol.files import read_regular_file
from pol.keyfile import MAX_KEYFILE_BYTES, write_new_secret_json
from protocol.bounded import decode_json
from protocol.errors import DecodeError, PolError


class EthKeyFileError(PolError):
    """The Ethereum key file is missing, unreadable, malformed or readable by others (the operator's problem)."""


def generate_eth_key() -> LocalAccount:
    account: LocalAccount = Account.from_key(secrets.token_bytes(32))
    return account


def save_eth_keyfile(path: Path, account: LocalAccount) -> None:
    doc: dict[str, object] = {"version": 1, "eth_private_key": bytes(account.key).hex(), "address": account.address}
    write_new_secret_json(path, doc, EthKeyFileError)


def load_eth_keyfile(path: Path) -> LocalAccount:
    path = Path(path)
    try:
        mode = path.stat().st_mode
        # Bounded like every file we read: a FIFO or /dev/zero named here must not hang or exhaust the node.
        doc = decode_json(read_regular_file(path, MAX_KEYFILE_BYTES, EthKeyFileError, f"Ethereum key file {path}"),
                          MAX_KEYFILE_BYTES, max_depth=1)
    except FileNotFoundError:
        raise EthKeyFileError(f"Ethereum key file {path} does not exist "
                              f"(create one with `pol chain key-new --out {path}`)") from None
    except (OSError, ValueError, DecodeError) as exc:
        raise EthKeyFileError(f"Ethereum key file {path} is unreadable: {exc}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise EthKeyFileError(f"Ethereum key file {path} is accessible by other users (mode {oct(mode & 0o777)}); "
                              f"run chmod 600 {path}")
    if not isinstance(doc, dict) or doc.get("version") != 1:
        raise EthKeyFileError(f"{path}: not a version 1 Ethereum key file")
    raw = doc.get("eth_private_key")
    try:
        key = bytes.fromhex(raw.removeprefix("0x")) if isinstance(raw, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise EthKeyFileError(f"{path}: eth_private_key must be 64 hex digits")
    try:
        account: LocalAccount = Account.from_key(key)
    except Exception as exc:  # zero or out-of-range scalar
        raise EthKeyFileError(f"{path}: eth_private_key is not a valid secp256k1 key: {exc}") from None
    if doc.get("address") != account.address:
        raise EthKeyFileError(f"{path}: address {doc.get('address')!r} does not belong to the key ({account.address})")
    return account
