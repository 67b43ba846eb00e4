"""Recompile contracts/Settlement.vy into node/evm/Settlement.json: ``python -m node.evm.compile``.

tests/chain/test_settlement.py checks that the committed artifact is what this produces.
"""

from __future__ import annotations

import json
import sys

from .contract import ARTIFACT_PATH, compile_settlement


def main() -> int:
    artifact = compile_settlement()
    ARTIFACT_PATH.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
    size = len(bytes.fromhex(artifact["bytecode_runtime"][2:]))
    print(f"wrote {ARTIFACT_PATH.name}: runtime {size} bytes (+ 384 bytes of immutables; EIP-170 limit 24576)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
