"""The acceptance matrix's verdict, cell by cell: was the shipped config the right pick on held-out data, and
did a searched config ship and beat every baseline?

For each run in the SQLite files under DIR (one run per file, as ``run.sh matrix`` writes them), on the held-out
split, per sample: the log ratio log(KL + 0.01) of each config the run scored there (every baseline, the configs
the validation mean would have shipped) against the shipped config's, with its 95% paired-bootstrap interval.

- **wrong pick**: another config the run evaluated is better than the shipped one beyond the interval (its
  interval of the ratio to the shipped config lies below 1);
- **searched win**: the shipped config is searched and beats the best baseline on held-out beyond the interval;
- **worse than the best baseline**: the shipped config loses to the best held-out baseline beyond the interval.

    python benchmarks/acceptance/picks.py DIR [--out picks.md] [--json picks.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from evolkv.evaluators.evaluator import LOG_KL_FLOOR
from evolkv.evaluators.paired import compare
from evolkv.store.store import Store


def _logs(metrics: dict | None) -> list[float] | None:
    values = (metrics or {}).get("per_sample")
    return [math.log(v + LOG_KL_FLOOR) for v in values] if values else None


def cell(path: Path) -> dict | None:
    store = Store(f"sqlite:///{path}", readonly=True)
    runs = store.runs(limit=1)
    if not runs or runs[0]["status"] != "finished":
        return {"cell": path.stem, "status": runs[0]["status"] if runs else "missing"}
    run = runs[0]
    detail = store.detail(run["id"])
    heldout = {}
    for row, _ in store.evaluations(run["id"]):
        if row.split == "heldout" and row.status == "ok" and row.label not in heldout:
            logs = _logs(row.metrics)
            if logs is not None:
                heldout[row.label] = (row.objective, logs)
    if "winner" not in heldout:
        return {"cell": path.stem, "status": "no held-out per-sample values"}
    source = (detail.get("winner") or {}).get("source") or "search"
    shipped = heldout["winner"][1]
    shipped_as = source if source != "search" else None
    others = {}
    for label, (kl, logs) in heldout.items():
        if label in ("winner", "baseline:full", shipped_as) or len(logs) != len(shipped):
            continue
        c = compare(logs, shipped)
        others[label] = {"kl": kl, "ratio": math.exp(c["gap"]), "low": math.exp(c["low"]),
                         "high": math.exp(c["high"])}
    better = sorted((label for label, o in others.items() if o["high"] < 1.0), key=lambda l: others[l]["ratio"])
    baselines = {label: o for label, o in others.items() if label.startswith("baseline:")}
    best_baseline = min(baselines, key=lambda l: baselines[l]["kl"]) if baselines else None
    vs_best = baselines.get(best_baseline) if best_baseline else None
    evidence = ((detail.get("winner") or {}).get("selection") or {}).get("selection_evidence") or {}
    arms = (detail.get("derived") or {}).get("arms") or {}
    return {
        "cell": path.stem, "status": "finished", "shipped": source, "heldout_kl": heldout["winner"][0],
        "samples": len(shipped), "best_baseline": best_baseline,
        "best_baseline_kl": vs_best["kl"] if vs_best else None,
        # the best baseline against the shipped config: ratio > 1 with low > 1 means the shipped one is better
        "baseline_ratio": vs_best and [round(vs_best["ratio"], 3), round(vs_best["low"], 3), round(vs_best["high"], 3)],
        "wrong_pick": bool(better), "better": better,
        "searched_win": source == "search" and vs_best is not None and vs_best["low"] > 1.0,
        "worse_than_best_baseline": vs_best is not None and vs_best["high"] < 1.0,
        "raced": bool(evidence.get("race")), "arms": arms.get("searched"), "continued": arms.get("continued"),
        "seconds": sum(stage["seconds"] for stage in (detail.get("timings") or {}).get("stages", [])),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    cells = [c for c in (cell(path) for path in sorted(args.dir.glob("*.db"))) if c]
    done = [c for c in cells if c["status"] == "finished"]
    lines = ["| cell | shipped | held-out KL | best baseline (KL) | its ratio to shipped [95%] | wrong pick | "
             "searched win | arms (continued) | raced | s |", "|---" * 10 + "|"]
    for c in cells:
        if c["status"] != "finished":
            lines.append(f"| {c['cell']} | {c['status']} |" + " |" * 8)
            continue
        ratio = c["baseline_ratio"]
        lines.append(
            f"| {c['cell']} | {c['shipped'].removeprefix('baseline:')} | {c['heldout_kl']:.4f} | "
            f"{(c['best_baseline'] or '-').removeprefix('baseline:')} ({c['best_baseline_kl'] or float('nan'):.4f}) | "
            + (f"{ratio[0]:.3f} [{ratio[1]:.3f}, {ratio[2]:.3f}]" if ratio else "-")
            + f" | {'**yes**: ' + ', '.join(c['better']) if c['wrong_pick'] else 'no'} | "
            f"{'yes' if c['searched_win'] else 'no'} | {', '.join(c['arms'] or [])} ({c['continued'] or '-'}) | "
            f"{'yes' if c['raced'] else 'no'} | {c['seconds']:.0f} |")
    wrong = sum(c["wrong_pick"] for c in done)
    wins = sum(c["searched_win"] for c in done)
    worse = sum(c["worse_than_best_baseline"] for c in done)
    searched = sum(c["shipped"] == "search" for c in done)
    lines += ["", f"{len(done)} cells finished of {len(cells)}: wrong picks {wrong}; a searched config shipped in "
                  f"{searched} and beat the best held-out baseline beyond the paired interval in {wins}; the shipped "
                  f"config lost to the best baseline beyond the interval in {worse}."]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(cells, indent=1))


if __name__ == "__main__":
    main()
