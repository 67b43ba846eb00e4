"""The HTTP API's bearer token: ``<data_dir>/api_token``, 32 random bytes as hex, mode 0600.

Created at the node's first start; mutating endpoints (POST) require ``Authorization: Bearer <token>``.
Reading endpoints stay open on 127.0.0.1. Any local process that can read the data dir can post; a web
page or another user's process cannot (the token is not guessable and the file is private).
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from pol.files import read_regular_text

API_TOKEN_FILE = "api_token"


class TokenError(Exception):
    """The token file is unusable (not a regular file, readable by others, malformed)."""


def ensure_api_token(data_dir: Path) -> str:
    """The node's token, created (atomically, mode 0600) if it does not exist yet."""
    path = Path(data_dir) / API_TOKEN_FILE
    token = secrets.token_hex(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return read_api_token(data_dir)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return token


def read_api_token(data_dir: Path) -> str:
    path = Path(data_dir) / API_TOKEN_FILE
    if path.is_symlink():
        raise TokenError(f"{path} is a symlink; expected the node's own token file")
    text = read_regular_text(path, 256, TokenError, str(path)).strip()
    if os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise TokenError(f"{path} is readable by other users; chmod 600 it")
    if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
        raise TokenError(f"{path} does not hold a 64-digit hex token")
    return text
