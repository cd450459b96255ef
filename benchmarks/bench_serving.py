"""Serving a config: decode speed and memory against the full cache, side by side in one run.

A Llama-3-8B-shaped model with random bf16 weights (see ``bench_gpu.build_model``). For each context and
batch size, every row prefills, then decodes ``--new`` greedy tokens, timed with CUDA events:

- full cache, the ways transformers runs it: ``DynamicCache`` eager (what ``generate`` does by default), and
  ``StaticCache`` with the decode step captured in a CUDA graph (the fast standard setup: what
  ``torch.compile(mode="reduce-overhead")`` reaches, without its compile time per shape);
- full cache through evolkv's serving path (``evolkv.serving.Generator`` with no config);
- configs through the serving path: uniform 10% and 1.5%, K4V4 and K2V2 over every token, 10% + K4V4,
  AdaKV 10% (heads differ per prompt) and a per-head 10% config (random layer budgets and head shares: its
  speed and bytes depend only on the counts, as a searched one's do);
- ``evolkv.apply`` + eager decode (the path before the serving one) for uniform 10%, at contexts <= 32k.

Printed per row: ms per decode step, tokens/s, KV bytes measured after prefill beside the config's own
accounting (``allocation.kv_bytes``), decode GiB (the peak while the batch decodes, above what was
allocated before its cache was built: the cache, its room, the graph's pool), the step's floor (weights
plus the KV bytes a step reads, over the measured copy bandwidth) and the speed-up over the fastest full-cache
row of the same context and batch. Each row prefills one sequence and repeats its cache rows to the batch
(always; no option): decode reads each row's own copy, so its time and bytes are a batch's, at 1/B of the
prefill cost.

    PYTHONPATH=. python benchmarks/bench_serving.py                      # on a CUDA machine
    PYTHONPATH=. python benchmarks/bench_serving.py --packed-decode gluon,pairs  # quantized rows per kernel
    PYTHONPATH=. python benchmarks/bench_serving.py --small --device cpu  # tiny shape, smoke test
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import random
import statistics
import sys
import time

import torch

from bench_gpu import build_model

from evolkv import runtime
from evolkv.allocation import dense_kv_bytes, kv_bytes
from evolkv.config import Budget, KVConfig, LayerSpec, ScorerSpec, uniform_config
from evolkv.models import model_spec
from evolkv.search.baselines import adakv
from evolkv.serving import Generator, compile_blocks, restore_blocks

GIB = 2**30


def configs(spec) -> dict[str, KVConfig]:
    ten = Budget.parse("10%")
    rng = random.Random(0)
    budgets = [rng.uniform(0.02, 0.18) for _ in range(spec.num_layers)]
    budgets = [b * 0.10 / statistics.fmean(budgets) for b in budgets]
    layers = []
    for b in budgets:
        shares = [rng.expovariate(1.0) for _ in range(spec.num_kv_heads)]
        layers.append(LayerSpec(budget=b, heads=tuple(s / sum(shares) for s in shares)))
    per_head = KVConfig(spec, ten, ScorerSpec(), tuple(layers))
    return {
        "uniform 10%": uniform_config(spec, ten),
        "uniform 1.5%": uniform_config(spec, Budget.parse("1.5%")),
        "K4V4 all": uniform_config(spec, Budget.parse("100%"), k_bits=4, v_bits=4, group_size=128),
        "K2V2 all": uniform_config(spec, Budget.parse("100%"), k_bits=2, v_bits=2, group_size=128),
        "10% + K4V4": uniform_config(spec, ten, k_bits=4, v_bits=4, group_size=128),
        "AdaKV 10%": adakv(spec, ten, ScorerSpec()),
        "per-head 10%": per_head,
    }


def per_call_ms(fn, n: int, device) -> float:
    """Milliseconds of GPU time per call of ``fn`` over ``n`` calls (one event pair around them)."""
    if device.type != "cuda":
        start = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - start) * 1000 / n
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    begin.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end) / n


def repeat_rows(cache, batch: int):
    """A batch-1 prefilled cache repeated to ``batch`` rows (each a copy in memory; ``cache``'s layers are
    replaced, not changed)."""
    cache.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in cache.layers:
        if hasattr(layer, "pos") and layer.pos is not None:  # evolkv's CompressedLayer
            layer.keys, layer.values = layer.keys.repeat(batch, 1, 1, 1), layer.values.repeat(batch, 1, 1, 1)
            layer.pos = layer.pos.repeat(batch, 1, 1)
            layer.packs = [tier._replace(packed=_repeat_packed(tier.packed, batch), pos=tier.pos.repeat(batch, 1, 1))
                           for tier in layer.packs]
            if layer.evicted is not None:
                layer.evicted = _repeat_packed(layer.evicted, batch)
                layer.evicted_pos = layer.evicted_pos.repeat(batch, 1, 1)
        else:  # transformers' Dynamic / Static layers
            layer.keys, layer.values = layer.keys.repeat(batch, 1, 1, 1), layer.values.repeat(batch, 1, 1, 1)
            if hasattr(layer, "batch_size"):
                layer.batch_size = batch
            if isinstance(getattr(layer, "cumulative_length", None), torch.Tensor):  # a static layer's counter
                layer.cumulative_length = layer.cumulative_length.clone()
    return cache


def _repeat_packed(packed, batch: int):
    """A packed tier's rows repeated to ``batch`` sequences (rows b * H + h)."""
    rep = {f: getattr(packed, f).repeat(batch, *[1] * (getattr(packed, f).dim() - 1))
           for f in ("k", "v", "k_scale", "k_zero", "v_scale", "v_zero", "k_pairs") if getattr(packed, f) is not None}
    return dataclasses.replace(packed, **rep)


