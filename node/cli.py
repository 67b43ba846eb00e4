"""`pol node` and `pol devnet` subcommands (registered into the main parser by pol.cli)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the network subcommands to ``sub``."""
    n = sub.add_parser("node", help="run a prover or verifier node (libp2p + HTTP API + SQLite ledger)")
    n.add_argument("--config", required=True, help="node TOML file (see docs/operators.md)")
    n.add_argument("--log-format", choices=("text", "json"), default="text",
                   help="terminal and log file lines: text for people, json (one object a line) for machines")
    n.add_argument("--check", action="store_true", help="check the config, key and genesis, then exit")
    n.set_defaults(func=cmd_node)

    d = sub.add_parser("devnet", help="run a local network of node processes and settle honest and cheating claims")
    d.add_argument("--verifiers", type=int, default=4)
    d.add_argument("--provers", type=int, default=2)
    d.add_argument("--cheaters", type=int, default=1)
    d.add_argument("--dir", default=None, help="fresh directory for keys, genesis, databases and logs")
    d.add_argument("--steps", type=int, default=40, help="training steps of each devnet task (default 40)")
    d.add_argument("--timeout", type=float, default=150.0, help="seconds until the devnet gives up (default 150)")
    d.add_argument("--keep", action="store_true", help="leave the nodes running until Ctrl-C")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_devnet)


def cmd_node(args: argparse.Namespace) -> int:
    from .config import load_config

    from .startup import check_files

    config = load_config(Path(args.config))
    check_files(config)
    setup_node_logging(config, getattr(args, "verbose", 0), args.log_format)
    if args.check:
        return _check_node(config)
    return asyncio.run(_run_node(config))


def _check_node(config: Any) -> int:
    """``pol node --check``: everything the node verifies before it binds a port."""
    from .app import Node
    from .startup import check_membership

    node = Node(config)
    try:
        node.replay_log()
        check_membership(node)
    finally:
        node.store.close()
    print(f"{config.config_file}: ok ({config.role}, key {node.pubkey.hex()[:16]}…)")
    return 0


class _ConsoleFilter(logging.Filter):
    """The terminal shows event lines and warnings; ``-v`` adds the node's info lines, ``-vv`` debug."""

    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.level = logging.WARNING - 10 * min(verbose, 2)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "pol.events":
            return record.levelno >= logging.INFO or self.level <= logging.DEBUG
        if record.name.startswith(("libp2p", "multiaddr")) and self.level >= logging.WARNING:
            # py-libp2p logs every failed dial as ERROR (a peer not up yet): node.log keeps them.
            return record.levelno >= logging.CRITICAL
        return record.levelno >= self.level


class _TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
        self._plain = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        return self._plain.format(record) if record.name == "pol.events" else super().format(record)


def setup_node_logging(config: Any, verbose: int, log_format: str) -> None:
    from .events import JsonFormatter

    def formatter() -> logging.Formatter:
        return JsonFormatter() if log_format == "json" else _TextFormatter()

    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    console = logging.StreamHandler(sys.stderr)
    console.addFilter(_ConsoleFilter(verbose))
    console.setFormatter(formatter())
    root.addHandler(console)
    file_level = logging.getLevelName(config.log_level)
    if config.log_file is not None:
        config.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(config.log_file)
        handler.setLevel(file_level)
        handler.setFormatter(formatter())
        root.addHandler(handler)
    root.setLevel(min(file_level, logging.INFO, logging.WARNING - 10 * min(verbose, 2)))


async def _run_node(config: Any) -> int:
    from .app import Node

    node = Node(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, node.stop)
    await node.run()
    return 0


