"""Per-sample KL of a stored run's exported winner against uniform at the same budget, on the run's own
validation and held-out samples (rebuilt from its stored settings), to see whether a mean gap is a few
outlying samples or a consistent one.

    python benchmarks/acceptance/per_sample_kl.py RUN.json WINNER.cfg.json [--device cpu] [--splits validation]

RUN.json: what `evolkv search --json` printed; WINNER.cfg.json: `evolkv export` of it. On the CPU the model runs
in float32 (the run's own dtype on its device otherwise); code samples come from the running Python's files, so
another Python version draws other files.
"""

import argparse
import json

import numpy as np

from evolkv.config import Budget, KVConfig, uniform_config
from evolkv.pools import make_executor
from evolkv.settings import SearchSettings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("config")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--splits", default="validation,heldout")
    args = parser.parse_args()
    run = json.load(open(args.run))
    stored = dict(run["settings"], device=args.device, pool=0, samples=1)
    if args.device == "cpu":
        stored["dtype"] = "float32"
    settings = SearchSettings(**stored)
    loaded, executor = make_executor(settings)
    winner = KVConfig.load(args.config)
    uniform = uniform_config(loaded.spec, Budget.parse(stored["budget"]))
    for split in args.splits.split(","):
        executor.prepare(split)
        values = executor.evaluator.score_samples([winner, uniform], executor.prepared(split)).values
        w, u = np.array(values[0]["kl"]), np.array(values[1]["kl"])
        print(f"{split}: winner mean {w.mean():.4f} median {np.median(w):.4f} | uniform mean {u.mean():.4f} "
              f"median {np.median(u):.4f} | winner lower on {(w < u).sum()} of {len(w)} samples")
        print("  winner ", np.round(w, 3).tolist())
        print("  uniform", np.round(u, 3).tolist())


if __name__ == "__main__":
    main()
