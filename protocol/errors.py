"""Exceptions named by whose fault they are.

* ``InvalidInput`` and its subclasses: the *sender* (prover, peer, task author) produced
  something that violates the spec. Verifiers reject on these.
* ``ReplayError``: *we* could not determine validity (environment, bug, missing data).
  A verifier that hits it abstains; it never votes reject because of it.
"""

from __future__ import annotations


class PolError(Exception):
    """Base class of every pol exception."""


class InvalidInput(PolError):
    """Input that violates the spec; the message says which rule."""


class DecodeError(InvalidInput):
    """Bytes that are not a canonical encoding of the expected message."""


class InvalidTask(InvalidInput):
    """A task spec that is malformed or names something unknown."""


class InvalidClaim(InvalidInput):
    """A claim whose fields or signature are wrong."""


class InvalidSignature(InvalidClaim):
    """A BLS signature that does not verify under the stated key."""


class InvalidCheckpoint(InvalidInput):
    """A checkpoint that is truncated, malformed or differs from its commitment."""


class InvalidProof(InvalidInput):
    """A Merkle proof that does not lead to the committed root."""


class InvalidSegment(InvalidInput):
    """A replayed segment whose result differs from the prover's commitment.

    This is proof of fraud: honest training is a deterministic function of the task.
    """

    def __init__(self, segment: int, claimed: bytes, replayed: bytes, detail: str = "") -> None:
        self.segment = segment
        self.claimed = claimed
        self.replayed = replayed
        msg = (
            f"segment {segment}: replayed root {replayed.hex()} != claimed root {claimed.hex()}"
        )
        super().__init__(msg + (f" ({detail})" if detail else ""))


class ReplayError(PolError):
    """We could not replay: environment or implementation problem, not the prover's fault."""


class OverBudget(ReplayError):
    """A valid input larger than what this node accepts to allocate or compute: we decline, no verdict."""


class InvalidGenesis(InvalidInput):
    """A genesis document that is malformed, inconsistent or has a bad proof of possession."""


class InvalidVote(InvalidInput):
    """A vote, dispute vote or double-vote proof whose fields, sample or signature are wrong."""


class InvalidCertificate(InvalidInput):
    """A certificate with unknown or repeated signers, too little stake or a bad aggregate."""


class InvalidTransition(InvalidInput):
    """A well-formed input that the ledger state does not allow (unknown task, spent escrow, ...)."""


class InsufficientFunds(InvalidTransition):
    """An account's balance does not cover the reward or bond it must lock."""


class InvalidMessage(InvalidInput):
    """A gossip or stream envelope with a wrong type, schema or size."""


class InvalidFetchHints(InvalidInput):
    """A claim announcement whose fetch hints are not signed by the claim's prover (SPEC.md §16.6)."""


class GossipReject(PolError):
    """Gossip that is invalid for everyone: drop it and penalise the forwarding peer."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class GossipIgnore(PolError):
    """Gossip that is useless to us now (duplicate, stale, unknown context): drop, no penalty."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
