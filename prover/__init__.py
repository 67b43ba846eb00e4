"""The prover: deterministic training, crash-safe checkpoint transcript, signed claims."""
