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
import time

from evolkv.config import Budget, KVConfig, ScorerSpec
from evolkv.evaluators.paired import compare
from evolkv.evaluators.tasks import own_metric
from evolkv.pools import make_executor
from evolkv.search.baselines import baseline
from evolkv.settings import SearchSettings


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
    answers = executor.exact_match(list(configs.values()), "heldout")  # each sample's own metric: "per_sample"
    per_sample = {label: accuracy["per_sample"] for label, accuracy in zip(configs, answers)}
    count = executor.split_size("heldout")
    metric = ", ".join(sorted({own_metric(task) for task in args.tasks.split(",")}))
    print(f"{args.model}, {args.tasks}, {count} held-out samples, metric {metric} "
          f"(one sample moves a mean by up to {1 / count:.3f})")
    print(f"{'config':16s} {'mean':>6s}  {'against':16s} {'gap':>7s} {'95% bootstrap':>17s} {'wins':>4s} "
          f"{'losses':>6s} {'ties':>4s} {'sign p':>6s}")
    for budget, _ in pairs:
        mine = per_sample[f"winner {budget}"]
        for name in names:
            other = f"{name} {budget}"
            c = compare(mine, per_sample[other])
            print(f"{'winner ' + budget:16s} {sum(mine) / len(mine):6.3f}  {other:16s} {c['gap']:+7.3f} "
                  f"[{c['low']:+.3f}, {c['high']:+.3f}] {c['wins']:4d} {c['losses']:6d} {c['ties']:4d} {c['p']:6.3f}")
    print(f"({time.perf_counter() - started:.0f} s, {args.device}, dtype {settings.dtype})")
    if args.json:
        json.dump(per_sample, open(args.json, "w"))


if __name__ == "__main__":
    main()
