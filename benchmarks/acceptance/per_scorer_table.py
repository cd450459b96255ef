"""Table of benchmarks/acceptance/per_scorer.sh: per scorer and budget, the searched allocation (winner) against
the same scorer's uniform budgets on held-out KL and exact match.

    python3 benchmarks/acceptance/per_scorer_table.py scorers-out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _held(detail: dict, label: str) -> tuple[float | None, float | None]:
    splits = detail["results"].get(label) or {}
    return (splits.get("heldout") or {}).get("objective"), (splits.get("heldout/em") or {}).get("em")


def main(out: str) -> None:
    rows = []
    for path in Path(out).glob("*.json"):
        if not path.stat().st_size:
            continue
        detail = json.loads(path.read_text())
        scorer, budget = path.stem.rsplit("-", 1)
        winner = detail.get("winner") or {}
        kl, em = _held(detail, "winner")
        ukl, uem = _held(detail, "baseline:uniform")
        rows.append((int(budget), scorer, kl, em, ukl, uem, winner.get("source", "search")))
    print(f"{'budget':>6} {'scorer':<20} {'searched KL':>11} {'EM':>5} {'uniform KL':>10} {'EM':>5}  "
          f"{'searched/uniform':>16}  winner from")
    for budget, scorer, kl, em, ukl, uem, source in sorted(rows, key=lambda r: (r[0], r[2] or 1e9)):
        ratio = f"{kl / ukl:16.2f}" if kl is not None and ukl else f"{'':>16}"
        fmt = lambda v, w, p: f"{v:>{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{budget:>5}% {scorer:<20} {fmt(kl, 11, 4)} {fmt(em, 5, 3)} {fmt(ukl, 10, 4)} {fmt(uem, 5, 3)}  "
              f"{ratio}  {source}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "scorers-out")
