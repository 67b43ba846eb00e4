"""``pol genesis new|add-verifier|add-account|show`` and ``pol submit-task``: build a network by hand.

``pol submit-task`` signs a task posting and hands it to a node's HTTP API, for networks whose nodes
fold gossip into their ledger (no ``rpc_url``); on a settlement chain ``pol post-task`` escrows the
reward in the contract instead.

A genesis file is built step by step on one machine: ``new`` writes the parameters, then each
verifier operator hands over ``pol keys show --json`` (public key, proof of possession, peer id; never
the secret key) and the coordinator runs ``add-verifier``; requesters and provers get opening
balances with ``add-account``. Every step rewrites the file atomically and checks the result with
``protocol.genesis.validate_genesis``; the genesis id changes with every edit, so it is final
once nodes run (they must all hold the same bytes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from protocol import bls
from protocol.errors import InvalidInput
from protocol.genesis import (
    Account,
    Genesis,
    Params,
    VerifierEntry,
    compute_genesis_id,
    decode_genesis,
    encode_genesis,
    validate_genesis,
    validate_params,
)


class GenesisCliError(Exception):
    """An operator mistake building a genesis or posting a task (exit 2)."""


def _read(path: Path) -> Genesis:
    try:
        return decode_genesis(path.read_bytes())
    except FileNotFoundError:
        raise GenesisCliError(f"genesis file {path} does not exist (create it with `pol genesis new --out {path}`)")\
            from None
    except InvalidInput as exc:
        raise GenesisCliError(f"{path} is not a genesis file: {exc}") from None


def _check(genesis: Genesis) -> None:
    """Everything ``validate_genesis`` checks, except that a draft may still have no verifier."""
    try:
        if genesis.verifiers:
            validate_genesis(genesis)
        else:
            validate_params(genesis.params)
            if not 1 <= len(genesis.network) <= 64 or not genesis.network.isascii():
                raise GenesisCliError("--network must be 1-64 ASCII characters")
    except InvalidInput as exc:
        raise GenesisCliError(f"the genesis would be invalid: {exc}") from None


def _write(path: Path, genesis: Genesis) -> None:
    _check(genesis)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encode_genesis(genesis))
    os.replace(tmp, path)


def _public_key(args: argparse.Namespace) -> tuple[bytes, Any]:
    from .keyfile import load_keyfile

    if args.key:
        key = load_keyfile(Path(args.key))
        return key.public_key, key
    if not args.public_key:
        raise GenesisCliError("give --key FILE (on the key's own machine) or --public-key HEX")
    try:
        pub = bytes.fromhex(args.public_key)
    except ValueError:
        raise GenesisCliError("--public-key must be hex (from `pol keys show --json`)") from None
    if len(pub) != 48:
        raise GenesisCliError(f"--public-key must be 48 bytes (96 hex digits), not {len(pub)}")
    return pub, None


def _positive(value: int, flag: str) -> int:
    if value <= 0:
        raise GenesisCliError(f"{flag} must be positive")
    return value


def describe(genesis: Genesis) -> dict[str, Any]:
    return {
        "network": genesis.network, "genesis_id": compute_genesis_id(genesis).hex(),
        "genesis_time": genesis.genesis_time, "params": dataclasses.asdict(genesis.params),
        "verifiers": [{"index": i, "public_key": v.pubkey.hex(), "stake": v.stake, "peer_id": v.peer_id}
                      for i, v in enumerate(genesis.verifiers)],
        "accounts": [{"public_key": a.pubkey.hex(), "balance": a.balance} for a in genesis.accounts],
        "ready": bool(genesis.verifiers),
    }


def _emit(args: argparse.Namespace, genesis: Genesis, text: str) -> None:
    from .cli import _emit as emit

    emit(args, describe(genesis), text)


def cmd_genesis_new(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not args.force:
        raise GenesisCliError(f"{out} already exists; refusing to overwrite a genesis (--force to replace it)")
    defaults = Params()
    params = dataclasses.replace(
        defaults, challenge_window_s=args.challenge_window, availability_window_s=args.availability_window,
        dispute_window_s=args.dispute_window, prover_bond=args.prover_bond)
    genesis = Genesis(network=args.network, genesis_time=args.genesis_time if args.genesis_time is not None
                      else int(time.time()), params=params, verifiers=(), accounts=())
    _write(out, genesis)
    _emit(args, genesis, f"wrote {out}: network {args.network!r}, no verifiers yet "
          f"(next: `pol genesis add-verifier {out} --key KEY --stake N`)")
    return 0


def cmd_genesis_add_verifier(args: argparse.Namespace) -> int:
    path = Path(args.genesis)
    genesis = _read(path)
    pub, key = _public_key(args)
    if key is not None:
        from node.identity import compute_peer_id

        pop, peer_id = bls.compute_pop(key.bls_secret_key), compute_peer_id(key.node_seed)
    else:
        if not args.pop or not args.peer_id:
            raise GenesisCliError("with --public-key also give --pop HEX and --peer-id ID (from `pol keys show --json`)")
        try:
            pop = bytes.fromhex(args.pop)
        except ValueError:
            raise GenesisCliError("--pop must be hex") from None
        peer_id = args.peer_id
    if any(v.pubkey == pub for v in genesis.verifiers):
        raise GenesisCliError(f"{pub.hex()[:16]}… is already a verifier in {path}")
    entry = VerifierEntry(pub, pop, _positive(args.stake, "--stake"), peer_id)
    genesis = dataclasses.replace(genesis, verifiers=genesis.verifiers + (entry,))
    _write(path, genesis)
    _emit(args, genesis, f"verifier #{len(genesis.verifiers) - 1} {pub.hex()[:16]}… stake {args.stake} added; "
          f"genesis id now {compute_genesis_id(genesis).hex()[:16]}…")
    return 0


def cmd_genesis_add_account(args: argparse.Namespace) -> int:
    path = Path(args.genesis)
    genesis = _read(path)
    pub, _ = _public_key(args)
    if any(a.pubkey == pub for a in genesis.accounts):
        raise GenesisCliError(f"{pub.hex()[:16]}… already has an account in {path}")
    genesis = dataclasses.replace(genesis, accounts=genesis.accounts + (Account(pub, _positive(args.balance,
                                                                                                "--balance")),))
    _write(path, genesis)
    _emit(args, genesis, f"account {pub.hex()[:16]}… balance {args.balance} added; "
          f"genesis id now {compute_genesis_id(genesis).hex()[:16]}…")
    return 0


def cmd_genesis_show(args: argparse.Namespace) -> int:
    genesis = _read(Path(args.genesis))
    doc = describe(genesis)
    lines = [f"network      {doc['network']}", f"genesis id   {doc['genesis_id']}",
             f"time         {doc['genesis_time']}",
             "params       " + ", ".join(f"{k}={v}" for k, v in doc["params"].items())]
    lines += [f"verifier #{v['index']}  {v['public_key'][:16]}…  stake {v['stake']}  peer {v['peer_id']}"
              for v in doc["verifiers"]]
    lines += [f"account      {a['public_key'][:16]}…  balance {a['balance']}" for a in doc["accounts"]]
    if not genesis.verifiers:
        lines.append("not ready: a network needs at least one verifier")
    _emit(args, genesis, "\n".join(lines))
    return 0


def cmd_post_task(args: argparse.Namespace) -> int:
    from protocol.ledger import compute_task_posted
    from protocol.messages import encode_message
    from protocol.task import compute_task_id, encode_task

    from .cli import _read_task
    from .keyfile import load_keyfile

    task = _read_task(args.task)
    key = load_keyfile(Path(args.key))
    reward = _positive(args.reward, "--reward")
    expires_at = int(time.time()) + _positive(args.expires_in, "--expires-in")
    posting = compute_task_posted(key.bls_secret_key, encode_task(task), reward, expires_at)
    url = args.node.rstrip("/") + "/tasks"
    headers = {"Content-Type": "application/json"}
    token = args.token
    if args.token_file:
        from pol.files import read_regular_text

        token = read_regular_text(Path(args.token_file), 256, GenesisCliError, f"token file {args.token_file}").strip()
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body = json.dumps({"message": encode_message(posting).hex()}).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            answer = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read() or b"{}")
        except ValueError:
            answer = {}
        raise GenesisCliError(f"{url} refused the posting (HTTP {exc.code}): "
                              f"{answer.get('result') or answer.get('error') or exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise GenesisCliError(f"cannot reach the node at {url}: {getattr(exc, 'reason', exc)}") from None
    doc = {"task_id": compute_task_id(task).hex(), "reward": reward, "expires_at": expires_at,
           "requester": key.public_key.hex(), "result": answer.get("result"), "node": args.node}
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(f"posted task {task.name} ({doc['task_id'][:16]}…) reward {reward}, expires at {expires_at}: "
              f"{doc['result']}")
    return 0 if str(doc["result"]).startswith(("accept", "ignore: duplicate")) else 2


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    g = sub.add_parser("genesis", help="build a genesis file: parameters, verifiers and opening balances")
    gs = g.add_subparsers(dest="genesis_command", required=True)
    d = Params()
    n = gs.add_parser("new", help="write a new genesis with parameters and no verifiers yet")
    n.add_argument("--out", required=True, help="genesis file to write (never overwritten without --force)")
    n.add_argument("--network", required=True, help="network name (1-64 ASCII characters)")
    n.add_argument("--genesis-time", type=int, default=None, help="unix seconds before which nothing is valid "
                   "(default: now)")
    n.add_argument("--challenge-window", type=int, default=d.challenge_window_s, help="seconds (default %(default)s)")
    n.add_argument("--availability-window", type=int, default=d.availability_window_s,
                   help="seconds (default %(default)s)")
    n.add_argument("--dispute-window", type=int, default=d.dispute_window_s, help="seconds (default %(default)s)")
    n.add_argument("--prover-bond", type=int, default=d.prover_bond, help="per claim (default %(default)s)")
    n.add_argument("--force", action="store_true")
    n.add_argument("--json", action="store_true")
    n.set_defaults(func=cmd_genesis_new)
    for name, helptext, func in (("add-verifier", "add a staked verifier", cmd_genesis_add_verifier),
                                 ("add-account", "add an opening balance (requester or prover)",
                                  cmd_genesis_add_account)):
        a = gs.add_parser(name, help=helptext)
        a.add_argument("genesis")
        a.add_argument("--key", help="the participant's key file (when it is on this machine)")
        a.add_argument("--public-key", help="BLS public key hex (from `pol keys show --json`)")
        if name == "add-verifier":
            a.add_argument("--pop", help="proof of possession hex (from `pol keys show --json`)")
            a.add_argument("--peer-id", help="libp2p peer id (from `pol keys show --json`)")
            a.add_argument("--stake", type=int, required=True)
        else:
            a.add_argument("--balance", type=int, required=True)
        a.add_argument("--json", action="store_true")
        a.set_defaults(func=func)
    s = gs.add_parser("show", help="print a genesis file and its id")
    s.add_argument("genesis")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_genesis_show)

    p = sub.add_parser("submit-task", help="sign a task posting with a requester key and submit it to a node's "
                       "HTTP API (networks without a settlement chain; on a chain use post-task)")
    p.add_argument("task", help="task TOML file, or the name of a built-in task")
    p.add_argument("--reward", type=int, required=True, help="escrowed from the requester's balance")
    p.add_argument("--key", required=True, help="requester key file (needs a genesis balance)")
    p.add_argument("--node", default="http://127.0.0.1:42000", help="node HTTP API (default %(default)s)")
    p.add_argument("--token", default=os.environ.get("POL_API_TOKEN"),
                   help="bearer token for the node's mutating endpoints (default: $POL_API_TOKEN)")
    p.add_argument("--token-file", help="read the bearer token from this file (the node's <data_dir>/api_token)")
    p.add_argument("--expires-in", type=int, default=3600, help="seconds the offer stays open (default 3600)")
    p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_post_task)
