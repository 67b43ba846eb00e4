"""Recompile contracts/Settlement.vy into node/evm/Settlement.json: ``python -m node.evm.compile``.

tests/chain/test_settlement.py checks that the committed artifact is what this produces.
"""

from __future__ import annotations

import json
import sys

from .contract import ARTIFACT_PATH, compile_settlement

IMMUTABLES = ("challenge_window", "availability_window", "dispute_window", "unbonding_delay", "quorum_numerator",
              "quorum_denominator", "prover_bond", "min_stake", "slash_double_vote_bps", "slash_failed_challenge_bps",
              "challenger_reward_bps", "slash_unavailable_bps", "bond_reward_bps")


def main() -> int:
    artifact = compile_settlement()
    ARTIFACT_PATH.write_text(json.dumps(artifact, indent=1, sort_keys=True) + "\n")
    size = len(bytes.fromhex(artifact["bytecode_runtime"][2:]))
    immutables = 32 * sum(1 for e in artifact["abi"] if e.get("type") == "function" and e.get("stateMutability") == "view"
                          and not e.get("inputs") and e["name"] in IMMUTABLES)
    print(f"wrote {ARTIFACT_PATH.name}: runtime {size} bytes + {immutables} bytes of immutables "
          f"(EIP-170 limit 24576)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
