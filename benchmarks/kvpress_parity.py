"""Kept-token overlap of evolkv against NVIDIA kvpress, method by method, on the tests' tiny Llama.

Run in a kvpress environment (kvpress 0.5.x pins transformers<5.3):

    python3 -m venv --system-site-packages /tmp/kvp
    /tmp/kvp/bin/pip install "transformers>=5.0,<5.3" kvpress==0.5.5
    /tmp/kvp/bin/python benchmarks/kvpress_parity.py

The checks themselves (each method equal, or its difference stated and checked) are tests/test_kvpress.py;
this prints the overlap of every pair side by side.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import conftest  # noqa: E402
import kvpress  # noqa: E402
import test_kvpress as parity  # noqa: E402

from evolkv.config import Budget, ScorerSpec  # noqa: E402
from evolkv.search.baselines import adakv, pyramid  # noqa: E402


class _Dirs:
    """The part of pytest's tmp_path_factory the conftest's model fixture uses."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp())

    def mktemp(self, name: str) -> Path:
        path = self.root / name
        path.mkdir()
        return path


def main() -> None:
    tiny = conftest.loaded.__wrapped__(conftest.model_dirs.__wrapped__(_Dirs()))["llama"]
    tiny.model.set_attn_implementation("sdpa")
    ids, kept, ratio = parity._prompt(tiny), parity._kept_tokens(), parity.RATIO
    snap = ScorerSpec("snapkv", window=8, kernel=5)
    rows = [
        ("KnormPress", kvpress.KnormPress(ratio), "uniform keynorm",
         parity._uniform(tiny, ScorerSpec("keynorm", window=1, kernel=1))),
        ("StreamingLLMPress(n_sink=4)", kvpress.StreamingLLMPress(ratio, n_sink=4), "uniform streaming sinks=4",
         parity._uniform(tiny, ScorerSpec("streaming", window=1, kernel=1, params={"sinks": 4}))),
        ("KeyDiffPress", kvpress.KeyDiffPress(ratio), "uniform keydiff",
         parity._uniform(tiny, ScorerSpec("keydiff", window=1, kernel=1))),
        ("SnapKVPress(window 8)", kvpress.SnapKVPress(ratio, window_size=8, kernel_size=5), "uniform snapkv",
         parity._uniform(tiny, snap)),
        ("TOVAPress", kvpress.TOVAPress(ratio), "uniform tova", parity._uniform(tiny, ScorerSpec("tova", window=1, kernel=1))),
        ("AdaKVPress(SnapKVPress)", kvpress.AdaKVPress(kvpress.SnapKVPress(ratio, window_size=8, kernel_size=5)),
         "adakv snapkv", adakv(tiny.spec, Budget.parse(str(kept)), snap)),
        ("PyramidKVPress(window 8)", kvpress.PyramidKVPress(ratio, window_size=8, kernel_size=5), "pyramid snapkv",
         pyramid(tiny.spec, Budget.parse(str(kept)), snap)),
        ("ExpectedAttentionPress", kvpress.ExpectedAttentionPress(ratio), "uniform expected_attention",
         parity._uniform(tiny, ScorerSpec("expected_attention", window=1, kernel=1))),
        ("ObservedAttentionPress (eager)", kvpress.ObservedAttentionPress(ratio), "uniform h2o queries=T average",
         parity._uniform(tiny, ScorerSpec("h2o", window=1, kernel=1, params={"queries": parity.LENGTH,
                                                                              "average": 1}))),
        ("CriticalKVPress(SnapKV k1, stage 0)",
         kvpress.CriticalKVPress(kvpress.SnapKVPress(ratio, window_size=8, kernel_size=1), first_stage_ratio=0.0),
         "uniform criticalkv projected", parity._uniform(tiny, ScorerSpec("criticalkv", window=8, kernel=1,
                                                                          params={"projected": 1}))),
        ("CriticalKVPress(SnapKV), default", kvpress.CriticalKVPress(kvpress.SnapKVPress(ratio, window_size=8)),
         "uniform criticalkv projected", parity._uniform(tiny, ScorerSpec("criticalkv", window=8, kernel=1,
                                                                          params={"projected": 1}))),
        ("KVzipPress(layerwise=True)", kvpress.KVzipPress(ratio, layerwise=True), "adakv kvzip",
         adakv(tiny.spec, Budget.parse(str(kept)), ScorerSpec("kvzip", window=1, kernel=1))),
        ("KVzipPress (global)", kvpress.KVzipPress(ratio), "uniform kvzip + globaltopk",
         dataclasses.replace(parity._uniform(tiny, ScorerSpec("kvzip", window=1, kernel=1)),
                             allocation="globaltopk")),
    ]
    print(f"tiny Llama (4 layers, 4 query / 2 KV heads), {parity.LENGTH} tokens, kvpress compression_ratio {ratio} "
          f"= {kept} tokens per head")
    print(f"{'kvpress press':<30} {'evolkv':<28} share of kvpress's kept tokens evolkv keeps")
    for name, press, ours, cfg in rows:
        tiny.model.set_attn_implementation("eager" if "eager" in name else "sdpa")
        share = parity.overlap(parity.kvpress_kept(tiny, ids, press), parity.evolkv_kept(tiny, ids, cfg))
        print(f"{name:<30} {ours:<28} {share:.3f}")


if __name__ == "__main__":
    main()