def cmd_devnet(args: argparse.Namespace) -> int:
    from . import devnet as dn

    # Resolved once: child nodes run with the devnet directory as their working directory.
    directory = Path(args.dir).resolve() if args.dir else Path(tempfile.mkdtemp(prefix="pol-devnet-"))
    ok = False
    started = time.monotonic()
    deadline = started + args.timeout
    net = None
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        net = dn.create(directory, args.verifiers, args.provers, args.cheaters, steps=args.steps)
        say(f"devnet in {directory}: {args.verifiers} verifiers, {args.provers} provers ({args.cheaters} cheating)")
        for node in net.nodes:
            dn.start_node(net, node)
        dn.wait_ready(net, net.nodes, deadline)
        say(f"nodes up after {time.monotonic() - started:.1f} s; posting {len(net.tasks)} tasks")
        dn.post_tasks(net, net.verifiers[0])
        claims = dn.wait_settled(net, net.verifiers[0], deadline)
        dn.wait_consistent(net, min(deadline, time.monotonic() + 15))
        report = build_report(net, claims, time.monotonic() - started)
        if args.json:
            print(json.dumps(report, indent=2, sort_keys=True))
        else:
            print(format_table(report))
        ok = bool(report["consistent"])
        if args.keep:
            say("nodes still running; Ctrl-C to stop. Dashboards: "
                + ", ".join(f"{n.name} {n.url}/" for n in net.nodes))
            while True:
                time.sleep(1)
        return 0 if report["consistent"] else 1
    except dn.DevnetError as exc:
        print(f"pol devnet: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("pol devnet: interrupted, stopping nodes", file=sys.stderr)
        return 130
    finally:
        if net is not None:
            dn.stop_all(net)
        if not args.dir:  # a directory we made: removed after a clean run, kept (and named) after a failure
            if ok and not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                print(f"pol devnet: logs kept in {directory}", file=sys.stderr)


def build_report(net: Any, claims: list[dict[str, Any]], elapsed: float) -> dict[str, Any]:
    from . import devnet as dn

    provers = {p.key.public_key.hex(): p for p in net.provers}
    ledgers = {}
    for v in net.nodes:
        try:
            ledgers[v.name] = dn.http_get(v, "/ledger")
        except (OSError, ValueError):
            ledgers[v.name] = None
    def money_view(ledger: dict[str, Any] | None) -> Any:
        return None if ledger is None else (ledger["balances"], ledger["stakes"], ledger["claims"], ledger["burned"])
    views = [money_view(ledgers[v.name]) for v in net.verifiers]
    rows = []
    for c in sorted(claims, key=lambda c: provers[c["prover"]].name if c["prover"] in provers else c["prover"]):
        p = provers.get(c["prover"])
        verdict = {"paid": "accept", "accepted": "accept", "slashed": "reject"}.get(c["status"], c["status"])
        if c["status"] == "paid":
            outcome = f"escrow {c['reward']} released to prover"
        elif c["status"] == "slashed":
            outcome = f"prover bond {c['bond']} slashed"
        else:
            outcome = c["status"]
        rows.append({
            "claim": c["claim_id"], "prover": p.name if p else c["prover"][:12],
            "cheating": bool(p and p.cheat), "status": c["status"],
            "verdict": verdict,
            "votes": f"{c['votes_accept']} accept / {c['votes_reject']} reject",
            "certificate": "; ".join(f"{x['verdict']} by {x['signers']}" for x in c["certificates"]) or "-",
            "dispute": c["dispute"], "outcome": outcome,
            "seconds_to_certificate": c["seconds_to_certificate"],
            "seconds_to_settlement": None if c["settled_at"] is None else round(c["settled_at"] - c["announced_at"], 3),
        })
    return {"claims": rows, "seconds": round(elapsed, 1), "directory": str(net.directory),
            "consistent": all(v == views[0] and v is not None for v in views),
            "total_money": sorted({(lg or {}).get("total_money", -1) for lg in ledgers.values()}),
            "ledger": ledgers.get(net.verifiers[0].name)}


def format_table(report: dict[str, Any]) -> str:
    cols = [("claim", 14), ("prover", 7), ("verdict", 8), ("votes", 20), ("certificate", 30), ("outcome", 34),
            ("t_cert", 7)]
    lines = ["  ".join(name.ljust(w) for name, w in cols)]
    for r in report["claims"]:
        prover = r["prover"] + ("*" if r["cheating"] else "")
        cert = r["certificate"] if len(r["certificate"]) <= 30 else r["certificate"][:29] + "…"
        t = "-" if r["seconds_to_certificate"] is None else f"{r['seconds_to_certificate']:.1f}s"
        outcome = r["outcome"]
        if r["dispute"]:
            outcome += f" (dispute seg {r['dispute']['segment']} {r['dispute']['status']})"
        values = [r["claim"][:12] + "…", prover, r["verdict"], r["votes"], cert, outcome, t]
        lines.append("  ".join(str(v).ljust(w) for v, (_, w) in zip(values, cols)))
    lines.append(f"(* = cheating prover)  ledgers consistent across verifiers: {report['consistent']}; "
                 f"total money {report['total_money']}; wall time {report['seconds']} s; logs in {report['directory']}")
    return "\n".join(lines)
