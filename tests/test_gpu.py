"""The CLI on CUDA, as a user runs it: every stage of a search, runs show, export, eval, apply + generate, and
resume after a SIGKILL, on tiny Llama-, Qwen2-, Qwen3-, Mistral- and Gemma-3-style models. ``pytest -m gpu``;
skipped without CUDA (CI is CPU-only; ``benchmarks/gpu/run.sh`` runs these on the lent H100)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from evolkv import apply as apply_config
from evolkv.testing import char_tokenizer

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (pytest -m gpu)")]

SMALL = ["--generations", "2", "--population", "4", "--samples", "2", "--length", "300", "--tasks",
         "passkey,multikey"]


def _extra_models():
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=4096, bos_token_id=1,
                 eos_token_id=2, pad_token_id=0)
    return {"mistral": lambda vocab: MistralForCausalLM(MistralConfig(vocab_size=vocab, **shape)),
            "qwen2": lambda vocab: Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, **shape))}


@pytest.fixture(scope="module")
def gpu_models(model_dirs, tmp_path_factory):
    dirs = dict(model_dirs)
    tokenizer = char_tokenizer()
    for name, build in _extra_models().items():
        torch.manual_seed(0)
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        build(len(tokenizer)).save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


def evolkv(*args, check=True, timeout=600):
    """The CLI in a fresh process, exactly as a user types it."""
    result = subprocess.run([sys.executable, "-m", "evolkv", *map(str, args)], capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "is deprecated" not in result.stderr, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral", "gemma3"])
def test_cli_search_show_export_eval_apply_on_cuda(arch, gpu_models, tmp_path):
    db, model, cfg_path = tmp_path / "evolkv.db", gpu_models[arch], tmp_path / "winner.json"
    detail = json.loads(evolkv("search", "--model", model, "--budget", "20%", "--device", "cuda", "--per-head",
                               *SMALL, "--db", db, "--json").stdout)
    assert detail["status"] == "finished" and detail["settings"]["device"] == "cuda:0"
    assert detail["settings"]["dtype"] == "bfloat16"  # auto on CUDA
    stages = [s["stage"] for s in detail["timings"]["stages"]]
    assert {"model load", "prefill search", "prefill validation", "prefill heldout", "baselines", "generation 1",
            "validation", "held-out re-score", "exact match"} <= set(stages)
    assert detail["timings"]["peak_gpu_gib"] > 0
    assert all(r["heldout"]["objective"] is not None for label, r in detail["results"].items()
               if not label.startswith("finalist:"))  # finalists are scored on validation only
    assert all(r["validation"]["objective"] is not None for label, r in detail["results"].items()
               if label != "baseline:full")
    shown = evolkv("runs", "show", detail["id"], "--db", db).stdout
    assert "where the time went" in shown and "exact match" in shown
    evolkv("export", detail["id"], "--out", cfg_path, "--db", db)
    scored = json.loads(evolkv("eval", "--model", model, "--config", cfg_path, "--device", "cuda", "--samples", 2,
                               "--length", 300, "--tasks", "passkey", "--json").stdout)
    assert scored["status"] == "ok" and scored["kl"] >= 0

    from evolkv import models
    from evolkv.config import KVConfig

    loaded = models.load(model, "cuda", "auto")
    assert next(loaded.model.parameters()).is_cuda and loaded.model.dtype == torch.bfloat16
    prompt = loaded.tokenizer("The pass key is 4242. " * 20 + "What is the pass key?", return_tensors="pt")
    with torch.no_grad(), apply_config(loaded.model, KVConfig.load(cfg_path)):
        out = loaded.model.generate(prompt.input_ids.cuda(), max_new_tokens=8, do_sample=False)
    assert out.shape[1] == prompt.input_ids.shape[1] + 8


def test_quant_search_on_cuda(gpu_models, tmp_path):
    detail = json.loads(evolkv("search", "--model", gpu_models["llama"], "--mode", "quant", "--device", "cuda:0",
                               "--clusters", "2", "--probe-samples", "1", *SMALL, "--db", tmp_path / "q.db",
                               "--json").stdout)
    assert detail["status"] == "finished" and detail["front"]


def test_resume_after_sigkill_on_cuda(gpu_models, tmp_path):
    db = tmp_path / "evolkv.db"
    args = [sys.executable, "-m", "evolkv", "search", "--model", gpu_models["qwen3"], "--budget", "10%", "--device",
            "cuda", "--generations", "30", "--population", "6", "--samples", "2", "--length", "300", "--db", str(db),
            "--json"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from evolkv.store.store import Store

    deadline = time.time() + 300
    run_id = None
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
        runs = Store(f"sqlite:///{db}").runs() if db.exists() else []
        if runs and runs[0]["generations_done"] >= 2:
            run_id = runs[0]["id"]
            break
    assert run_id is not None, "the search did not reach generation 2"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = Store(f"sqlite:///{db}").run(run_id).generations_done
    detail = json.loads(evolkv("resume", run_id, "--db", db, "--json").stdout)
    assert detail["status"] == "finished" and detail["generations_done"] == 30 and done_before >= 2
    assert detail["settings"]["dtype"] == "bfloat16" and detail["settings"]["device"] == "cuda:0"


def test_bad_cuda_input_is_one_line(tmp_path):
    count = torch.cuda.device_count()
    result = evolkv("search", "--budget", "10%", "--device", f"cuda:{count}", "--db", tmp_path / "x.db", check=False)
    assert result.returncode == 2 and result.stderr.strip().splitlines()[-1].startswith("error:")
    assert f"{count} CUDA device" in result.stderr


def test_samples_parked_in_host_memory_score_the_same(loaded, monkeypatch):
    """Long contexts: prefills that do not fit the GPU wait in host memory; their scores do not change."""
    import numpy as np

    from evolkv.config import Budget
    from evolkv.evaluators import evaluator as evaluator_module
    from evolkv.evaluators.evaluator import Evaluator
    from evolkv.evaluators.tasks import load_tasks
    from evolkv.search.space import BudgetSpace

    tiny = loaded["llama"]
    samples = load_tasks(["passkey"], 2, 300, 0, "search", tiny.tokenizer)
    space = BudgetSpace(tiny.spec, Budget.parse("20%"), per_head=True)
    configs = [space.decode(x) for x in np.random.default_rng(0).uniform(-2, 2, (4, space.n_var))]
    on_gpu = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, query_aware=True)
    expected = on_gpu.score(configs, on_gpu.prepare(samples))
    monkeypatch.setattr(evaluator_module, "GPU_RESERVE", 10**15)  # nothing fits: every sample is parked
    parked = Evaluator(tiny.model, tiny.tokenizer, tiny.spec, query_aware=True)
    prepared = parked.prepare(samples)
    assert all(p.keys[0].device.type == "cpu" for p in prepared)
    got = parked.score(configs, prepared)
    assert [g.objective for g in got] == pytest.approx([e.objective for e in expected], rel=1e-5, abs=1e-7)
    assert parked.exact_match(configs, prepared) == on_gpu.exact_match(configs, on_gpu.prepare(samples))
