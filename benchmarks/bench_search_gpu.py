"""Search wall time at EvolKV scale, through the CLI a user types, launch to stored winner, each stage beside
its floor.

Llama-3-8B shape (``benchmarks/gpu/make_llama8b.py``), ``--per-head``, 8 samples per task per split (no race),
population 16 x 20 generations (320 candidates), every default baseline, at 8k (and 32k) context. Prints the
total, the stage table the run stored (``runs show --json``), each stage's share and, where a stage has one, its
floor measured in this process after the run, on the same device:

- prefill: one plain forward (SDPA, no scorer, no replay) of the same number of tokens, per prefilled sample;
- candidate scoring (generations, baselines): each evaluation reads its kept keys and values once per search
  sample, and the weights once per ``--batch-size`` candidates, at the device's copy bandwidth;
- exact match (held-out split): one batched greedy decode of all final configs of a sample over the full cache,
  as many steps as the samples' answers take (answer tokens + the lead-in the metric allows).

    python benchmarks/bench_search_gpu.py --model /tmp/llama8b --length 8000 [--length 32000]
    python benchmarks/bench_search_gpu.py --model gemma-3-270m --device cpu --length 500 --samples 1 \
        --population 4 --generations 2   # the same tables on a CPU, small
    python benchmarks/bench_search_gpu.py --readme   # the README's first command, every default, on this machine
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

TARGETS = {8000: 90.0, 32000: 180.0}  # launch to stored winner, seconds, on one H100
README_TARGET = 240.0  # the README's first command on 2 CPU cores, the model cache warm


def run_cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "evolkv", *args], capture_output=True, text=True)
    return time.perf_counter() - started, result


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int = 3) -> float:
    """Best of ``repeat`` timed calls of ``fn`` (after one warm-up call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return best


class Floors:
    """The per-unit floors of one model on one device: a plain forward of ``length`` tokens, a greedy step of
    ``batch`` sequences over a ``length``-token cache, the copy bandwidth, and the bytes a candidate reads."""

    def __init__(self, model: str, device: str, length: int) -> None:
        import torch

        from evolkv import models

        self.loaded = models.load(model, device, "auto")
        self.model, self.device, self.length = self.loaded.model, torch.device(device), length
        config = self.model.config.get_text_config()
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        dtype_bytes = next(self.model.parameters()).element_size()
        self.kv_bytes = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * length * dtype_bytes
        self.weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        self.vocab, self.hidden = config.vocab_size, config.hidden_size
        embeddings = {id(m.weight) for m in (self.model.get_input_embeddings(), self.model.get_output_embeddings())}
        self.body_params = sum(p.numel() for p in self.model.parameters() if id(p) not in embeddings)

    def forward_s(self) -> float:
        import torch

        ids = torch.randint(0, self.vocab, (1, self.length), device=self.device)
        with torch.no_grad():
            return _timed(lambda: self.model(ids, logits_to_keep=1, use_cache=False), self.device)

    def bandwidth(self) -> float:
        """Bytes per second of a device copy (read + write)."""
        import torch

        size = (1 << 30) if self.device.type == "cuda" else (1 << 27)
        x = torch.empty(size, dtype=torch.uint8, device=self.device)
        y = torch.empty_like(x)
        return 2 * size / _timed(lambda: y.copy_(x), self.device, repeat=5)

    def matmul_flops(self) -> float:
        """Floating-point operations per second of a square matmul in the model's dtype."""
        import torch

        n = 4096 if self.device.type == "cuda" else 1024
        dtype = next(self.model.parameters()).dtype
        a = torch.randn(n, n, device=self.device, dtype=dtype)
        return 2 * n ** 3 / _timed(lambda: a @ a, self.device, repeat=5)

    def decode_step_s(self, batch: int, steps: int = 8) -> float:
        """One greedy step of ``batch`` sequences over a shared ``length``-token prefill (the full cache): the
        best of three runs of ``steps`` steps, per step."""
        import torch
        from transformers import DynamicCache

        ids = torch.randint(0, self.vocab, (1, self.length), device=self.device)
        best = float("inf")
        with torch.no_grad():
            for _ in range(3):
                cache = DynamicCache(config=self.model.config)
                self.model(ids, past_key_values=cache, logits_to_keep=1)
                cache.batch_repeat_interleave(batch)
                token = torch.randint(0, self.vocab, (batch, 1), device=self.device)
                _sync(self.device)
                started = time.perf_counter()
                for _ in range(steps):
                    token = self.model(token, past_key_values=cache, logits_to_keep=1).logits[:, -1:].argmax(-1)
                _sync(self.device)
                best = min(best, (time.perf_counter() - started) / steps)
        return best

    def answers(self, tasks: list[str], samples: int, seed: int, splits: tuple[str, ...]) -> list[int]:
        """Each sample's answer tokens over ``splits``."""
        from evolkv.evaluators.tasks import load_tasks

        tokenizer = self.loaded.tokenizer
        return [len(tokenizer(" " + s.answer.strip(), add_special_tokens=False).input_ids)
                for split in splits for s in load_tasks(tasks, samples, self.length, seed, split, tokenizer)]


def stage_floors(floors: Floors, merged: dict[str, list[float]], budget: float, batch: int, search_samples: int,
                 finals: int, answers: list[int]) -> dict[str, tuple[float, str]]:
    """Each stage's floor in seconds and how it was reckoned (``answers``: the answer tokens of the held-out
    samples, which exact match decodes and which stand for every split's)."""
    from evolkv.evaluators.evaluator import LEAD_IN

    out: dict[str, tuple[float, str]] = {}
    forward = floors.forward_s()
    for key, (_, evals) in merged.items():
        if key.startswith("prefill"):
            out[key] = (forward * evals, f"{int(evals)} plain forwards of {floors.length} tokens, {forward:.3f} s each")
    # a candidate on a sample: its kept KV and a batch's share of the weights read once, or the teacher-forced
    # forward of the answer tokens (the full-vocabulary logits the KL needs) computed, whichever takes longer
    bandwidth, flops = floors.bandwidth(), floors.matmul_flops()
    answer = sum(answers) / max(len(answers), 1)
    read = (budget * floors.kv_bytes + floors.weight_bytes / batch) / bandwidth
    compute = 2 * answer * (floors.body_params + floors.vocab * floors.hidden) / flops
    per_eval = search_samples * max(read, compute)
    bound = (f"kept KV + weights/{batch} at {bandwidth / 1e9:.0f} GB/s" if read >= compute else
             f"{answer:.1f} answer tokens' forward at {flops / 1e12:.2f} TFLOP/s")
    for key in ("generations (all)", "baselines"):
        if key in merged:
            out[key] = (per_eval * merged[key][1], f"{search_samples} samples x ({bound}): {per_eval * 1e3:.1f} ms "
                                                   "an eval")
    if "exact match" in merged:
        steps = sum(answers) + LEAD_IN * len(answers)
        step = floors.decode_step_s(finals)
        out["exact match"] = (step * steps, f"{steps} greedy steps of {finals} configs, {step * 1e3:.1f} ms each")
    return out


def report(detail: dict, wall: float, floors_of, target: float | None = None) -> None:
    """The run's stage table beside each stage's floor (``floors_of(merged)``, or None for none), against
    ``target`` seconds (by default the GPU target of the run's length)."""
    timings = detail["timings"]
    stages = timings["stages"]
    settings = detail["settings"]
    evaluated = sum(s["evaluations"] for s in stages if s["stage"].startswith("generation"))
    search_s = sum(s["seconds"] for s in stages if s["stage"].startswith("generation"))
    if target is None and settings["device"].startswith("cuda"):
        target = TARGETS.get(settings["length"])
    print(f"context {settings['length']}: launch to stored winner {wall:.1f} s ({wall / 60:.2f} min)"
          + (f", target {target:.0f} s ({wall / target:.2f}x)" if target else "")
          + f", status {detail['status']}, peak GPU {timings.get('peak_gpu_gib', 0):.1f} GiB; "
          f"{evaluated} candidates in {search_s:.1f} s = {evaluated / max(search_s, 1e-9):.2f} evals/s")
    staged = sum(s["seconds"] for s in stages)
    merged: dict[str, list[float]] = {}
    for s in stages:
        key = "generations (all)" if s["stage"].startswith("generation") else s["stage"]
        merged.setdefault(key, [0.0, 0])
        merged[key][0] += s["seconds"]
        merged[key][1] += s["evaluations"]
    floors = floors_of(merged) if floors_of else {}
    print(f"{'stage':22s} {'seconds':>8s} {'share':>6s} {'evals':>6s} {'floor s':>8s} {'x floor':>8s}  floor is")
    for key, (seconds, evals) in sorted(merged.items(), key=lambda kv: -kv[1][0]):
        floor, how = floors.get(key, (None, ""))
        extra = f" {floor:8.2f} {seconds / max(floor, 1e-9):8.1f}  {how}" if floor is not None else ""
        print(f"{key:22s} {seconds:8.1f} {seconds / wall:6.0%} {evals:6d}{extra}")
    print(f"{'(process start, imports)':22s} {wall - staged:8.1f} {(wall - staged) / wall:6.0%}")
    if floors:
        above = sorted(((merged[key][0] - floor, key, merged[key][0] / max(floor, 1e-9))
                        for key, (floor, _) in floors.items()), reverse=True)
        unfloored = sum(seconds for key, (seconds, _) in merged.items() if key not in floors)
        verdict = (f"target {target:.0f} s missed by {wall - target:.1f} s" if target and wall > target
                   else f"target {target:.0f} s met" if target else "no target on this device")
        print(f"{verdict}; time above each stage's floor: "
              + ", ".join(f"{key} {excess:.1f} s ({ratio:.1f}x)" for excess, key, ratio in above[:4])
              + f"; stages without a floor and the process start {wall - staged + unfloored:.1f} s")
    results = detail["results"]
    for label in ("winner", "baseline:uniform", "baseline:adakv"):
        r = results.get(label, {})
        print(f"  {label:18s} search KL {r.get('search', {}).get('objective')}  held-out KL "
              f"{r.get('heldout', {}).get('objective')}")
    print(flush=True)


def floors_for(detail: dict):
    """A ``report`` callback measuring the floors of ``detail``'s run (its model, device, length and samples)."""
    from evolkv.config import Budget
    from evolkv.devices import resolve_device

    settings = detail["settings"]

    def measure(merged: dict[str, list[float]]) -> dict[str, tuple[float, str]]:
        device = resolve_device(settings["device"]) if settings["device"] == "auto" else settings["device"]
        floors = Floors(settings["model"], device, settings["length"])
        heldout = settings["heldout_samples"] or settings["samples"]
        answers = floors.answers(settings["tasks"], heldout, settings["seed"], ("heldout",))
        return stage_floors(floors, merged, Budget.parse(settings["budget"]).value, settings["batch_size"],
                            int(merged.get("prefill search", [0, 0])[1]),
                            int(merged.get("exact match", [0, 1])[1]), answers)

    return measure


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="/tmp/llama8b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--length", type=int, action="append")
    parser.add_argument("--budget", type=float, default=0.015)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="the CLI's default for the device unless given")
    parser.add_argument("--tasks", default="passkey,multikey")
    parser.add_argument("--readme", action="store_true",
                        help="run the README's first command instead (evolkv search --budget 10%%, every default)")
    parser.add_argument("--no-floors", action="store_true", help="only the run's own stage table")
    parser.add_argument("--extra", default="", help="more CLI options, space separated")
    options = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' cache keyword rename
    runs = []
    if options.readme:
        runs.append(["search", "--budget", "10%"])
    for length in [] if options.readme else options.length or [8000]:
        runs.append(["search", "--model", options.model, "--budget", f"{options.budget:.1%}", "--device",
                     options.device, "--per-head", "--length", str(length), "--samples", str(options.samples),
                     "--heldout-samples", str(options.samples), "--race", "0", "--population",
                     str(options.population), "--generations", str(options.generations), "--tasks", options.tasks,
                     *(["--batch-size", str(options.batch_size)] if options.batch_size else [])])
    for args in runs:
        db = Path(tempfile.mkdtemp()) / "bench.db"
        print(f"$ evolkv {' '.join(args)} {options.extra}".rstrip(), flush=True)
        wall, result = run_cli([*args, "--db", str(db), "--json", *options.extra.split()])
        if result.returncode != 0:
            print(f"exit {result.returncode}: {result.stderr[-1500:]}", flush=True)
            continue
        detail = json.loads(result.stdout)
        report(detail, wall, None if options.no_floors else floors_for(detail),
               README_TARGET if options.readme else None)


if __name__ == "__main__":
    main()
