"""``pol devnet``: a local network of real node processes on 127.0.0.1.

Generates keys and a genesis (stakes, balances, short windows) into a fresh directory, starts
verifier and prover nodes (``pol node``) as separate processes, posts one small task per prover as
the requester, waits until every claim settles, prints a table and stops everything. Every node logs
to ``DIR/<name>/node.log``. Ctrl-C stops all children; a timeout exits nonzero.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pol.keyfile import KeyFile, generate_keyfile, save_keyfile
from protocol import bls
from protocol.constants import MAX_SAMPLES, MILLI
from protocol.genesis import Account, Genesis, Params, VerifierEntry, encode_genesis
from protocol.ledger import compute_task_posted
from protocol.messages import encode_message
from protocol.task import Task, compute_task_id, encode_task, parse_task_toml

from .auth import read_api_token
from .config import format_config_toml
from .identity import compute_peer_id

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
STAKE, REQUESTER_BALANCE, PROVER_BALANCE, REWARD, BOND = 1000, 1_000_000, 10_000, 100, 1000
SETTLED = ("paid", "slashed", "void")


class DevnetError(Exception):
    """The devnet could not start or did not settle (message for the operator)."""


@dataclass
class NodeSpec:
    name: str
    role: str
    key: KeyFile
    p2p_port: int
    http_port: int
    cheat: str = ""
    task_id: bytes = b""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def peer_id(self) -> str:
        return compute_peer_id(self.key.node_seed)

    @property
    def addr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.p2p_port}/p2p/{self.peer_id}"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


@dataclass
class Devnet:
    directory: Path
    nodes: list[NodeSpec] = field(default_factory=list)
    requester: KeyFile | None = None
    tasks: list[Task] = field(default_factory=list)
    params: Params = field(default_factory=Params)

    @property
    def verifiers(self) -> list[NodeSpec]:
        return [n for n in self.nodes if n.role == "verifier"]

    @property
    def provers(self) -> list[NodeSpec]:
        return [n for n in self.nodes if n.role == "prover"]


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def devnet_task(index: int, steps: int = 40, interval: int = 5) -> Task:
    """The built-in digits-mlp task, shortened; each prover gets its own seed."""
    from prover.builtin import resolve_task_path

    base = parse_task_toml(resolve_task_path("digits-mlp").read_text(encoding="utf-8"))
    schedule = dataclasses.replace(base.schedule, warmup_steps=min(base.schedule.warmup_steps, steps // 4))
    return dataclasses.replace(base, name=f"devnet-{index}", seed=base.seed + index, total_steps=steps,
                               checkpoint_interval=interval, schedule=schedule)


def create(directory: Path, verifiers: int, provers: int, cheaters: int, *, steps: int = 40, interval: int = 5,
           challenge_window_s: int = 3, availability_window_s: int = 120, extra_config: dict[str, Any] | None = None
           ) -> Devnet:
    """Write keys, genesis and node configs for a new network into ``directory`` (must be empty)."""
    if verifiers < 1 or provers < 0 or not 0 <= cheaters <= provers:
        raise DevnetError("need >= 1 verifier and 0 <= cheaters <= provers")
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise DevnetError(f"{directory} is not empty; give a fresh --dir")
    (directory / "keys").mkdir()
    net = Devnet(directory)
    ports = free_ports(2 * (verifiers + provers))
    for i in range(verifiers + provers):
        role = "verifier" if i < verifiers else "prover"
        j = i if role == "verifier" else i - verifiers
        name = f"v{j}" if role == "verifier" else f"p{j}"
        cheat = "tamper" if role == "prover" and j >= provers - cheaters else ""
        spec = NodeSpec(name, role, generate_keyfile(), ports[2 * i], ports[2 * i + 1], cheat)
        save_keyfile(directory / "keys" / f"{name}.json", spec.key)
        net.nodes.append(spec)
    net.requester = generate_keyfile()
    save_keyfile(directory / "keys" / "requester.json", net.requester)
    net.params = Params(challenge_window_s=challenge_window_s, availability_window_s=availability_window_s,
                        dispute_window_s=availability_window_s, prover_bond=BOND,
                        min_sample_milli=MAX_SAMPLES * MILLI)  # small tasks: every verifier replays everything
    genesis = Genesis(
        network="pol-devnet", genesis_time=int(time.time()) - 60, params=net.params,
        verifiers=tuple(VerifierEntry(n.key.public_key, bls.compute_pop(n.key.bls_secret_key), STAKE, n.peer_id)
                        for n in net.verifiers),
        accounts=(Account(net.requester.public_key, REQUESTER_BALANCE),)
        + tuple(Account(n.key.public_key, PROVER_BALANCE) for n in net.provers))
    (directory / "genesis.msgpack").write_bytes(encode_genesis(genesis))
    for j, prover in enumerate(net.provers):
        task = devnet_task(j, steps, interval)
        prover.task_id = compute_task_id(task)
        net.tasks.append(task)
    names = {m.key.public_key.hex(): m.name + (" (cheater)" if m.cheat else "") for m in net.nodes}
    names[net.requester.public_key.hex()] = "requester"
    for n in net.nodes:
        doc: dict[str, Any] = {
            "role": n.role, "key": f"keys/{n.name}.json", "genesis": "genesis.msgpack", "data_dir": n.name,
            "listen_port": n.p2p_port, "http_port": n.http_port, "log_file": f"{n.name}/node.log",
            "log_level": "INFO", "bootstrap": [v.addr for v in net.verifiers if v is not n],
            "names": names,
        }
        if n.role == "prover":
            doc.update(prove_tasks=[n.task_id.hex()], cheat=n.cheat)
        doc.update(extra_config or {})
        (directory / f"{n.name}.toml").write_text(format_config_toml(doc))
    return net


def _die_with_parent() -> None:
    """Child side of Popen: get SIGTERM if the devnet process dies, so no node is orphaned."""
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_node(net: Devnet, node: NodeSpec) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p))
    (net.directory / node.name).mkdir(exist_ok=True)
    out = open(net.directory / node.name / "stderr.log", "ab")
    node.proc = subprocess.Popen([sys.executable, "-m", "pol.cli", "node", "--config", str(net.directory /
                                  f"{node.name}.toml")], stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(net.directory), start_new_session=True, preexec_fn=_die_with_parent)
    out.close()


def stop_node(node: NodeSpec, sig: int = signal.SIGTERM, wait_s: float = 10.0) -> None:
    proc = node.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=wait_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(timeout=10)


def stop_all(net: Devnet) -> None:
    for n in net.nodes:  # signal everyone first, then wait: shutdown runs in parallel
        if n.proc is not None and n.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                n.proc.send_signal(signal.SIGTERM)
    for n in net.nodes:
        stop_node(n)


def http_get(node: NodeSpec, path: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(node.url + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def http_post(node: NodeSpec, path: str, doc: Any, timeout: float = 30.0, token: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(node.url + path, data=json.dumps(doc).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read() or b"{}")
    except OSError as exc:
        raise DevnetError(f"{node.name} did not answer POST {path}: {exc}") from None


def wait_ready(net: Devnet, nodes: list[NodeSpec], deadline: float) -> None:
    pending = list(nodes)
    min_peers = 1 if len(net.nodes) > 1 else 0
    while pending:
        for n in list(pending):
            if n.proc is not None and n.proc.poll() is not None:
                raise DevnetError(f"node {n.name} exited with code {n.proc.returncode}; see "
                                  f"{net.directory / n.name / 'stderr.log'}")
            with contextlib.suppress(OSError, ValueError):
                if http_get(n, "/status", 2.0)["peers"] >= min_peers:
                    pending.remove(n)
        if pending and time.monotonic() > deadline:
            raise DevnetError(f"nodes {[n.name for n in pending]} not ready (no HTTP API or no peers)")
        time.sleep(0.3)


def post_tasks(net: Devnet, via: NodeSpec, reward: int = REWARD) -> None:
    """Post one task per prover through ``via``. The HTTP timeout grows with the number of nodes (a
    loaded machine answers slowly) and a timed-out posting is retried with the same bytes, which the
    node then reports as a duplicate if the first attempt did land."""
    assert net.requester is not None
    timeout = 30.0 + 5.0 * len(net.nodes)
    for task in net.tasks:
        posting = compute_task_posted(net.requester.bls_secret_key, encode_task(task), reward,
                                      int(time.time()) + 3600)
        message = {"message": encode_message(posting).hex()}
        for attempt in range(3):
            try:
                result = http_post(via, "/tasks", message, timeout=timeout,
                                   token=read_api_token(net.directory / via.name))
            except DevnetError:
                if attempt == 2:
                    raise
                log.warning("posting task %s timed out; retrying", task.name)
                continue
            if result.get("result") == "accept" or (attempt and str(result.get("result")).startswith("ignore")):
                break
            raise DevnetError(f"posting task {task.name} failed: {result}")


def wait_settled(net: Devnet, observer: NodeSpec, deadline: float) -> list[dict[str, Any]]:
    want = {t.hex() for t in (p.task_id for p in net.provers)}
    claims: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            claims = http_get(observer, "/claims")["claims"]
            done = {c["task_id"] for c in claims if c["status"] in SETTLED}
            if want <= done:
                return claims
        time.sleep(0.5)
    states = {c["claim_id"][:12]: c["status"] for c in claims}
    raise DevnetError(f"nothing settled within the timeout: claims {states or 'none'} "
                      f"(logs under {net.directory})")


def get_ledger_view(node: NodeSpec) -> Any:
    """What must agree across nodes: balances, stakes, statuses, burned (not per-node timestamps)."""
    lg = http_get(node, "/ledger")
    return (lg["balances"], lg["stakes"], lg["claims"], lg["disputes"], lg["burned"])


def wait_consistent(net: Devnet, deadline: float) -> bool:
    """Wait until every verifier reports the same ledger (they settle within a tick of each other)."""
    while True:
        views = []
        for v in net.verifiers:
            try:
                views.append(get_ledger_view(v))
            except (OSError, ValueError):
                views.append(None)
        if all(x is not None and x == views[0] for x in views):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
