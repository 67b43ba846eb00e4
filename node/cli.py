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
    d.add_argument("--timeout", type=float, default=300.0, help="seconds until the devnet gives up (default 300)")
    d.add_argument("--keep", action="store_true", help="leave the nodes running until Ctrl-C")
    d.add_argument("--json", action="store_true")
    d.add_argument("--gossip-ledger", action="store_true",
                   help="settle by folding gossip into each node's own ledger: a model for tests, NOT for money "
                        "(default: settle on a local anvil chain)")
    d.set_defaults(func=cmd_devnet)


def cmd_node(args: argparse.Namespace) -> int:
    from .config import load_config

    from .startup import check_files

    config = load_config(Path(args.config))
    check_files(config)
    setup_node_logging(config, getattr(args, "verbose", 0), args.log_format)
    if args.check:
        return _check_node(config)
    # An unusable settlement chain raises node.onchain.ChainError (a PolError): one line, exit 2.
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
    net = chain = None
    say = (lambda msg: print(msg, file=sys.stderr)) if args.json else print
    try:
        net = dn.create(directory, args.verifiers, args.provers, args.cheaters, steps=args.steps)
        say(f"devnet in {directory}: {args.verifiers} verifiers, {args.provers} provers ({args.cheaters} cheating)")
        if args.gossip_ledger:
            say("settlement: gossip-folded ledgers (a model for tests; NOT for money)")
        else:
            from . import devnet_chain as dc

            chain = dc.start_chain(net)
            setup = dc.register_verifiers(chain, net)
            say(f"settlement: anvil at {chain.url}, contract {chain.contract} (deploy gas {chain.deploy_gas}); "
                f"{len(setup)} verifiers staked")
        for node in net.nodes:
            dn.start_node(net, node)
        dn.wait_ready(net, net.nodes, deadline)
        say(f"nodes up after {time.monotonic() - started:.1f} s; posting {len(net.tasks)} tasks")
        posted = dc.post_tasks_on_chain(chain, net, dn.REWARD, int(time.time()) + 3600) if chain else {}
        if chain is not None:  # nodes take a task's spec once the chain holds the task
            dc.wait_tasks_seen(net, posted, deadline)
        dn.post_tasks(net, net.verifiers[0])
        claims = dn.wait_settled(net, net.verifiers[0], deadline)
        dn.wait_consistent(net, min(deadline, time.monotonic() + 15))
        report = build_report(net, claims, time.monotonic() - started)
        if chain is not None:
            add_chain_report(report, net, chain, claims, posted, setup)
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
        if chain is not None:
            dc.stop_chain(chain)
        if not args.dir:  # a directory we made: removed after a clean run, kept (and named) after a failure
            if ok and not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                print(f"pol devnet: logs kept in {directory}", file=sys.stderr)


def add_chain_report(report: dict[str, Any], net: Any, chain: Any, claims: list[dict[str, Any]], posted: dict[str, Any],
                     setup: list[dict[str, Any]]) -> None:
    """Per claim: each settlement step's transaction and gas, and claim-to-payout latency in block time;
    per node: the gas of the transactions it sent (the network's cost per claim)."""
    from . import devnet as dn
    from . import devnet_chain as dc

    by_id = {c["claim_id"]: c for c in claims}
    for row in report["claims"]:
        c = by_id[row["claim"]]
        steps = [dict(posted[c["task_id"]])] if c["task_id"] in posted else []
        for t in c.get("chain_txs", []):
            if t["event"] == "TaskPosted":
                continue
            steps.append({"step": t["event"], "tx": t["tx"], "block": t["block"], "gas": dc.get_receipt_gas(chain, t["tx"])})
        row["chain_steps"] = steps
        row["gas_total"] = sum(s["gas"] or 0 for s in steps)
        reg, done = c.get("registered_block_time"), c.get("settled_block_time")
        row["block_seconds_to_payout"] = None if reg is None or done is None else done - reg
    gas_by_node: dict[str, Any] = {"requester": sum(s["gas"] for s in posted.values())}
    reverted = 0
    for n in net.nodes:
        try:
            doc = dn.http_get(n, "/settlement")
            gas_by_node[n.name] = sum(t["gas_used"] for t in doc["txs"])
            reverted += doc["reverted_when_mined"]
        except (OSError, ValueError, KeyError):
            gas_by_node[n.name] = None
    total = sum(g for g in gas_by_node.values() if g is not None)
    report["settlement"] = {"chain": "anvil", "url": chain.url, "contract": chain.contract, "deploy_tx": chain.deploy_tx,
                            "deploy_gas": chain.deploy_gas, "registrations": setup, "gas_by_node": gas_by_node,
                            "network_gas_per_claim": total // max(1, len(claims)),
                            "reverted_when_mined": reverted}


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
        for step in r.get("chain_steps", []):
            lines.append(f"    {step['step']:<18} tx {step['tx']}  gas {step['gas']}")
        if "gas_total" in r:
            lines.append(f"    total gas {r['gas_total']}; claim registered to settled in "
                         f"{r['block_seconds_to_payout']} s of block time")
    if "settlement" in report:
        st = report["settlement"]
        lines.append(f"settled on chain: contract {st['contract']} at {st['url']}; gas sent per node {st['gas_by_node']}; "
                     f"network gas per claim {st['network_gas_per_claim']}; transactions that lost a race on chain "
                     f"{st['reverted_when_mined']}")
    else:
        lines.append("settled by gossip-folded ledgers (a model for tests; NOT for money)")
    lines.append(f"(* = cheating prover)  ledgers consistent across verifiers: {report['consistent']}; "
                 f"total money {report['total_money']}; wall time {report['seconds']} s; logs in {report['directory']}")
    return "\n".join(lines)
