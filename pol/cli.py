"""The ``pol`` command line. Humans get text; ``--json`` gives one JSON document on stdout.

Exit codes, the same in every command: 0 success/accept; 1 reject, only for a proof that fails
one of the checks of the prover's work; 2 for anything that is not a proof, an operator error or
an environment problem (one line on stderr, no traceback). Verdicts in JSON are words
("accept"/"reject"). A closed stdout (``pol ... --json | head``) ends the command quietly.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
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

    from node.identity import compute_peer_id
    from protocol import bls

    key = load_keyfile(Path(args.keyfile))
    # Everything a genesis coordinator needs (`pol genesis add-verifier`), and nothing secret.
    doc = {"public_key": key.public_key.hex(), "pop": bls.compute_pop(key.bls_secret_key).hex(),
           "peer_id": compute_peer_id(key.node_seed)}
    _emit(args, doc, f"public key {doc['public_key']}\npeer id    {doc['peer_id']}\npop        {doc['pop']}")
    return EXIT_OK


def _read_task(path: str) -> Any:
    from prover.builtin import resolve_task_path
    from protocol.constants import MAX_TASK_BYTES
    from protocol.errors import InvalidTask
    from protocol.task import parse_task_toml

    from .files import read_regular_text

    p = resolve_task_path(path)
    try:
        return parse_task_toml(read_regular_text(p, MAX_TASK_BYTES, InvalidTask, f"task file {path}"))
    except FileNotFoundError:
        raise CliError(f"task file {path} does not exist") from None


def _read_posting_id(value: str, task: Any) -> bytes:
    """``--posting``: a 64-hex posting id, or a file holding one or an encoded ``task_posted`` message
    (binary or hex) of this task; ``offline`` is the offline id that no ledger accepts (SPEC.md §9)."""
    from protocol.constants import OFFLINE_POSTING_ID
    from protocol.errors import InvalidInput
    from protocol.ledger import TaskPosted, compute_posting_id
    from protocol.messages import decode_message
    from protocol.task import compute_task_id, decode_task

    if value == "offline":
        return OFFLINE_POSTING_ID
    raw: bytes = value.encode()
    if not _is_hex(value, 64):
        try:
            raw = Path(value).read_bytes()
        except FileNotFoundError:
            raise CliError(f"--posting {value!r} is neither a 64-hex posting id nor an existing file") from None
    text = raw.strip().decode("ascii", "replace")  # strip only the text forms: binary msgpack is used as is
    if _is_hex(text, 64):
        return bytes.fromhex(text)
    if _is_hex(text):
        raw = bytes.fromhex(text)
    try:
        msg = decode_message(raw)
    except InvalidInput as exc:
        raise CliError(f"--posting {value}: not a posting id or an encoded task_posted message ({exc})") from None
    if not isinstance(msg, TaskPosted):
        raise CliError(f"--posting {value}: the message is not a task posting")
    if compute_task_id(decode_task(msg.task)) != compute_task_id(task):
        raise CliError(f"--posting {value}: the posting is for another task")
    return compute_posting_id(msg)


def _is_hex(text: str, length: int | None = None) -> bool:
    if length is not None and len(text) != length:
        return False
    return len(text) % 2 == 0 and len(text) > 0 and all(c in "0123456789abcdefABCDEF" for c in text)


def _resolve_task_id(value: str) -> bytes:
    """``--task``: a 64-hex task id, a task TOML file or a built-in task name."""
    from protocol.task import compute_task_id

    if _is_hex(value, 64):
        return bytes.fromhex(value)
    return compute_task_id(_read_task(value))


def cmd_prove(args: argparse.Namespace) -> int:
    from prover.prove import prove
    from protocol.task import compute_task_id

    from .keyfile import load_keyfile
    from .progress import StepProgress

    task = _read_task(args.task)
    key = load_keyfile(Path(args.key))
    posting_id = _read_posting_id(args.posting, task)
    _register_datasets(args.dataset)
    from prover.training import DeviceUnavailable, check_device

    device = getattr(args, "device", "cpu")
    if device != "cpu" and args.workers != 1:
        raise CliError(f"--workers {args.workers} with --device {device}: data-parallel proofs run on CPU workers "
                       "(gloo) only for now; use one CUDA process (--workers 1) or --device cpu")
    try:
        check_device(device)
    except DeviceUnavailable as exc:
        raise CliError(str(exc)) from None
    with StepProgress(task.total_steps, f"prove {task.name}", disable=args.json or args.quiet) as bar:
        if args.workers != 1:  # data-parallel (SPEC.md §13.1): the same claim and roots as one process
            from prover.distributed import prove_with_workers

            try:
                result = prove_with_workers(task, Path(args.out), key.bls_secret_key, args.workers,
                                            progress=bar.update, posting_id=posting_id,
                                            keep_step_roots=args.keep_step_roots)
            except ValueError as exc:
                raise CliError(f"--workers {args.workers}: {exc}") from None
        else:
            result = prove(task, Path(args.out), key.bls_secret_key, progress=bar.update, posting_id=posting_id,
                           keep_step_roots=args.keep_step_roots, device=device)
    doc = {
        "task_id": compute_task_id(task).hex(),
        "posting_id": posting_id.hex(),
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


def _register_datasets(dirs: list[str] | None) -> None:
    """``--dataset DIR``: packed datasets a task may train on, found by their hash (SPEC.md §12.3)."""
    from prover.packeddata import DirRecords, clear_sources, register_source
    from protocol.errors import InvalidInput

    clear_sources()
    for d in dirs or []:
        if not Path(d).is_dir():
            raise CliError(f"--dataset {d} is not a directory")
        try:
            register_source(DirRecords(Path(d)))
        except InvalidInput as exc:
            raise CliError(f"--dataset {d}: {exc}") from None


def _require_proof_dir(path: Path) -> None:
    """Anything that is not a proof directory is an operator error (exit 2), never a reject (exit 1)."""
    from prover.transcript import ProofDir

    if not path.is_dir():
        raise CliError(f"{path} is not a directory")
    pdir = ProofDir(path)
    missing = [p.name for p in (pdir.task_file, pdir.claim_file) if not p.exists()]
    if missing:
        raise CliError(f"{path} is not a proof directory (no {' or '.join(missing)}; "
                       "`pol prove` writes one, and an unfinished proof has no claim yet)")


def cmd_verify(args: argparse.Namespace) -> int:
    from prover.transcript import ProofDir
    from verifier.verify import ACCEPT, verify_dir

    from .keyfile import load_keyfile
    from .progress import SegmentProgress, describe_detection

    key = load_keyfile(Path(args.key)).bls_secret_key if args.key else None
    segments = None if args.segments == "all" else _positive_int(args.segments, "--segments")
    path = Path(args.dir)
    _require_proof_dir(path)
    expected_task = _resolve_task_id(args.task) if args.task else None
    expected_posting = None
    if args.posting:
        expected_posting = _read_posting_id(args.posting, _read_task(args.task)) if args.task and not _is_hex(
            args.task, 64) else _read_posting_id_only(args.posting)
    _register_datasets(args.dataset)
    try:
        total = ProofDir(path).read_task().num_segments
    except (PolError, ValueError):
        total = None  # verify_dir names the failing check
    if total is not None and segments is not None:
        total = min(total, segments)
    with SegmentProgress(total, disable=args.json or args.quiet) as bar:
        report = verify_dir(path, segments=segments, secret_key=key, on_segment=bar.update,
                            expected_task_id=expected_task, expected_posting_id=expected_posting,
                            max_state_bytes=_positive_int(args.max_state_bytes, "--max-state-bytes"))
    doc = report.to_json()
    doc["detection"] = describe_detection(report.num_segments, len(report.sample))
    # What was verified comes first: a verdict means nothing without the task it is about.
    head = (f"task {doc['task_id']} ({doc['task_name']}): {doc['total_steps']} steps, checkpoint interval "
            f"{doc['checkpoint_interval']}, {doc['num_segments']} segments")
    if report.task_id is None:
        head = "task: unreadable"
    if report.verdict == ACCEPT:
        text = f"ACCEPT claim {doc['claim_id']}\nreplayed segments {doc['sample']} of {doc['num_segments']}"
        if doc["detection"]:
            text += "\n" + "\n".join(d["text"] for d in doc["detection"])
    else:
        text = f"REJECT: check '{report.failed_check}' failed\n{report.reason}"
    _emit(args, doc, head + "\n" + text)
    return EXIT_OK if report.verdict == ACCEPT else EXIT_REJECT


def cmd_prune(args: argparse.Namespace) -> int:
    from prover.prune import prune_proof_dir

    path = Path(args.dir)
    _require_proof_dir(path)
    result = prune_proof_dir(path)
    doc = {"dir": str(path), "files_removed": result.files, "bytes_freed": result.bytes}
    _emit(args, doc, f"pruned {path}: {result.files} files, {result.bytes:,} bytes freed "
                     "(kept checkpoint 0, the final checkpoint, the transcript and the claim)")
    return EXIT_OK


def _read_posting_id_only(value: str) -> bytes:
    """``--posting`` without a task file to check a posting message against: an id or an id file."""
    from protocol.constants import OFFLINE_POSTING_ID

    if value == "offline":
        return OFFLINE_POSTING_ID
    text = value if _is_hex(value, 64) else Path(value).read_text(encoding="ascii", errors="replace").strip()
    if not _is_hex(text, 64):
        raise CliError("--posting without a --task file takes a 64-hex posting id (or a file holding one)")
    return bytes.fromhex(text)


def _model_limit(task: str | None) -> int:
    """The most bytes a node's final checkpoint may send: the task's own state when the task is known
    (a dishonest node cannot make us buffer more than the model we asked for), else the protocol's."""
    from prover.checkpoint import MAX_CHECKPOINT_BYTES
    from protocol.budget import get_task_cost
    from protocol.constants import MAX_SAFETENSORS_HEADER

    if not task or _is_hex(task, 64):
        return MAX_CHECKPOINT_BYTES
    return 8 + MAX_SAFETENSORS_HEADER + get_task_cost(_read_task(task)).state_bytes


