"""Cost of scoring one candidate on one sample: shared prefill (evolkv) vs. re-running prefill per candidate.

The naive way (what EvolKV does) applies each candidate to the model and re-runs prefill + generation of the
answer. evolkv prefills each sample once and scores a whole population over gathered caches. Both run here
side by side on the same model, sample and candidates; the table prints milliseconds per candidate-sample.

    python benchmarks/bench_shared_prefill.py                      # embedded Gemma 3 270M, CPU
    python benchmarks/bench_shared_prefill.py --model DIR --device cuda --length 8192
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
import torch

from timing import timed

import evolkv
from evolkv import models, runtime
from evolkv.config import Budget, ScorerSpec
from evolkv.evaluators.evaluator import Evaluator
from evolkv.evaluators.tasks import synthetic
from evolkv.search.space import BudgetSpace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--budget", default="10%")
    parser.add_argument("--populations", default="8,32")
    parser.add_argument("--naive-candidates", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    loaded = models.load(args.model, args.device, args.dtype)
    sample = synthetic("passkey", 1, args.length, 0, "search", loaded.tokenizer)
    evaluator = Evaluator(loaded.model, loaded.tokenizer, loaded.spec, [ScorerSpec()], query_aware=True,
                          batch_size=8)
    evaluator.prepare(sample)  # warm-up
    prefill_s = statistics.median(timed(lambda: evaluator.prepare(sample), args.device) for _ in range(args.repeats))
    prepared = evaluator.prepare(sample)
    space = BudgetSpace(loaded.spec, Budget.parse(args.budget))
    rng = np.random.default_rng(0)

    prep = prepared[0]
    prompt = torch.cat([evaluator._encode(sample[0].context, True),
                        evaluator._encode("\n" + sample[0].question, False)])[None].to(evaluator.device)
    naive = []
    for x in rng.uniform(-2, 2, (args.naive_candidates + 1, space.n_var)):
        cfg = space.decode(x)

        def generate_with(cfg=cfg):
            with evolkv.apply(loaded.model, cfg):
                loaded.model.generate(prompt, max_new_tokens=prep.answer_tokens, do_sample=False)
        naive.append(timed(generate_with, args.device))
    naive_ms = statistics.median(naive[1:]) * 1e3  # first one is warm-up

    rows = []
    for population in [int(p) for p in args.populations.split(",")]:
        configs = [space.decode(x) for x in rng.uniform(-2, 2, (population, space.n_var))]
        evaluator.score(configs[:2], prepared)  # warm-up
        score_s = statistics.median(timed(lambda: evaluator.score(configs, prepared), args.device)
                                    for _ in range(args.repeats))
        ours_ms = score_s / population * 1e3
        amortised_ms = (score_s + prefill_s) / population * 1e3
        peak = torch.cuda.max_memory_allocated() / 2**30 if args.device.startswith("cuda") else float("nan")
        rows.append((population, ours_ms, amortised_ms, naive_ms, naive_ms / ours_ms, naive_ms / amortised_ms, peak))

    print(f"\nmodel {loaded.name} ({loaded.spec.describe()}), device {args.device}, dtype {args.dtype}, "
          f"context {prep.length} tokens, answer {prep.answer_tokens} tokens, budget {args.budget}, "
          f"prefill {prefill_s * 1e3:.0f} ms")
    print(f"{'population':>10} {'ours ms':>9} {'ours+prefill':>13} {'naive ms':>9} {'ratio':>7} "
          f"{'ratio incl. prefill':>20} {'peak GiB':>9}")
    for population, ours, amortised, naive_c, ratio, ratio_amortised, peak in rows:
        print(f"{population:>10} {ours:>9.1f} {amortised:>13.1f} {naive_c:>9.1f} {ratio:>6.1f}x "
              f"{ratio_amortised:>19.1f}x {peak:>9.2f}")


if __name__ == "__main__":
    main()
