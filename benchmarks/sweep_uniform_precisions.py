"""Uniform precision pairs, residual windows and token budgets on the embedded model (CPU): the search split's
KL and bits of each, side by side. What a search has to beat, and what a full-precision window of the top-ranked
entries (attention sinks, heavy hitters) buys.

    python benchmarks/sweep_uniform_precisions.py [--samples 8]
"""

from __future__ import annotations

import argparse
import time

import torch

from evolkv.allocation import avg_bits
from evolkv.config import Budget, ScorerSpec
from evolkv.executors import make_local
from evolkv.search.baselines import baseline
from evolkv.settings import SearchSettings
from evolkv.search.precision import with_precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--split", default="search")
    args = parser.parse_args()
    torch.set_num_threads(2)
    settings = SearchSettings(mode="quant", samples=args.samples)
    loaded, executor = make_local(settings)
    spec, scorer = loaded.spec, ScorerSpec(settings.space.scorer, window=settings.space.window)
    candidates = []
    for fraction in (1.0, 0.5, 0.4):
        base = baseline("uniform", spec, Budget("fraction", fraction), scorer)
        for k, v, residual in ((4, 4, 0), (4, 4, 4), (4, 4, 16), (4, 2, 0), (4, 2, 4), (4, 2, 16), (4, 2, 64),
                               (2, 4, 16), (8, 4, 4)):
            if fraction < 1.0 and (k, v) != (4, 4):
                continue
            cfg = with_precisions(base, [(k, v)] * spec.num_layers, settings.space.group_size, residual)
            candidates.append((f"{fraction:.0%} tokens K{k}V{v}+r{residual}", cfg))
    started = time.perf_counter()
    executor.prepare(args.split)
    scores = executor.evaluate([cfg for _, cfg in candidates], args.split)
    print(f"{spec.name}, {args.samples} {args.split} samples of ~{settings.data.length} tokens, group {settings.space.group_size}")
    print(f"{'config':<28} {'bits':>6} {'KL':>8}")
    for (name, cfg), score in zip(candidates, scores):
        print(f"{name:<28} {avg_bits(cfg, settings.data.length):>6.3f} {score.objective:>8.4f}")
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
