"""Node configuration: one TOML file per node (``pol node --config NODE.toml``).

::

    role = "verifier"            # or "prover"
    key = "keys/v0.json"         # pol.keyfile key file (BLS key + libp2p seed)
    genesis = "genesis.msgpack"  # protocol.genesis.encode_genesis bytes
    data_dir = "v0"              # SQLite database, checkpoints, proofs, log
    listen_port = 41000          # libp2p TCP port on 127.0.0.1 (0 = any)
    http_port = 42000            # JSON API on 127.0.0.1 (0 = any)
    bootstrap = ["/ip4/127.0.0.1/tcp/41000/p2p/12D3Koo..."]
    log_file = "v0/node.log"     # optional
    log_level = "INFO"
    # prover only
    prove_tasks = ["<task id hex>"]   # tasks this prover claims ("*" = any open task)
    cheat = ""                        # "" honest, "tamper": alters one checkpoint and re-signs
    # optional: tick_s = 0.5, sync_interval_s = 2.0, fetch_timeout_s = 10.0,
    # chunk_bytes = 0 (tensor bytes per /pol/chunk/1 request, 1..1048576; 0 = 1 MiB - 16 KiB)
    # settlement on an EVM chain (node.onchain; without rpc_url the node folds gossip into a local
    # ledger, a model for tests that is NOT for money):
    rpc_url = "http://127.0.0.1:8545"  # JSON-RPC over HTTP
    chain_id = 31337
    contract = "0x…"                   # the settlement contract's address
    eth_key = "keys/v0.eth.json"       # the operator's account (pol chain key-new; or a file of 64 hex digits)
    confirmations = 2                  # blocks an event must be buried under before the node uses it
    chain_poll_s = 1.0
    chain_start_block = 0              # the contract's deployment block: events before it need no reading

Relative paths are relative to the config file's directory.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROLES = ("prover", "verifier")
CHEATS = ("", "tamper")


class ConfigError(Exception):
    """The node configuration is unusable (operator error)."""


@dataclass(frozen=True)
class NodeConfig:
    role: str
    key: Path
    genesis: Path
    data_dir: Path
    listen_port: int = 0
    http_port: int = 0
    bootstrap: tuple[str, ...] = ()
    log_file: Path | None = None
    log_level: str = "INFO"
    prove_tasks: tuple[str, ...] = ()
    cheat: str = ""
    tick_s: float = 0.5
    sync_interval_s: float = 2.0
    fetch_timeout_s: float = 10.0
    chunk_bytes: int = 0  # tensor bytes per chunk request; 0 = node.chunks.CHUNK_BYTES (1 MiB frames)
    rpc_url: str = ""  # settlement chain; "" = gossip-folded ledger (a model, not for money)
    chain_id: int = 0
    contract: str = ""
    eth_key: Path | None = None
    confirmations: int = 2
    chain_poll_s: float = 1.0
    chain_start_block: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def load_config(path: Path) -> NodeConfig:
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    base = Path(path).resolve().parent

    def rel(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{path}: {key} must be a non-empty string")
        p = Path(value)
        return p if p.is_absolute() else base / p

    known = {"role", "key", "genesis", "data_dir", "listen_port", "http_port", "bootstrap", "log_file",
             "log_level", "prove_tasks", "cheat", "tick_s", "sync_interval_s", "fetch_timeout_s",
             "chunk_bytes"}
    known |= CHAIN_KEYS
    for key in ("role", "key", "genesis", "data_dir"):
        if key not in raw:
            raise ConfigError(f"{path}: missing required key {key!r}")
    role = raw["role"]
    if role not in ROLES:
        raise ConfigError(f"{path}: role must be one of {ROLES}, not {role!r}")
    cheat = raw.get("cheat", "")
    if cheat not in CHEATS:
        raise ConfigError(f"{path}: cheat must be one of {CHEATS}")
    try:
        chunk_bytes = int(raw.get("chunk_bytes", 0))
        if not 0 <= chunk_bytes <= 1 << 20:
            raise ValueError("chunk_bytes must be 0 (default) or 1..1048576")
        return NodeConfig(
            role=role, key=rel(raw["key"], "key"), genesis=rel(raw["genesis"], "genesis"),
            data_dir=rel(raw["data_dir"], "data_dir"),
            listen_port=int(raw.get("listen_port", 0)), http_port=int(raw.get("http_port", 0)),
            bootstrap=tuple(str(b) for b in raw.get("bootstrap", [])),
            log_file=rel(raw["log_file"], "log_file") if raw.get("log_file") else None,
            log_level=str(raw.get("log_level", "INFO")).upper(),
            prove_tasks=tuple(str(t) for t in raw.get("prove_tasks", [])), cheat=cheat,
            tick_s=float(raw.get("tick_s", 0.5)), sync_interval_s=float(raw.get("sync_interval_s", 2.0)),
            fetch_timeout_s=float(raw.get("fetch_timeout_s", 10.0)),
            chunk_bytes=chunk_bytes,
            **_chain_fields(raw, rel, path),
            extra={k: v for k, v in raw.items() if k not in known},
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None


CHAIN_KEYS = {"rpc_url", "chain_id", "contract", "eth_key", "confirmations", "chain_poll_s", "chain_start_block"}


def _chain_fields(raw: dict[str, Any], rel: Any, path: Path) -> dict[str, Any]:
    """The settlement-chain keys: all of rpc_url, chain_id and contract, or none of them."""
    if not raw.get("rpc_url"):
        present = sorted(k for k in ("chain_id", "contract", "eth_key") if k in raw)
        if present:
            raise ConfigError(f"{path}: {', '.join(present)} given without rpc_url")
        return {}
    for key in ("chain_id", "contract"):
        if key not in raw:
            raise ConfigError(f"{path}: rpc_url needs {key!r} as well")
    chain_id, confirmations = raw["chain_id"], raw.get("confirmations", 2)
    if not isinstance(chain_id, int) or isinstance(chain_id, bool) or chain_id <= 0:
        raise ConfigError(f"{path}: chain_id must be a positive integer")
    if not isinstance(confirmations, int) or isinstance(confirmations, bool) or not 0 <= confirmations <= 1000:
        raise ConfigError(f"{path}: confirmations must be an integer in 0..1000")
    contract = raw["contract"]
    if not isinstance(contract, str) or not re.fullmatch(r"0x[0-9a-fA-F]{40}", contract):
        raise ConfigError(f"{path}: contract must be a 0x-prefixed 20-byte hex address")
    poll = float(raw.get("chain_poll_s", 1.0))
    start = raw.get("chain_start_block", 0)
    if not isinstance(start, int) or isinstance(start, bool) or start < 0:
        raise ConfigError(f"{path}: chain_start_block must be a block number (integer >= 0)")
    if not 0.05 <= poll <= 60:
        raise ConfigError(f"{path}: chain_poll_s must be in 0.05..60")
    return {"rpc_url": str(raw["rpc_url"]), "chain_id": chain_id, "contract": contract,
            "eth_key": rel(raw["eth_key"], "eth_key") if raw.get("eth_key") else None,
            "confirmations": confirmations, "chain_poll_s": poll, "chain_start_block": start}


def format_config_toml(doc: dict[str, Any]) -> str:
    """Minimal TOML writer for flat documents of str/int/float/bool/list[str] (the devnet's configs)."""
    lines = []
    for key, value in doc.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(_quote(str(v)) for v in value) + "]"
        else:
            text = _quote(str(value))
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
