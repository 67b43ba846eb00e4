"""Constants of the spec. SPEC.md §1 lists the same values; tests check they agree."""

from __future__ import annotations

from typing import Final, NewType

Digest = NewType("Digest", bytes)  # 32-byte SHA-256 output
Step = NewType("Step", int)

SPEC_VERSION: Final = 1
OPS_SPEC_VERSION: Final = 1

HASH_LEN: Final = 32
BLS_PUBKEY_LEN: Final = 48
BLS_SIGNATURE_LEN: Final = 96

# Domain tags keep hashes and signatures of different kinds from ever colliding.
DOMAIN_TASK: Final = b"pol/v1/task"
DOMAIN_LEAF: Final = b"pol/v1/tensor"
DOMAIN_CLAIM: Final = b"pol/v1/claim"
DOMAIN_CLAIM_ID: Final = b"pol/v1/claim-id"
DOMAIN_SAMPLE: Final = b"pol/v1/sample"
DOMAIN_SAMPLE_SEED: Final = b"pol/v1/sample-seed"
DOMAIN_DATASET: Final = b"pol/v1/dataset"

# Hard limits against oversized input. A checkpoint of a built-in task is far below them.
MAX_TASK_BYTES: Final = 64 * 1024
MAX_CLAIM_BYTES: Final = 64 * 1024
MAX_TENSORS_PER_STATE: Final = 4096
MAX_TENSOR_ELEMENTS: Final = 1 << 28
MAX_TOTAL_STEPS: Final = 10_000_000
MAX_CHECKPOINTS: Final = 100_000
