"""Reading files that someone else wrote: judged before they are read.

A path may name a FIFO (open blocks forever), a device such as /dev/zero (reads never end), a
symlink to either, or a sparse file of many GiB. ``open_regular_file`` opens without blocking,
checks with ``fstat`` on the opened descriptor (so a symlink swapped after a check does not help)
that it is a regular file no larger than the caller's limit, and ``read_regular_file`` then reads at
most that limit.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

from protocol.errors import PolError


def open_regular_file(path: Path | str, max_bytes: int, error: type[Exception], what: str = "") -> BinaryIO:
    """Open ``path`` for reading; ``error(reason)`` if it is missing, not a regular file or too large."""
    name = what or str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{name} is missing") from None
    except OSError as exc:
        raise error(f"{name} cannot be opened: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{name} has {st.st_size} bytes; the limit is {max_bytes}")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular_file(path: Path | str, max_bytes: int, error: type[Exception] = PolError, what: str = "") -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (checked before and while reading)."""
    with open_regular_file(path, max_bytes, error, what) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after the check
        raise error(f"{what or path} grew beyond {max_bytes} bytes while being read")
    return data


def read_regular_text(path: Path | str, max_bytes: int, error: type[Exception] = PolError, what: str = "") -> str:
    """Like ``read_regular_file``, decoded as UTF-8 (``error`` if it is not)."""
    data = read_regular_file(path, max_bytes, error, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise error(f"{what or path} is not UTF-8") from None
