"""Tasks on packed datasets (SPEC.md §12.3): the [data] rules, the data order checked against the spec's
separate implementation (tests/spec_impl), the packed digits against the built-in adapter, and prove /
verify with --dataset, including a damaged record and a missing dataset."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pol.cli import main
from prover.builtin import resolve_task_path
from prover.datapack import load_manifest, pack, shard_name
from prover.packeddata import DirRecords, PackedDataset
from protocol.datapack import compute_packed_dataset_hash
from protocol.errors import InvalidTask
from protocol.task import format_task_toml, get_task_canonical, parse_task, parse_task_toml
from protocol.taskdata import compute_step_records
from tests.spec_impl import core as spec

CONTEXT = 16


def _doc(m: Any, **data: Any) -> dict[str, Any]:
    fields = {"adapter": "packed", "sha256": compute_packed_dataset_hash(m).hex(), "format": m.format,
              "item_shape": list(m.item_shape), "num_items": m.num_items, "items_per_record": m.items_per_record,
              "records_root": m.records_root.hex(), "classes": 256}
    fields.update(data)
    return {"task": {"name": "packed-lm", "seed": 3, "total_steps": 4, "checkpoint_interval": 2, "batch_size": 3},
            "model": {"family": "transformer", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 32,
                      "context": CONTEXT},
            "data": fields, "optim": {"name": "adamw", "lr": 0.01}}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes, Any]:
    base = tmp_path_factory.mktemp("packed")
    raw = bytes((np.arange(9000) * 7919 % 251).astype(np.uint8))
    (base / "t.bin").write_bytes(raw)
    m = pack([base / "t.bin"], "tokens-u8", base / "ds", record_bytes=300, records_per_shard=7)
    return base / "ds", raw, m


def test_packed_task_rules(tokens: tuple[Path, bytes, Any]) -> None:
    _, _, m = tokens
    task = parse_task(_doc(m))
    canon = get_task_canonical(task)["data"]
    assert list(canon) == ["adapter", "sha256", "format", "item_shape", "num_items", "items_per_record",
                           "records_root", "classes", "pixel_scale"]
    assert canon["pixel_scale"] == 255 and canon["records_root"] == m.records_root.hex()
    assert parse_task_toml(format_task_toml(task)) == task
    bad = [
        ({"num_items": m.num_items - 1}, "is not the hash"),  # any field the hash commits to
        ({"records_root": "00" * 32}, "is not the hash"),
        ({"format": "npy"}, "trains on"),
        ({"classes": 257}, "vocabulary size"),
        ({"item_shape": [2]}, "scalars"),
        ({"extra": 1}, "unknown key"),
        ({"records_root": "AB" * 32}, "lowercase hex"),
        ({"classes": True}, "integer"),
    ]
    for change, match in bad:
        with pytest.raises(InvalidTask, match=match):
            parse_task(_doc(m, **change))
    doc = _doc(m)
    doc["model"] = {"family": "mlp"}
    with pytest.raises(InvalidTask, match="transformer or a graph"):
        parse_task(doc)
    doc = _doc(m)
    doc["model"]["context"] = m.num_items
    with pytest.raises(InvalidTask, match="cannot fill one window"):
        parse_task(doc)
    doc = _doc(m)
    doc["data"] = {"adapter": "sklearn-digits", "sha256": "00" * 32, "format": "tokens-u8"}
    with pytest.raises(InvalidTask, match="unknown key"):
        parse_task(doc)


def test_token_order_and_records_match_the_spec_text(tokens: tuple[Path, bytes, Any]) -> None:
    directory, raw, m = tokens
    task = parse_task(_doc(m))
    ds = PackedDataset(task.data.sha256, task.data.packed, DirRecords(directory))
    for seed, step in ((0, 0), (2**64 - 1, 7), (123456789, 2**31)):
        keyed = dataclasses.replace(task, seed=seed)
        w = spec.random_u32(seed, 2, step, 1, 2 * task.batch_size)  # stream DATA, a = step, b = 1
        starts = [(int(w[2 * r]) + (int(w[2 * r + 1]) << 32)) % (m.num_items - CONTEXT)
                  for r in range(task.batch_size)]
        want = sorted({i // m.items_per_record for s in starts for i in range(s, s + CONTEXT + 1)})
        assert compute_step_records(task.data.packed, seed, step, task.batch_size, CONTEXT) == want
        x, y = ds.get_batch(keyed, step)
        rows = np.array([list(raw[s:s + CONTEXT + 1]) for s in starts])
        assert x.tolist() == rows[:, :-1].tolist() and y.tolist() == rows[:, 1:].tolist()


def test_packed_digits_see_the_builtin_adapters_batches(tmp_path: Path) -> None:
    from prover.datasets import load_dataset

    assert main(["dataset", "builtin", "digits", "--out", str(tmp_path / "d"), "--json"]) == 0
    packed = parse_task_toml(resolve_task_path("digits-packed-mlp").read_text())
    plain = parse_task_toml(resolve_task_path("digits-mlp").read_text())
    m = load_manifest(tmp_path / "d")
    assert compute_packed_dataset_hash(m) == packed.data.sha256, "the built-in task pins the default packing"
    ds = PackedDataset(packed.data.sha256, packed.data.packed, DirRecords(tmp_path / "d"))
    ref = load_dataset(plain.data)
    for step in (0, 28, 29, 500):
        x, y = ds.get_batch(dataclasses.replace(packed, seed=77), step)
        x2, y2 = ref.get_batch(dataclasses.replace(plain, seed=77), step)
        assert x.equal(x2) and y.equal(y2)
        order = spec.image_batch_indices(77, step, 64, 1797)
        want = sorted({i // 64 for i in order})
        assert compute_step_records(packed.data.packed, 77, step, 64, 0) == want


def test_prove_and_verify_with_a_dataset_dir(tokens: tuple[Path, bytes, Any], tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    directory, _, m = tokens
    task_file = tmp_path / "task.toml"
    task_file.write_text(format_task_toml(parse_task(_doc(m))))
    assert main(["keys", "new", "--out", str(tmp_path / "k.json")]) == 0
    prove = ["prove", str(task_file), "--key", str(tmp_path / "k.json"), "--quiet", "--json"]
    assert main(prove + ["--out", str(tmp_path / "p"), "--dataset", str(directory)]) == 0
    capsys.readouterr()
    assert main(["verify", str(tmp_path / "p"), "--segments", "all", "--quiet", "--json", "--dataset",
                 str(directory)]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "accept"
    assert main(["verify", str(tmp_path / "p"), "--quiet"]) == 2  # no data: an error, never a reject
    assert "--dataset" in capsys.readouterr().err

    # A damaged record is refused by name, by the prover and by a verifier (whose own copy is at fault).
    bad = tmp_path / "bad"
    pack([directory.parent / "t.bin"], "tokens-u8", bad, record_bytes=300, records_per_shard=7)
    shard = bad / shard_name(0)
    data = bytearray(shard.read_bytes())
    for i in range(0, len(data), 300):
        data[i] ^= 1  # every record of shard 0
    shard.write_bytes(bytes(data))
    assert main(prove + ["--out", str(tmp_path / "p2"), "--dataset", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "record " in err and "does not hash" in err
    assert main(["verify", str(tmp_path / "p"), "--segments", "all", "--quiet", "--dataset", str(bad)]) == 2


def test_prune_keeps_the_initial_and_final_checkpoints(tokens: tuple[Path, bytes, Any], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from prover.model import read_final_from_dir

    directory, _, m = tokens
    doc = _doc(m)
    doc["task"]["total_steps"], doc["task"]["checkpoint_interval"] = 3, 1
    task_file = tmp_path / "task.toml"
    task_file.write_text(format_task_toml(parse_task(doc)))
    assert main(["keys", "new", "--out", str(tmp_path / "k.json")]) == 0
    assert main(["prove", str(task_file), "--key", str(tmp_path / "k.json"), "--quiet", "--out",
                 str(tmp_path / "p"), "--dataset", str(directory), "--keep-step-roots"]) == 0
    capsys.readouterr()
    assert main(["prune", str(tmp_path / "p"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["files_removed"] == 2 + 3  # checkpoints 1 and 2, the step roots of 3 segments
    names = sorted(p.name for p in (tmp_path / "p" / "checkpoints").iterdir())
    assert names == ["ckpt-000000.safetensors", "ckpt-000003.safetensors"]
    assert not (tmp_path / "p" / "steps").exists()
    claim, final = read_final_from_dir(tmp_path / "p")  # the delivered model is still there
    assert claim.body.num_checkpoints == 4 and final
    assert main(["prune", str(tmp_path)]) == 2  # not a proof directory: nothing deleted


def test_builtin_packed_task_ids_follow_the_spec_text() -> None:
    """The normalized document, dataset hash and task id of stdlib-transformer as SPEC §3, §12.2 and §12.3
    state them, computed with the separate implementation's msgpack and Merkle code."""
    from protocol.task import compute_task_id

    task = parse_task_toml(resolve_task_path("stdlib-transformer").read_text())
    root = "d80a3cba51f1c2d1c99ea820621e774d1234b6da16ad7e8c31edd3c828065a41"
    identity = {"version": 1, "format": "tokens-u8", "item_dtype": "u8", "item_shape": [], "num_items": 11354162,
                "items_per_record": 65536, "records_root": bytes.fromhex(root)}
    digest = spec.sha256(b"pol/v1/dataset" + b"packed\x00" + spec.pack(identity))
    normalized = {
        "task": {"name": "stdlib-transformer", "seed": 1991, "total_steps": 200, "checkpoint_interval": 20,
                 "batch_size": 8, "ops_version": 1},
        "model": {"family": "transformer", "d_model": 64, "n_layers": 2, "n_heads": 4, "d_ff": 256, "context": 64,
                  "dropout": 0.0},
        "data": {"adapter": "packed", "sha256": digest.hex(), "format": "tokens-u8", "item_shape": [],
                 "num_items": 11354162, "items_per_record": 65536, "records_root": root, "classes": 256,
                 "pixel_scale": 255},
        "optim": {"name": "adamw", "lr": 0.003, "momentum": 0.0, "weight_decay": 0.01, "beta1": 0.9, "beta2": 0.999,
                  "eps": 1e-8, "grad_clip": 1.0},
        "schedule": {"name": "linear", "warmup_steps": 20, "final_lr_fraction": 0.1},
    }
    assert task.data.sha256 == digest
    assert compute_task_id(task) == spec.task_id(normalized)


