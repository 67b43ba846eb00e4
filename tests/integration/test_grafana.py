"""The Grafana dashboard in deploy/ reads only metrics the node exports."""

from __future__ import annotations

import json
import re
from pathlib import Path


REPO = Path(__file__).resolve().parents[2]


def test_dashboard_queries_name_exported_metrics() -> None:
    import inspect

    import node.metrics as m

    source = inspect.getsource(m)
    exported = set(re.findall(r'"(pol_[a-z_]+)"', source))
    # Counters gain _total in the exposition; histograms _bucket/_count/_sum.
    names = exported | {n + "_total" for n in exported} | {n + s for n in exported for s in ("_bucket", "_count")}
    dash = json.loads((REPO / "deploy" / "grafana-pol-node.json").read_text())
    used = {name for p in dash["panels"] for t in p["targets"] for name in re.findall(r"\bpol_[a-z_]+", t["expr"])}
    assert used and used <= names, used - names