def cmd_fetch_model(args: argparse.Namespace) -> int:
    import urllib.error
    import urllib.request

    from prover.model import export_model, read_final_from_dir
    from protocol.claim import decode_claim
    from protocol.constants import MAX_CLAIM_BYTES

    expected = None
    if args.claim:
        if not _is_hex(args.claim, 64):
            raise CliError("--claim takes a 64-hex claim id")
        expected = bytes.fromhex(args.claim.lower())
    if args.source.startswith(("http://", "https://")):
        if expected is None:
            raise CliError("fetching from a node needs --claim ID (the claim the ledger paid for)")
        base = args.source.rstrip("/") + f"/claims/{expected.hex()}"

        def get(what: str, limit: int) -> bytes:
            try:
                with urllib.request.urlopen(f"{base}/{what}", timeout=args.timeout) as resp:
                    data = bytes(resp.read(limit + 1))  # a node cannot make us read without end
                    if len(data) > limit:
                        raise CliError(f"{base}/{what}: the node sent more than {limit} bytes")
                    return data
            except urllib.error.HTTPError as exc:
                raise CliError(f"{base}/{what}: HTTP {exc.code} {exc.read()[:200].decode(errors='replace')}") from None
            except (urllib.error.URLError, TimeoutError) as exc:
                raise CliError(f"{base}/{what}: {exc}") from None

        claim = decode_claim(get("claim", MAX_CLAIM_BYTES))
        if args.task and claim.body.task_id != _resolve_task_id(args.task):
            raise CliError(f"the claim is for task {claim.body.task_id.hex()}, not the task asked for")
        checkpoint = get("model", _model_limit(args.task))
    else:
        path = Path(args.source)
        if not path.is_dir():
            raise CliError(f"{path} is neither a proof directory nor an http:// node URL")
        claim, checkpoint = read_final_from_dir(path)
    if args.task and claim.body.task_id != _resolve_task_id(args.task):
        raise CliError(f"the claim is for task {claim.body.task_id.hex()}, not the task asked for")
    result = export_model(claim, checkpoint, Path(args.out), expected)
    doc = {"claim_id": result.claim_id.hex(), "task_id": result.task_id.hex(), "final_root": result.final_root.hex(),
           "step": result.step, "tensors": result.tensors, "parameters": result.parameters, "out": args.out,
           "bytes": result.bytes_written}
    _emit(args, doc, f"model of claim {doc['claim_id']} (task {doc['task_id']}, step {result.step}) checked "
                     f"against final root {doc['final_root']}\nwrote {args.out}: {result.tensors} tensors, "
                     f"{result.parameters} parameters")
    return EXIT_OK


