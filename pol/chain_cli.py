"""``pol chain deploy``, ``pol stake``, ``pol unstake``, ``pol post-task``, ``pol balance`` (SPEC.md §16.7).

Each command talks to an EVM chain through web3 (``--rpc``), signs with an Ethereum key file
(``--key``, see node/evm/ethkey.py) and names the contract by address or by the file that
``pol chain deploy --out`` wrote.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .cli import _emit

EXIT_OK = 0


class ChainCliError(Exception):
    """An operator error in a chain command (bad flag value, missing file)."""


def _address(value: str) -> str:
    from web3 import Web3

    if Path(value).is_file():
        try:
            value = json.loads(Path(value).read_text())["address"]
        except (ValueError, KeyError, TypeError) as exc:
            raise ChainCliError(f"{value} is not a deployment file written by `pol chain deploy --out`: {exc}") from None
    if not Web3.is_address(value):
        raise ChainCliError(f"--contract {value!r} is neither a contract address nor a deployment file")
    return str(Web3.to_checksum_address(value))


def _client(args: argparse.Namespace, need_key: bool = True) -> Any:
    from node.evm.anvil import check_eip2537
    from node.evm.contract import SettlementClient, connect
    from node.evm.ethkey import load_eth_keyfile

    w3 = connect(args.rpc)
    check_eip2537(args.rpc)
    account = load_eth_keyfile(Path(args.key)) if need_key or getattr(args, "key", None) else None
    address = _address(args.contract)
    if not w3.eth.get_code(w3.to_checksum_address(address)):
        raise ChainCliError(f"no contract at {address} on {args.rpc}")
    return SettlementClient(w3, address, account)


def _tx_doc(result: Any) -> dict[str, Any]:
    return {"transaction": "0x" + result.transaction_hash.hex(), "block": result.block_number, "gas_used": result.gas_used,
            "events": [{"name": e.name, "args": {k: ("0x" + v.hex() if isinstance(v, bytes) else v)
                                                  for k, v in e.args.items()}} for e in result.events]}


def cmd_key_new(args: argparse.Namespace) -> int:
    from node.evm.ethkey import generate_eth_key, save_eth_keyfile

    account = generate_eth_key()
    save_eth_keyfile(Path(args.out), account)
    _emit(args, {"keyfile": args.out, "address": account.address}, f"wrote {args.out}\naddress {account.address}")
    return EXIT_OK


def cmd_deploy(args: argparse.Namespace) -> int:
    from node.evm.anvil import check_eip2537
    from node.evm.contract import SettlementParams, connect, deploy_settlement
    from node.evm.ethkey import load_eth_keyfile
    from protocol.genesis import Params

    account = load_eth_keyfile(Path(args.key))
    w3 = connect(args.rpc)
    check_eip2537(args.rpc)
    params = SettlementParams.from_params(Params(), min_stake=args.min_stake, unbonding_delay=args.unbonding_delay)
    client, result = deploy_settlement(w3, account, params)
    doc = {"address": client.address, "chain_id": client.chain_id, "block": result.block_number,
           "transaction": "0x" + result.transaction_hash.hex(), "gas_used": result.gas_used,
           "params": {k: v for k, v in vars(params).items()}}
    if args.out:
        out = Path(args.out)
        if out.exists():
            raise ChainCliError(f"{out} already exists; refusing to overwrite a deployment record")
        out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    _emit(args, doc, f"settlement contract at {client.address} (chain {client.chain_id}, block {result.block_number}, "
                     f"gas {result.gas_used})" + (f"\nwrote {args.out}" if args.out else ""))
    return EXIT_OK


def cmd_stake(args: argparse.Namespace) -> int:
    from pol.keyfile import load_keyfile
    from protocol import bls

    client = _client(args)
    bls_key = load_keyfile(Path(args.bls_key)).bls_secret_key
    pubkey = bls.compute_public_key(bls_key)
    result = client.register(pubkey, bls.compute_pop(bls_key), args.amount)
    index = result.events[0].args["index"]
    doc = {"verifier": index, "pubkey": pubkey.hex(), "stake": args.amount, **_tx_doc(result)}
    _emit(args, doc, f"registered verifier {index} with stake {args.amount} wei (gas {result.gas_used})")
    return EXIT_OK


def cmd_unstake(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.withdraw:
        result = client.withdraw_stake()
        amount = result.events[0].args["amount"]
        doc = {"withdrawn": amount, **_tx_doc(result)}
        text = f"stake of {amount} wei moved to the account's balance (withdraw it with `pol balance --withdraw`)"
    else:
        result = client.begin_unbonding()
        exit_at = result.events[0].args["exit_at"]
        doc = {"exit_at": exit_at, **_tx_doc(result)}
        text = (f"unbonding: the verifier no longer counts toward quorums; run `pol unstake --withdraw` at or after "
                f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(exit_at))}")
    _emit(args, doc, text)
    return EXIT_OK


def cmd_post_task(args: argparse.Namespace) -> int:
    from pol.cli import _read_task
    from protocol.task import compute_task_id

    client = _client(args)
    task = _read_task(args.task)
    task_id = compute_task_id(task)
    if args.reward <= 0:
        raise ChainCliError("--reward must be a positive number of wei")
    expires_at = int(client.w3.eth.get_block("latest")["timestamp"]) + args.expires_in
    result = client.post_task(task_id, args.reward, expires_at, task.num_checkpoints)
    doc = {"task_id": task_id.hex(), "reward": args.reward, "expires_at": expires_at, **_tx_doc(result)}
    _emit(args, doc, f"posted task {task_id.hex()} ({task.name}) with reward {args.reward} wei, "
                     f"open until {expires_at} (gas {result.gas_used})")
    return EXIT_OK


def cmd_balance(args: argparse.Namespace) -> int:
    client = _client(args, need_key=False)
    if args.address:
        account = _address_only(args.address)
    elif client.account is not None:
        account = client.account.address
    else:
        raise ChainCliError("give --key or --address")
    doc: dict[str, Any] = {"address": account, "balance": client.get_balance(account),
                           "wallet": int(client.w3.eth.get_balance(account))}
    index = int(client.contract.functions.index_of_account(account).call())
    if index:
        v = client.get_verifier(index - 1)
        doc["verifier"] = {"index": v.index, "stake": v.stake, "exit_at": v.exit_at, "withdrawn": v.withdrawn}
    if args.withdraw:
        if client.account is None or client.account.address != account:
            raise ChainCliError("--withdraw needs --key of the account")
        if doc["balance"] == 0:
            raise ChainCliError("nothing to withdraw")
        doc["withdraw"] = _tx_doc(client.withdraw(doc["balance"]))
    text = f"{account}: {doc['balance']} wei in the contract, {doc['wallet']} wei in the wallet"
    if "verifier" in doc:
        text += f"; verifier {doc['verifier']['index']} with stake {doc['verifier']['stake']} wei"
    if "withdraw" in doc:
        text += f"\nwithdrew {doc['balance']} wei"
    _emit(args, doc, text)
    return EXIT_OK


def _address_only(value: str) -> str:
    from web3 import Web3

    if not Web3.is_address(value):
        raise ChainCliError(f"--address {value!r} is not an Ethereum address")
    return str(Web3.to_checksum_address(value))


def _chain_flags(p: argparse.ArgumentParser, key_required: bool = True) -> None:
    p.add_argument("--rpc", required=True, help="JSON-RPC URL of the chain (e.g. http://127.0.0.1:8545)")
    p.add_argument("--contract", required=True, help="settlement contract address, or the file `pol chain deploy` wrote")
    p.add_argument("--key", required=key_required, help="Ethereum key file (pol chain key-new)")
    p.add_argument("--json", action="store_true")


def register(sub: Any) -> None:
    """Add the chain subcommands to ``pol``'s subparsers."""
    chain = sub.add_parser("chain", help="settlement contract: account keys and deployment").add_subparsers(
        dest="chain_command", required=True)
    k = chain.add_parser("key-new", help="create an Ethereum account key file (JSON, mode 0600)")
    k.add_argument("--out", required=True)
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_key_new)
    d = chain.add_parser("deploy", help="deploy the settlement contract; prints (and --out writes) its address")
    d.add_argument("--rpc", required=True)
    d.add_argument("--key", required=True, help="Ethereum key file that pays for the deployment")
    d.add_argument("--out", help="write the deployment record (address, chain id, parameters) to this file")
    d.add_argument("--min-stake", type=int, default=1, help="smallest verifier stake, in wei (default 1)")
    d.add_argument("--unbonding-delay", type=int, default=None,
                   help="seconds between unstake and withdrawal (default: a claim's whole life)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_deploy)

    s = sub.add_parser("stake", help="register as a verifier: BLS key + proof of possession, stake in wei")
    _chain_flags(s)
    s.add_argument("--bls-key", required=True, help="pol key file holding the verifier's BLS key")
    s.add_argument("--amount", type=int, required=True, help="stake in wei")
    s.set_defaults(func=cmd_stake)

    u = sub.add_parser("unstake", help="start unbonding, or --withdraw the stake after the delay")
    _chain_flags(u)
    u.add_argument("--withdraw", action="store_true", help="after the unbonding delay: move the stake to the balance")
    u.set_defaults(func=cmd_unstake)

    t = sub.add_parser("post-task", help="post a task with its reward escrowed in the contract")
    _chain_flags(t)
    t.add_argument("task", help="task TOML file or built-in task name")
    t.add_argument("--reward", type=int, required=True, help="reward in wei (sent with the transaction)")
    t.add_argument("--expires-in", type=int, default=86_400, help="seconds the task stays open (default 1 day)")
    t.set_defaults(func=cmd_post_task)

    b = sub.add_parser("balance", help="an account's balance in the contract, its wallet, and its verifier stake")
    _chain_flags(b, key_required=False)
    b.add_argument("--address", help="account to show (default: the --key's)")
    b.add_argument("--withdraw", action="store_true", help="send the whole contract balance to the wallet")
    b.set_defaults(func=cmd_balance)
