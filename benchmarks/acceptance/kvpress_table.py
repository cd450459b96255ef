"""Table of kvpress_column.py's rows: kvpress's presses beside evolkv's own versions of them, per model, budget
and protocol (query-agnostic as kvpress's pipeline, query-aware as evolkv search's default).

    python3 benchmarks/acceptance/kvpress_table.py methods-out/kvpress*.json
"""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    rows = [row for path in paths for row in json.load(open(path))]
    keys = sorted({(r["model"], r.get("query_aware", False)) for r in rows})
    for model, aware in keys:
        print(f"\n{model}, {'query-aware' if aware else 'query-agnostic'}: held-out KL (EM)")
        mine = [r for r in rows if r["model"] == model and r.get("query_aware", False) == aware]
        budgets = sorted({r["budget"] for r in mine}, key=lambda b: float(b.rstrip("%")))
        print(f"{'method':<36}" + "".join(f"{b:>18}" for b in budgets))
        for press in dict.fromkeys(r["press"] for r in mine):
            cells = []
            for b in budgets:
                r = next((r for r in mine if r["press"] == press and r["budget"] == b), None)
                if r is None:
                    cells.append(f"{'':>18}")
                elif r["error"]:
                    cells.append(f"{'refused':>18}")
                else:
                    cells.append(f"{r['heldout_kl']:>10.4f} ({r['heldout_em']:.3f})")
            print(f"{press:<36}" + "".join(cells))
        for r in mine:
            if r["error"]:
                print(f"  {r['press']} at {r['budget']}: {r['error'][:140]}")


if __name__ == "__main__":
    main(sys.argv[1:])