def cmd_economics(args: argparse.Namespace) -> int:
    import dataclasses

    from protocol.economics import SamplingImpossible
    from protocol.errors import InvalidGenesis
    from protocol.genesis import Params, validate_params

    from .economics import compute_table, draw_plot, format_table, get_row_document

    overrides = {k: v for k, v in (("deterrence_bps", args.deterrence_bps), ("bond_reward_bps", args.bond_reward_bps),
                                   ("prover_bond", args.prover_bond), ("min_sample_milli", args.min_sample_milli))
                 if v is not None}
    params = dataclasses.replace(Params(), **overrides)
    if min(args.verifiers) < 1 or min(args.segments) < 1 or args.reward < 1:
        raise CliError("--verifiers, --segments and --reward must be positive")
    try:
        validate_params(params)
        rows = compute_table(args.verifiers, args.segments, args.reward, params)
    except (InvalidGenesis, SamplingImpossible) as exc:
        raise CliError(f"these parameters cannot deter fakes: {exc}") from None
    doc: dict[str, Any] = {"params": dataclasses.asdict(params), "reward": args.reward,
                           "rows": [get_row_document(r) for r in rows]}
    text = format_table(rows, params)
    if args.plot:
        draw_plot(Path(args.plot), args.verifiers, args.reward, params)
        doc["plot"] = args.plot
        text += f"\nwrote {args.plot}"
    _emit(args, doc, text)
    return EXIT_OK


