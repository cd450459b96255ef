"""The host work of one candidate evaluation: planning a config on one prompt's rankings (``press.Plan``), which
every candidate does on every sample before its forward. On a GPU the forward of a batch of 8 candidates takes
a few milliseconds, so a plan that takes milliseconds of host time (and host syncs) decides the search's rate.

    python benchmarks/bench_plans.py [--layers 32] [--heads 8] [--length 8000] [--device cpu]

Prints, for each kind of config the search scores (static budgets, per-head splits, AdaKV, every per-prompt
allocator with and without searched priors), the milliseconds of one plan on rankings already planned once
(the per-prompt normalisation is shared across configs, as in a search).
"""

from __future__ import annotations

import argparse
import dataclasses
import time


def rankings(layers: int, heads: int, length: int, device: str, window: int = 8):
    import torch

    from evolkv.press import Ranking
    from evolkv.scorers import rank

    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(layers):
        scores = torch.rand(1, heads, length, generator=gen).to(device) ** 4
        order, sorted_scores = rank(scores, window)
        out.append(Ranking(order.to(torch.int32), sorted_scores, torch.rand(1, 2, generator=gen).to(device)))
    return out


def configs(layers: int, heads: int, budget: str):
    import torch

    from evolkv.config import Budget, ModelSpec, ScorerSpec
    from evolkv.search.baselines import baseline

    spec = ModelSpec("bench", "llama", layers, 4 * heads, heads, 128, ("full_attention",) * layers)
    scorer, parsed = ScorerSpec(), Budget.parse(budget)
    made = {name: baseline(name, spec, parsed, scorer)
            for name in ("uniform", "pyramid", "adakv", "globaltopk", "prefixkv", "cake", "dynamickv")}
    gen = torch.Generator().manual_seed(1)

    def searched(cfg):  # random layer budgets and head splits around the config's own: a searched candidate
        scale = torch.rand(layers, generator=gen) + 0.5
        split = torch.rand(layers, heads, generator=gen) + 0.2
        split = split / split.sum(-1, keepdim=True)
        mean = sum(layer.budget for layer in cfg.layers) / layers
        shaped = [dataclasses.replace(layer, budget=float(mean * s), heads=[float(x) for x in row])
                  for layer, s, row in zip(cfg.layers, (scale / scale.mean()).tolist(), split)]
        return dataclasses.replace(cfg, layers=shaped, prior=cfg.allocation is not None)

    made["per-head static"] = searched(made["uniform"])
    for name in ("globaltopk", "cake", "dynamickv", "prefixkv"):
        made[f"{name} + priors"] = searched(made[name])
    return made


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--budget", default="1.5%")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    import torch

    from evolkv.press import Plan

    ranked = rankings(options.layers, options.heads, options.length, options.device)
    sync = torch.cuda.synchronize if options.device.startswith("cuda") else (lambda: None)
    print(f"# {options.layers} layers x {options.heads} KV heads, {options.length} tokens, budget {options.budget}, "
          f"{options.device}; ms per plan (best of {options.repeat}, after one warm-up)")
    total = 0.0
    for name, cfg in configs(options.layers, options.heads, options.budget).items():
        Plan(cfg, options.length).layers(ranked)  # warm-up (and the prompt's shared normalisation)
        best = float("inf")
        for _ in range(options.repeat):
            sync()
            started = time.perf_counter()
            plans = Plan(cfg, options.length).layers(ranked)
            kept = int(sum(int(p.counts.sum()) for p in plans))
            sync()
            best = min(best, time.perf_counter() - started)
        total += best
        print(f"{name:<22} {best * 1e3:8.2f} ms   kept {kept}")
    print(f"{'all':<22} {total * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
