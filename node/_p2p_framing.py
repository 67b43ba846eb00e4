"""Request/response protocol of :mod:`node.p2p` over one libp2p stream (trio side only).

Every frame is ``kind (1 byte) | length (4 bytes, big endian) | payload``.

* client -> server: one ``REQUEST`` frame: ``max_response (8 bytes BE) | request bytes``. Announcing the
  client's limit lets the server refuse an oversized response up front instead of the client aborting
  mid-transfer, which can poison a Yamux connection (research P7).
* server -> client: ``DATA`` frames of at most ``MAX_DATA_FRAME`` bytes, then one ``END`` frame
  ``total size (8 bytes BE) | sha256 (32 bytes)``; or a single ``ERROR`` frame ``code (1 byte) | utf-8 reason``.

The explicit END frame exists because Yamux reports a killed peer as a clean EOF (P9): a reader that
stops at EOF would accept a truncated blob.  The exact-read loop replaces libp2p.io.utils.read_exactly,
which gives up after 101 partial reads (P5).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Awaitable, Callable, Iterator
from typing import Protocol

import trio

KIND_REQUEST = 1
KIND_DATA = 2
KIND_END = 3
KIND_ERROR = 4

ERR_HANDLER = 1
ERR_TOO_LARGE = 2
ERR_BUSY = 3

MAX_DATA_FRAME = 1 << 20
_HEADER = struct.Struct(">BI")
_U64 = struct.Struct(">Q")


class FramingError(Exception):
    """The peer sent bytes that do not follow the protocol (wrong kind, oversized frame, bad END)."""


class LimitExceeded(FramingError):
    """The peer sent more response bytes than the limit we announced."""


class HandlerFailed(Exception):
    """Our handler raised; the requester already got an ERROR frame."""


class RemoteError(Exception):
    """The peer answered with an ERROR frame; the stream ended at a frame boundary."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class ByteStream(Protocol):
    async def read(self, n: int | None = None) -> bytes: ...

    async def write(self, data: bytes) -> None: ...


async def read_exact(stream: ByteStream, n: int) -> bytes:
    """Read exactly ``n`` bytes; a short stream raises EOFError (libp2p's StreamEOF is one)."""
    buf = bytearray()
    while len(buf) < n:
        chunk = await stream.read(n - len(buf))
        if not chunk:
            raise EOFError(f"stream ended after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def read_frame(stream: ByteStream, max_payload: int) -> tuple[int, bytes]:
    """Read one frame; the length is checked before the payload is read so a peer cannot make us buffer."""
    kind, length = _HEADER.unpack(await read_exact(stream, _HEADER.size))
    if kind not in (KIND_REQUEST, KIND_DATA, KIND_END, KIND_ERROR):
        raise FramingError(f"unknown frame kind {kind}")
    if length > max_payload:
        raise FramingError(f"frame of {length} bytes exceeds limit {max_payload}")
    return kind, await read_exact(stream, length) if length else b""


async def write_frame(stream: ByteStream, kind: int, payload: bytes | memoryview) -> None:
    await stream.write(_HEADER.pack(kind, len(payload)) + bytes(payload))


def encode_request(max_response: int, request: bytes) -> bytes:
    return _U64.pack(max_response) + request


def decode_request(payload: bytes) -> tuple[int, bytes]:
    if len(payload) < _U64.size:
        raise FramingError("request frame too short")
    return _U64.unpack_from(payload)[0], payload[_U64.size :]


def encode_end(total: int, digest: bytes) -> bytes:
    return _U64.pack(total) + digest


def decode_end(payload: bytes) -> tuple[int, bytes]:
    if len(payload) != _U64.size + 32:
        raise FramingError("malformed end frame")
    return _U64.unpack_from(payload)[0], payload[_U64.size :]


def encode_error(code: int, reason: str) -> bytes:
    return bytes([code]) + reason.encode("utf-8", "replace")[:1024]


def decode_error(payload: bytes) -> tuple[int, str]:
    if not payload:
        return ERR_HANDLER, "unspecified remote error"
    return payload[0], payload[1:].decode("utf-8", "replace")


def response_frames(data: bytes) -> Iterator[tuple[int, bytes | memoryview]]:
    """DATA frames of ``data`` followed by the END frame carrying its size and SHA-256."""
    view, digest = memoryview(data), hashlib.sha256()
    for start in range(0, len(view), MAX_DATA_FRAME):
        frame = view[start : start + MAX_DATA_FRAME]
        digest.update(frame)
        yield KIND_DATA, frame
    yield KIND_END, encode_end(len(data), digest.digest())


async def fetch(stream: ByteStream, request: bytes, limit: int) -> bytes:
    """Client side: send ``request``, return the verified response.

    Raises RemoteError, LimitExceeded, FramingError (integrity too) or EOFError/stream errors.
    """
    await write_frame(stream, KIND_REQUEST, encode_request(limit, request))
    body, digest = bytearray(), hashlib.sha256()
    while True:
        kind, data = await read_frame(stream, MAX_DATA_FRAME)
        if kind == KIND_DATA:
            if len(body) + len(data) > limit:
                raise LimitExceeded(f"response exceeds {limit} bytes")
            body += data
            digest.update(data)
        elif kind == KIND_END:
            total, sha = decode_end(data)
            if total != len(body) or sha != digest.digest():
                raise FramingError(f"integrity check failed: {len(body)} bytes received, {total} announced")
            return bytes(body)
        elif kind == KIND_ERROR:
            raise RemoteError(*decode_error(data))
        else:
            raise FramingError(f"unexpected frame kind {kind}")


async def serve(stream: ByteStream, handle: Callable[[bytes], Awaitable[bytes]], *, max_request: int,
                max_response: int, timeout: float) -> None:
    """Server side: read one request, answer with ``handle(request)`` or an ERROR frame.

    A failing ``handle`` becomes an ERROR frame naming only the exception type (its message may hold
    local details); stream errors propagate to the caller.
    """
    with trio.fail_after(timeout):
        kind, payload = await read_frame(stream, max_request + _U64.size)
    if kind != KIND_REQUEST:
        raise FramingError("expected a request frame")
    client_limit, request = decode_request(payload)
    limit = min(client_limit, max_response)
    try:
        with trio.fail_after(timeout):
            response = await handle(request)
        if not isinstance(response, bytes | bytearray):
            raise TypeError(f"handler returned {type(response).__name__}, not bytes")
    except Exception as exc:
        await refuse(stream, ERR_HANDLER, f"handler failed: {type(exc).__name__}", timeout)
        raise HandlerFailed(repr(exc)) from exc
    if len(response) > limit:
        await refuse(stream, ERR_TOO_LARGE, f"response of {len(response)} bytes exceeds limit {limit}", timeout)
        return
    for frame_kind, frame in response_frames(bytes(response)):
        # Yamux already gives up after 5 s without a window update (P8); this also bounds the rest.
        with trio.fail_after(timeout):
            await write_frame(stream, frame_kind, frame)


async def refuse(stream: ByteStream, code: int, reason: str, timeout: float) -> None:
    with trio.fail_after(timeout):
        await write_frame(stream, KIND_ERROR, encode_error(code, reason))
