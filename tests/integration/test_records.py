"""Packed-dataset records over libp2p (SPEC.md §12.4): a verifier replays a segment of a packed task
having fetched only the records that segment reads, each checked with its audit path.

Three real P2PNetwork hosts on 127.0.0.1 in this process: an honest holder serving its full packed
directory, a lying holder that flips a byte of every record, and the verifier. Bounded waits; every host
is stopped in a finally.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from node.p2p import P2PConfig, P2PNetwork
from node.records import (
    PROTO_RECORD,
    RecordFetcher,
    RecordFetchFailed,
    RecordStore,
    decode_record_request,
    encode_record_request,
    get_segment_records,
)
from prover.datapack import pack
from prover.packeddata import DirRecords, PackedDataset, register_source
from prover.prove import prove
from prover.training import Runtime
from prover.transcript import ProofDir, read_transcript
from protocol import bls
from protocol.claim import compute_claim_training_seed
from protocol.encoding import decode_canonical, encode_canonical
from protocol.errors import InvalidInput, InvalidMessage
from protocol.task import parse_task
from protocol.datapack import compute_packed_dataset_hash
from verifier.replay import load_state, replay_segment


def packed_task(directory: Path, steps: int = 4, interval: int = 2) -> Any:
    from prover.datapack import load_manifest

    m = load_manifest(directory)
    return parse_task({
        "task": {"name": "records-lm", "seed": 5, "total_steps": steps, "checkpoint_interval": interval,
                 "batch_size": 2},
        "model": {"family": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32, "context": 16},
        "data": {"adapter": "packed", "sha256": compute_packed_dataset_hash(m).hex(), "format": m.format,
                 "item_shape": list(m.item_shape), "num_items": m.num_items, "items_per_record": m.items_per_record,
                 "records_root": m.records_root.hex(), "classes": 256},
        "optim": {"name": "adamw", "lr": 0.01},
    })


@pytest.fixture(scope="module")
def proved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("records")
    text = b"".join(sorted(p.read_bytes() for p in Path(np.__file__).parent.glob("*.py")))[:40_000]
    (base / "text.bin").write_bytes(text)
    data = base / "datasets" / "pending"
    m = pack([base / "text.bin"], "tokens-u8", data, record_bytes=256)
    digest = compute_packed_dataset_hash(m)
    full = base / "datasets" / digest.hex()
    data.rename(full)  # a node finds a full copy under datasets/<hash>/
    task = packed_task(full)
    register_source(DirRecords(full))
    sk = bls.compute_secret_key(hashlib.sha256(b"records-prover").digest())
    result = prove(task, base / "proof", sk)
    return {"base": base, "task": task, "claim": result.claim, "digest": digest, "num_records": m.num_records}


def _net(name: str) -> P2PNetwork:
    return P2PNetwork(P2PConfig(identity_seed=hashlib.sha256(b"records/" + name.encode()).digest()))


def test_verifier_replays_a_segment_from_only_the_records_it_reads(proved: dict[str, Any], tmp_path: Path) -> None:
    asyncio.run(asyncio.wait_for(_replay_over_p2p(proved, tmp_path), 120))


async def _replay_over_p2p(proved: dict[str, Any], tmp_path: Path) -> None:
    task, digest = proved["task"], proved["digest"]
    holder_store = RecordStore(proved["base"] / "datasets", tmp_path / "holder-cache")
    liar_store = RecordStore(tmp_path / "none", tmp_path / "liar-cache")
    mine = RecordStore(tmp_path / "no-datasets", tmp_path / "cache")
    holder, liar, verifier = _net("holder"), _net("liar"), _net("verifier")

    async def lying(peer: str, request: bytes) -> bytes:
        doc = decode_canonical(await asyncio.to_thread(holder_store.answer, request), 1 << 21)
        doc["record"] = bytes([doc["record"][0] ^ 1]) + doc["record"][1:]
        return encode_canonical(doc)

    holder.set_request_handler(PROTO_RECORD, holder_store.serve)
    liar.set_request_handler(PROTO_RECORD, lying)
    del liar_store
    nets = [holder, liar, verifier]
    try:
        for net in nets:
            await net.start()
        for net in (holder, liar):
            await verifier.connect(net.listen_addrs[0])

        async def request(peer: str, addr: str | None, protocol: str, payload: bytes, limit: int) -> bytes:
            return bytes(await verifier.request(peer, protocol, payload, timeout=20, max_response_bytes=limit))

        fetcher = RecordFetcher(mine, request)
        claim = proved["claim"]
        seed = compute_claim_training_seed(claim)
        cache = mine.cache(digest, task.data.packed)
        dataset = PackedDataset(digest, task.data.packed, source=cache)
        rt = Runtime.for_task(task, seed)
        rt = dataclasses.replace(rt, dataset=dataset)
        segment = 1
        needed = get_segment_records(dataset, rt.keyed_task, segment)
        candidates = [(liar.peer_id, None), (holder.peer_id, None)]  # the liar is asked first
        fetched = await fetcher.ensure(digest, task.data.packed, needed, candidates)
        assert fetched == len(needed) and 0 < len(needed) < proved["num_records"]
        assert mine.stats.refused == len(needed)  # every lying answer failed its proof
        assert sorted(int(p.stem) for p in (tmp_path / "cache" / digest.hex()).glob("*.rec")) == needed
        assert await fetcher.ensure(digest, task.data.packed, needed, candidates) == 0  # cached on disk
        damaged = cache.path(needed[0])
        damaged.write_bytes(damaged.read_bytes()[:-1] + b"\x00")
        assert await fetcher.ensure(digest, task.data.packed, needed, candidates) == 1  # fetched again

        pdir = ProofDir(proved["base"] / "proof")
        roots = [e.root for e in read_transcript(pdir, task)]
        state = load_state(rt, pdir, segment, roots[segment])
        result = await asyncio.to_thread(replay_segment, rt, state, segment, roots[segment + 1])
        assert result.ok, "the replay from fetched records reproduces the prover's root"
        assert dataset.records_read == set(needed), "the replay read exactly the records the spec names"

        other = [i for i in range(proved["num_records"]) if i not in needed][:1]
        with pytest.raises(RecordFetchFailed, match="no holder served it"):
            await fetcher.ensure(digest, task.data.packed, other, [(liar.peer_id, None)])
    finally:
        for net in nets:
            await net.stop()


def test_record_requests_are_bounded_and_exact(proved: dict[str, Any]) -> None:
    store = RecordStore(proved["base"] / "datasets", proved["base"] / "cache-x")
    digest = proved["digest"]
    assert decode_record_request(encode_record_request(digest, 3)) == (digest, 3)
    for bad in (encode_canonical({"dataset": digest}), encode_canonical({"dataset": b"x", "index": 1}),
                encode_canonical({"dataset": digest, "index": -1}), encode_canonical({"dataset": digest, "index": True}),
                b"\xc1", b"\x00" * 300):
        with pytest.raises(InvalidInput):
            store.answer(bad)
    with pytest.raises(InvalidMessage, match="beyond"):
        store.answer(encode_record_request(digest, proved["num_records"]))
    with pytest.raises(LookupError):
        store.answer(encode_record_request(b"\x07" * 32, 0))


def test_segment_record_bound_covers_what_a_segment_reads(proved: dict[str, Any]) -> None:
    from node.records import get_segment_record_bytes_bound

    task = proved["task"]
    ds = PackedDataset(proved["digest"], task.data.packed, DirRecords(proved["base"] / "datasets" /
                                                                       proved["digest"].hex()))
    keyed = dataclasses.replace(task, seed=987)
    bound = get_segment_record_bytes_bound(task)
    for segment in range(task.num_segments):
        assert len(get_segment_records(ds, keyed, segment)) * 256 <= bound
    big = dataclasses.replace(task, checkpoint_interval=10**6, total_steps=10**6)
    assert get_segment_record_bytes_bound(big) == proved["num_records"] * 256  # never more than the set
