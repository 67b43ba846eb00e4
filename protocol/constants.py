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
DOMAIN_SAMPLE_COUNT: Final = b"pol/v1/sample-count"  # || sample signature: how many segments (§16.2)
DOMAIN_FORCED_ROOT: Final = b"pol/v1/forced-root"  # || secret || u64le(index): roots of forced errors
DOMAIN_TRAINING_SEED: Final = b"pol/v1/training-seed"  # || task id || prover key || posting id

# The posting id of offline experiments (`pol prove` without --posting). No SHA-256 output is
# all zeros in practice, so no ledger posting has this id and the ledger refuses such claims.
OFFLINE_POSTING_ID: Final = bytes(32)

# Hard limits against oversized input. A checkpoint of a built-in task is far below them.
MAX_TASK_BYTES: Final = 64 * 1024
MAX_CLAIM_BYTES: Final = 64 * 1024
MAX_TENSORS_PER_STATE: Final = 4096
MAX_TENSOR_ELEMENTS: Final = 1 << 28
# A tensor's raw bytes are hashed in chunks of this size (SPEC.md §5.2), so a fetcher checks each chunk on
# arrival; one chunk and its two proofs fit one 1 MiB stream frame.
TENSOR_CHUNK_BYTES: Final = 1 << 19
MAX_TOTAL_STEPS: Final = 10_000_000
MAX_CHECKPOINTS: Final = 100_000
# Budgets every valid task fits (SPEC.md §18.2): a prover may train up to them and a verifier may accept up to
# them (nodes default to far lower budgets). Large enough for GPT-2 small with AdamW (1.49 GB of state).
MAX_STATE_BYTES: Final = 2 * 1024 * 1024 * 1024  # tensor bytes of one checkpoint (params, optimizer slots, step)
MAX_SEGMENT_FLOPS: Final = 10**14  # upper bound on multiply-adds of one segment's replay
MAX_ACTIVATION_BYTES: Final = 1 << 36  # float32 bytes of a graph's node outputs for one batch (§18.2)
MAX_SAFETENSORS_HEADER: Final = 1024 * 1024  # bytes of a checkpoint file's JSON header

# --- Network layer (SPEC.md network chapter) ---
DOMAIN_VOTE: Final = b"pol/v1/vote"  # || claim_id || verdict byte: identical for all voters of a verdict
DOMAIN_EVIDENCE: Final = b"pol/v1/evidence"  # || claim_id || canonical evidence: binds a reject's proof
DOMAIN_DISPUTE_ID: Final = b"pol/v1/dispute-id"  # || claim_id || u64be(segment)
DOMAIN_DISPUTE_VOTE: Final = b"pol/v1/dispute-vote"  # || dispute_id || verdict byte
DOMAIN_TASK_POSTED: Final = b"pol/v1/task-posted"  # || canonical posting body, signed by the requester
DOMAIN_MESSAGE_ID: Final = b"pol/v1/message-id"  # || envelope bytes: gossip de-duplication id
DOMAIN_GENESIS: Final = b"pol/v1/genesis"  # || canonical genesis document: network id
DOMAIN_FETCH_HINTS: Final = b"pol/v1/fetch-hints"  # || claim_id || canonical hint list, signed by the prover

VERDICT_REJECT: Final = 0  # for disputes: the dispute failed (the prover's root stands)
VERDICT_ACCEPT: Final = 1  # for disputes: the dispute is upheld (the prover's root is false)

MILLI: Final = 1000  # per-verifier sample rates are integers in 1/1000 segment
BPS: Final = 10_000  # basis points: every fraction of money is an integer number of 1/10000
MAX_VERIFIERS: Final = 1024
MAX_ACCOUNTS: Final = 65_536
MAX_PEER_ID_LEN: Final = 128
MAX_GENESIS_BYTES: Final = 4 * 1024 * 1024
MAX_AMOUNT: Final = 2**63 - 1  # every balance, stake, bond and reward fits a signed 64-bit integer
MAX_SAMPLES: Final = 4096  # segments one vote may list
MAX_VOTE_BYTES: Final = 64 * 1024
MAX_CERTIFICATE_BYTES: Final = 16 * 1024
MAX_GOSSIP_BYTES: Final = 128 * 1024  # any gossip envelope; below libp2p's 1 MiB frame
MAX_STREAM_BYTES: Final = (1 << 20) + 64 * 1024  # a chunk or sync response, with its proofs
MAX_SYNC_ITEMS: Final = 256
MAX_FETCH_HINTS: Final = 8
MAX_FETCH_HINT_LEN: Final = 256