def _count_parameters(task: Any) -> int:
    from protocol.budget import get_task_graph_info

    return get_task_graph_info(task).param_count


def cmd_inspect(args: argparse.Namespace) -> int:
    from prover.transcript import ProofDir, read_transcript
    from protocol.claim import compute_claim_id
    from protocol.task import compute_task_id

    if Path(args.dir).is_file() or not Path(args.dir).exists():  # a task file (or built-in name): its model
        from .task_cli import cmd_show

        args.file = args.dir
        return cmd_show(args)
    pdir = ProofDir(Path(args.dir))
    task = pdir.read_task()
    claim = pdir.read_claim() if pdir.claim_file.exists() else None
    entries = read_transcript(pdir, task, allow_torn_tail=False) if pdir.transcript_file.exists() else []
    doc = {
        "task": task.name,
        "task_id": compute_task_id(task).hex(),
        "model": task.model_family,
        "parameters": _count_parameters(task),
        "dataset": task.data.adapter,
        "total_steps": task.total_steps,
        "checkpoint_interval": task.checkpoint_interval,
        "complete": claim is not None,
        "claim_id": compute_claim_id(claim.body).hex() if claim else None,
        "prover": claim.body.prover.hex() if claim else None,
        "posting_id": claim.body.posting_id.hex() if claim else None,
        "commitment": claim.body.commitment.hex() if claim else None,
        "final_root": claim.body.final_root.hex() if claim else None,
        "checkpoints": [{"index": e.index, "step": e.step, "root": e.root.hex(), "loss": e.loss} for e in entries],
    }
    evals: dict[int, Any] = {}
    if (args.eval or args.plot) and entries:
        from .evaluate import evaluate_proof, plot_curve

        results, eval_set = evaluate_proof(Path(args.dir))
        evals = {r.index: r for r in results}
        doc["eval_set"] = eval_set
        for c in doc["checkpoints"]:  # type: ignore[union-attr]
            r = evals[c["index"]]
            c["eval_loss"], c["eval_accuracy"] = round(r.eval_loss, 6), round(r.eval_accuracy, 6)
        if args.plot:
            plot_curve(results, f"{task.name}: loss over checkpoints", Path(args.plot))
            doc["plot"] = args.plot
    elif args.plot:
        raise CliError(f"{args.dir} has no checkpoints to plot yet")
    lines = [f"{k:20} {v}" for k, v in doc.items() if k != "checkpoints"]
    lines.append(f"{'checkpoints':20} {len(entries)} of {task.num_checkpoints}")
    for e in entries:
        loss = "" if e.loss is None else f"  loss {e.loss:.4f}"
        ev = evals.get(e.index)
        if ev is not None:
            loss += f"  eval loss {ev.eval_loss:.4f}  accuracy {ev.eval_accuracy:.1%}"
        lines.append(f"  #{e.index:<4} step {e.step:<7} {e.root.hex()}{loss}")
    _emit(args, doc, "\n".join(lines))
    return EXIT_OK


