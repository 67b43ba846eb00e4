"""The README's auditor example runs as written (against a real proof directory)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parent.parent.parent / "README.md"


def test_readme_python_example_runs(proof_dir: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README lost its Python API example"
    code = blocks[0].replace('Path("proof")', f"Path({str(proof_dir)!r})")
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert out.startswith("True "), out
