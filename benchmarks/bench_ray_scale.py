"""Scale of the Ray executor: the same populations scored by 1, 2 and 4 CPU actors, side by side.

A tiny random-initialised Llama (GQA) is saved to a temporary directory; every actor loads it and prefills
its shard of the samples once. Then populations of random token-budget configs are scored (after a warm-up)
and timed; the speed-up is against one actor. The local executor is timed beside them, and every executor's
objectives are checked to equal the local ones.

    python benchmarks/bench_ray_scale.py [--workers 1,2,4] [--populations 8,32] [--samples 8] [--threads 1]

On a machine with fewer cores than actors the actors share cores: the speed-up then shows the overhead of
sharding, not the scaling of a cluster.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import ray
import torch

from evolkv.config import Budget
from evolkv.pools import make_executor
from evolkv.settings import SearchSettings
from evolkv.search.space import BudgetSpace
from evolkv.testing import char_tokenizer


def tiny_llama(path: str) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=8, num_key_value_heads=2, head_dim=32, max_position_embeddings=4096,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--populations", default="8,32")
    parser.add_argument("--samples", type=int, default=8, help="samples per task (2 tasks)")
    parser.add_argument("--length", type=int, default=600)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the driver and of every actor")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # actors take the driver's count (equal results need equal reductions)
    workers = [int(w) for w in args.workers.split(",")]
    populations = [int(p) for p in args.populations.split(",")]
    with tempfile.TemporaryDirectory() as path:
        tiny_llama(path)
        base = dict(model=path, budget="10%", samples=args.samples, length=args.length,
                    tasks=["passkey", "multikey"])
        loaded, local = make_executor(SearchSettings(**base))
        space = BudgetSpace(loaded.spec, Budget.parse("10%"), per_head=True)
        rng = np.random.default_rng(0)
        pops = {p: [space.decode(x) for x in rng.uniform(-2, 2, (p, space.n_var))] for p in populations}
        local.evaluate(pops[populations[0]][:2], "search")  # prefill + warm-up
        timings: dict[str, dict[int, float]] = {"local": {}}
        expected = {}
        for p, configs in pops.items():
            start = time.perf_counter()
            expected[p] = [s.objective for s in local.evaluate(configs, "search")]
            timings["local"][p] = time.perf_counter() - start
        ray.init(num_cpus=max(workers), include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        for count in workers:
            _, remote = make_executor(SearchSettings(**base, executor="ray", workers=count))
            remote.evaluate(pops[populations[0]][:2], "search")  # actors load, prefill their shard, warm up
            timings[f"ray x{count}"] = {}
            for p, configs in pops.items():
                start = time.perf_counter()
                got = [s.objective for s in remote.evaluate(configs, "search")]
                timings[f"ray x{count}"][p] = time.perf_counter() - start
                assert got == expected[p], f"ray x{count} objectives differ from local"
            remote.shutdown()
        ray.shutdown()
    samples = 2 * args.samples
    print(f"{os.cpu_count()} CPU cores, {samples} samples of ~{args.length} tokens, torch threads "
          f"{torch.get_num_threads()}; objectives of every executor equal the local ones")
    print(f"{'executor':>10} " + " ".join(f"{f'pop {p} s':>10} {'speed-up':>9}" for p in populations))
    one = timings[f"ray x{workers[0]}"]
    for name, row in timings.items():
        print(f"{name:>10} " + " ".join(f"{row[p]:>10.2f} {one[p] / row[p]:>8.2f}x" for p in populations))


if __name__ == "__main__":
    main()
