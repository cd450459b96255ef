"""Tables of the suites' acceptance from the JSON that run.sh's ``accept`` and ``explore`` steps
leave in their folders.

    python benchmarks/acceptance/accept_table.py accept NAME=FOLDER[,FOLDER...] ...
    python benchmarks/acceptance/accept_table.py explore FOLDER

accept: per model, suite and budget, held-out KL and the task metric (exact match on the RULER-style suite, edit
similarity on code) of the run's winner, its best search candidate, and the baselines uniform, pyramid, AdaKV and
KVzip, all on the same held-out samples.
"""

import json
import sys
from pathlib import Path

SHOWN = ("uniform", "pyramid", "adakv", "kvzip")


def load(path: Path):
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("winner") else None


def heldout(result: dict, metric: str) -> tuple[float, float]:
    return result["heldout"]["objective"], result.get("heldout/em", {}).get(metric, float("nan"))


def best_finalist(results: dict) -> float:
    """The best search candidate's validation KL (finalists are scored on validation only)."""
    found = [r["validation"]["objective"] for label, r in results.items()
             if label.startswith("finalist:") and r.get("validation")]
    return min(found) if found else float("nan")


def search_best(detail: dict) -> float:
    """The best KL on the search split of any candidate scored there (the baselines are in the first
    generation, so it can be a baseline's)."""
    told = [g["best_so_far"] for g in detail.get("generations", []) if g.get("best_so_far") is not None]
    return min(told) if told else float("nan")


def accept(specs: list[str]) -> None:
    print("| model | suite | budget | winner source | winner KL / metric | search split: best KL / uniform's | "
          "best candidate, validation KL | uniform, validation KL | full cache: metric | "
          + " | ".join(SHOWN) + " | beats uniform, pyramid, AdaKV on KL? | metric not worse? |")
    print("|---|---|---|---|---|---|---|---|---|" + "---|" * len(SHOWN) + "---|---|")
    for spec in specs:
        name, folders = spec.split("=", 1)
        runs = {}
        for folder in folders.split(","):
            for path in Path(folder).glob("accept-*.json"):
                if path.name.endswith(".cfg.json"):
                    continue
                detail = load(path)
                if detail:
                    _, suite, budget = path.stem.split("-")
                    runs[(suite, int(budget))] = detail
        for (suite, budget), detail in sorted(runs.items()):
            metric = "sim" if suite == "code" else "em"
            res = detail["results"]
            win_kl, win_m = heldout(res["winner"], metric)
            cand, told = best_finalist(res), search_best(detail)
            uni_val = res["baseline:uniform"].get("validation", {}).get("objective", float("nan"))
            uni_search = res["baseline:uniform"]["search"]["objective"]
            base = {b: heldout(res[f"baseline:{b}"], metric) for b in SHOWN if res.get(f"baseline:{b}", {}).get("heldout")}
            rivals = [base[b] for b in ("uniform", "pyramid", "adakv") if b in base]
            beats = all(win_kl < kl for kl, _ in rivals)
            fine = all(win_m >= m - 1e-9 for _, m in rivals)
            full = res.get("baseline:full", {}).get("heldout/em", {}).get(metric, float("nan"))
            cells = " | ".join(f"{base[b][0]:.4f} / {base[b][1]:.3f}" if b in base else "-" for b in SHOWN)
            print(f"| {name} | {suite} | {budget}% | {detail['winner']['source']} | {win_kl:.4f} / {win_m:.3f} | "
                  f"{told:.3f} / {uni_search:.3f} | {cand:.4f} | {uni_val:.4f} | {full:.3f} | {cells} | {'yes' if beats else 'no'} | {'yes' if fine else 'no'} |")


def explore(folder: str) -> None:
    print("| variant | seed | search split: best KL / uniform's | best candidate, validation KL | uniform, validation "
          "KL | winner source | winner held-out KL | uniform held-out KL | best baseline held-out | ships a searched config? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(Path(folder).glob("explore-*.json")):
        if path.name.endswith(".cfg.json"):
            continue
        detail = load(path)
        if not detail:
            continue
        _, variant, seed = path.stem.split("-")
        res = detail["results"]
        uni = res["baseline:uniform"]
        bases = {k: r["heldout"]["objective"] for k, r in res.items()
                 if k.startswith("baseline:") and k != "baseline:full" and r.get("heldout")}
        top = min(bases, key=bases.get)
        told, cand = search_best(detail), best_finalist(res)
        left = detail["winner"]["source"] == "search"
        print(f"| {variant} | {seed} | {told:.3f} / {uni['search']['objective']:.3f} | {cand:.4f} | {uni['validation']['objective']:.4f} | "
              f"{detail['winner']['source']} | {detail['winner']['heldout_objective']:.4f} | "
              f"{uni['heldout']['objective']:.4f} | {top[9:]} {bases[top]:.4f} | {'yes' if left else 'no'} |")


if __name__ == "__main__":
    {"accept": lambda: accept(sys.argv[2:]), "explore": lambda: explore(sys.argv[2])}[sys.argv[1]]()
