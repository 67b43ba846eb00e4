"""A local EVM chain for tests and the devnet: anvil's platform binary, on 127.0.0.1.

``make`` installs ``@foundry-rs/anvil`` with npm into ``tools/anvil/node_modules``. We run the
platform binary directly, never through ``npx``: killing an npx pid leaves anvil running.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.errors import PolError

log = logging.getLogger(__name__)

ANVIL_ENV = "POL_ANVIL"  # explicit path to an anvil binary; overrides the project's install
TOOLS_DIR = Path(__file__).resolve().parents[2] / "tools" / "anvil"
# EIP-2537 pairing of one (infinity, infinity) pair: 384 zero bytes in, a 32-byte 1 out. A chain
# without the precompile answers an empty success, which must never pass for a valid check.
_PAIRING = "0x000000000000000000000000000000000000000f"
_PAIRING_IDENTITY = "0x" + "00" * 384


class ChainError(PolError):
    """Our side or the environment: no anvil binary, a chain that did not start or answer."""


class MissingPrecompiles(ChainError):
    """The chain has no EIP-2537 BLS12-381 precompiles; the settlement contract cannot run on it."""


def _platform_package() -> str:
    system = {"Linux": "linux", "Darwin": "darwin"}.get(platform.system(), platform.system().lower())
    machine = {"x86_64": "amd64", "AMD64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(
        platform.machine(), platform.machine())
    return f"anvil-{system}-{machine}"


def find_anvil() -> Path | None:
    """The anvil binary: ``$POL_ANVIL``, the project's npm install, or ``anvil`` on PATH."""
    explicit = os.environ.get(ANVIL_ENV)
    if explicit:
        return Path(explicit) if Path(explicit).is_file() else None
    local = TOOLS_DIR / "node_modules" / "@foundry-rs" / _platform_package() / "bin" / "anvil"
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which("anvil")
    return Path(found) if found else None


def get_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def rpc_call(url: str, method: str, params: list[Any], timeout: float = 5.0) -> Any:
    """One JSON-RPC call without web3 (used before a chain is known to be up)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise ChainError(f"{method}: {answer['error'].get('message', answer['error'])}")
    return answer.get("result")


def has_eip2537(url: str) -> bool:
    """True if the chain's pairing precompile (0x0f) answers a 32-byte 1 for the identity pair."""
    try:
        out = rpc_call(url, "eth_call", [{"to": _PAIRING, "data": _PAIRING_IDENTITY}, "latest"])
    except ChainError:
        return False
    return isinstance(out, str) and out == "0x" + "00" * 31 + "01"


def check_eip2537(url: str) -> None:
    """Raise ``MissingPrecompiles`` naming the chain unless it has the BLS12-381 precompiles."""
    if not has_eip2537(url):
        raise MissingPrecompiles(
            f"chain at {url} has no EIP-2537 BLS12-381 precompiles (pairing call to 0x0f gave no 32-byte "
            f"answer); the settlement contract needs a Prague or later chain")


@dataclass
class AnvilProcess:
    """A running anvil; ``stop()`` ends it by pid (also on context exit)."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    chain_id: int

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout)

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_anvil(port: int | None = None, chain_id: int = 31337, accounts: int = 10,
                balance_eth: int = 10_000, block_time: float | None = None, timeout: float = 20.0,
                binary: Path | None = None, log_path: Path | None = None,
                extra_args: tuple[str, ...] = ()) -> AnvilProcess:
    """Start anvil on 127.0.0.1 (a free port unless given) and wait until it answers."""
    binary = binary or find_anvil()
    if binary is None:
        raise ChainError("anvil is not installed: run `make` (npm installs @foundry-rs/anvil into tools/anvil) "
                         f"or set {ANVIL_ENV}")
    for attempt in range(3):
        chosen = port or get_free_port()
        cmd = [str(binary), "--host", "127.0.0.1", "--port", str(chosen), "--chain-id", str(chain_id),
               "--accounts", str(accounts), "--balance", str(balance_eth)]
        if block_time is not None:
            cmd += ["--block-time", str(block_time)]
        cmd += list(extra_args)
        out = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            if log_path:
                out.close()  # type: ignore[union-attr]
        url = f"http://127.0.0.1:{chosen}"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break  # port taken between our probe and anvil's bind: try another
            try:
                got = int(rpc_call(url, "eth_chainId", [], timeout=1.0), 16)
                log.info("anvil pid %d on %s (chain id %d)", process.pid, url, got)
                return AnvilProcess(url, chosen, process, got)
            except (OSError, urllib.error.URLError, ChainError, ValueError):
                time.sleep(0.05)
        else:
            AnvilProcess(url, chosen, process, chain_id).stop()
            raise ChainError(f"anvil did not answer on {url} within {timeout} s")
        if port is not None:
            break
        log.warning("anvil exited at start (attempt %d); retrying on another port", attempt + 1)
    raise ChainError(f"anvil ({binary}) exited at start-up")
