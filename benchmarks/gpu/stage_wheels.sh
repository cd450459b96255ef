#!/usr/bin/env bash
# Run HERE (a machine with package indexes): download the wheels the GPU machine lacks into .whl/ (ignored by
# git, carried to the device with carry=[".whl", ".gpukit"]), and pack the tokenizer the 8B-shaped model uses.
# The lent GPU has Python 3.12, torch, transformers, triton, typer, rich, pyyaml, numpy, scipy; no network.
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf .whl && mkdir -p .whl .gpukit
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 --platform any)
for pkg in pymoo==0.6.2 moocore==0.3.2 cffi==2.0.0 pycparser==3.0 platformdirs==4.14.8 autograd==1.9.1 \
           alive-progress==3.3.0 about-time==4.2.1 graphemeu==0.7.2 Deprecated==1.3.1 cma==4.5.0 cmaes==0.13.1 \
           optuna==5.0.0 colorlog==6.12.0 SQLAlchemy==2.1.9 greenlet alembic==1.20.1 Mako==1.4.3 gguf==0.19.0 \
           hypothesis; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLAT[@]}" -d .whl "$pkg"
done
# a real tokenizer for the Llama-3-8B-shaped model: the embedded Gemma 3 model's (262k tokens)
python3 - <<'PY'
import gzip, shutil
from evolkv import models
_, location = models.resolve(None)
from pathlib import Path
src = Path(location) / "tokenizer.json"
with open(src, "rb") as f, gzip.open(".gpukit/tokenizer.json.gz", "wb") as g:
    shutil.copyfileobj(f, g)
for name in ("tokenizer_config.json", "special_tokens_map.json"):
    if (Path(location) / name).exists():
        shutil.copy(Path(location) / name, ".gpukit/" + name)
PY
du -sh .whl .gpukit
