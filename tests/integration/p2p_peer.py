"""A P2PNetwork peer in its own process, for the integration tests (and the tiny harness that drives it).

As a script it prints JSON lines on stdout: ``{"event": "ready", "peer_id", "addrs"}`` once listening,
``{"event": "gossip", ...}`` for every message received and ``{"event": "serving", ...}`` when a blob
response starts. It reads JSON commands on stdin (``{"cmd": "publish", "topic", "data"}`` with hex
data) and exits when stdin closes, so a dying test run never leaves it behind.

Protocols served with ``--serve``: ``/test/echo/1`` (returns the request), ``/test/blob/1`` (request
``{"size", "seed"}`` -> ``blob(size, seed)``), ``/test/fail/1`` (raises), ``/test/slow/1`` (sleeps
``float(request)`` seconds, then answers ``b"late"``).

``--plaintext-dial ADDR`` instead tries to reach ADDR with a host that offers only /plaintext/2.0.0,
after checking, as a control, that the same dialer does reach a default libp2p host (which offers
plaintext); it prints ``{"event": "dial", "control_ok", "target_ok", "error"}``. It imports libp2p
directly because that is the thing under test: a peer that is not ours.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import queue
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
PROTO_ECHO, PROTO_BLOB, PROTO_FAIL, PROTO_SLOW = "/test/echo/1", "/test/blob/1", "/test/fail/1", "/test/slow/1"


@functools.lru_cache(maxsize=2)  # the benchmark should time the network, not the generator
def blob(size: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(size)


def emit(**event: Any) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


# ------------------------------------------------------------------ harness side (used by the tests)


class PeerProcess:
    """One peer subprocess; every method is bounded in time, ``close()`` always reaps the process."""

    def __init__(self, *args: str, ready_timeout: float = 30.0) -> None:
        self.stderr = tempfile.TemporaryFile()  # noqa: SIM115 - lives as long as the process, closed in close()
        env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr, cwd=REPO, env=env,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.peer_id = ""
        self.addrs: list[str] = []
        if "--plaintext-dial" not in args:
            try:
                ready = self.wait_event(lambda e: e["event"] == "ready", ready_timeout)
            except BaseException:
                self.close()
                raise
            self.peer_id, self.addrs = ready["peer_id"], ready["addrs"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                continue

    def wait_event(self, match: Callable[[dict[str, Any]], bool], timeout: float) -> dict[str, Any]:
        for event in self.seen:
            if match(event):
                return event
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=min(left, 0.2))
            except queue.Empty:
                if self.proc.poll() is not None and self.events.empty():
                    break
                continue
            self.seen.append(event)
            if match(event):
                return event
        raise TimeoutError(f"no matching event after {timeout} s; exit code {self.proc.poll()}; "
                           f"events {self.seen[-5:]}; stderr tail:\n{self.stderr_tail()}")

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())
        self.proc.stdin.flush()

    def stderr_tail(self, n: int = 3000) -> str:
        self.stderr.seek(0)
        return self.stderr.read().decode(errors="replace")[-n:]

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.close()
                self.proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.stderr.close()


# ------------------------------------------------------------------ peer side


async def run_peer(args: argparse.Namespace) -> None:
    from node import _p2p_framing
    from node.p2p import P2PConfig, P2PNetwork

    if args.throttle_s > 0:
        import trio

        original = _p2p_framing.write_frame

        async def slow_write_frame(stream: Any, kind: int, payload: bytes | memoryview) -> None:
            if kind == _p2p_framing.KIND_DATA:
                await trio.sleep(args.throttle_s)
            await original(stream, kind, payload)

        _p2p_framing.write_frame = slow_write_frame  # type: ignore[assignment]

    def validator(data: bytes) -> None:
        if data.startswith(args.reject_prefix.encode()):
            raise ValueError("rejected by test validator")

    config = P2PConfig(
        identity_seed=bytes.fromhex(args.seed), bootstrap=tuple(args.bootstrap), topics=tuple(args.topic),
        max_response_bytes=args.max_response, request_timeout_s=20.0,
    )
    validators = {topic: validator for topic in args.topic} if args.reject_prefix else None
    net = P2PNetwork(config, validators=validators)

    if args.serve:
        async def echo(peer: str, request: bytes) -> bytes:
            return request

        async def blob_handler(peer: str, request: bytes) -> bytes:
            spec = json.loads(request)
            emit(event="serving", protocol=PROTO_BLOB, bytes=spec["size"])
            return blob(spec["size"], spec["seed"])

        async def fail(peer: str, request: bytes) -> bytes:
            raise RuntimeError("this handler always fails")

        async def slow(peer: str, request: bytes) -> bytes:
            await asyncio.sleep(float(request))
            return b"late"

        for protocol, handler in ((PROTO_ECHO, echo), (PROTO_BLOB, blob_handler), (PROTO_FAIL, fail),
                                  (PROTO_SLOW, slow)):
            net.set_request_handler(protocol, handler)

    await net.start()
    emit(event="ready", peer_id=net.peer_id, addrs=net.listen_addrs)

    async def forward_gossip() -> None:
        while True:
            msg = await net.incoming.get()
            emit(event="gossip", topic=msg.topic, data=msg.data.hex(), from_peer=msg.from_peer)

    forwarder = asyncio.create_task(forward_gossip())
    loop = asyncio.get_running_loop()
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            if command["cmd"] == "publish":
                await net.publish(command["topic"], bytes.fromhex(command["data"]))
            elif command["cmd"] == "peers":
                emit(event="peers", peers=net.connected_peers())
    finally:
        forwarder.cancel()
        await net.stop()


async def plaintext_dial(target: str) -> dict[str, Any]:
    import multiaddr
    import trio
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.security.insecure.transport import PLAINTEXT_PROTOCOL_ID, InsecureTransport

    key_pair = create_new_key_pair(os.urandom(32))
    dialer = new_host(key_pair=key_pair, sec_opt={PLAINTEXT_PROTOCOL_ID: InsecureTransport(key_pair)})
    control = new_host(key_pair=create_new_key_pair(os.urandom(32)))  # default security: offers plaintext
    loopback = multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")
    result: dict[str, Any] = {"control_ok": False, "target_ok": False, "error": ""}
    async with dialer.run(listen_addrs=[loopback]), control.run(listen_addrs=[loopback]):
        control_addr = f"{control.get_transport_addrs()[0]}/p2p/{control.get_id()}"
        for key, addr in (("control_ok", control_addr), ("target_ok", target)):
            try:
                with trio.fail_after(5):
                    await dialer.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                result[key] = True
            except Exception as exc:  # noqa: BLE001 - the failure is the observation
                result["error"] += f"{key}: {exc!r} "
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", default=os.urandom(32).hex())
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--topic", action="append", default=[])
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--throttle-s", type=float, default=0.0, help="delay before each DATA frame sent")
    parser.add_argument("--reject-prefix", default="", help="gossip validator rejects data with this prefix")
    parser.add_argument("--max-response", type=int, default=256 << 20)
    parser.add_argument("--plaintext-dial", default="")
    args = parser.parse_args()
    if args.plaintext_dial:
        import trio

        emit(event="dial", **trio.run(plaintext_dial, args.plaintext_dial))
        return
    asyncio.run(run_peer(args))


if __name__ == "__main__":
    main()
