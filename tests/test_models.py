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
