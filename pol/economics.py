"""``pol economics``: what verification costs and what cheating loses, for given parameters.

Each row is one network size and claim length at the given reward: the bond the ledger locks, the
mean segments each verifier replays (SPEC.md §16.2), the expected network-wide replay as a share of
the training, the chance that a one-segment fake and a fully faked run escape, and the expected
gain of the best cheating strategy per unit of reward (negative: cheating loses).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from protocol.constants import MILLI
from protocol.economics import EconomicsRow, compute_economics_row
from protocol.genesis import Params


def compute_table(verifiers: Sequence[int], segments: Sequence[int], reward: int, params: Params) -> list[EconomicsRow]:
    return [compute_economics_row(n, s, reward, params) for n in verifiers for s in segments]


def get_row_document(row: EconomicsRow) -> dict[str, Any]:
    doc = asdict(row)
    for key in ("replay_fraction", "escape_one", "escape_all", "best_cheat_gain"):
        doc[key] = float(doc[key])
    doc["samples_per_verifier"] = row.sample_milli / MILLI
    return doc


def format_table(rows: Sequence[EconomicsRow], params: Params) -> str:
    head = (f"deterrence D = {params.deterrence_bps / 10_000:g}, bond = max({params.prover_bond}, "
            f"{params.bond_reward_bps / 10_000:g} x reward), quorum {params.quorum_numerator}/"
            f"{params.quorum_denominator}, equal stakes\n")
    cols = (f"{'verifiers':>9} {'honest':>6} {'segments':>9} {'reward':>7} {'bond':>7} {'samples/v':>9} "
            f"{'replay':>8} {'escape(1)':>9} {'escape(all)':>11} {'best cheat/R':>12}")
    lines = [head + cols]
    for r in rows:
        lines.append(f"{r.verifiers:>9} {r.honest:>6} {r.num_segments:>9} {r.reward:>7} {r.bond:>7} "
                     f"{r.sample_milli / MILLI:>9.3f} {float(r.replay_fraction):>8.2%} {float(r.escape_one):>9.4f} "
                     f"{float(r.escape_all):>11.4f} {float(r.best_cheat_gain):>12.4g}")
    lines.append("replay = expected replayed segments of all verifiers / segments; best cheat/R = expected gain of "
                 "the most profitable fake over honest work, per unit of reward (< 0: cheating loses)")
    return "\n".join(lines)


def draw_plot(path: Path, verifiers: Sequence[int], reward: int, params: Params) -> None:
    """Replay share and escape chance of a full fake against claim length, one line per network size."""
    import matplotlib

    matplotlib.use("Agg")  # headless: no display on nodes and CI
    import matplotlib.pyplot as plt

    lengths = [10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10_000, 100_000]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for n in verifiers:
        rows = [compute_economics_row(n, s, reward, params) for s in lengths]
        ax1.plot(lengths, [100 * float(r.replay_fraction) for r in rows], marker="o", label=f"{n} verifiers")
        ax2.plot(lengths, [-float(r.best_cheat_gain) for r in rows], marker="o", label=f"{n} verifiers")
    ax1.axhline(5, color="grey", linestyle="--", linewidth=1)
    ax1.set(xscale="log", yscale="log", xlabel="segments per claim", ylabel="network replay, % of training",
            title="Verification cost")
    ax2.set(xscale="log", yscale="log", xlabel="segments per claim",
            ylabel="expected loss of the best fake / reward", title="Security (higher is safer)")
    for ax in (ax1, ax2):
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle(f"pol economics: reward {reward}, D = {params.deterrence_bps / 10_000:g}, "
                 f"bond >= {params.bond_reward_bps / 10_000:g} x reward")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
