"""Two configs' task metric compared sample by sample: is a gap more than which samples happened to be drawn?

Greedy answers are scored on a few dozen samples, and one sample moves a mean of 48 by up to 0.021; decoding the
same config in another batch moved a mean by 0.004 on the H100. ``compare`` gives the mean gap with a 95% paired-bootstrap interval, how many samples each side wins,
and a two-sided sign test, as ``runs show`` prints them for the winner against every baseline."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(a: Sequence[float], b: Sequence[float], draws: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Per-sample values of config ``a`` against ``b`` on the same samples (same order): the mean gap a - b, its
    95% paired-bootstrap interval (``low``, ``high``), the samples a wins, loses and ties, the sign test's p."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"compare needs two equally long, non-empty lists of per-sample values ({len(a)}, {len(b)})")
    gap = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    boot = gap[np.random.default_rng(seed).integers(0, len(gap), (draws, len(gap)))].mean(1)
    wins, losses = int((gap > 1e-9).sum()), int((gap < -1e-9).sum())
    return {"gap": float(gap.mean()), "low": float(np.quantile(boot, 0.025)), "high": float(np.quantile(boot, 0.975)),
            "wins": wins, "losses": losses, "ties": len(gap) - wins - losses, "p": sign_test(wins, losses)}
