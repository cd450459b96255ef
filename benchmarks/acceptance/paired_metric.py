"""Is a task-metric gap between two configs more than sample noise? Stored configs (searched winners) and baselines
greedy-decoded on the same held-out samples, the task's own metric (edit similarity for code, string match
otherwise) compared per sample: the mean gap, how many samples each side wins, a 95% paired-bootstrap interval of
the gap and a two-sided sign test. Runs where the search ran, CPU included; the samples are the search's (same
settings and seed), so the configs are judged on the data the acceptance table used.

    PYTHONPATH=. python benchmarks/acceptance/paired_metric.py --model smollm2-135m \
        --config 10%=benchmarks/results/issue11-json/s16-smolLC/accept-code-10.cfg.json \
        --config 20%=benchmarks/results/issue11-json/s16-smolLC/accept-code-20.cfg.json
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from evolkv.config import Budget, KVConfig, ScorerSpec
from evolkv.evaluators.tasks import own_metric
from evolkv.pools import make_executor
from evolkv.search.baselines import baseline
from evolkv.settings import SearchSettings


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact binomial p-value of ``wins`` against ``losses`` (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, draws: int = 10_000) -> dict[str, float]:
    """Per-sample values of config a against b on the same samples."""
    gap = a - b
    boot = gap[rng.integers(0, len(gap), (draws, len(gap)))].mean(1)
    wins, losses = int((gap > 1e-9).sum()), int((gap < -1e-9).sum())
    return {"gap": float(gap.mean()), "low": float(np.quantile(boot, 0.025)), "high": float(np.quantile(boot, 0.975)),
            "wins": wins, "losses": losses, "ties": len(gap) - wins - losses, "p": sign_test(wins, losses)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", required=True,
                        help="BUDGET=PATH: an exported config (evolkv export) and the budget it was searched at")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="code")
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=48, help="the search's --pool (the samples depend on it)")
    parser.add_argument("--heldout", type=int, default=48)
    parser.add_argument("--baselines", default="uniform,pyramid,adakv")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="write every per-sample value here")
    args = parser.parse_args()
    pairs = [item.split("=", 1) for item in args.config]
    names = args.baselines.split(",")
    settings = SearchSettings(model=args.model, budget=pairs[0][0], samples=min(16, args.pool), pool=args.pool,
                              heldout_samples=args.heldout, length=args.length, tasks=args.tasks.split(","), seed=0,
                              device=args.device, baselines=["full", *names])
    started = time.perf_counter()
    loaded, executor = make_executor(settings)
    scorer = ScorerSpec(settings.scorer, window=settings.window)
    configs: dict[str, KVConfig] = {}
    for budget, path in pairs:
        configs[f"winner {budget}"] = KVConfig.from_dict(json.load(open(path)))
        for name in names:
            configs[f"{name} {budget}"] = baseline(name, loaded.spec, Budget.parse(budget), scorer)
    prepared = executor.prepared("heldout")
    values = executor.evaluator.exact_match_samples(list(configs.values()), prepared)
    per_sample = {}
    for label, hits in zip(configs, values):
        task = args.tasks.split(",")[0]
        per_sample[label] = np.array(hits[own_metric(task)])
    rng = np.random.default_rng(0)
    metric = own_metric(args.tasks.split(",")[0])
    print(f"{args.model}, {args.tasks}, {len(prepared)} held-out samples, metric {metric} "
          f"(one sample moves a mean by up to {1 / len(prepared):.3f})")
    print(f"{'config':16s} {'mean':>6s}  {'against':16s} {'gap':>7s} {'95% bootstrap':>17s} {'wins':>4s} "
          f"{'losses':>6s} {'ties':>4s} {'sign p':>6s}")
    for budget, _ in pairs:
        mine = per_sample[f"winner {budget}"]
        for name in names:
            other = f"{name} {budget}"
            c = compare(mine, per_sample[other], rng)
            print(f"{'winner ' + budget:16s} {mine.mean():6.3f}  {other:16s} {c['gap']:+7.3f} "
                  f"[{c['low']:+.3f}, {c['high']:+.3f}] {c['wins']:4d} {c['losses']:6d} {c['ties']:4d} {c['p']:6.3f}")
    print(f"({time.perf_counter() - started:.0f} s, {args.device}, dtype {settings.dtype})")
    if args.json:
        json.dump({label: v.tolist() for label, v in per_sample.items()}, open(args.json, "w"))


if __name__ == "__main__":
    main()
