"""Tables of the acceptance from the JSON that benchmarks/acceptance/run.sh leaves in a folder.

    python benchmarks/acceptance/summarize.py acc-out [search-prefix ...]
"""

import json
import statistics
import sys
from pathlib import Path

from evolkv.allocation import within_bits
from evolkv.search.objectives import SMOOTHING

BASELINES = ("uniform", "pyramid", "adakv", "streaming")


def load(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def spread(values):
    return statistics.stdev(values) if len(values) > 1 else 0.0


def worst(results: dict, label: str) -> float:
    """The held-out worst-task KL ratio to uniform, smoothed as the search smooths it."""
    ref, got = results["baseline:uniform"]["heldout"], results[label]["heldout"]
    eps = max(SMOOTHING * ref["objective"], 1e-6)
    return max((got[k] + eps) / (ref[k] + eps) for k in ref if k.endswith("/kl"))


def main(folder: str, prefixes=("search",)) -> None:
    out = Path(folder)
    print((out / "settings.txt").read_text().strip() if (out / "settings.txt").exists() else "")
    for prefix in prefixes:
        searches(out, prefix)
    rest(out)
    for mode in ("quant", "joint"):
        fronts(out, mode)


def fronts(out: Path, mode: str) -> None:
    """Precision fronts: the winner at or under the target bits against every uniform precision there."""
    paths = sorted(p for p in out.glob(f"{mode}-*.json") if not p.name.endswith(".cfg.json"))
    if not paths:
        return
    print(f"\n## {mode}: winner vs every baseline at or under the target bits (the uniform precisions; joint: also "
          "the token allocations at the budget), held-out mean KL (bits)")
    print("| seed | target | winner source | winner | best baseline | others | better? | not worse? |")
    print("|---|---|---|---|---|---|---|---|")
    wins = fine = total = 0
    for path in paths:
        detail = load(path)
        if not detail or not detail.get("winner"):
            print(f"| {path.stem} | failed |")
            continue
        target = detail["settings"]["target_bits"]
        results = detail["results"]
        win = results["winner"]["heldout"]
        under = {label.removeprefix("baseline:"): r["heldout"] for label, r in results.items()
                 if label.startswith("baseline:") and label != "baseline:full" and "heldout" in r
                 and within_bits(r["heldout"].get("bits", 99), target)}
        best = min(under, key=lambda n: under[n]["objective"])
        total += 1
        better = win["objective"] < under[best]["objective"]
        wins += better
        fine += win["objective"] <= under[best]["objective"]
        others = ", ".join(f"{n} {r['objective']:.4f} ({r.get('bits', 0):.2f})" for n, r in under.items() if n != best)
        print(f"| {path.stem.split('-')[-1]} | {target:g} | {detail['winner']['source']} | {win['objective']:.4f} "
              f"({win.get('bits', 0):.2f}) | {best} {under[best]['objective']:.4f} ({under[best].get('bits', 0):.2f}) "
              f"| {others} | {'yes' if better else 'no'} | {'yes' if win['objective'] <= under[best]['objective'] else 'NO'} |")
    print(f"\nwinner better than the best baseline under the target in {wins} of {total} runs, "
          f"not worse in {fine} of {total}")


def searches(out: Path, prefix: str) -> None:
    print(f"\n## {prefix}: winner vs the best baseline, held-out mean KL [worst-task ratio to uniform, smoothed by {SMOOTHING:.0%} of its mean]")
    print("| budget | seed | winner source | winner | uniform | pyramid | adakv | streaming | best baseline | better? |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    wins = total = 0
    by_budget: dict[str, dict[str, list[float]]] = {}
    for path in sorted(out.glob(f"{prefix}-*.json"), key=lambda p: (float(p.stem.split("-")[1]), p.stem)):
        if path.name.endswith(".cfg.json"):
            continue
        detail = load(path)
        if not detail or not detail.get("winner"):
            print(f"| {path.stem} | failed |")
            continue
        _, budget, seed = path.stem.split("-")
        results = detail["results"]
        held = {label.removeprefix("baseline:"): r["heldout"]["objective"] for label, r in results.items()
                if "heldout" in r and not label.startswith("finalist:")}
        best_name = min(BASELINES, key=lambda n: held.get(n, float("inf")))
        better = held["winner"] < held[best_name]
        wins += better
        total += 1
        row = by_budget.setdefault(budget, {"winner": [], **{n: [] for n in BASELINES}})
        for name in ("winner", *BASELINES):
            row[name].append(held[name])
        print(f"| {budget}% | {seed} | {detail['winner']['source']} | {held['winner']:.4f} "
              f"[{worst(results, 'winner'):.2f}] | "
              + " | ".join(f"{held[n]:.4f} [{worst(results, 'baseline:' + n):.2f}]" for n in BASELINES)
              + f" | {best_name} | {'yes' if better else 'no'} |")
    print(f"\nwinner better than the best baseline on held-out KL in {wins} of {total} runs")
    print("\n## Mean over seeds (spread = standard deviation over seeds)")
    print("| budget | winner | uniform | pyramid | adakv | streaming | winner - best baseline mean | spread | within spread? |")
    print("|---|---|---|---|---|---|---|---|---|")
    for budget, row in sorted(by_budget.items(), key=lambda kv: float(kv[0])):
        means = {k: statistics.mean(v) for k, v in row.items()}
        best = min(BASELINES, key=lambda n: means[n])
        diff, sd = means["winner"] - means[best], max(spread(row["winner"]), spread(row[best]))
        print(f"| {budget}% | " + " | ".join(f"{means[k]:.4f}" for k in ("winner", *BASELINES))
              + f" | {diff:+.4f} ({best}) | {sd:.4f} | {'yes' if diff <= sd else 'NO'} |")


def rest(out: Path) -> None:
    transfer = sorted(out.glob("transfer-*.eval.json"))
    if transfer:
        print("\n## Leave one task kind out (search at 10% on the others; held-out KL on the kind left out)")
        print("| left out | seed | winner | uniform | pyramid | adakv | winner / uniform |")
        print("|---|---|---|---|---|---|---|")
        kinds: dict[str, list[tuple[float, float]]] = {}
        for path in transfer:
            tag = path.name.removesuffix(".eval.json")
            _, kind, seed = tag.split("-")
            got = load(path)
            bases = {n: load(out / f"{tag}.{n}.json") for n in ("uniform", "pyramid", "adakv")}
            if not got or not all(bases.values()):
                print(f"| {kind} | {seed} | failed |")
                continue
            kinds.setdefault(kind, []).append((got["kl"], bases["uniform"]["kl"]))
            print(f"| {kind} | {seed} | {got['kl']:.4f} | " + " | ".join(f"{bases[n]['kl']:.4f}" for n in bases)
                  + f" | {got['kl'] / bases['uniform']['kl']:.2f} |")
        print("\n| left out | winner mean | uniform mean | difference | spread | within spread? |")
        print("|---|---|---|---|---|---|")
        for kind, pairs in kinds.items():
            w, u = [p[0] for p in pairs], [p[1] for p in pairs]
            diff, sd = statistics.mean(w) - statistics.mean(u), spread(w)
            print(f"| {kind} | {statistics.mean(w):.4f} | {statistics.mean(u):.4f} | {diff:+.4f} | {sd:.4f} | "
                  f"{'yes' if diff <= sd else 'NO'} |")
    jsonl = sorted(out.glob("jsonl-winner-*.json"))
    if jsonl:
        print("\n## A JSONL task kept out of tuning (order look-ups in stdlib docstrings), 10%, held-out KL / EM")
        for path in jsonl:
            got = load(path)
            if got:
                print(f"- winner seed {path.stem.rsplit('-', 1)[1]}: KL {got['kl']:.4f}, EM {got.get('em', 0):.3f}")
        for name in BASELINES:
            got = load(out / f"jsonl-{name}.json")
            if got:
                print(f"- {name}: KL {got['kl']:.4f}, EM {got.get('em', 0):.3f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "acc-out", sys.argv[2:] or ("search",))
