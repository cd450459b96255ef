"""Matplotlib figures of stored runs (drawn off-screen, written to a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evolkv.errors import EvolKVError


def plot_front(detail: dict[str, Any], out: str, split: str = "heldout") -> None:
    """The run's Pareto front (loss vs bits per KV element), its winner, and the baselines as points."""
    plt = _pyplot()
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
    _label(ax, "bits per KV element (scales, zero points, residual included)", f"{split} KL to the full cache",
           f"run {detail['id']}  {detail['model']}  ({detail.get('mode', '')})")
    _save(fig, plt, out)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(ax, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _save(fig, plt, out: str) -> None:
    fig.tight_layout()
    try:
        fig.savefig(Path(out))
    except (OSError, ValueError) as e:
        raise EvolKVError(f"cannot write plot {out}: {e}") from e
    finally:
        plt.close(fig)


def plot_budgets(detail: dict[str, Any], winner, references: dict[str, Any], out: str) -> None:
    """A token run's winner: its per-layer share of the budget beside uniform's and pyramid's (``references``:
    name -> KVConfig at the same budget), and, when its budgets are per KV head, a layers x heads heatmap."""
    import numpy as np

    plt = _pyplot()
    per_head = all(layer.heads is not None for layer in winner.layers) and winner.model.num_kv_heads > 1
    fig, axes = plt.subplots(1, 2 if per_head else 1, figsize=(11 if per_head else 6.4, 4.4), dpi=120,
                             squeeze=False)
    ax = axes[0][0]
    layers = np.arange(winner.model.num_layers)
    mean = winner.budget.value
    source = (detail.get("winner") or {}).get("source", "search")
    name = "winner" if source == "search" else f"winner (= {source.removeprefix('baseline:')})"
    ax.bar(layers, [layer.budget / mean for layer in winner.layers], color="tab:blue", alpha=0.75, label=name)
    for (label, cfg), style in zip(references.items(), ("k--", "g:", "m-.")):
        ax.plot(layers, [layer.budget / mean for layer in cfg.layers], style, linewidth=1.5, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the budget (1 = the mean)")
    ax.set_title(f"run {detail['id']}  {detail['model']}  budget {detail['budget']}")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    if per_head:
        heat = np.array([[layer.budget / mean * share * winner.model.num_kv_heads for share in layer.heads]
                         for layer in winner.layers])
        ax = axes[0][1]
        image = ax.imshow(heat.T, aspect="auto", cmap="viridis", origin="lower")
        ax.set_xlabel("layer")
        ax.set_ylabel("KV head")
        ax.set_yticks(range(winner.model.num_kv_heads))
        ax.set_title("tokens per KV head (1 = the mean)")
        fig.colorbar(image, ax=ax)
    _save(fig, plt, out)


def plot_curve(model: str, points: list[dict[str, Any]], out: str, split: str = "heldout") -> None:
    """Held-out KL against budget for a model's stored token runs: every winner (a point per run, the line
    through the means per budget) and every baseline the runs scored."""
    from collections import defaultdict

    plt = _pyplot()
    series: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for point in points:
        for name, value in point["values"].items():
            if value is not None:
                series[name][point["budget"]].append(value)
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name in sorted(series, key=lambda n: (n != "winner", n)):
        budgets = sorted(series[name])
        means = [sum(series[name][b]) / len(series[name][b]) for b in budgets]
        style = {"winner": dict(color="tab:red", linewidth=2.2, marker="*", markersize=10)}.get(
            name, dict(linewidth=1.2, marker="o", markersize=4))
        ax.plot([100 * b for b in budgets], means, label=name, **style)
        if name == "winner":
            xs = [100 * b for b in budgets for _ in series[name][b]]
            ax.plot(xs, [v for b in budgets for v in series[name][b]], ".", color="tab:red", alpha=0.4)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _label(ax, "budget (% of the context's KV entries)", f"{split} KL to the full cache (mean over runs)",
           f"{model}: {len(points)} token runs")
    _save(fig, plt, out)
