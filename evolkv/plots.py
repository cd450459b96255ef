"""Matplotlib figures of stored runs (drawn off-screen, written to a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkv.errors import EvolKVError


def plot_front(detail: dict[str, Any], out: str, split: str = "heldout") -> None:
    """The run's Pareto front (loss vs bits per KV element), its winner, and the baselines as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "heldout_objective" if split == "heldout" else "objective"
    front = [p for p in detail["front"] if p[key] is not None]
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    ax.plot([p["bits"] for p in front], [p[key] for p in front], "o-", color="tab:blue", label="searched front")
    for p in front:
        if p["winner"]:
            ax.plot(p["bits"], p[key], "*", markersize=16, color="tab:red", label="winner", zorder=5)
    points: dict[tuple[float, float], list[str]] = {}  # baselines at one spot share one label
    for label, splits in sorted(detail["results"].items()):
        if not label.startswith("baseline:") or split not in splits:
            continue
        result = splits[split]
        if result.get("objective") is None or result.get("bits") is None:
            continue
        spot = (round(result["bits"], 3), round(max(result["objective"], 1e-6), 7))
        points.setdefault(spot, []).append(label.removeprefix("baseline:"))
    for (bits, loss), names in points.items():
        ax.plot(bits, loss, "s", color="tab:gray")
        ax.annotate("/".join(names), (bits, loss), textcoords="offset points", xytext=(4, 4), fontsize=8)
    target = (detail.get("settings") or {}).get("target_bits")
    if target:
        ax.axvline(target, color="tab:red", linestyle=":", linewidth=1, label=f"target {target:g} bits")
    ax.set_yscale("log")
    ax.set_xlabel("bits per KV element (scales, zero points, residual included)")
    ax.set_ylabel(f"{split} KL to the full cache")
    ax.set_title(f"run {detail['id']}  {detail['model']}  ({detail.get('mode', '')})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        fig.savefig(Path(out))
    except (OSError, ValueError) as e:
        raise EvolKVError(f"cannot write plot {out}: {e}") from e
    finally:
        plt.close(fig)
