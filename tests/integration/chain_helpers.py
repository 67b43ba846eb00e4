"""A local anvil chain for tests with extra flags (e.g. an old hardfork): 127.0.0.1, free port, stopped by pid."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def find_anvil() -> str | None:
    from node.evm.anvil import find_anvil as find

    found = find()
    return None if found is None else str(found)


@dataclass
class Anvil:
    proc: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def web3(self) -> Any:
        from web3 import Web3

        return Web3(Web3.HTTPProvider(self.url, request_kwargs={"timeout": 10}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_anvil(*extra: str) -> Iterator[Anvil]:
    binary = find_anvil()
    if binary is None:
        pytest.skip("anvil is not installed (make installs it)")
    port = free_port()
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port), "--silent", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    chain = Anvil(proc, port)
    try:
        w3 = chain.web3()
        deadline = time.monotonic() + 20
        while True:
            try:
                _ = w3.eth.chain_id
                break
            except Exception:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("anvil did not start") from None
                time.sleep(0.1)
        yield chain
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


PING_SOURCE = """
# pragma version ^0.4.0
event Ping:
    who: indexed(address)
    n: uint256
    tag: bytes32

@external
def ping(n: uint256, tag: bytes32):
    log Ping(who=msg.sender, n=n, tag=tag)
"""


def deploy_ping(w3: Any) -> Any:
    """A tiny contract with one event, for the follower's tests (compiled here by vyper, offline)."""
    import vyper

    out = vyper.compile_code(PING_SOURCE, output_formats=["bytecode", "abi"])
    factory = w3.eth.contract(abi=out["abi"], bytecode=out["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor().transact({"from": w3.eth.accounts[0]}),
                                                  timeout=30)
    return w3.eth.contract(address=receipt.contractAddress, abi=out["abi"])
