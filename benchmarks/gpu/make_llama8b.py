"""Build a Llama-3-8B-shaped model directory on the GPU machine: 32 layers, 32 query heads, 8 KV heads,
head_dim 128, hidden 4096, MLP 14336, random bf16 weights, and a real tokenizer (the embedded Gemma 3 model's,
carried gzipped in .gpukit/; its 262k-token vocabulary makes the embeddings 2x Llama 3's, 9.7B parameters in
all). Random weights are fine for timing, not for quality.

    python benchmarks/gpu/make_llama8b.py /tmp/llama8b
"""

from __future__ import annotations

import gzip
import shutil
import sys
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

KIT = Path(__file__).resolve().parents[2] / ".gpukit"


def main(out: str) -> None:
    out_dir = Path(out)
    if (out_dir / "config.json").exists():
        print(f"{out_dir} exists")
        return
    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(KIT / "tokenizer.json.gz", "rb") as f, open(out_dir / "tokenizer.json", "wb") as g:
        shutil.copyfileobj(f, g)
    shutil.copy(KIT / "tokenizer_config.json", out_dir / "tokenizer_config.json")
    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, vocab_size=len(tokenizer),
                         max_position_embeddings=131072, rope_theta=500000.0,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlamaForCausalLM(config).eval()
    torch.set_default_dtype(previous)
    model.save_pretrained(out_dir)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote {out_dir}: {params / 1e9:.2f}B parameters, bf16, in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/llama8b")
