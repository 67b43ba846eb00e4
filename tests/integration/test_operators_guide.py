"""docs/operators.md as a newcomer would run it: three "machines" on 127.0.0.2/3/4, a genesis built with
`pol genesis`, a task posted with `pol submit-task`, and a paid claim seen in the JSON API, /metrics and
the verifier's terminal. Real processes only; every node is stopped at the end.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

REPO = Path(__file__).resolve().parents[2]
HOSTS = {"alice": "127.0.0.2", "bob": "127.0.0.3", "carol": "127.0.0.4"}
TASK = """
[task]
name = "guide-digits"
seed = 7
total_steps = 20
checkpoint_interval = 5
batch_size = 32
[model]
family = "mlp"
hidden = [32]
[data]
adapter = "sklearn-digits"
sha256 = "8147d0c7fde42fc617fccd83c4b7aece643a98cf67d4f3ac692ef93c0a6dce51"
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
"""


def pol(*args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, "-m", "pol.cli", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, f"pol {' '.join(args)}: {r.stderr}"
    return r.stdout


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        body = resp.read()
    return json.loads(body) if body[:1] in (b"{", b"[") else body.decode()


@pytest.fixture()
def machines(tmp_path: Path) -> Iterator[dict[str, Any]]:
    try:
        for host in HOSTS.values():
            free_port(host)
    except OSError as exc:
        pytest.skip(f"loopback addresses 127.0.0.2-4 unusable here: {exc}")
    dirs = {name: tmp_path / name for name in HOSTS}
    for d in dirs.values():
        d.mkdir()
    a = dirs["alice"]
    # 2. keys, each on its own machine; the coordinator gets only `pol keys show --json`.
    pol("keys", "new", "--out", "alice.json", cwd=a)
    pol("keys", "new", "--out", "requester.json", cwd=a)
    pol("keys", "new", "--out", "bob.json", cwd=dirs["bob"])
    pol("keys", "new", "--out", "carol.json", cwd=dirs["carol"])
    public = {n: json.loads(pol("keys", "show", f"{n}.json", "--json", cwd=dirs[n])) for n in HOSTS}
    public["requester"] = json.loads(pol("keys", "show", "requester.json", "--json", cwd=a))
    # 3. genesis on A, copied to B and C.
    pol("genesis", "new", "--out", "genesis.msgpack", "--network", "guide-net", "--challenge-window", "3",
        "--genesis-time", str(int(time.time()) - 60), cwd=a)
    pol("genesis", "add-verifier", "genesis.msgpack", "--key", "alice.json", "--stake", "1000", cwd=a)
    b = public["bob"]
    pol("genesis", "add-verifier", "genesis.msgpack", "--public-key", b["public_key"], "--pop", b["pop"],
        "--peer-id", b["peer_id"], "--stake", "1000", cwd=a)
    pol("genesis", "add-account", "genesis.msgpack", "--key", "requester.json", "--balance", "100000", cwd=a)
    pol("genesis", "add-account", "genesis.msgpack", "--public-key", public["carol"]["public_key"],
        "--balance", "5000", cwd=a)
    for n in ("bob", "carol"):
        (dirs[n] / "genesis.msgpack").write_bytes((a / "genesis.msgpack").read_bytes())
    # 4. configs.
    ports = {n: (free_port(h), free_port(h)) for n, h in HOSTS.items()}
    addr = {n: f"/ip4/{HOSTS[n]}/tcp/{ports[n][0]}/p2p/{public[n]['peer_id']}" for n in HOSTS}
    names = "\n".join(f'"{public[n]["public_key"]}" = "{n}"' for n in (*HOSTS, "requester"))
    boot = {"alice": [], "bob": [addr["alice"]], "carol": [addr["alice"], addr["bob"]]}
    for n, host in HOSTS.items():
        role = "prover" if n == "carol" else "verifier"
        extra = 'prove_tasks = ["*"]\n' if role == "prover" else ""
        (dirs[n] / f"{n}.toml").write_text(
            f'role = "{role}"\nkey = "{n}.json"\ngenesis = "genesis.msgpack"\ndata_dir = "{n}-data"\n'
            f'listen_host = "{host}"\nlisten_port = {ports[n][0]}\nhttp_host = "{host}"\nhttp_port = {ports[n][1]}\n'
            f"bootstrap = {json.dumps(boot[n])}\nlog_file = \"{n}-data/node.log\"\ntick_s = 0.5\n{extra}"
            f"\n[names]\n{names}\n")
    assert "ok (" in pol("node", "--config", "alice.toml", "--check", cwd=a)
    # 5. start the nodes.
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for n in HOSTS:
            with open(dirs[n] / "terminal.log", "wb") as out:
                procs[n] = subprocess.Popen([sys.executable, "-m", "pol.cli", "node", "--config", f"{n}.toml"],
                                            cwd=dirs[n], stdout=out, stderr=subprocess.STDOUT)
        urls = {n: f"http://{HOSTS[n]}:{ports[n][1]}" for n in HOSTS}
        deadline = time.monotonic() + 150  # generous: start-up imports torch, slow on a loaded machine
        pending = set(HOSTS)
        while pending and time.monotonic() < deadline:
            for n in list(pending):
                assert procs[n].poll() is None, (dirs[n] / "terminal.log").read_text()[-2000:]
                with contextlib.suppress(OSError, ValueError):
                    if get(urls[n] + "/health")["ready"]:
                        pending.discard(n)
            time.sleep(0.5)
        assert not pending, f"not ready: {pending}"
        yield {"dirs": dirs, "urls": urls, "public": public}
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)


def test_three_machines_to_a_paid_claim(machines: dict[str, Any]) -> None:
    dirs, urls = machines["dirs"], machines["urls"]
    (dirs["alice"] / "task.toml").write_text(TASK)
    out = pol("submit-task", "task.toml", "--reward", "100", "--key", "requester.json", "--node", urls["alice"],
              "--token-file", "alice-data/api_token", cwd=dirs["alice"])
    assert "accept" in out
    deadline, claims = time.monotonic() + 300, []  # bounded; a loaded 2-core machine trains and replays slowly
    while time.monotonic() < deadline:
        try:
            claims = get(urls["alice"] + "/claims")["claims"]
        except OSError:  # a node busy replaying on a loaded machine may answer late; the deadline bounds it
            time.sleep(1)
            continue
        if claims and claims[0]["status"] == "paid":
            break
        time.sleep(1)
    assert claims and claims[0]["status"] == "paid", claims
    assert claims[0]["prover"] == machines["public"]["carol"]["public_key"]
    # Each node applies the payout at its own tick: carol's view may lag alice's by a moment.
    deadline, overview = time.monotonic() + 60, {}
    while time.monotonic() < deadline:
        overview = get(urls["carol"] + "/overview")
        if overview.get("earnings") == 100:
            break
        time.sleep(0.5)
    assert overview["earnings"] == 100 and overview["name"] == "carol", overview
    metrics = get(urls["alice"] + "/metrics")
    assert 'pol_claims{status="paid"} 1.0' in metrics
    terminal = (dirs["alice"] / "terminal.log").read_text()
    assert "node up: verifier #0 alice" in terminal and "escrow released: 100 paid to carol" in terminal
    assert "certificate formed: claim" in terminal and "signers alice, bob" in terminal