def test_records_of_a_tiny_set_by_hand(tmp_path: Path) -> None:
    """Items straddling records: 10 two-byte tokens in records of 3 items (4 records, the last short)."""
    (tmp_path / "t.bin").write_bytes(np.arange(10, dtype="<u2").tobytes())
    m = pack([tmp_path / "t.bin"], "tokens-u16", tmp_path / "ds", record_bytes=6)
    assert (m.items_per_record, m.num_records) == (3, 4)
    doc = _doc(m, classes=10)
    doc["model"]["context"] = 3
    doc["task"]["batch_size"] = 1
    task = parse_task(doc)
    ds = PackedDataset(task.data.sha256, task.data.packed, DirRecords(tmp_path / "ds"))
    for step in range(6):
        w = spec.random_u32(task.seed, 2, step, 1, 2)
        s = (int(w[0]) + (int(w[1]) << 32)) % (10 - 3)
        x, y = ds.get_batch(task, step)
        assert x.tolist() == [[s, s + 1, s + 2]] and y.tolist() == [[s + 1, s + 2, s + 3]]
        assert compute_step_records(task.data.packed, task.seed, step, 1, 3) == sorted({s // 3, (s + 3) // 3})
    doc = _doc(m, classes=5)  # tokens 5..9 lie outside a vocabulary of 5
    doc["model"]["context"] = 3
    from prover.packeddata import DataOutOfRange

    task = parse_task(doc)
    ds = PackedDataset(task.data.sha256, task.data.packed, DirRecords(tmp_path / "ds"))
    with pytest.raises(DataOutOfRange, match="outside the task's vocabulary"):
        for step in range(20):
            ds.get_batch(task, step)


def test_dataset_show_toml_is_a_valid_data_table(tokens: tuple[Path, bytes, Any]) -> None:
    from pol.dataset_cli import format_data_table

    _, _, m = tokens
    text = ('[task]\nname = "t"\nseed = 1\ntotal_steps = 2\ncheckpoint_interval = 1\nbatch_size = 2\n'
            '[model]\nfamily = "transformer"\nd_model = 16\nn_layers = 1\nn_heads = 2\nd_ff = 16\ncontext = 8\n'
            + format_data_table(m, None) + "\n")
    task = parse_task_toml(text)
    assert task.data.sha256 == compute_packed_dataset_hash(m) and task.data.packed.classes == 256
    assert "# classes = ?" in format_data_table(dataclasses.replace(m, format="tokens-u16", item_dtype="u16"), None)
