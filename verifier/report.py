"""The audit report as HTML with an inline SVG plot, plus its JSON (``pol audit --report``).

The plot has two strips. The upper one is the disputed segment, one cell per step: green
where the prover's root equals the honest replay, red where it differs, grey where the prover
published no root; the step the game narrowed to is outlined. The lower one is the operator
trace of that step, one cell per entry, with the same colours, and the operator the game
narrowed to is outlined and labelled.
"""

from __future__ import annotations

import dataclasses
import html
import json
from pathlib import Path
from typing import Any

from .audit import AuditReport

GREEN, RED, GREY = "#3a9d5d", "#d0453a", "#b8b8b8"


def get_report_document(report: AuditReport) -> dict[str, Any]:
    doc = dataclasses.asdict(report)
    doc["finding"] = report.finding
    return doc


def _strip(cells: list[tuple[str, str]], y: int, width: int, label: str, mark: int | None) -> list[str]:
    n = max(len(cells), 1)
    w = (width - 120) / n
    out = [f'<text x="4" y="{y + 14}" font-size="12">{html.escape(label)}</text>']
    for i, (colour, title) in enumerate(cells):
        x = 120 + i * w
        stroke = ' stroke="#000" stroke-width="2"' if i == mark else ""
        out.append(f'<rect x="{x:.2f}" y="{y}" width="{max(w - 1, 0.5):.2f}" height="20" fill="{colour}"{stroke}>'
                   f"<title>{html.escape(title)}</title></rect>")
    if mark is not None and cells:
        out.append(f'<text x="{120 + (mark + 0.5) * w:.2f}" y="{y + 34}" font-size="11" text-anchor="middle">'
                   f"{html.escape(cells[mark][1])}</text>")
    return out


def render_svg(report: AuditReport, width: int = 900) -> str:
    step_cells: list[tuple[str, str]] = []
    for s in report.steps:
        claimed = s.get("claimed_root")
        colour = GREY if claimed is None else (GREEN if claimed == s["replayed_root"] else RED)
        step_cells.append((colour, f"step {s['step']}"))
    mark_step = None
    if report.first_bad_step is not None:
        mark_step = report.first_bad_step - report.start_step - 1
    parts = _strip(step_cells, 10, width, f"steps {report.start_step + 1}..{report.end_step}", mark_step)
    if report.trace:
        op_cells = [(GREEN if t["match"] else RED, f"{t['index']} {t['op']}") for t in report.trace]
        mark_op = report.operator["index"] if report.operator else None
        step = report.operator["step"] if report.operator else "?"
        parts += _strip(op_cells, 60, width, f"operators of step {step}", mark_op)
    height = 110 if report.trace else 60
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif">' + "".join(parts) + "</svg>")


def render_html(report: AuditReport) -> str:
    doc = get_report_document(report)
    rows = [("claim", report.claim_id), ("segment", f"{report.segment} (steps {report.start_step}..{report.end_step})"),
            ("finding", report.finding)]
    if report.game:
        g = report.game
        rows += [("game", f"{g['rounds']} moves, {g['bytes']} bytes, winner: {g['winner']}"), ("reason", g["reason"])]
    body = ["<table>"] + [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows]
    body.append("</table>")
    body.append(render_svg(report))
    op = report.operator
    if op:
        body.append(f"<h2>Operator {op['index']} of step {op['step']}: {html.escape(op['op'])}</h2>")
        body.append("<table><tr><th>tensor</th><th>role</th><th>dtype</th><th>shape</th><th>hash</th></tr>")
        for t in op["inputs"]:
            body.append(f"<tr><td>{html.escape(t['name'])}</td><td>input</td><td>{t['dtype']}</td>"
                        f"<td>{t['shape']}</td><td><code>{t['hash'][:16]}</code></td></tr>")
        for t in op["outputs"]:
            body.append(f"<tr><td>{html.escape(t['name'])}</td><td>output</td><td>{t['dtype']}</td>"
                        f"<td>{t['shape']}</td><td><code>{t['claimed_hash'][:16]}</code> claimed, "
                        f"<code>{(t['honest_hash'] or '')[:16]}</code> recomputed</td></tr>")
        body.append("</table>")
        for t in op["outputs"]:
            if t["first_differences"]:
                body.append(f"<h3>First differing elements of {html.escape(t['name'])}</h3><table>"
                            "<tr><th>index</th><th>claimed</th><th>honest</th></tr>")
                body += [f"<tr><td>{d['index']}</td><td>{d['claimed']!r}</td><td>{d['honest']!r}</td></tr>"
                         for d in t["first_differences"]]
                body.append("</table>")
    body.append("<h2>JSON</h2><pre>" + html.escape(json.dumps(doc, indent=1)) + "</pre>")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>pol audit</title>"
            "<style>body{font-family:sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            "td{padding-right:1em}</style></head><body><h1>pol audit</h1>" + "".join(body) + "</body></html>")


def write_report(report: AuditReport, target: Path) -> tuple[Path, Path]:
    """Write FILE.html and FILE.json, or DIR/report.html and DIR/report.json."""
    if target.suffix.lower() == ".html":
        html_path, json_path = target, target.with_suffix(".json")
        target.parent.mkdir(parents=True, exist_ok=True)
    else:
        target.mkdir(parents=True, exist_ok=True)
        html_path, json_path = target / "report.html", target / "report.json"
    html_path.write_text(render_html(report), encoding="utf-8")
    json_path.write_text(json.dumps(get_report_document(report), indent=1) + "\n", encoding="utf-8")
    return html_path, json_path
