"""GPU headline: cost of scoring one candidate on one sample, shared prefill (evolkv) vs. naive re-prefill.

A Llama-3-8B-shaped model with random weights in bf16 (32 layers, 32 query heads, 8 KV heads, head_dim 128),
an 8k-token context, 32-token answers, populations of 16 and 64. First checks on the GPU that the fast
path's log-probabilities match ``model.generate`` with the same config applied; then times both ways side by
side and prints: population, ms per candidate-sample (ours, naive), ratio, peak GPU memory.

    PYTHONPATH=. python benchmarks/bench_gpu.py            # on a CUDA machine
    PYTHONPATH=. python benchmarks/bench_gpu.py --small    # a tiny shape, any device (smoke test)
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics

import numpy as np
import torch

from timing import timed

import evolkv
from evolkv import runtime
from evolkv.config import Budget, ScorerSpec, uniform_config
from evolkv.evaluators.evaluator import Evaluator
from evolkv.evaluators.tasks import FILLER, Sample
from evolkv.models import model_spec
from evolkv.search.space import BudgetSpace
from evolkv.testing import char_tokenizer


def build_model(small: bool, device: str):
    from transformers import LlamaConfig, LlamaForCausalLM

    shape = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                 num_key_value_heads=8, head_dim=128, vocab_size=128256)
    if small:
        shape = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=2, head_dim=16, vocab_size=512)
    config = LlamaConfig(**shape, max_position_embeddings=131072, rope_theta=500000.0, bos_token_id=1,
                         eos_token_id=2, pad_token_id=0, attn_implementation="sdpa")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device(device):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(previous)
    return model


def make_sample(context_tokens: int, answer_tokens: int) -> Sample:
    rng = random.Random(0)
    answer = "".join(rng.choice("0123456789") for _ in range(answer_tokens - 1))
    parts = [FILLER] * (context_tokens // len(FILLER))
    parts.insert(len(parts) // 3, f"The pass key is {answer}. ")
    return Sample("bench", "".join(parts), "What is the pass key? The pass key is", answer, "bench:0")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", type=int, default=8192)
    parser.add_argument("--answer", type=int, default=32)
    parser.add_argument("--budget", default="10%")
    parser.add_argument("--populations", default="16,64")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--naive", type=int, default=3, help="timed naive candidates (after one warm-up)")
    args = parser.parse_args()
    if args.small:
        args.context, args.answer = min(args.context, 600), min(args.answer, 8)
    torch.set_grad_enabled(False)
    device = args.device

    model = build_model(args.small, device)
    tokenizer = char_tokenizer()
    spec = model_spec(model.config, "llama-3-8b-shaped-random" if not args.small else "tiny-llama")
    sample = make_sample(args.context, args.answer)
    evaluator = Evaluator(model, tokenizer, spec, [ScorerSpec()], query_aware=True, batch_size=args.batch_size)
    space = BudgetSpace(spec, Budget.parse(args.budget), per_head=True)
    rng = np.random.default_rng(0)

    # -- correctness: fast path vs. generate with the config applied -------------------------------------------
    prep = evaluator.prepare([sample])[0]
    cfg = space.decode(rng.uniform(-2, 2, space.n_var))
    prompt = torch.cat([evaluator._encode(sample.context, True),
                        evaluator._encode("\n" + sample.question, False)])[None].to(device)
    with evolkv.apply(model, cfg):
        gen = model.generate(prompt, max_new_tokens=prep.answer_tokens, do_sample=False, output_logits=True,
                             return_dict_in_generate=True, min_new_tokens=prep.answer_tokens)
    tokens = gen.sequences[0, prompt.shape[1]:]
    teacher = dataclasses.replace(prep, feed=tokens[:-1], targets=tokens[1:])
    fast = evaluator._logprobs([cfg], teacher)[0]
    slow = torch.log_softmax(torch.stack(gen.logits[1:])[:, 0].float(), dim=-1)
    probs_diff = (fast.exp() - slow.exp()).abs().max().item()
    agree = (fast.argmax(-1) == slow.argmax(-1)).float().mean().item()
    plain = model.generate(prompt, max_new_tokens=4, do_sample=False, output_logits=True,
                           return_dict_in_generate=True)
    with evolkv.apply(model, uniform_config(spec, Budget.parse("100%"))):
        ours_full = model.generate(prompt, max_new_tokens=4, do_sample=False, output_logits=True,
                                   return_dict_in_generate=True)
    full_rel = max(((a.float() - b.float()).norm() / b.float().norm()).item()
                   for a, b in zip(ours_full.logits, plain.logits))
    print(f"check: fast path vs generate ({args.budget}, per-head config): max |dp| {probs_diff:.2e}, "
          f"argmax agreement {agree:.3f}; full-budget runtime vs plain sdpa generate: rel. logits error "
          f"{full_rel:.2e}", flush=True)

    # -- timing --------------------------------------------------------------------------------------------------
    prefill_s = statistics.median(timed(lambda: evaluator.prepare([sample]), device) for _ in range(2))
    naive = []
    for x in rng.uniform(-2, 2, (args.naive + 1, space.n_var)):
        candidate = space.decode(x)

        def generate_with(candidate=candidate):
            with evolkv.apply(model, candidate):
                model.generate(prompt, max_new_tokens=prep.answer_tokens, min_new_tokens=prep.answer_tokens,
                               do_sample=False)
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        naive.append(timed(generate_with, device))
    naive_ms = statistics.median(naive[1:]) * 1e3
    # (a) the least any re-run pays: re-prefill with the config applied + one teacher-forced forward of the answer
    forced = []
    for x in rng.uniform(-2, 2, (args.naive + 1, space.n_var)):
        candidate = space.decode(x)

        def prefill_and_force(candidate=candidate):
            cache = runtime.CompressedCache(spec.num_layers, runtime.Compressor(candidate))
            with runtime.attach(model):
                model(prompt, cache=cache, logits_to_keep=1)
                model(prep.feed[None], cache=cache, logits_to_keep=prep.targets.numel())
        forced.append(timed(prefill_and_force, device))
    forced_ms = statistics.median(forced[1:]) * 1e3
    naive_peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")

    rows = []
    for population in [int(p) for p in args.populations.split(",")]:
        configs = [space.decode(x) for x in rng.uniform(-2, 2, (population, space.n_var))]
        evaluator.score(configs[: min(population, args.batch_size)], [prep])  # warm-up
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        score_s = statistics.median(timed(lambda: evaluator.score(configs, [prep]), device) for _ in range(3))
        peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
        ours_ms = score_s / population * 1e3
        rows.append((population, ours_ms, (score_s + prefill_s) / population * 1e3, forced_ms, naive_ms, peak))

    name = torch.cuda.get_device_name() if device.startswith("cuda") else "cpu"
    print(f"\n{name}; torch {torch.__version__}; model {spec.name} ({spec.describe()}), "
          f"{next(model.parameters()).dtype}; context "
          f"{prep.length} tokens; answer {prep.answer_tokens} tokens; budget {args.budget}; batch "
          f"{args.batch_size}; prefill {prefill_s * 1e3:.1f} ms; naive peak {naive_peak:.1f} GiB")
    print("ours: shared prefill, candidates batched over the gathered cache (ours+prefill: the prefill amortised "
          "over the population); (a) re-prefill with the config + one teacher-forced forward of the answer; "
          "(b) re-prefill + generate (EvolKV's loop); ms per candidate-sample")
    print(f"{'population':>10} {'ours ms':>9} {'ours+prefill':>13} {'(a) ms':>8} {'(b) ms':>8} {'a/ours':>8} "
          f"{'a/ours+pf':>10} {'b/ours':>8} {'b/ours+pf':>10} {'peak GiB':>9}")
    for population, ours, amortised, forced_c, naive_c, peak in rows:
        print(f"{population:>10} {ours:>9.2f} {amortised:>13.2f} {forced_c:>8.1f} {naive_c:>8.1f} "
              f"{forced_c / ours:>7.1f}x {forced_c / amortised:>9.1f}x {naive_c / ours:>7.1f}x "
              f"{naive_c / amortised:>9.1f}x {peak:>9.1f}")


if __name__ == "__main__":
    main()