def copy_bandwidth(device) -> float:
    """Bytes per second of a large device-to-device copy (read + write)."""
    if device.type != "cuda":
        return 20e9
    x = torch.empty(2 * GIB, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    ms = per_call_ms(lambda: y.copy_(x), 20, device)
    del x, y
    return 2 * 2 * GIB / (ms / 1000)


def hf_rows(model, ids, batches, new, device):
    """The full cache as transformers keeps it: DynamicCache eager, StaticCache + a CUDA graph.
    {label: {batch: result}}."""
    from transformers import DynamicCache, StaticCache

    results = {}
    name = runtime.cache_kwarg(model)
    context = ids.shape[1]
    for label in ("full: transformers DynamicCache, eager", "full: transformers StaticCache + CUDA graph"):
        static = "Static" in label
        if static and device.type != "cuda":
            continue
        results[label] = {}
        try:
            base = (StaticCache(config=model.config, max_cache_len=context + new + 8) if static
                    else DynamicCache(config=model.config))
            with torch.no_grad():
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{name: base})
            first = out.logits[:, -1].argmax(-1)
            del out
        except Exception as error:  # noqa: BLE001
            results[label] = {batch: _error(error) for batch in batches}
            continue
        for batch in batches:
            try:
                before = _allocated(device)
                cache = repeat_rows(copy.copy(base), batch)
                kv = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
                token = first.repeat(batch)[:, None].clone()
                position = torch.full((batch, 1), context, dtype=torch.long, device=device)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()

                def step():
                    logits = model(input_ids=token, position_ids=position, use_cache=True, **{name: cache}).logits
                    token.copy_(logits[:, -1].argmax(-1)[:, None])
                    position.add_(1)

                with torch.no_grad():
                    if static:
                        stream = torch.cuda.Stream()
                        stream.wait_stream(torch.cuda.current_stream())
                        with torch.cuda.stream(stream):
                            for _ in range(2):
                                step()
                        torch.cuda.current_stream().wait_stream(stream)
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            step()
                        run = graph.replay
                    else:
                        run = step
                    for _ in range(2):
                        run()
                    ms = per_call_ms(run, new, device)
                results[label][batch] = dict(ms=ms, kv=kv, peak=_peak(device) - before)
            except Exception as error:  # noqa: BLE001  (a row that cannot run says why, the others go on)
                results[label][batch] = _error(error)
            finally:
                cache = graph = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        base = None
    return results


