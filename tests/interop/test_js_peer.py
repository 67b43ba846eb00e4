"""Interop with a standard js-libp2p 2.x peer (pinned versions, tests/interop/js/package.json and its lockfile,
installed by `make js-interop` into .tools/js).

The js peer speaks only the standard protocols (Noise, Yamux, GossipSub, identify, ping), none of the
project's request protocols. It dials a node of a 2-verifier devnet and must: stay connected through several
sync rounds (before, "protocol not supported" on /pol/sync/1 dropped it within seconds), join the mesh,
receive gossip that a Python node publishes, publish a task posting that every node accepts, and publish
garbage that every node drops.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from node import devnet as dn
from node.auth import read_api_token
from protocol.ledger import compute_task_posted
from protocol.messages import encode_message
from protocol.task import encode_task

from ..integration.node_helpers import running_devnet, wait_for

REPO = Path(__file__).resolve().parents[2]
JS_DIR = REPO / ".tools" / "js"
TOPICS = ("/pol/tasks/1", "/pol/claims/1", "/pol/votes/1", "/pol/certs/1")

pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS_DIR / "node_modules" / "libp2p").is_dir(),
    reason="js-libp2p not installed: run `make js-interop` (needs node and npm)")


class JsPeer:
    def __init__(self, target: str) -> None:
        shutil.copy(REPO / "tests" / "interop" / "js" / "peer.mjs", JS_DIR / "peer.mjs")
        self.proc = subprocess.Popen(["node", str(JS_DIR / "peer.mjs"), target, *TOPICS], cwd=JS_DIR,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                self.events.put(json.loads(line))
            except ValueError:
                pass

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
        for event in self.seen:
            if predicate(event):
                return event
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                event = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(event)
            if predicate(event):
                return event
        raise AssertionError(f"js peer: timed out waiting for {what}; last events {self.seen[-3:]}")

    def publish(self, topic: str, data: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": "publish", "topic": topic, "data": data.hex()}) + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait(timeout=10)


def _posting(net: dn.Devnet, seed: int) -> bytes:
    assert net.requester is not None
    task = dn.devnet_task(0)
    task = task.__class__(**{**task.__dict__, "seed": seed})
    return encode_message(compute_task_posted(net.requester.bls_secret_key, encode_task(task), 5,
                                              int(time.time()) + 600))


def test_js_libp2p_peer_joins_gossips_and_stays(tmp_path: Path) -> None:
    with running_devnet(tmp_path / "net", verifiers=2, provers=0) as net:
        v0, v1 = net.verifiers
        js = JsPeer(v0.addr)
        try:
            ready = js.wait(lambda e: e["event"] == "ready", 60, "start")
            js.wait(lambda e: e["event"] == "connected", 30, "dial")
            js.wait(lambda e: e["event"] == "peers" and e["mesh"].get(TOPICS[0], 0) > 0, 30, "mesh")
            # Receives gossip: a posting made at v1 reaches the js peer through v0.
            made_at_v1 = _posting(net, 101)
            result = dn.http_post(v1, "/tasks", {"message": made_at_v1.hex()},
                                  token=read_api_token(net.directory / v1.name))
            assert result["result"] == "accept", result
            js.wait(lambda e: e["event"] == "gossip" and e["data"] == made_at_v1.hex(), 30, "gossip from py")
            # Publishes a posting that every node accepts.
            from_js = _posting(net, 202)
            js.publish(TOPICS[0], from_js)
            for node in (v0, v1):
                wait_for(lambda n=node: len(dn.http_get(n, "/tasks")["tasks"]) == 2, 30, f"js posting at {node.name}")
            # Publishes garbage that every node drops (never applied, never relayed, nobody crashes).
            seq = [dn.http_get(n, "/status")["log_seq"] for n in (v0, v1)]
            for topic in TOPICS:
                js.publish(topic, os.urandom(100))
                js.publish(topic, b"\x81\xa4type\xa4vote")
            time.sleep(3.0)
            assert [dn.http_get(n, "/status")["log_seq"] for n in (v0, v1)] == seq
            # Still connected after several sync rounds (sync_interval_s is 2 s).
            assert ready["peer_id"] in dn.http_get(v0, "/peers")["peers"]
            for node in net.nodes:
                assert node.proc is not None and node.proc.poll() is None
        finally:
            js.close()
