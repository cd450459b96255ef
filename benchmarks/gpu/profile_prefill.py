"""Where a search's prefill and candidate scoring spend their time on one device: the evaluator the CLI builds
(every default baseline's scorers), a few samples prefilled under ``torch.profiler``, then one batch of
candidates scored, each beside a plain forward of the same tokens.

    python benchmarks/gpu/profile_prefill.py --model /tmp/llama8b --length 8000 [--samples 3]

Prints the wall time of each part and the operators that take the most device and host time.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="/tmp/llama8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, default=8000)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--tasks", default="passkey,multikey")
    parser.add_argument("--rows", type=int, default=25)
    options = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import torch
    from torch.profiler import ProfilerActivity, profile

    from evolkv.executors import make_local
    from evolkv.settings import SearchSettings, default_effort

    effort = default_effort(options.device)
    settings = SearchSettings(model=options.model, device=options.device, length=options.length,
                              tasks=options.tasks.split(","), samples=options.samples, per_head=True,
                              baselines=effort["baselines"])
    settings.validate()
    loaded, executor = make_local(settings)
    evaluator = executor.evaluator
    samples = executor.samples["search"][:options.samples]
    sync = (lambda: torch.cuda.synchronize()) if options.device.startswith("cuda") else (lambda: None)
    print("scorers:", ", ".join(evaluator.scorers), flush=True)

    def timed(label, fn):
        sync()
        started = time.perf_counter()
        out = fn()
        sync()
        print(f"{label:<44} {time.perf_counter() - started:8.3f} s", flush=True)
        return out

    ids = torch.randint(0, loaded.model.config.get_text_config().vocab_size, (1, options.length),
                        device=evaluator.device)
    with torch.no_grad():
        for _ in range(2):
            timed("plain forward (no cache)", lambda: loaded.model(ids, logits_to_keep=1, use_cache=False))
    timed("prefill, first sample (warm-up)", lambda: evaluator.prepare(samples[:1]))
    for sample in samples[1:]:
        timed(f"prefill {sample.uid} ({len(evaluator.tokenizer(sample.context).input_ids)} tokens)",
              lambda s=sample: evaluator.prepare([s]))

    # the parts of one prefill: the model's forward with every scorer's ranking, then KVzip's replay
    from evolkv import replay as replay_mod

    original = replay_mod.rank_layers
    spent = {}

    def rank_layers(*args, **kwargs):
        sync()
        started = time.perf_counter()
        out = original(*args, **kwargs)
        sync()
        spent["replay"] = time.perf_counter() - started
        return out

    replay_mod.rank_layers = rank_layers
    prepared = timed("prefill (replay timed apart)", lambda: evaluator.prepare(samples[-1:]))
    print(f"{'  of which the replay and its ranking':<44} {spent.get('replay', 0.0):8.3f} s", flush=True)
    from evolkv import kernels

    fused = kernels.replay_scores
    kernels.replay_scores = kernels.reference.replay_scores
    timed("prefill, replay scored by the torch softmax", lambda: evaluator.prepare(samples[-1:]))
    print(f"{'  of which the replay and its ranking':<44} {spent.get('replay', 0.0):8.3f} s", flush=True)
    kernels.replay_scores = fused
    replay_mod.rank_layers = original

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if options.device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        evaluator.prepare(samples[-1:])
        sync()
    sort = "cuda_time_total" if options.device.startswith("cuda") else "cpu_time_total"
    print("\n== one prefill, by device time ==")
    print(prof.key_averages().table(sort_by=sort, row_limit=options.rows, max_name_column_width=60))
    print("\n== one prefill, by host self time ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=options.rows,
                                    max_name_column_width=60))

    # one batch of candidates: the default baselines as configs
    from evolkv.config import Budget, ScorerSpec
    from evolkv.search.baselines import baseline

    scorer = ScorerSpec(settings.space.scorer, window=settings.space.window)
    configs = [baseline(name, loaded.spec, Budget.parse("1.5%"), scorer)
               for name in settings.scoring.baselines if name != "full"][:8]
    timed(f"score {len(configs)} baselines on 1 sample (warm-up)", lambda: evaluator.score(configs, prepared))
    timed(f"score {len(configs)} baselines on 1 sample", lambda: evaluator.score(configs, prepared))
    with profile(activities=activities) as prof:
        evaluator.score(configs, prepared)
        sync()
    print("\n== scoring, by device time ==")
    print(prof.key_averages().table(sort_by=sort, row_limit=options.rows, max_name_column_width=60))
    print("\n== scoring, by host self time ==")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=options.rows,
                                    max_name_column_width=60))


if __name__ == "__main__":
    main()