def evolkv_rows(model, cfg, ids, batches, new, device, eager=False):
    """A config (None: the full cache) through the serving path, or (eager) evolkv.apply's decode: one
    prefill, then for each batch size its rows repeated, decoded and timed. {batch: result}."""
    gen = Generator(model, cfg, cuda_graph=device.type == "cuda" and not eager)
    context = ids.shape[1]
    name = runtime.cache_kwarg(model)
    results = {}
    with torch.no_grad():
        if eager:
            from evolkv.runtime import CompressedCache, Compressor

            base = CompressedCache(gen.spec.num_layers, Compressor(cfg))
            with runtime.attach(model):
                out = model(input_ids=ids, use_cache=True, logits_to_keep=1, **{name: base})
            first = out.logits[:, -1].argmax(-1)
            del out
        else:
            base, first = gen.prefill_cache(ids)
        for batch in batches:
            try:
                before = _allocated(device)
                cache = repeat_rows(copy.copy(base), batch)  # a copy even at batch 1: serving empties it
                if eager:
                    cache.layers = [copy.copy(layer) for layer in cache.layers]
                    kv = sum(_layer_bytes(layer) for layer in cache.layers)
                    token = first.repeat(batch)[:, None].clone()
                    position = torch.full((batch, 1), context, dtype=torch.long, device=device)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()

                    def run():
                        with runtime.attach(model):
                            logits = model(input_ids=token, position_ids=position, use_cache=True,
                                           **{name: cache}).logits
                        token.copy_(logits[:, -1].argmax(-1)[:, None])
                        position.add_(1)

                    for _ in range(2):
                        run()
                    ms = per_call_ms(run, new, device)
                else:
                    gen.serve(cache, first.repeat(batch), context, new + 8)
                    if device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats()
                    gen.decode(4)  # captures the graph
                    kv = gen.cache.nbytes(room=False)  # after a step: with what decoding keeps (pairs' scales)
                    ms = per_call_ms(lambda: gen.decode(1), new, device)
                results[batch] = dict(ms=ms, kv=kv, peak=_peak(device) - before)
            except Exception as error:  # noqa: BLE001  (a row that cannot run says why, the others go on)
                results[batch] = _error(error)
            finally:
                cache = gen.cache = gen._graph = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return results


def _layer_bytes(layer) -> int:
    full = layer.keys.nbytes + layer.values.nbytes
    return full + sum(tier.packed.nbytes() for tier in layer.tiers())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--contexts", default="8192,32768,131072")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--new", type=int, default=64, help="timed decode steps per row")
    parser.add_argument("--only", default="", help="comma-separated row labels to run (default: all)")
    parser.add_argument("--memory", type=float, default=0.0, help="GiB the device has (0: ask it)")
    parser.add_argument("--json", default="", help="also write the rows here")
    parser.add_argument("--packed-decode", default=os.environ.get("EVOLKV_PACKED_DECODE", "gluon"),
                        help="comma-separated EVOLKV_PACKED_DECODE modes: the quantized rows once per mode, side by "
                        "side (gluon, pairs, asm, triton, plain)")
    parser.add_argument("--compile", default="", help="contexts (comma-separated) that also get rows with the "
                        "model's norms and MLPs torch.compile'd (evolkv.serving.compile_blocks)")
    args = parser.parse_args()
    modes = [m.strip() for m in args.packed_decode.split(",") if m.strip()]

    device = torch.device(args.device)
    model = build_model(args.small, args.device)
    spec = model_spec(model.config, "llama-3-8b-shaped-random")
    weights = sum(p.nbytes for p in model.parameters())
    bandwidth = copy_bandwidth(device)
    total = args.memory * GIB or (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
                                  else 24 * GIB)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    import transformers
    import triton

    print(f"# {time.strftime('%Y-%m-%d')}, {name}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, triton {triton.__version__}")
    print(f"# command: {' '.join(sys.argv)}")
    print(f"# model {spec.describe()}, weights {weights / GIB:.2f} GiB; copy bandwidth {bandwidth / 1e12:.2f} TB/s "
          f"(read + write); {args.new} timed decode steps per row; rows prefilled once and repeated to the batch")
    cfgs = configs(spec)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    rows = []
    batches = [int(b) for b in args.batches.split(",")]
    for context in [int(c) for c in args.contexts.split(",")]:
        torch.manual_seed(context)
        ids = torch.randint(4, model.config.vocab_size, (1, context), device=device)
        results = {batch: {} for batch in batches}  # batch -> row -> result

        def add(label, by_batch, accounted=None):
            for batch, result in by_batch.items():
                if accounted is not None and "kv" in result:
                    result["accounted"] = accounted * batch
                results[batch][label] = result

        fits = [b for b in batches if weights + dense_kv_bytes(spec, (context + args.new + 8) * b) <= 0.92 * total]
        for batch in set(batches) - set(fits):
            need = dense_kv_bytes(spec, (context + args.new + 8) * batch)
            results[batch]["full cache"] = dict(error=f"does not fit: the full cache needs {need / GIB:.1f} GiB "
                                                      f"beside {weights / GIB:.1f} GiB of weights")
        full_acct = dense_kv_bytes(spec, context, model.dtype.itemsize)
        if fits and (not only or "hf" in only):
            add_hf = hf_rows(model, ids, fits, args.new, device)
            for label, by_batch in add_hf.items():
                add(label, by_batch, full_acct)
        if fits and (not only or "full" in only):
            add("full: evolkv serving", _safe(evolkv_rows, model, None, ids, fits, args.new, device), full_acct)
        for mode in modes:  # EVOLKV_PACKED_DECODE: the packed layers' decode kernel, side by side
            os.environ["EVOLKV_PACKED_DECODE"] = mode
            for label, cfg in cfgs.items():
                if not only or label in only:
                    packed = any(layer.quantized or layer.evicted_bits for layer in cfg.layers)
                    if mode != modes[0] and not packed:
                        continue
                    name = f"{label} [{mode}]" if len(modes) > 1 and packed else label
                    add(name, _safe(evolkv_rows, model, cfg, ids, batches, args.new, device),
                        kv_bytes(cfg, context, model.dtype.itemsize))
        os.environ["EVOLKV_PACKED_DECODE"] = modes[0]
        if context <= 32768 and (not only or "eager" in only):
            add("uniform 10%: evolkv.apply, eager",
                _safe(evolkv_rows, model, cfgs["uniform 10%"], ids, batches, args.new, device, eager=True))
        if str(context) in args.compile.split(","):
            swapped = compile_blocks(model)
            try:
                if fits:
                    add("full: evolkv serving, compiled blocks",
                        _safe(evolkv_rows, model, None, ids, fits, args.new, device), full_acct)
                for label in ("uniform 10%", "uniform 1.5%", "K4V4 all", "K2V2 all", "10% + K4V4"):
                    if not only or label in only:
                        add(f"{label}, compiled blocks", _safe(evolkv_rows, model, cfgs[label], ids, batches,
                                                               args.new, device),
                            kv_bytes(cfgs[label], context, model.dtype.itemsize))
            finally:
                restore_blocks(swapped)
        for batch in batches:
            rows += report(results[batch], context, batch, spec, weights, bandwidth)
    print("\nspeed-up: over the fastest full-cache row of the same context and batch; bound: the same ratio of "
          "floors (weights + KV bytes over copy bandwidth), what a step reading only those bytes would reach")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


