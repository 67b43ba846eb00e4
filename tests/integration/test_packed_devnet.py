"""A packed-dataset task on a devnet of real node processes (SPEC.md §12.3-12.4): the prover trains from
its full copy under ``datasets/<hash>/``, each verifier fetches over ``/pol/record/1`` only the records
its replays read (fewer than the dataset holds), the claim is paid, and with ``prune_settled`` every
node then drops the settled claim's checkpoints (the prover keeps checkpoint 0 and the final one)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from node import devnet as dn
from prover.datapack import pack
from protocol.task import compute_task_id

from .node_helpers import wait_for
from .test_records import packed_task


def test_devnet_pays_a_packed_task_with_records_fetched_on_demand(tmp_path: Path) -> None:
    net = dn.create(tmp_path / "net", verifiers=2, provers=1, cheaters=0, extra_config={"prune_settled": True})
    text = b"".join(sorted(p.read_bytes() for p in Path(np.__file__).parent.glob("*.py")))[:40_000]
    (tmp_path / "text.bin").write_bytes(text)
    m = pack([tmp_path / "text.bin"], "tokens-u8", tmp_path / "ds", record_bytes=256)
    task = packed_task(tmp_path / "ds")
    prover = net.provers[0]
    old = prover.task_id
    prover.task_id, net.tasks[0] = compute_task_id(task), task
    config = net.directory / f"{prover.name}.toml"
    config.write_text(config.read_text().replace(old.hex(), prover.task_id.hex()))
    shutil.copytree(tmp_path / "ds", net.directory / prover.name / "datasets" / task.data.sha256.hex())
    try:
        for node in net.nodes:
            dn.start_node(net, node)
        dn.wait_ready(net, net.nodes, time.monotonic() + 90)
        dn.post_tasks(net, net.verifiers[0])
        claims = dn.wait_settled(net, net.verifiers[0], time.monotonic() + 120)
        assert [c["status"] for c in claims] == ["paid"]
        claim_id = claims[0]["claim_id"]
        for v in net.verifiers:
            cached = list((net.directory / v.name / "records" / task.data.sha256.hex()).glob("*.rec"))
            assert 0 < len(cached) < m.num_records, f"{v.name} fetched {len(cached)} of {m.num_records} records"
            wait_for(lambda v=v: not (net.directory / v.name / "checkpoints" / claim_id).exists(), 30,
                     f"{v.name} pruning the settled claim's checkpoints")
        kept = net.directory / prover.name / "proofs" / prover.task_id.hex() / "checkpoints"
        wait_for(lambda: sorted(p.name for p in kept.iterdir()) == ["ckpt-000000.safetensors",
                                                                    "ckpt-000002.safetensors"], 30,
                 "the prover pruning its proof to checkpoints 0 and S")
    finally:
        dn.stop_all(net)
