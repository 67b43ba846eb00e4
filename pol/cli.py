"""The ``pol`` command line. Humans get text; ``--json`` gives one JSON document on stdout.

Exit codes: 0 success/accept, 1 reject, 2 error (bad input or environment; message on
stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from protocol.errors import PolError

EXIT_OK, EXIT_REJECT, EXIT_ERROR = 0, 1, 2


class CliError(Exception):
    """An error to show the operator as one line, exit code 2."""


def _emit(args: argparse.Namespace, doc: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        print(text)


def cmd_keys_new(args: argparse.Namespace) -> int:
    from .keyfile import generate_keyfile, save_keyfile

    key = generate_keyfile()
    save_keyfile(Path(args.out), key)
    _emit(args, {"keyfile": args.out, "public_key": key.public_key.hex()},
          f"wrote {args.out}\npublic key {key.public_key.hex()}")
    return EXIT_OK


def cmd_keys_show(args: argparse.Namespace) -> int:
    from .keyfile import load_keyfile

    key = load_keyfile(Path(args.keyfile))
    _emit(args, {"public_key": key.public_key.hex()}, f"public key {key.public_key.hex()}")
    return EXIT_OK


def _read_task(path: str) -> Any:
    from prover.builtin import resolve_task_path
    from protocol.task import parse_task_toml

    p = resolve_task_path(path)
    try:
        return parse_task_toml(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CliError(f"task file {path} does not exist") from None


def cmd_prove(args: argparse.Namespace) -> int:
    from prover.prove import prove
    from protocol.task import compute_task_id

    from .keyfile import load_keyfile
    from .progress import StepProgress

    task = _read_task(args.task)
    key = load_keyfile(Path(args.key))
    with StepProgress(task.total_steps, f"prove {task.name}", disable=args.json or args.quiet) as bar:
        result = prove(task, Path(args.out), key.bls_secret_key, progress=bar.update)
    doc = {
        "task_id": compute_task_id(task).hex(),
        "claim_id": result.claim_id.hex(),
        "commitment": result.claim.body.commitment.hex(),
        "final_root": result.claim.body.final_root.hex(),
        "checkpoints": result.claim.body.num_checkpoints,
        "resumed_from_step": result.resumed_from_step,
        "final_loss": result.final_loss,
        "seconds": round(result.seconds, 3),
        "out": args.out,
    }
    _emit(args, doc, "\n".join(f"{k:18} {v}" for k, v in doc.items()))
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from verifier.verify import ACCEPT, verify_dir

    from .keyfile import load_keyfile
    from .progress import segment_printer

    key = load_keyfile(Path(args.key)).bls_secret_key if args.key else None
    segments = None if args.segments == "all" else _positive_int(args.segments, "--segments")
    path = Path(args.dir)
    if not path.is_dir():
        raise CliError(f"{path} is not a directory")
    report = verify_dir(path, segments=segments, secret_key=key,
                        on_segment=None if args.json else segment_printer())
    doc = report.to_json()
    if report.verdict == ACCEPT:
        text = f"ACCEPT claim {doc['claim_id']}\nreplayed segments {doc['sample']} of {doc['num_segments']}"
        esc = doc["escape_probability"]
        if isinstance(esc, dict) and esc:
            text += "\n" + ", ".join(f"escape if {k.replace('_', ' ')}: {v:.3g}" for k, v in esc.items())
    else:
        text = f"REJECT: check '{report.failed_check}' failed\n{report.reason}"
    _emit(args, doc, text)
    return EXIT_OK if report.verdict == ACCEPT else EXIT_REJECT


def cmd_inspect(args: argparse.Namespace) -> int:
    from prover.transcript import ProofDir, read_transcript
    from protocol.claim import compute_claim_id
    from protocol.task import compute_task_id

    pdir = ProofDir(Path(args.dir))
    task = pdir.read_task()
    claim = pdir.read_claim() if pdir.claim_file.exists() else None
    entries = read_transcript(pdir, task, allow_torn_tail=False) if pdir.transcript_file.exists() else []
    doc = {
        "task": task.name,
        "task_id": compute_task_id(task).hex(),
        "model": task.model_family,
        "dataset": task.data.adapter,
        "total_steps": task.total_steps,
        "checkpoint_interval": task.checkpoint_interval,
        "complete": claim is not None,
        "claim_id": compute_claim_id(claim.body).hex() if claim else None,
        "prover": claim.body.prover.hex() if claim else None,
        "commitment": claim.body.commitment.hex() if claim else None,
        "final_root": claim.body.final_root.hex() if claim else None,
        "checkpoints": [{"index": e.index, "step": e.step, "root": e.root.hex(), "loss": e.loss} for e in entries],
    }
    lines = [f"{k:20} {v}" for k, v in doc.items() if k != "checkpoints"]
    lines.append(f"{'checkpoints':20} {len(entries)} of {task.num_checkpoints}")
    for e in entries:
        loss = "" if e.loss is None else f"  loss {e.loss:.4f}"
        lines.append(f"  #{e.index:<4} step {e.step:<7} {e.root.hex()}{loss}")
    _emit(args, doc, "\n".join(lines))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses

    from verifier.audit import audit_segment

    if args.segment < 0:
        raise CliError("--segment must be >= 0")
    report = audit_segment(Path(args.dir), args.segment)
    doc = dataclasses.asdict(report)
    doc["finding"] = report.finding
    if not args.steps:
        doc.pop("steps")
    text = [f"claim {report.claim_id}", f"segment {report.segment}: steps {report.start_step}..{report.end_step}",
            f"finding: {report.finding}"]
    if report.step_roots_match_commitment is False:
        text.append("note: the prover's step roots do not even end at its committed checkpoint root")
    _emit(args, doc, "\n".join(text))
    return EXIT_OK if report.segment_ok and report.first_bad_step is None else EXIT_REJECT


def cmd_conformance(args: argparse.Namespace) -> int:
    from verifier.conformance import check_conformance

    path = Path(args.dir)
    if not path.is_dir():
        raise CliError(f"{path} is not a directory")
    report = check_conformance(path)
    lines = [f"{'ok  ' if r.ok else 'FAIL'} {r.check:20} {r.detail}" for r in report.results]
    lines.append("conforms to SPEC.md" if report.ok else "does NOT conform to SPEC.md")
    _emit(args, report.to_json(), "\n".join(lines))
    return EXIT_OK if report.ok else EXIT_REJECT


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from gpu_ops.bench import format_table, run_bench

    res = run_bench(args.tasks or None, _positive_int(str(args.steps), "--steps"), args.threads)
    _emit(args, res, format_table(res) + "\n(ratio = deterministic / native torch fp32 at the same thread count)")
    return EXIT_OK


def _positive_int(value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise CliError(f"{flag} takes a positive integer or 'all', not {value!r}") from None
    if n < 1:
        raise CliError(f"{flag} must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pol", description="Proof-of-learning: prove, verify and audit training.")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v info, -vv debug)")
    sub = p.add_subparsers(dest="command", required=True)

    keys = sub.add_parser("keys", help="create or show key files").add_subparsers(dest="keys_command", required=True)
    k = keys.add_parser("new", help="create a new key file (BLS key + node identity)")
    k.add_argument("--out", required=True, help="path of the new key file (never overwritten)")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_new)
    k = keys.add_parser("show", help="print the public key of a key file")
    k.add_argument("keyfile")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_keys_show)

    pr = sub.add_parser("prove", help="train a task deterministically and sign a claim (resumable)")
    pr.add_argument("task", help="task TOML file, or the name of a built-in task (e.g. digits-mlp)")
    pr.add_argument("--out", required=True, help="proof directory (created; rerun to resume)")
    pr.add_argument("--key", required=True, help="key file that signs the claim")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prove)

    v = sub.add_parser("verify", help="verify a proof directory by replaying sampled segments")
    v.add_argument("dir")
    v.add_argument("--segments", default="4", help="number of segments to replay, or 'all' (default 4)")
    v.add_argument("--key", help="verifier key file; the sample derives from its signature (default: ephemeral)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    a = sub.add_parser("audit", help="replay one segment step by step and name the first faked step")
    a.add_argument("dir")
    a.add_argument("--segment", type=int, required=True, help="segment index (as named by a reject)")
    a.add_argument("--steps", action="store_true", help="include every step's roots in --json output")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=cmd_audit)

    i = sub.add_parser("inspect", help="show task, prover, commitment and checkpoints of a proof directory")
    i.add_argument("dir")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_inspect)

    c = sub.add_parser("conformance", help="check a proof directory of any implementation against SPEC.md "
                       "(layout, encodings, roots, commitment, signature, initial state; no replay)")
    c.add_argument("dir")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_conformance)

    d = sub.add_parser("demo", help="prove and verify the default task, then show a cheat being rejected")
    d.add_argument("--workdir", default=None, help="where to put the demo files (default: a temp dir)")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=cmd_demo)

    b = sub.add_parser("bench", help="time a training step: deterministic ops vs native torch, side by side")
    b.add_argument("--tasks", nargs="*", help="built-in task names (default: all)")
    b.add_argument("--steps", type=int, default=20, help="timed steps per task and mode (default 20)")
    b.add_argument("--threads", type=int, default=None, help="torch threads for both modes (default 1)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    from node.cli import register as register_node_commands

    from .dataset_cli import register as register_dataset_commands

    register_node_commands(sub)
    register_dataset_commands(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from .keyfile import KeyFileError

    try:
        return int(args.func(args))
    except (CliError, KeyFileError, PolError, OSError) as exc:
        kind = type(exc).__name__
        print(f"pol: error: {exc} [{kind}]", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pol: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
