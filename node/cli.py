"""`pol node` and `pol devnet` subcommands (registered into the main parser by pol.cli)."""

from __future__ import annotations

import argparse


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the network subcommands to ``sub``."""
