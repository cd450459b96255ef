"""Does a static split of a layer's tokens over its KV heads help on held-out data? A stored config (a per-layer
search's winner, say) against the same layer budgets with each per-prompt allocator's split over the heads, averaged
over the search pool (what ``--per-head``'s second stage starts from: ``TokenSearch.transplants``), on the
held-out split. Runs where the search ran, CPU included; the samples are the search's (same settings and seed).

    PYTHONPATH=. python benchmarks/acceptance/head_splits.py --budget 5% \
        --config benchmarks/results/issue11-json/s16-smolLC/accept-code-5.cfg.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from evolkv.config import Budget, KVConfig, ScorerSpec
from evolkv.pools import make_executor
from evolkv.search.baselines import baseline
from evolkv.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="exported config JSON (evolkv export)")
    parser.add_argument("--budget", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tasks", default="code")
    parser.add_argument("--length", type=int, default=2000)
    parser.add_argument("--pool", type=int, default=48, help="search pool the splits are averaged over")
    parser.add_argument("--heldout", type=int, default=48)
    parser.add_argument("--allocators", default="adakv,globaltopk", help="baselines whose splits are profiled")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    names = args.allocators.split(",")
    settings = SearchSettings(model=args.model, budget=args.budget, samples=min(16, args.pool), pool=args.pool,
                              heldout_samples=args.heldout, length=args.length, tasks=args.tasks.split(","), seed=0,
                              per_head=True, device=args.device, baselines=["full", "uniform", *names])
    started = time.perf_counter()
    loaded, executor = make_executor(settings)
    budget, scorer = Budget.parse(args.budget), ScorerSpec(settings.scorer, window=settings.window)
    stored = KVConfig.from_dict(json.load(open(args.config)))
    configs = {"config": stored, "uniform": baseline("uniform", loaded.spec, budget, scorer)}
    splits = executor.head_shares([baseline(n, loaded.spec, budget, scorer) for n in names], "search")
    for name, shares in zip(names, splits):
        spread = [max(layer) - min(layer) for layer in shares]
        print(f"{name}: a layer's largest minus smallest head share, mean {sum(spread) / len(spread):.3f}, "
              f"largest {max(spread):.3f}")
        layers = tuple(dataclasses.replace(layer, heads=tuple(split)) for layer, split in zip(stored.layers, shares))
        configs[f"config + {name}'s split"] = dataclasses.replace(stored, layers=layers, provenance={})
    for name, score in zip(configs, executor.evaluate(list(configs.values()), "heldout")):
        print(f"held-out KL  {name:28s} {score.objective:.4f}")
    print(f"({args.heldout} held-out samples per task, {time.perf_counter() - started:.0f} s, {args.device}, "
          f"dtype {settings.dtype}: float32 on the CPU, bfloat16 on CUDA)")


if __name__ == "__main__":
    main()
