"""Search wall time at EvolKV scale, through the CLI a user types, launch to stored winner.

Llama-3-8B shape (``benchmarks/gpu/make_llama8b.py``), ``--per-head``, 8 samples per task per split,
population 16 x 20 generations (320 candidates), at 8k (and 32k) context. Prints the total, the stage table
the run stored (``runs show --json``) and each stage's share, so the largest stage is in plain sight.

    python benchmarks/bench_search_gpu.py --model /tmp/llama8b --length 8000 [--length 32000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run_cli(args: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "evolkv", *args], capture_output=True, text=True)
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="/tmp/llama8b")
    parser.add_argument("--length", type=int, action="append")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--population", type=int, default=16)
    parser.add_argument("--generations", type=int, default=20)
    parser.add_argument("--tasks", default="passkey,multikey")
    parser.add_argument("--extra", default="", help="more CLI options, space separated")
    options = parser.parse_args()
    for length in options.length or [8000]:
        db = Path(tempfile.mkdtemp()) / "bench.db"
        args = ["search", "--model", options.model, "--budget", "1.5%", "--device", "cuda", "--per-head",
                "--length", str(length), "--samples", str(options.samples), "--population", str(options.population),
                "--generations", str(options.generations), "--tasks", options.tasks, "--db", str(db), "--json",
                *options.extra.split()]
        print(f"$ evolkv {' '.join(args)}", flush=True)
        wall, result = run_cli(args)
        if result.returncode != 0:
            print(f"exit {result.returncode}: {result.stderr[-1500:]}", flush=True)
            continue
        detail = json.loads(result.stdout)
        timings = detail["timings"]
        stages = timings["stages"]
        evaluated = sum(s["evaluations"] for s in stages if s["stage"].startswith("generation"))
        search_s = sum(s["seconds"] for s in stages if s["stage"].startswith("generation"))
        print(f"context {length}: launch to stored winner {wall:.1f} s ({wall / 60:.2f} min), status "
              f"{detail['status']}, peak GPU {timings.get('peak_gpu_gib', 0):.1f} GiB; "
              f"{evaluated} candidates in {search_s:.1f} s = {evaluated / max(search_s, 1e-9):.2f} evals/s")
        staged = sum(s["seconds"] for s in stages)
        merged: dict[str, list[float]] = {}
        for s in stages:
            key = "generations (all)" if s["stage"].startswith("generation") else s["stage"]
            merged.setdefault(key, [0.0, 0])
            merged[key][0] += s["seconds"]
            merged[key][1] += s["evaluations"]
        print(f"{'stage':22s} {'seconds':>8s} {'share':>6s} {'evals':>6s}")
        for key, (seconds, evals) in sorted(merged.items(), key=lambda kv: -kv[1][0]):
            print(f"{key:22s} {seconds:8.1f} {seconds / wall:6.0%} {evals:6d}")
        print(f"{'(process start, imports)':22s} {wall - staged:8.1f} {(wall - staged) / wall:6.0%}")
        results = detail["results"]
        for label in ("winner", "baseline:uniform", "baseline:adakv"):
            r = results.get(label, {})
            print(f"  {label:18s} search KL {r.get('search', {}).get('objective')}  held-out KL "
                  f"{r.get('heldout', {}).get('objective')}")
        print(flush=True)


if __name__ == "__main__":
    main()
