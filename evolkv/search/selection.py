"""Choosing a run's winner on data the optimiser did not fit: the contenders (search finalists and baselines)
scored on the validation split, the best by the strategy's measure, with the ``--choose`` rules that may keep a
contender from displacing uniform."""

from __future__ import annotations

from collections.abc import Callable

from evolkv.config import KVConfig
from evolkv.evaluators.evaluator import Score
from evolkv.evaluators.tasks import task_metric
from evolkv.search.objectives import typical_ratio
from evolkv.store.models import Stage

CHOICES = ("mean", "typical", "metric")  # --choose


def choose_on_validation(job, contenders: dict[str, KVConfig], value, eligible=None) -> tuple[str, dict[str, Score]]:
    """Score ``contenders`` (label -> config) on the validation split; the label with the lowest
    ``value(score, scores)`` wins among those ``eligible(label, scores)`` admits (all by default), a tie
    going to a baseline. Returns (label, every label's score)."""
    job.reporter.stage(f"choose the winner on validation data among {len(contenders)} configs")
    with job.stage("validation", len(contenders)):
        scored = dict(zip(contenders, job.evaluate(list(contenders.values()), Stage.FINAL, list(contenders),
                                                   split="validation")))
    admitted = [label for label in contenders if eligible is None or eligible(label, scored)]
    best = min(admitted, key=lambda label: (value(scored[label], scored), not label.startswith("baseline:")))
    return best, scored


def admits(label: str, scored: dict[str, Score]) -> bool:
    """``--choose typical``: whether a contender may displace uniform on validation: only if it is also better
    on the typical sample (``typical_ratio`` below 1). Per-sample KL is heavy-tailed (one code sample moved a
    mean of 16 by 0.07), so a lower mean can be a few samples' luck (a winner 2.8x worse than uniform on
    held-out data, 16 validation samples). Not the default: with 32 validation samples on SmolLM2 code it decided 5 cells
    differently from the mean, right once (a 1.37x loss avoided) and wrong four times (gains of 1.09-1.18x
    given up; benchmarks/acceptance/run.sh accept, SmolLM2 code)."""
    return label == "baseline:uniform" or not typical_ratio(scored[label], scored["baseline:uniform"]) >= 1.0


def metric_guard(job, contenders: dict[str, KVConfig], scored: dict[str, Score],
                 relative: Callable[[Score, Score], float]) -> tuple[str, dict[str, float]]:
    """``--choose metric``: the contenders that beat uniform on validation KL, best first, are greedy-decoded
    on the validation samples one at a time (uniform too, once), and the first whose task metric (``task_metric``:
    edit similarity for code, string match otherwise) is not below uniform's ships; if none, uniform. A lower
    KL that costs answers does not displace uniform. Returns (label, validation task metric of each label
    decoded). Not the default: on SmolLM2 code with 48 validation samples it shipped a config with higher held-out
    KL than the mean's pick in 6 of 12 runs, and what it shipped was still below uniform on held-out edit
    similarity at 10% and 20% (benchmarks/results/2026-11-26-h100-acceptance-suites.md)."""
    ref = scored["baseline:uniform"]
    bar = relative(ref, ref)
    ranked = sorted((label for label, score in scored.items()
                     if score.ok and label != "baseline:uniform" and relative(score, ref) < bar),
                    key=lambda label: (relative(scored[label], ref), not label.startswith("baseline:")))
    checked: dict[str, float] = {}
    for label in ["baseline:uniform", *ranked]:
        checked[label] = task_metric(job.task_metrics([contenders[label]], [label], "validation")[0])
        if label != "baseline:uniform" and checked[label] >= checked["baseline:uniform"]:
            return label, checked
    return "baseline:uniform", checked
