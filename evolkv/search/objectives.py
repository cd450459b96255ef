"""What the token search's optimiser is told of a scored candidate: its loss relative to uniform's on the
same samples (``aggregate``), and how it compares on the typical sample (``typical_ratio``)."""

from __future__ import annotations

import math

from evolkv.evaluators.evaluator import Score

AGGREGATES = ("guarded", "worst", "mean")
SMOOTHING = 0.05  # of the reference's mean KL, added to every KL before a ratio is taken
PENALTY = 10.0  # guarded: per unit of one task's ratio past 1 + tolerance


def aggregate(score: Score, ref: Score, rule: str, tolerance: float = 0.1, objective: str = "kl") -> float:
    """One number for a score against a reference scored on the same samples (uniform at the same budget).

    Each task's KL and the mean KL are taken relative to the reference's, both smoothed by 5% of the
    reference's mean KL so that a task the reference already solves (KL near 0) cannot blow a ratio up.
    ``worst``: the largest per-task ratio, so no task's gain pays for another's loss (DefensiveKV's worst case,
    applied to the search; strict, since the largest of several noisy ratios sits above 1 even for a config as
    good as the reference). ``guarded`` (the default): the mean ratio, plus ``PENALTY`` times how far the worst
    task's ratio goes past ``1 + tolerance``: a config may trade a little on one task for a gain overall, never
    a lot."""
    eps = max(SMOOTHING * ref.objective, 1e-6)
    ratios = [(value + eps) / (ref.metrics[key] + eps) for key, value in score.metrics.items()
              if key.endswith(f"/{objective}") and key in ref.metrics]
    worst = max(ratios) if ratios else (score.objective + eps) / (ref.objective + eps)
    if rule == "worst":
        return worst
    mean = (score.objective + eps) / (ref.objective + eps)
    return mean + PENALTY * max(0.0, worst - 1.0 - tolerance)


def typical_ratio(score: Score, ref: Score) -> float:
    """How ``score`` compares with ``ref`` sample by sample (both on the same samples): the geometric mean of
    the per-sample KL ratios (``logkl``: KL floored at ``LOG_KL_FLOOR``), where the mean KL's ratio follows the
    few samples with the largest KL. Below 1: better on the typical sample. NaN when either was not scored so
    (runs stored before ``logkl``)."""
    if not (score.ok and ref.ok and "logkl" in score.metrics and "logkl" in ref.metrics):
        return math.nan
    return math.exp(score.metrics["logkl"] - ref.metrics["logkl"])
