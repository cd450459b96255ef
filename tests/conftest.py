"""Tiny random-initialised models (Llama, Qwen3, Gemma 3 with sliding layers), all with GQA, saved to local
directories so tests load them through the real ``from_pretrained`` path. Full-size values beside each."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # Triton kernels run in the interpreter on CPU; set before triton loads
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from evolkv.testing import char_tokenizer as make_tokenizer

torch.set_num_threads(2)


def _llama(vocab: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,  # 4096
        intermediate_size=128,  # 14336
        num_hidden_layers=4,  # 32
        num_attention_heads=4,  # 32
        num_key_value_heads=2,  # 8
        head_dim=16,  # 128
        max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def _qwen3(vocab: int):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab,
        hidden_size=64,  # 4096
        intermediate_size=128,  # 12288
        num_hidden_layers=3,  # 36
        num_attention_heads=8,  # 32
        num_key_value_heads=2,  # 8
        head_dim=16,  # 128
        max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return Qwen3ForCausalLM(config)


def _gemma3(vocab: int):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(
        vocab_size=vocab,
        hidden_size=64,  # 640
        intermediate_size=128,  # 2048
        num_hidden_layers=4,  # 18
        num_attention_heads=4,  # 4
        num_key_value_heads=2,  # 1
        head_dim=16,  # 256
        query_pre_attn_scalar=16,  # 256
        sliding_window=48,  # 512
        layer_types=["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"],
        max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    return Gemma3ForCausalLM(config)


BUILDERS = {"llama": _llama, "qwen3": _qwen3, "gemma3": _gemma3}


@pytest.fixture(scope="session")
def model_dirs(tmp_path_factory):
    """{arch: local directory} of tiny saved models, each with the char tokenizer."""
    tokenizer = make_tokenizer()
    dirs = {}
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        model = build(len(tokenizer)).eval()
        path = tmp_path_factory.mktemp(f"tiny-{name}")
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
        dirs[name] = str(path)
    return dirs


@pytest.fixture(scope="session")
def loaded(model_dirs):
    """{arch: LoadedModel} loaded through evolkv.models.load (from_pretrained on the local dirs)."""
    from evolkv import models

    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU machine the kernels path is tested too
    return {name: models.load(path, device) for name, path in model_dirs.items()}


@pytest.fixture(params=list(BUILDERS))
def tiny(request, loaded):
    return loaded[request.param]


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """A fresh, empty database on every backend: SQLite in a file, and PostgreSQL on the server that
    ``EVOLKV_TEST_PG_URL`` names (``.ci/postgres.sh`` starts one; CI sets ``EVOLKV_REQUIRE_PG=1``)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'evolkv.db'}"
        return
    server = os.environ.get("EVOLKV_TEST_PG_URL")
    if not server:
        if os.environ.get("EVOLKV_REQUIRE_PG"):
            pytest.fail("EVOLKV_REQUIRE_PG is set but EVOLKV_TEST_PG_URL is not (run .ci/postgres.sh)")
        pytest.skip("no PostgreSQL server: eval \"$(.ci/postgres.sh)\" to test the store on one")
    import uuid

    import sqlalchemy as sa

    name = f"evolkv_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    yield sa.engine.make_url(server).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()
