"""The Gluon decode kernel of this checkout against the same file at other git revisions, side by side in one run.

For kernel work: every bit pair at batch 8, 8 KV heads x 4 query heads, 32k entries, key groups of 128 (the
``bench_packed_decode`` shape), CUDA-graph replays, the share of the measured copy bandwidth and the error against
dequantize-then-attend; first the same error check on small odd shapes (unequal groups, masked entries, a
partial last block). Each revision's ``evolkv/kernels/gluon_decode.py`` is loaded as its own module.

    PYTHONPATH=. python benchmarks/bench_gluon_revisions.py ce2d8a8      # on a CUDA machine, from the repository root
    git show ce2d8a8:evolkv/kernels/gluon_decode.py > /tmp/ce2d8a8.py    # where the copy has no git history
    PYTHONPATH=. python benchmarks/bench_gluon_revisions.py /tmp/ce2d8a8.py
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import triton

from benchmarks.bench_packed_decode import _time, copy_bandwidth, time_kernel_alone
from evolkv.kernels import gluon_decode
from evolkv.kernels.packed import attend_packed_ref, pack

def load_revision(rev: str, folder: Path):
    """``evolkv/kernels/gluon_decode.py`` as it was at git revision ``rev`` (or the file ``rev``, for a machine with
    a copy of the tree but no git history), imported as a module of its own."""
    if Path(rev).is_file():
        source = Path(rev).read_text()
    else:
        shown = subprocess.run(["git", "show", f"{rev}:evolkv/kernels/gluon_decode.py"], capture_output=True,
                               text=True)
        if shown.returncode:
            raise SystemExit(f"error: {rev} is neither a file nor a git revision with evolkv/kernels/gluon_decode.py "
                             f"({shown.stderr.strip().splitlines()[-1] if shown.stderr.strip() else 'git failed'})")
        source = shown.stdout
    path = folder / f"gluon_decode_{Path(rev).stem}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # Gluon reads the kernels' source through their module
    spec.loader.exec_module(module)
    return module


def decode_case(k_bits: int, v_bits: int, batch: int, length: int, heads: int = 8, group: int = 4):
    """(query, packed, pos, query_pos): random bfloat16 keys, values and query packed as the kernel reads them (key
    groups of 128, the key scales kept as pairs), every entry visible to a query at position ``length``."""
    keys = torch.randn(batch * heads, length, 128, device="cuda", dtype=torch.bfloat16)
    packed = pack(keys, torch.randn_like(keys), k_bits, v_bits, 128)
    del keys
    packed.keep_key_pairs()
    pos = torch.arange(length, device="cuda").repeat(batch * heads, 1).view(batch, heads, length).int()
    query = torch.randn(batch, heads * group, 1, 128, device="cuda", dtype=torch.bfloat16)
    return query, packed, pos, torch.tensor([length], device="cuda")


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref).norm() / ref.norm()).item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="*",
                        help="git revisions (or copies of the file) to compare with this checkout's kernel")
    parser.add_argument("--pairs", default="44,22,24,42", help="key/value bit pairs, e.g. 44,22")
    parser.add_argument("--splits", default="",
                        help="also time this checkout's kernel at these split counts (default: its own plan)")
    parser.add_argument("--context", type=int, default=32768, help="entries a row (default 32768)")
    parser.add_argument("--batch", type=int, default=8, help="batch (8 KV heads x 4 query heads a sequence)")
    args = parser.parse_args()
    pairs = [(int(p[0]), int(p[1])) for p in args.pairs.split(",") if p in ("44", "22", "24", "42")]
    if len(pairs) != len(args.pairs.split(",")):
        raise SystemExit(f"error: --pairs {args.pairs!r}: use key/value bit pairs among 44, 22, 24, 42")
    folder = Path(tempfile.mkdtemp())
    kernels = {rev: load_revision(rev, folder) for rev in args.revisions}
    kernels["this checkout"] = gluon_decode
    runs = {name: (kernel, None) for name, kernel in kernels.items()}
    runs.update({f"this checkout, {n} splits": (gluon_decode, int(n)) for n in args.splits.split(",") if n})
    torch.manual_seed(0)
    bandwidth = copy_bandwidth()  # bytes/s, bench_packed_decode's (the figure the 60% target is set against)
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, triton {triton.__version__}; "
          f"copy {bandwidth / 1e12:.2f} TB/s (read + write)")
    for k_bits, v_bits in pairs:  # odd shapes: errors only
        for batch, heads, group, length in ((2, 3, 3, 1000), (1, 2, 8, 4352), (3, 1, 1, 300)):
            keys = torch.randn(batch * heads, length, 128, device="cuda", dtype=torch.bfloat16) * 2 + 0.5
            packed = pack(keys, torch.randn_like(keys), k_bits, v_bits, 128)
            pos = torch.arange(length, device="cuda").repeat(batch * heads, 1).view(batch, heads, length).int()
            pos[:, :, 5:40] = -1
            query = torch.randn(batch, heads * group, 1, 128, device="cuda", dtype=torch.bfloat16) * 1.5
            query_pos = torch.tensor([length - 50], device="cuda")
            ref, _ = attend_packed_ref(query.float(), packed, pos, query_pos, 0.09)
            outs = {name: kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.09)[0]
                    for name, kernel in kernels.items()}
            errors = "  ".join(f"{name} {relative_error(out, ref):.1e}" for name, out in outs.items())
            print(f"# check K{k_bits}V{v_bits} batch {batch} heads {heads}x{group} length {length}: {errors}")
    batch, heads, group, length = args.batch, 8, 4, args.context
    print(f"# batch {batch}, {heads} KV heads x {group} query heads, {length} entries a row, key groups of 128")
    print("# ms and % copy: one call (the decode kernel and the merge of its splits) as a CUDA graph replays it; "
          "kernel ms: the decode kernel alone (bench_packed_decode.time_kernel_alone)")
    print(f"{'bits':>5} {'kernel':30} {'ms':>8} {'GB read':>8} {'% copy':>7} {'rel err':>8} {'kernel ms':>9} "
          f"{'% copy':>7}")
    for k_bits, v_bits in pairs:
        query, packed, pos, query_pos = decode_case(k_bits, v_bits, batch, length, heads, group)
        read = packed.nbytes() + pos.numel() * 4  # what the kernel reads: codes, key pairs, value scales, positions
        ref = attend_packed_ref(query.float(), packed, pos, query_pos, 0.08)[0]
        for name, (kernel, splits) in runs.items():
            def call(kernel=kernel, splits=splits):
                return kernel.decode_attention_gluon(query, packed, pos, query_pos, 0.08, splits=splits)
            err = relative_error(call()[0], ref)
            ms = _time(call, eager=False)
            kernel_ms = time_kernel_alone(kernel, query, packed, pos, query_pos, 0.08, splits)
            print(f"K{k_bits}V{v_bits} {name:30} {ms:8.4f} {read / 1e9:8.3f} {read / (ms / 1000) / bandwidth:7.1%} "
                  f"{err:8.1e} {kernel_ms:9.4f} {read / (kernel_ms / 1000) / bandwidth:7.1%}", flush=True)


if __name__ == "__main__":
    main()
