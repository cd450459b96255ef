"""The acceptance matrix's verdict, cell by cell: was the shipped config the right pick on held-out data, and
did a searched config ship and beat every baseline?

For each run under DIR (one run per SQLite file, as ``run.sh matrix`` writes them; where a cell's database did not
come back, its ``search --json`` output, which holds the same per-sample values), on the held-out split, per sample: the log ratio log(KL + 0.01) of each config the run scored there (every baseline, the configs
the validation mean would have shipped) against the shipped config's, with its 95% paired-bootstrap interval.

- **wrong pick**: another config the run evaluated is better than the shipped one beyond the interval (its
  interval of the ratio to the shipped config lies below 1);
- **searched win**: the shipped config is searched and beats the best baseline on held-out beyond the interval;
- **worse than the best baseline**: the shipped config loses to the best held-out baseline beyond the interval.

With ``--rechoose``, each cell's winner is chosen again from its stored validation (and race) values by this
tree's ``choose_paired``, and that pick is judged instead (a cell whose new pick was not scored on held-out
says so): how a change of the choice's rule would have decided the same runs, on the same samples.

    python benchmarks/acceptance/picks.py DIR [--out picks.md] [--json picks.json] [--rechoose]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from evolkv.evaluators.evaluator import LOG_KL_FLOOR, Score
from evolkv.evaluators.paired import compare
from evolkv.search.selection import choose_paired, pooled
from evolkv.store.store import Store


def _logs(metrics: dict | None) -> list[float] | None:
    values = (metrics or {}).get("per_sample")
    return [math.log(v + LOG_KL_FLOOR) for v in values] if values else None


def _read(path: Path) -> tuple[dict | None, dict]:
    """A cell's run (``store.detail``; None where it did not finish) and each label's held-out (KL, log values)."""
    if path.suffix == ".json":
        detail = json.loads(path.read_text())
        if detail.get("status") != "finished":
            return None, {"status": detail.get("status", "missing")}
        heldout = {label: (res["heldout"]["objective"], _logs(res["heldout"]))
                   for label, res in (detail.get("results") or {}).items() if "heldout" in res}
        return detail, {label: value for label, value in heldout.items() if value[1] is not None}
    store = Store(f"sqlite:///{path}", readonly=True)
    runs = store.runs(limit=1)
    if not runs or runs[0]["status"] != "finished":
        return None, {"status": runs[0]["status"] if runs else "missing"}
    detail = store.detail(runs[0]["id"])
    heldout = {}
    for row, _ in store.evaluations(runs[0]["id"]):
        if row.split == "heldout" and row.status == "ok" and row.label not in heldout:
            logs = _logs(row.metrics)
            if logs is not None:
                heldout[row.label] = (row.objective, logs)
    return detail, heldout


def _rechoose(detail: dict) -> str | None:
    """The label this tree's ``choose_paired`` picks from the run's stored validation and race values (None for a
    run without them)."""
    results = detail.get("results") or {}
    scores = {split: {label: Score(res[split]["objective"], res[split]) for label, res in results.items()
                      if split in res and res[split].get("per_sample") and label != "winner"}
              for split in ("search", "validation", "race")}
    validation = {label: score for label, score in scores["validation"].items() if label != "baseline:full"}
    if "baseline:uniform" not in validation:
        return None
    search = {label: score for label, score in scores["search"].items() if label.startswith("baseline:")}
    chosen, _ = choose_paired(validation, search, LOG_KL_FLOOR)
    raced = {label: pooled(validation[label], scores["race"][label]) for label in scores["race"] if label in validation}
    if raced and "baseline:uniform" in raced:
        chosen, _ = choose_paired(raced, search, LOG_KL_FLOOR)
    return chosen


def cell(path: Path, rechoose: bool = False) -> dict | None:
    detail, heldout = _read(path)
    if detail is None:
        return {"cell": path.stem, "status": heldout["status"]}
    if rechoose:
        label = _rechoose(detail)
        source = (detail.get("winner") or {}).get("source") or "search"
        was = source if source != "search" else None
        results = detail.get("results") or {}
        same = label == was or (was is None and label is not None and (results.get(label) or {}).get(
            "validation", {}).get("per_sample") == (results.get("winner") or {}).get("validation", {}).get("per_sample"))
        if label is None or (not same and label not in heldout):
            return {"cell": path.stem, "status": f"rechosen {label or '-'}: not scored on held-out"}
        if not same:  # the new pick is judged as the shipped one, the old shipped one as another contender
            heldout = {**heldout, "winner": heldout[label], f"shipped:{was or 'search'}": heldout["winner"]}
            heldout.pop(label)
            detail = {**detail, "winner": {**detail["winner"], "source": label if label.startswith("baseline:")
                                           else "search"}}
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
    parser.add_argument("--rechoose", action="store_true", help="judge the pick this tree's choice makes from "
                        "the stored validation and race values")
    args = parser.parse_args()
    paths = sorted(args.dir.glob("*.db"))
    paths += [path for path in args.dir.glob("matrix-*.json")  # a search's own JSON, not its exported config
              if path.name.count(".") == 1 and not path.with_suffix(".db").exists()]
    cells = [c for c in (cell(path, args.rechoose) for path in sorted(paths, key=lambda path: path.stem)) if c]
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
