"""``pol dataset``: pack files into a content-addressed dataset, check one, show one.

Exit codes as everywhere: 0 ok, 1 the packed data does not match its manifest, 2 an error
(bad arguments, unreadable input).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from protocol.datapack import FORMATS, Manifest, compute_packed_dataset_hash

EXIT_OK, EXIT_MISMATCH = 0, 1


def _describe(manifest: Manifest, directory: Path) -> dict[str, Any]:
    return {
        "dir": str(directory),
        "dataset_hash": compute_packed_dataset_hash(manifest).hex(),
        "format": manifest.format,
        "item_dtype": manifest.item_dtype,
        "item_shape": list(manifest.item_shape),
        "num_items": manifest.num_items,
        "items_per_record": manifest.items_per_record,
        "record_bytes": manifest.record_bytes,
        "num_records": manifest.num_records,
        "records_per_shard": manifest.records_per_shard,
        "num_shards": len(manifest.shards),
        "records_root": manifest.records_root.hex(),
    }


def _print(args: argparse.Namespace, doc: dict[str, Any], headline: str) -> None:
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return
    print(headline)
    for key in ("dataset_hash", "format", "item_dtype", "item_shape", "num_items", "num_records", "num_shards"):
        print(f"  {key:<14} {doc[key]}")


def cmd_pack(args: argparse.Namespace) -> int:
    from prover.datapack import pack

    out = Path(args.out)
    manifest = pack([Path(f) for f in args.files], args.format, out, args.record_bytes, args.records_per_shard)
    _print(args, _describe(manifest, out), f"packed {len(args.files)} file(s) into {out}")
    return EXIT_OK


def cmd_builtin(args: argparse.Namespace) -> int:
    from prover.datapack import get_stdlib_source_files, pack, pack_digits

    from prover.datapack import DEFAULT_RECORD_BYTES, DIGITS_RECORD_BYTES

    out = Path(args.out)
    if args.name == "stdlib-source":
        manifest = pack(get_stdlib_source_files(), "tokens-u8", out, args.record_bytes or DEFAULT_RECORD_BYTES)
    else:
        manifest = pack_digits(out, args.record_bytes or DIGITS_RECORD_BYTES)
    _print(args, _describe(manifest, out), f"packed the built-in {args.name} data into {out}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from prover.datapack import InvalidDataset, verify_dataset

    directory = Path(args.dir)
    try:
        manifest = verify_dataset(directory)
    except InvalidDataset as exc:
        if args.json:
            print(json.dumps({"dir": str(directory), "ok": False, "error": str(exc)}, indent=2, sort_keys=True))
        else:
            print(f"MISMATCH {directory}: {exc}")
        return EXIT_MISMATCH
    doc = _describe(manifest, directory) | {"ok": True}
    _print(args, doc, f"OK {directory}: every record hashes to the manifest")
    return EXIT_OK


def cmd_show(args: argparse.Namespace) -> int:
    from prover.datapack import load_manifest

    directory = Path(args.dir)
    manifest = load_manifest(directory)
    if args.toml:
        print(format_data_table(manifest, args.classes))
        return EXIT_OK
    _print(args, _describe(manifest, directory), f"packed dataset {directory}")
    return EXIT_OK


def format_data_table(manifest: Manifest, classes: int | None) -> str:
    """The ``[data]`` table of a task training on ``manifest``'s dataset (SPEC.md §12.3)."""
    if classes is None and manifest.format == "tokens-u8":
        classes = 256
    lines = ["[data]", 'adapter = "packed"', f'sha256 = "{compute_packed_dataset_hash(manifest).hex()}"',
             f'format = "{manifest.format}"', f"item_shape = {list(manifest.item_shape)}",
             f"num_items = {manifest.num_items}", f"items_per_record = {manifest.items_per_record}",
             f'records_root = "{manifest.records_root.hex()}"']
    lines.append(f"classes = {classes}" if classes is not None else
                 "# classes = ?  (the vocabulary size, or the number of label classes: pass --classes N)")
    return "\n".join(lines)


def register(sub: Any) -> None:
    from prover.datapack import DEFAULT_RECORD_BYTES, DEFAULT_RECORDS_PER_SHARD

    ds = sub.add_parser("dataset", help="pack, check or show a content-addressed dataset").add_subparsers(
        dest="dataset_command", required=True)
    p = ds.add_parser("pack", help="pack files into records and shards pinned by a Merkle root")
    p.add_argument("files", nargs="+", help="tokens: raw little-endian files; images-u8+labels: IMAGES.npy "
                   "LABELS.npy; npy: .npy files with equal row shape and dtype")
    p.add_argument("--format", required=True, choices=sorted(FORMATS))
    p.add_argument("--out", required=True, help="new directory for the manifest, shards and leaf index")
    p.add_argument("--record-bytes", type=int, default=DEFAULT_RECORD_BYTES,
                   help=f"target bytes per record, whole items only (default {DEFAULT_RECORD_BYTES})")
    p.add_argument("--records-per-shard", type=int, default=DEFAULT_RECORDS_PER_SHARD)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_pack)
    b = ds.add_parser("builtin", help="pack data that ships with Python or an installed package")
    b.add_argument("name", choices=("stdlib-source", "digits"),
                   help="stdlib-source: the standard library's .py files as bytes; digits: scikit-learn's digits")
    b.add_argument("--out", required=True)
    b.add_argument("--record-bytes", type=int, default=None,
                   help="target bytes per record (default: 65536 for stdlib-source, 64 images for digits, the "
                        "packing the built-in tasks pin)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_builtin)
    v = ds.add_parser("verify", help="check every record of a packed dataset against its manifest")
    v.add_argument("dir")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)
    s = ds.add_parser("show", help="print a packed dataset's manifest and hash")
    s.add_argument("dir")
    s.add_argument("--json", action="store_true")
    s.add_argument("--toml", action="store_true", help="print the [data] table of a task training on it (§12.3)")
    s.add_argument("--classes", type=int, help="with --toml: the vocabulary size or number of label classes")
    s.set_defaults(func=cmd_show)