def report(results, context, batch, spec, weights, bandwidth) -> list[dict]:
    """Print one context and batch size's table; its rows as dicts."""
    rows = []
    full_ms = min((r["ms"] for k, r in results.items() if k.startswith("full") and "ms" in r), default=None)
    print(f"\ncontext {context}, batch {batch}")
    print(f"{'row':44} {'ms/step':>8} {'tok/s':>8} {'KV GiB':>8} {'vs acct':>8} {'decode GiB':>10} "
          f"{'floor ms':>8} {'speed-up':>8} {'bound':>6}")
    full_floor = (weights + dense_kv_bytes(spec, context * batch)) / bandwidth * 1000
    for label, r in results.items():
        if "error" in r:
            print(f"{label:44} {r['error']}")
            rows.append(dict(context=context, batch=batch, row=label, error=r["error"]))
            continue
        floor = (weights + r["kv"]) / bandwidth * 1000
        acct = f"{r['kv'] / r['accounted']:.3f}" if r.get("accounted") else "-"
        speed = f"{full_ms / r['ms']:.2f}x" if full_ms else "-"
        bound = "-" if label.startswith("full") else f"{full_floor / floor:.2f}x"
        peak = r["peak"] / GIB
        print(f"{label:44} {r['ms']:8.2f} {batch * 1000 / r['ms']:8.0f} {r['kv'] / GIB:8.3f} {acct:>8} "
              f"{peak:10.2f} {floor:8.2f} {speed:>8} {bound:>6}")
        rows.append(dict(context=context, batch=batch, row=label, ms=r["ms"], kv_bytes=r["kv"],
                         accounted=r.get("accounted"), decode_bytes=r["peak"],
                         floor_ms=floor, speedup=full_ms / r["ms"] if full_ms else None))
    return rows


def _allocated(device) -> int:
    """Bytes allocated now, after freeing what earlier rows left (the weights and this row's prefill)."""
    if device.type != "cuda":
        return 0
    gc.collect()
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated()


def _peak(device) -> int:
    return torch.cuda.max_memory_allocated() if device.type == "cuda" else 0


def _error(error: Exception) -> dict:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        torch.cuda.empty_cache()
    return dict(error=f"{type(error).__name__}: {str(error).splitlines()[0][:120]}")


def _safe(fn, *args, **kwargs) -> dict:
    """fn's {batch: result}, or one error for every batch when its prefill fails."""
    try:
        return fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001  (a row that cannot run says why, the others go on)
        return {batch: _error(error) for batch in args[3]}
    finally:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
