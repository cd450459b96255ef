"""Tables of benchmarks/acceptance/methods.sh: per model and budget, every config's held-out KL and exact
match (winner, each scorer's uniform, the allocations), best first.

    python3 benchmarks/acceptance/methods_table.py methods-out
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: str) -> None:
    for path in sorted(Path(out).glob("*.json")):
        if not path.stat().st_size:  # a search still running
            continue
        detail = json.loads(path.read_text())
        if not isinstance(detail, dict) or "results" not in detail:  # kvpress_column.py's rows, not a search
            continue
        rows = []
        for label, splits in detail["results"].items():
            held = splits.get("heldout") or {}
            if label == "baseline:full" or held.get("objective") is None:
                continue
            rows.append((held["objective"], label.removeprefix("baseline:"), (splits.get("heldout/em") or {}).get("em"),
                         (splits.get("search") or {}).get("objective")))
        rows.sort()
        winner = detail.get("winner") or {}
        print(f"\n{path.stem}: run {detail['id']}, winner from {winner.get('source', 'search')}; "
              f"{len(rows)} configs, held-out KL (lower is better)")
        print(f"{'config':<28} {'held-out KL':>12} {'held-out EM':>12} {'search KL':>10}")
        for kl, label, em, search in rows:
            print(f"{label:<28} {kl:>12.4f} {em if em is not None else float('nan'):>12.3f} "
                  f"{search if search is not None else float('nan'):>10.4f}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "methods-out")