def cmd_audit(args: argparse.Namespace) -> int:
    import dataclasses

    from verifier.audit import audit_segment

    if args.segment < 0:
        raise CliError("--segment must be >= 0")
    _register_datasets(args.dataset)
    report = audit_segment(Path(args.dir), args.segment)
    doc = dataclasses.asdict(report)
    doc["finding"] = report.finding
    doc["verdict"] = "accept" if report.segment_ok and report.first_bad_step is None else "reject"
    if not args.steps:
        doc.pop("steps")
    text = [f"claim {report.claim_id}", f"segment {report.segment}: steps {report.start_step}..{report.end_step}",
            f"finding: {report.finding}"]
    if report.game:
        text.append(f"game: {report.game['rounds']} moves, {report.game['bytes']} bytes, winner {report.game['winner']}")
    if args.report:
        from verifier.report import write_report

        html_path, json_path = write_report(report, Path(args.report))
        doc["report"] = {"html": str(html_path), "json": str(json_path)}
        text.append(f"report: {html_path} and {json_path}")
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


def cmd_answer(args: argparse.Namespace) -> int:
    from prover.steps import publish_answers
    from prover.transcript import ProofDir

    if args.segment < 0:
        raise CliError("--segment must be >= 0")
    _register_datasets(args.dataset)
    publish_answers(ProofDir(Path(args.dir)), args.segment, tuple(args.trace_step or ()))
    doc = {"segment": args.segment, "step_roots": True, "traced_steps": sorted(args.trace_step or [])}
    _emit(args, doc, f"answers for segment {args.segment} written to {args.dir}/steps/")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    if getattr(args, "shapes", "builtin") == "large":
        from gpu_ops.bench_shapes import format_large, run_large

        res = run_large(_positive_int(str(args.steps), "--steps"), args.threads)
        _emit(args, res, format_large(res) + "\n(CPU-time medians, sides interleaved; det/nat = deterministic / native "
              "fp32, floor r = deterministic / native fp64 (DGEMM), root = state-root hashing share of the det step)")
        return EXIT_OK
    import gpu_ops.bench as bench
    from gpu_ops.bench import format_table, run_bench
    from tqdm import tqdm

    steps = _positive_int(str(args.steps), "--steps")
    runs = 2 * len(args.tasks or getattr(bench, "DEFAULT_TASKS", ()))  # one deterministic + one native run each
    spawn = getattr(bench, "_spawn", None)
    with tqdm(total=runs or None, desc="bench", unit="run", file=sys.stderr, disable=args.json) as bar:
        if spawn is not None:  # count the benchmark's child runs without touching its internals

            def counted(*a: Any, **kw: Any) -> Any:
                out = spawn(*a, **kw)
                bar.update(1)
                return out

            bench._spawn = counted
        try:
            res = run_bench(args.tasks or None, steps, args.threads)
        finally:
            if spawn is not None:
                bench._spawn = spawn
    _emit(args, res, format_table(res) + "\n(ratio = deterministic / native torch fp32 at the same thread count)")
    return EXIT_OK


