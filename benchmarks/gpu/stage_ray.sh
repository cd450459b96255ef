#!/usr/bin/env bash
# Run HERE (a machine with package indexes): stage Ray for the GPU machine in .raywhl/ (ignored by git).
# The ray wheel is 79 MB and one call to the GPU machine carries 64 MiB in all, so the wheel is repacked
# without what a Python-only local cluster never loads: the Java jars (31 MB), and the rllib, data, serve,
# llm, tune and train libraries and the dashboard's web client. The result (~41 MB) travels with .whl and
# .gpukit in one call: carry [".whl", ".gpukit", ".raywhl"]; benchmarks/gpu/run.sh installs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
RAY=${RAY_VERSION:-2.60.0}
rm -rf .raywhl && mkdir -p .raywhl /tmp/raystage
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d /tmp/raystage "ray==$RAY" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 \
    rpds-py==2026.9.1
cp /tmp/raystage/{jsonschema,referencing,rpds}*.whl .raywhl/
python3 - "$RAY" <<'PY'
import glob, sys, zipfile
src = glob.glob(f"/tmp/raystage/ray-{sys.argv[1]}-*.whl")[0]
dst = ".raywhl/" + src.rsplit("/", 1)[1]
drop = ("ray/jars/", "ray/rllib/", "ray/data/", "ray/serve/", "ray/llm/", "ray/tune/", "ray/train/",
        "ray/dashboard/client/")
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
    for item in zin.infolist():
        if item.filename.startswith(drop):
            continue
        data = zin.read(item)
        if item.filename.endswith(".dist-info/RECORD"):  # keep RECORD true to the files that remain
            lines = data.decode().splitlines()
            data = ("\n".join(l for l in lines if not l.startswith(drop)) + "\n").encode()
        zout.writestr(item, data, compress_type=zipfile.ZIP_DEFLATED)
PY
du -sh .raywhl .whl .gpukit 2>/dev/null
