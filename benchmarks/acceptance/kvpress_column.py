"""kvpress's own strongest presses on evolkv's held-out samples: the kvpress column of the methods' acceptance.

Run in a kvpress environment (kvpress 0.5.x pins transformers<5.3), with the same task arguments as
``benchmarks/acceptance/methods.sh``, so the samples are the very held-out samples its searches report:

    /tmp/kvp/bin/python benchmarks/acceptance/kvpress_column.py --model smollm2-135m --budgets 5%,10% \
        --tasks passkey,vartrack,prose,code --length 800 --samples 2 --seed 0 [--query-aware] --out kvpress.json

(``--query-aware``: the question is prefilled before compression, as in evolkv search's default and
methods.sh's searches; without it the question follows compression, as kvpress's pipeline does it.)

Each sample's context is prefilled under the press (kvpress's ``compression_ratio`` = 1 - budget: the same
tokens per head as evolkv's uniform budget), then the question and answer are fed over the compressed cache and
the answer's log-probabilities compared with the full cache's (KL, as evolkv's evaluator computes it, against
evolkv's own full-cache reference), at the positions after the context (a pruned cache is shorter); exact
match greedily decodes after the question, as the evaluator does. evolkv's own versions of the same methods
(``evolkv:...`` rows: AdaKV + ExpectedAttention, KVzip with a global or AdaKV allocation, uniform SnapKV) are
scored by evolkv's evaluator on the very same prepared samples first.
kvpress's KVzip reads its tokenizer through ``AutoTokenizer.from_pretrained(name_or_path)``, which cannot open a
GGUF directory: here it is handed the loaded tokenizer.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import torch
from transformers import DynamicCache

import kvpress
from kvpress.presses import kvzip_press

from evolkv.config import Budget, ScorerSpec, uniform_config
from evolkv.evaluators.evaluator import LEAD_IN, Evaluator, _task_metrics, aggregate, mean
from evolkv.evaluators.tasks import load_tasks
from evolkv.models import load
from evolkv.search.baselines import adakv

PRESSES = {  # kvpress's strongest presses today, by its maintainers' ranking, and SnapKV as a reference point
    "kvpress:adakv+expected_attention": lambda r: kvpress.AdaKVPress(kvpress.ExpectedAttentionPress(r)),
    "kvpress:kvzip": lambda r: kvpress.KVzipPress(r),
    "kvpress:snapkv": lambda r: kvpress.SnapKVPress(r, window_size=8, kernel_size=5),
}


def _reset(model) -> None:
    for layer in model.model.layers:  # AdaKV-style presses mask instead of pruning; clear between samples
        layer.self_attn.masked_key_indices = None


def _positions(start: int, count: int, device) -> torch.Tensor:
    """Positions after a compressed context: a pruned cache is shorter than the context, so they are passed
    explicitly (as kvpress's pipeline does); otherwise the model would number them from the cache's length."""
    return torch.arange(start, start + count, device=device)[None]


@torch.no_grad()
def score(model, tokenizer, press, prep, prompt) -> tuple[float, dict[str, float]]:
    """(KL to the full cache over the answer, task metrics of the greedy answer) of one sample whose ``prompt``
    (the context, or with --query-aware the context and question) is prefilled under ``press``."""
    cache, length = DynamicCache(), prompt.numel()
    with press(model):
        first = model(prompt[None], past_key_values=cache).logits[:, -1].argmax(-1, keepdim=True)
    answer = prep.targets.numel()
    feed = prep.feed[None]
    logits = model(feed, past_key_values=cache,
                   position_ids=_positions(length, feed.shape[1], feed.device)).logits[0, -answer:].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    ref = prep.ref_logprobs
    kl = float((ref.exp() * (ref - logprobs)).sum(-1).clamp(min=0).mean())
    _reset(model)
    cache = DynamicCache()
    with press(model):
        model(prompt[None], past_key_values=cache)
    if prep.first_token is not None:  # query-aware: decoding starts from the prefill's own prediction
        pending, tokens = first, [first]
    else:
        pending, tokens = prep.feed[: prep.feed.numel() - (prep.answer_tokens - 1)][None], []
    position = length
    while sum(t.shape[1] for t in tokens) < prep.answer_tokens + LEAD_IN:
        out = model(pending, past_key_values=cache, position_ids=_positions(position, pending.shape[1], feed.device))
        position += pending.shape[1]
        pending = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(pending)
    _reset(model)
    return kl, _task_metrics(tokenizer.decode(torch.cat(tokens, 1)[0], skip_special_tokens=True), prep.sample.answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--budgets", default="5%,10%")
    parser.add_argument("--tasks", default="passkey,vartrack,prose,code")
    parser.add_argument("--length", type=int, default=800)
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--query-aware", action="store_true", help="compress after the question (evolkv search's "
                        "default); otherwise the question comes after compression (kvpress's pipeline)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    loaded = load(args.model, args.device)
    model, tokenizer = loaded.model, loaded.tokenizer
    kvzip_press.AutoTokenizer.from_pretrained = lambda *a, **k: tokenizer  # see the module's docstring
    samples = load_tasks(args.tasks.split(","), args.samples, args.length, args.seed, "heldout", tokenizer)
    scorers = {name: ScorerSpec(name) for name in ("snapkv", "expected_attention", "kvzip")}
    evaluator = Evaluator(model, tokenizer, loaded.spec, list(scorers.values()), query_aware=args.query_aware)
    prepared = evaluator.prepare(samples)  # the full-cache reference, exactly as the searches compute it
    rows = []
    for budget in args.budgets.split(","):  # evolkv's own versions of the same methods, on the same samples
        b = Budget.parse(budget)
        ours = {"evolkv:adakv+expected_attention": adakv(loaded.spec, b, scorers["expected_attention"]),
                "evolkv:uniform expected_attention": uniform_config(loaded.spec, b, scorers["expected_attention"]),
                "evolkv:globaltopk+kvzip": dataclasses.replace(uniform_config(loaded.spec, b, scorers["kvzip"]),
                                                               allocation="globaltopk"),
                "evolkv:adakv+kvzip": adakv(loaded.spec, b, scorers["kvzip"]),
                "evolkv:uniform snapkv": uniform_config(loaded.spec, b, scorers["snapkv"])}
        start = time.time()
        kls = aggregate(evaluator.score_samples(list(ours.values()), prepared))
        ems = evaluator.exact_match(list(ours.values()), prepared)
        for (name, _), kl, em in zip(ours.items(), kls, ems):
            row = {"model": args.model, "budget": budget, "press": name, "error": None if kl.ok else kl.reason,
                   "query_aware": args.query_aware,
                   "heldout_kl": kl.objective if kl.ok else None, "heldout_em": em["em"], "samples": len(prepared),
                   "seconds": round((time.time() - start) / len(ours), 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    model.set_attn_implementation("sdpa")  # kvpress's AdaKV and KVzip refuse eager attention
    for budget in args.budgets.split(","):
        fraction = Budget.parse(budget).value
        for name, make in PRESSES.items():
            start, kls, metrics, error = time.time(), [], [], None
            try:
                for prep in prepared:
                    prompt = evaluator._encode(prep.sample.context, special=True)
                    if args.query_aware:
                        prompt = torch.cat([prompt, evaluator._encode("\n" + prep.sample.question, special=False)])
                    kl, m = score(model, tokenizer, make(1 - fraction), prep, prompt.to(model.device))
                    kls.append(kl)
                    metrics.append(m)
            except Exception as e:  # noqa: BLE001 - a press that refuses (or breaks on) this model: say which
                error = str(e).splitlines()[0] if str(e) else type(e).__name__
                _reset(model)
            row = {"model": args.model, "budget": budget, "press": name, "error": error,
                   "query_aware": args.query_aware,
                   "heldout_kl": mean(kls) if kls and not error else None,
                   "heldout_em": mean([m["em"] for m in metrics]) if metrics and not error else None,
                   "samples": len(kls), "seconds": round(time.time() - start, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