def _positive_int(value: str, flag: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise CliError(f"{flag} takes a positive integer{' or all' if flag == '--segments' else ''}, not {value!r}") from None
    if n < 1:
        raise CliError(f"{flag} must be at least 1")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="pol", description="Proof-of-learning: prove, verify and audit training.",
                                epilog="exit codes: 0 accept/success, 1 reject (the prover's proof fails a check), "
                                       "2 error (not a proof, operator or environment error)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more logging on stderr (-v info, -vv debug)")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
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
    pr.add_argument("--posting", default="offline",
                    help="the task posting the claim answers: 64-hex posting id, or a file with the id or the "
                         "encoded task_posted message; keys the run's randomness (default 'offline': a claim "
                         "for experiments that no ledger accepts)")
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.add_argument("--dataset", action="append", metavar="DIR",
                    help="a packed dataset directory the task trains on (`pol dataset pack`; repeatable)")
    pr.add_argument("--keep-step-roots", action="store_true",
                    help="hash the state after every step and keep the roots (default: on demand, `pol answer`)")
    pr.add_argument("--workers", type=int, default=1,
                    help="data-parallel worker processes on this machine (gloo over 127.0.0.1); the state roots "
                         "are the same for any number (default 1: this process alone)")
    pr.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="where parameters, optimizer state and batches live: cpu (C kernels) or cuda (Triton "
                         "kernels; needs a GPU and the 'gpu' extra). The proof is the same bytes either way and "
                         "verifies on CPU (default cpu)")
    pr.add_argument("--json", action="store_true")
    pr.set_defaults(func=cmd_prove)

    v = sub.add_parser("verify", help="verify a proof directory by replaying sampled segments")
    v.add_argument("dir")
    v.add_argument("--segments", default="4", help="number of segments to replay, or 'all' (default 4)")
    v.add_argument("--key", help="verifier key file; the sample derives from its signature (default: ephemeral)")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.add_argument("--task", help="the task you asked for (TOML file, 64-hex task id or built-in name): a proof of "
                                  "any other task is rejected (default: trust DIR/task.toml and print what it is)")
    v.add_argument("--posting", help="the posting the claim must answer (64-hex id, or a file as for prove)")
    v.add_argument("--dataset", action="append", metavar="DIR",
                   help="the packed dataset directory the task trains on (only the records replayed are read)")
    v.add_argument("--max-state-bytes", default=str(256 * 1024 * 1024),
                   help="decline a task whose checkpoint holds more tensor bytes (default 268435456 = 256 MiB; the "
                        "protocol allows up to 2 GiB, and replay holds the whole state in memory)")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_verify)

    pn = sub.add_parser("prune", help="delete a settled proof's intermediate checkpoints (keeps 0 and the final)")
    pn.add_argument("dir", help="proof directory with a claim (only prune once the claim is settled)")
    pn.add_argument("--json", action="store_true")
    pn.set_defaults(func=cmd_prune)

    a = sub.add_parser("audit", help="play the challenger against a proof directory: name the faked step and operator")
    a.add_argument("dir")
    a.add_argument("--segment", type=int, required=True, help="segment index (as named by a reject)")
    a.add_argument("--steps", action="store_true", help="include every step's roots in --json output")
    a.add_argument("--dataset", action="append", metavar="DIR", help="the packed dataset the task trains on")
    a.add_argument("--json", action="store_true")
    a.add_argument("--report", help="write an HTML report with a plot and its JSON: FILE.html or a directory")
    a.set_defaults(func=cmd_audit)

    an = sub.add_parser("answer", help="prover: publish dispute answers (step roots, step traces) into DIR/steps/")
    an.add_argument("dir")
    an.add_argument("--segment", type=int, required=True, help="disputed segment")
    an.add_argument("--trace-step", type=int, action="append", help="also publish the operator trace of this step")
    an.add_argument("--dataset", action="append", metavar="DIR", help="the packed dataset the task trains on")
    an.add_argument("--json", action="store_true")
    an.set_defaults(func=cmd_answer)

    fm = sub.add_parser("fetch-model", help="download the trained model of a claim, check it against the claim's "
                                            "final root and write a plain safetensors file (parameters, torch names)")
    fm.add_argument("source", help="a proof directory, or a node's HTTP API URL (e.g. http://127.0.0.1:8701)")
    fm.add_argument("--claim", help="64-hex id of the claim (required with a URL; checked with a directory)")
    fm.add_argument("--task", help="also require the claim to be for this task (file, 64-hex id or built-in name)")
    fm.add_argument("--out", required=True, help="safetensors file to write (loadable by safetensors.torch.load_file)")
    fm.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds (default 60)")
    fm.add_argument("--json", action="store_true")
    fm.set_defaults(func=cmd_fetch_model)

    ec = sub.add_parser("economics", help="verification cost and cheating loss for given parameters (SPEC §16.2)")
    ec.add_argument("--verifiers", type=int, nargs="+", default=[4, 16, 64], help="network sizes (default 4 16 64)")
    ec.add_argument("--segments", type=int, nargs="+", default=[100, 1000, 10_000], help="segments per claim")
    ec.add_argument("--reward", type=int, default=1000, help="task reward (default 1000)")
    ec.add_argument("--deterrence-bps", type=int, help="deterrence D in basis points (default 30000: 3x)")
    ec.add_argument("--bond-reward-bps", type=int, help="bond as a share of the reward, in bps (default 40000)")
    ec.add_argument("--prover-bond", type=int, help="minimum bond (default 1000)")
    ec.add_argument("--min-sample-milli", type=int, help="floor on samples per verifier, in 1/1000 (default 0)")
    ec.add_argument("--plot", help="also draw the cost/security chart to this PNG file")
    ec.add_argument("--json", action="store_true")
    ec.set_defaults(func=cmd_economics)

    i = sub.add_parser("inspect", help="show task, prover, commitment and checkpoints of a proof directory; "
                       "given a task file, its model graph and parameter count")
    i.add_argument("dir", help="proof directory, or a task TOML file / built-in task name")
    i.add_argument("--eval", action="store_true",
                   help="load every checkpoint and report its loss and accuracy on a fixed evaluation set")
    i.add_argument("--plot", metavar="FILE.png", help="write the loss/accuracy curve over checkpoints (implies --eval)")
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
    b.add_argument("--shapes", choices=("builtin", "large"), default="builtin",
                   help="builtin: the built-in tasks; large: MLP 784-1024-1024-10, a d=256 transformer block, "
                        "a 32->64 conv and a 2048 exact matmul (det vs native fp32 vs native fp64)")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    from node.cli import register as register_node_commands

    from .dataset_cli import register as register_dataset_commands

    register_node_commands(sub)
    register_dataset_commands(sub)
    from .chain_cli import register as register_chain_commands

    register_chain_commands(sub)
    from .genesis_cli import register as register_genesis_commands

    register_genesis_commands(sub)
    from .task_cli import register as register_task_commands

    register_task_commands(sub)
    _add_verbose_everywhere(sub)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pol")
    except PackageNotFoundError:
        return "unknown"


