"""Settlement on an EVM chain: the contract's Python client and a local anvil chain (SPEC.md §16.7)."""
