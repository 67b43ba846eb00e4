"""Node configuration: one TOML file per node (``pol node --config NODE.toml``).

::

    role = "verifier"            # or "prover"
    key = "keys/v0.json"         # pol.keyfile key file (BLS key + libp2p seed)
    genesis = "genesis.msgpack"  # protocol.genesis.encode_genesis bytes
    data_dir = "v0"              # SQLite database, checkpoints, proofs, log
    listen_host = "127.0.0.1"    # p2p interface; "0.0.0.0" = all (see docs/operators.md for the risks)
    listen_port = 41000          # libp2p TCP port (0 = any)
    announce_addrs = ["/ip4/203.0.113.7/tcp/41000"]  # optional: public multiaddrs to give other operators
    http_host = "127.0.0.1"      # JSON API, dashboard and /metrics (keep it private)
    http_port = 42000            # (0 = any)
    bootstrap = ["/ip4/127.0.0.1/tcp/41000/p2p/12D3Koo..."]
    log_file = "v0/node.log"     # optional
    log_level = "INFO"
    # prover only
    prove_tasks = ["<task id hex>"]   # tasks this prover claims ("*" = any open task)
    cheat = ""                        # "" honest, "tamper": alters one checkpoint and re-signs
    # optional: tick_s = 0.5, sync_interval_s = 2.0, fetch_timeout_s = 10.0,
    # fetch_chunks_per_s = 0 (pace of /pol/chunk/2 requests, 512 KiB each; 0 = as fast as holders answer)
    # settlement on an EVM chain (node.onchain; without rpc_url the node folds gossip into a local
    # ledger, a model for tests that is NOT for money):
    rpc_url = "http://127.0.0.1:8545"  # JSON-RPC over HTTP
    chain_id = 31337
    contract = "0x…"                   # the settlement contract's address
    eth_key = "keys/v0.eth.json"       # the operator's account (pol chain key-new; or a file of 64 hex digits)
    confirmations = 2                  # blocks an event must be buried under before the node uses it
    chain_poll_s = 1.0
    chain_start_block = 0              # the contract's deployment block: events before it need no reading
    [names]                      # optional display names for accounts (dashboard, log lines)
    "<public key hex>" = "alice"

Relative paths (key, genesis, data_dir, log_file) are resolved against the config file's directory,
not the working directory, so a node starts the same from anywhere. Unknown keys are refused.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pol.files import read_regular_text

ROLES = ("prover", "verifier")
CHEATS = ("", "tamper")


class ConfigError(Exception):
    """The node configuration is unusable (operator error)."""


class NodeStartError(ConfigError):
    """The node cannot start as configured: port taken, key not in genesis, ... (operator error)."""


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
    fetch_chunks_per_s: float = 0.0  # chunk requests per second when fetching; 0 = unpaced
    rpc_url: str = ""  # settlement chain; "" = gossip-folded ledger (a model, not for money)
    chain_id: int = 0
    contract: str = ""
    eth_key: Path | None = None
    confirmations: int = 2
    chain_poll_s: float = 1.0
    chain_start_block: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    listen_host: str = "127.0.0.1"  # p2p; 0.0.0.0 = every interface (docs/operators.md: risks)
    http_host: str = "127.0.0.1"  # the HTTP API, dashboard and /metrics
    announce_addrs: tuple[str, ...] = ()  # public multiaddrs others should dial (shown at start-up, /status)
    names: dict[str, str] = field(default_factory=dict)  # public key hex -> display name (dashboard, logs)
    config_file: Path | None = None


# Every key a node config may hold. Unknown keys are refused (a typo must not silently fall back to a
# default); a new option adds its name here and its parsing in ``load_config``.
KNOWN_KEYS: set[str] = {
    "role", "key", "genesis", "data_dir", "listen_host", "listen_port", "http_host", "http_port",
    "announce_addrs", "bootstrap", "log_file", "log_level", "prove_tasks", "cheat", "tick_s",
    "sync_interval_s", "fetch_timeout_s", "fetch_chunks_per_s", "names",
    # settlement chain (see _chain_fields)
    "rpc_url", "chain_id", "contract", "eth_key", "confirmations", "chain_poll_s", "chain_start_block",
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _limit_keys() -> set[str]:
    """The optional resource-limit keys (node/limits.py's NodeLimits fields)."""
    from dataclasses import fields

    from .limits import NodeLimits

    return {f.name for f in fields(NodeLimits)}


def load_config(path: Path) -> NodeConfig:
    """Parse and check a node config; every problem is one ``ConfigError`` line naming the file and key."""
    try:
        if not Path(path).exists():
            raise FileNotFoundError(path)
        raw = tomllib.loads(read_regular_text(path, 1 << 20, ConfigError, f"config file {path}"))
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    base = Path(path).resolve().parent

    def fail(key: str, problem: str) -> ConfigError:
        return ConfigError(f"{path}: key {key!r}: {problem}")

    known = KNOWN_KEYS | _limit_keys()
    unknown = sorted(set(raw) - known)
    if unknown:
        raise fail(unknown[0], f"unknown key (known keys: {', '.join(sorted(known))})")
    for key in ("role", "key", "genesis", "data_dir"):
        if key not in raw:
            raise ConfigError(f"{path}: missing required key {key!r}")

    def rel(key: str) -> Path:
        value = raw[key]
        if not isinstance(value, str) or not value:
            raise fail(key, "must be a non-empty string (a path, relative to the config file's directory)")
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    def integer(key: str, default: int, lo: int, hi: int) -> int:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise fail(key, f"must be an integer in {lo}..{hi}, not {value!r}")
        return value

    def number(key: str, default: float) -> float:
        value = raw.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 3600:
            raise fail(key, f"must be a number of seconds in (0, 3600], not {value!r}")
        return float(value)

    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise fail(key, "must be a list of strings")
        return tuple(value)

    def host(key: str) -> str:
        value = raw.get(key, "127.0.0.1")
        try:
            ipaddress.IPv4Address(value)
        except (ValueError, TypeError):
            raise fail(key, f"must be an IPv4 address such as 127.0.0.1 or 0.0.0.0, not {value!r}") from None
        return str(value)

    def multiaddrs(key: str) -> tuple[str, ...]:
        addrs = strings(key)
        for a in addrs:
            if not a.startswith(("/ip4/", "/ip6/", "/dns4/", "/dns6/", "/dns/")) or "/tcp/" not in a:
                raise fail(key, f"{a!r} is not a TCP multiaddr like /ip4/203.0.113.7/tcp/41000/p2p/12D3Koo...")
        return addrs

    role = raw["role"]
    if role not in ROLES:
        raise fail("role", f"must be one of {', '.join(ROLES)}, not {role!r}")
    cheat = raw.get("cheat", "")
    if cheat not in CHEATS:
        raise fail("cheat", f"must be one of {CHEATS}, not {cheat!r}")
    log_level = str(raw.get("log_level", "INFO")).upper()
    if log_level not in LOG_LEVELS:
        raise fail("log_level", f"must be one of {', '.join(LOG_LEVELS)}, not {raw.get('log_level')!r}")
    names = raw.get("names", {})
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in names.items()):
        raise fail("names", "must be a table of public key hex = \"name\"")
    for k in names:
        try:
            bytes.fromhex(k)
        except ValueError:
            raise fail("names", f"{k[:20]!r} is not a public key in hex") from None
    chunks_per_s = raw.get("fetch_chunks_per_s", 0)
    if isinstance(chunks_per_s, bool) or not isinstance(chunks_per_s, (int, float)) or not 0 <= chunks_per_s <= 1e6:
        raise fail("fetch_chunks_per_s", f"must be a number in [0, 1e6], not {chunks_per_s!r}")
    limits = {k: v for k, v in raw.items() if k in _limit_keys()}
    try:
        from .limits import get_limits

        get_limits(limits)
    except ValueError as exc:
        raise fail(sorted(limits)[0] if len(limits) == 1 else "limits", str(exc)) from None
    try:
        chain = _chain_fields(raw, lambda value, key: rel(key), path)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return NodeConfig(
        role=role, key=rel("key"), genesis=rel("genesis"), data_dir=rel("data_dir"),
        listen_port=integer("listen_port", 0, 0, 65535), http_port=integer("http_port", 0, 0, 65535),
        bootstrap=multiaddrs("bootstrap"),
        log_file=rel("log_file") if raw.get("log_file") else None,
        log_level=log_level, prove_tasks=strings("prove_tasks"), cheat=cheat,
        tick_s=number("tick_s", 0.5), sync_interval_s=number("sync_interval_s", 2.0),
        fetch_timeout_s=number("fetch_timeout_s", 10.0), fetch_chunks_per_s=float(chunks_per_s),
        listen_host=host("listen_host"), http_host=host("http_host"),
        announce_addrs=multiaddrs("announce_addrs"), names={k.lower(): v for k, v in names.items()},
        config_file=Path(path).resolve(),
        extra=limits,
        **chain,
    )


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
    """Minimal TOML writer for str/int/float/bool/list[str] values and flat tables of strings (the
    devnet's and ``pol genesis``'s configs)."""
    lines = []
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}  # TOML tables must follow plain keys
    for key, value in doc.items():
        if key in tables:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, (int, float)):
            text = repr(value)
        elif isinstance(value, (list, tuple)):
            text = "[" + ", ".join(_quote(str(v)) for v in value) + "]"
        else:
            text = _quote(str(value))
        lines.append(f"{key} = {text}")
    for key, table in tables.items():
        lines.append(f"\n[{key}]")
        lines.extend(f"{_quote(str(k))} = {_quote(str(v))}" for k, v in table.items())
    return "\n".join(lines) + "\n"


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