def _add_verbose_everywhere(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Accept ``-v`` after the subcommand too (``pol verify DIR -v``), adding to any given before it."""
    for parser in set(sub.choices.values()):
        nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:
            for action in nested:
                _add_verbose_everywhere(action)
        elif not any("-v" in a.option_strings for a in parser._actions):
            parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, dest="sub_verbose",
                                help="more logging on stderr (-v info, -vv debug)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.verbose = args.verbose + getattr(args, "sub_verbose", 0)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from node.config import ConfigError

    from .chain_cli import ChainCliError
    from .genesis_cli import GenesisCliError
    from .keyfile import KeyFileError

    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows up here, inside the handler, not at interpreter exit
        return code
    except (CliError, KeyFileError, ChainCliError, PolError, ConfigError, GenesisCliError, OSError) as exc:
        if isinstance(exc, BrokenPipeError):
            return _quiet_broken_pipe()
        kind = type(exc).__name__
        print(f"pol: error: {exc} [{kind}]", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("pol: interrupted", file=sys.stderr)
        return 130


def _quiet_broken_pipe() -> int:
    """The reader went away (``| head``): stop without a traceback, and keep Python's exit-time flush of
    stdout from raising again (the standard recipe: point stdout at /dev/null)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 128 + 13  # as if killed by SIGPIPE, like other Unix filters


if __name__ == "__main__":
    sys.exit(main())
