"""``evolkv report RUN --out run.html``: one self-contained HTML page about a run, to look at or hand to a
colleague. No script and no network at view time: inline CSS, charts as inline SVG. Sections (each an element
with the id in ``SECTIONS``): the winner against every baseline (a chart and the table), the allocation per layer
and KV head, quality against budget for the model's stored runs, the per-task breakdown, where the time went,
and the settings with the command that reruns the search. Its numbers are those of ``runs show --json``.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

SECTIONS = ("summary", "winner-vs-baselines", "allocation", "quality-vs-budget", "per-task", "timings", "settings")
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf")
STYLE = """
body { font-family: system-ui, -apple-system, Segoe UI, sans-serif; margin: 2rem auto; max-width: 1100px;
       color: #222; padding: 0 1rem; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.15rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.6rem 0; font-size: 0.88rem; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.55rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f4f4f4; } tr.winner td { font-weight: 600; background: #eef5ff; }
.note { color: #555; font-size: 0.9rem; } code, pre { background: #f6f6f6; padding: 0.1rem 0.3rem; }
pre { padding: 0.6rem; overflow-x: auto; font-size: 0.82rem; }
svg text { font-size: 11px; fill: #333; }
"""


def _how_chosen(detail: dict) -> list[str]:
    """The lines that say how the winner came about: the arms searched, a raced close call, the choice's reason."""
    lines = []
    arms = (detail.get("derived") or {}).get("arms")
    if arms:
        from evolkv.report import continued

        lines.append(f"Arms searched (scorer and rule): {', '.join(arms['searched'])}; {continued(arms)}.")
    evidence = ((detail.get("winner") or {}).get("selection") or {}).get("selection_evidence") or {}
    race = evidence.get("race")
    if race:
        lines.append(f"Close call raced on {race['samples']} more validation samples: "
                     f"{', '.join(label.removeprefix('baseline:') for label in race['configs'])}.")
    if evidence.get("reason"):
        lines.append(evidence["reason"])
    return lines


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"
    return html.escape(str(value))


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(f"<tr class=\"{(classes or [''] * len(rows))[i]}\">" + "".join(f"<td>{c}</td>" for c in row)
                   + "</tr>" for i, row in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def bars_svg(items: list[tuple[str, float]], width: int = 640, highlight: str | None = None) -> str:
    """A horizontal bar chart of (label, value), values >= 0."""
    items = [(label, value) for label, value in items if value is not None and math.isfinite(value)]
    if not items:
        return ""
    top = max(value for _, value in items) or 1.0
    row, left = 20, 170
    height = row * len(items) + 10
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    for i, (label, value) in enumerate(items):
        y = 5 + i * row
        span = (width - left - 80) * value / top
        color = COLORS[0] if label == highlight else "#9bb8d3"
        parts.append(f'<text x="{left - 6}" y="{y + 13}" text-anchor="end">{html.escape(label)}</text>'
                     f'<rect x="{left}" y="{y + 2}" width="{span:.1f}" height="{row - 6}" fill="{color}"/>'
                     f'<text x="{left + span + 4:.1f}" y="{y + 13}">{value:.4f}</text>')
    parts.append("</svg>")
    return "".join(parts)


def lines_svg(series: dict[str, list[tuple[float, float]]], x_label: str, y_label: str, width: int = 640,
              height: int = 300) -> str:
    """Lines through (x, y) points per series, with a legend."""
    points = [p for pts in series.values() for p in pts if p[1] is not None and math.isfinite(p[1])]
    if not points:
        return ""
    x_lo, x_hi = min(p[0] for p in points), max(p[0] for p in points)
    y_lo, y_hi = 0.0, max(p[1] for p in points) or 1.0
    x_hi = x_hi if x_hi > x_lo else x_lo + 1
    left, right, top, bottom = 55, 150, 24, 35

    def xy(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x_lo) / (x_hi - x_lo) * (width - left - right),
                height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom))

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">',
             f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#888"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#888"/>',
             f'<text x="{(width - right + left) / 2}" y="{height - 5}" text-anchor="middle">{x_label}</text>',
             f'<text x="{left}" y="12">{y_label}</text>',
             f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{y_hi:.3g}</text>',
             f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">0</text>']
    for x in sorted({p[0] for p in points}):
        px, _ = xy(x, 0)
        parts.append(f'<text x="{px:.1f}" y="{height - bottom + 14}" text-anchor="middle">{x:g}%</text>')
    for i, (name, pts) in enumerate(series.items()):
        color = COLORS[i % len(COLORS)]
        pts = sorted((x, y) for x, y in pts if y is not None and math.isfinite(y))
        if not pts:
            continue
        path = " ".join(f"{'M' if j == 0 else 'L'}{xy(x, y)[0]:.1f},{xy(x, y)[1]:.1f}" for j, (x, y) in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="{2.5 if i == 0 else 1.3}"/>')
        parts += [f'<circle cx="{xy(x, y)[0]:.1f}" cy="{xy(x, y)[1]:.1f}" r="3" fill="{color}"/>' for x, y in pts]
        ly = top + 14 * i + 8
        parts.append(f'<rect x="{width - right + 10}" y="{ly - 8}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{width - right + 24}" y="{ly + 1}">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def heatmap(rows: list[list[float]], row_label: str = "layer") -> str:
    """A layers x KV heads table whose cells are shaded by value (1 = the mean)."""
    top = max((v for r in rows for v in r), default=1.0) or 1.0
    header = [row_label] + [f"head {h}" for h in range(len(rows[0]) if rows else 0)]
    body = []
    for i, r in enumerate(rows):
        cells = []
        for v in r:
            shade = int(235 - 150 * v / top)
            cells.append(f'<span style="display:block;background:rgb({shade},{shade + 10},255)">{v:.2f}</span>')
        body.append([str(i), *cells])
    return _table(header, body)


def rerun_command(detail: dict[str, Any]) -> str:
    """The ``evolkv search`` command line that reruns the run: every stored setting that differs from the
    default."""
    from evolkv.settings import SearchSettings

    stored = SearchSettings.stored(detail.get("settings") or {}).to_dict()
    default = SearchSettings().to_dict()
    args = ["evolkv", "search"]
    precision_only = {"target_bits", "group_size", "residual", "evicted_bits", "clusters", "probe_samples"}
    for key, value in stored.items():
        if value == default.get(key) or (stored["mode"] == "tokens" and key in precision_only):
            continue
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if key == "query_aware":
                args.append("--query-aware" if value else "--query-agnostic")
            elif value:
                args.append(flag)
            continue
        if isinstance(value, list):
            value = ",".join(str(v) for v in value)
        if value is None:
            continue
        args += [flag, str(value)]
    return " ".join(args)


def render(detail: dict[str, Any], winner=None, references: dict[str, Any] | None = None,
           curve: list[dict[str, Any]] | None = None) -> str:
    """The page for ``detail`` (``Store.detail``); ``winner`` the winning KVConfig, ``references`` name ->
    KVConfig at the same budget (uniform, pyramid), ``curve`` the model's finished token runs as
    {"budget": fraction, "values": {config name: held-out objective}}."""
    esc = html.escape
    results = detail.get("results") or {}
    win = detail.get("winner") or {}
    source = win.get("source", "search")
    settings = detail.get("settings") or {}
    objective = settings.get("objective", "kl").upper() if settings.get("objective", "kl") != "task" else "task loss"
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">",
           f"<title>evolkv run {esc(detail['id'])}</title><style>{STYLE}</style></head><body>"]
    # -- summary
    heldout = win.get("heldout_objective")
    uniform = ((results.get("baseline:uniform") or {}).get("heldout") or {}).get("objective")
    shipped = "a searched config" if source == "search" else f"the {source.removeprefix('baseline:')} baseline"
    out.append(f'<section id="summary"><h1>evolkv run {esc(detail["id"])}</h1>'
               f'<p>{esc(detail["model"])}, budget {esc(detail["budget"])}, {esc(detail["mode"])} mode, '
               f'{esc(detail["optimizer"])}, status <b>{esc(detail["status"])}</b>, created '
               f'{esc(str(detail.get("created_at") or "")[:19])}.</p>'
               f'<p>The run ships {shipped}: held-out {objective} <b>{_fmt(heldout)}</b> against uniform\'s '
               f'{_fmt(uniform)} (lower is better).</p>'
               + "".join(f'<p class="note">{esc(line)}</p>' for line in _how_chosen(detail)) + '</section>')
    # -- winner vs baselines
    ordered = sorted(results.items(), key=lambda kv: (kv[0] != "winner", kv[0].startswith("finalist:"), kv[0]))
    rows, classes, chart = [], [], []
    for label, splits in ordered:
        get = lambda split: (splits.get(split) or {}).get("objective")  # noqa: E731
        em = splits.get("heldout/em") or {}
        name = label if label != "winner" or source == "search" else f"winner (= {source.removeprefix('baseline:')})"
        rows.append([esc(name), _fmt(get("search")), _fmt(get("validation")), _fmt(get("heldout")),
                     _fmt(em.get("em"), 3), _fmt(em.get("sim"), 3)])
        classes.append("winner" if label == "winner" else "")
        if get("heldout") is not None and not label.startswith("finalist:"):
            chart.append((name, get("heldout")))
    out.append('<section id="winner-vs-baselines"><h2>The winner against every baseline</h2>'
               f'<p class="note">Held-out {objective} (the split nothing was fitted or chosen on), lower is '
               'better.</p>' + bars_svg(chart, highlight=chart[0][0] if chart else None)
               + _table(["config", f"search {objective}", f"validation {objective}", f"held-out {objective}",
                         "held-out EM", "held-out edit sim."], rows, classes) + "</section>")
    # -- allocation
    section = ['<section id="allocation"><h2>Allocation per layer and KV head</h2>']
    if winner is not None and winner.layers:
        mean = winner.budget.value or 1.0
        series = {"winner": [(i, layer.budget / mean) for i, layer in enumerate(winner.layers)]}
        for name, cfg in (references or {}).items():
            series[name] = [(i, layer.budget / mean) for i, layer in enumerate(cfg.layers)]
        section.append('<p class="note">Each layer\'s budget as a share of the mean (1 = uniform).</p>')
        section.append(_layers_svg(series))
        heads = winner.model.num_kv_heads
        if all(layer.heads is not None for layer in winner.layers) and heads > 1:
            section.append('<p class="note">Tokens per KV head (1 = the mean over all layers and heads).</p>')
            section.append(heatmap([[layer.budget / mean * share * heads for share in layer.heads]
                                    for layer in winner.layers]))
        precisions = {layer.precision for layer in winner.layers}
        if precisions != {"K16V16"}:
            section.append("<p>Precisions per layer: " + esc(", ".join(layer.precision for layer in winner.layers))
                           + "</p>")
        if winner.allocation:
            section.append(f"<p>Allocation rule per prompt: <code>{esc(winner.allocation)}</code></p>")
    else:
        section.append("<p>No winner stored.</p>")
    out.append("".join(section) + "</section>")
    # -- quality vs budget
    section = ['<section id="quality-vs-budget"><h2>Quality against budget for this model</h2>']
    if curve:
        names = ["winner", *sorted({n for p in curve for n in p["values"]} - {"winner"})]
        series = {n: [(p["budget"] * 100, p["values"].get(n)) for p in curve] for n in names}
        section.append(f'<p class="note">Held-out {objective} of every finished token run of {esc(detail["model"])}'
                       ' (a point per run).</p>' + lines_svg(series, "budget", f"held-out {objective}"))
        section.append(_table(["budget", *names], [[f"{p['budget'] * 100:g}%", *(_fmt(p["values"].get(n))
                                                                                 for n in names)]
                                                   for p in sorted(curve, key=lambda p: p["budget"])]))
    else:
        section.append("<p>No finished token run with a percentage budget of this model.</p>")
    out.append("".join(section) + "</section>")
    # -- per task
    tasks = sorted({key.removesuffix("/kl") for _, splits in ordered for key in (splits.get("heldout") or {})
                    if key.endswith("/kl")})
    rows = [[esc(label), *(_fmt((splits.get("heldout") or {}).get(f"{t}/kl")) for t in tasks)]
            for label, splits in ordered if splits.get("heldout")]
    out.append('<section id="per-task"><h2>Held-out KL per task</h2>'
               + (_table(["config", *tasks], rows) if tasks else "<p>One task.</p>") + "</section>")
    # -- timings
    stages = (detail.get("timings") or {}).get("stages") or []
    total = sum(st["seconds"] for st in stages) or 1.0
    out.append('<section id="timings"><h2>Where the time went</h2>'
               + bars_svg([(st["stage"], st["seconds"]) for st in stages])
               + _table(["stage", "seconds", "share", "evaluations"],
                        [[esc(st["stage"]), f"{st['seconds']:.2f}", f"{st['seconds'] / total:.0%}",
                          str(st["evaluations"] or "-")] for st in stages]) + "</section>")
    # -- settings
    out.append('<section id="settings"><h2>Settings, and the command that reruns it</h2>'
               f"<pre>{esc(rerun_command(detail))}</pre>"
               f"<pre>{esc(json.dumps(settings, indent=1, sort_keys=True))}</pre></section>")
    out.append("</body></html>")
    return "\n".join(out)


def _layers_svg(series: dict[str, list[tuple[int, float]]]) -> str:
    """Budget share per layer: the winner as bars, references as lines."""
    winner = series.get("winner", [])
    if not winner:
        return ""
    width, height, left, bottom, top = 640, 220, 40, 25, 10
    count = len(winner)
    y_hi = max(v for pts in series.values() for _, v in pts) or 1.0
    step = (width - left - 120) / count
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">']
    scale = (height - top - bottom) / y_hi
    for i, v in winner:
        parts.append(f'<rect x="{left + i * step + 1:.1f}" y="{height - bottom - v * scale:.1f}" '
                     f'width="{max(step - 2, 1):.1f}" height="{v * scale:.1f}" fill="{COLORS[0]}" opacity="0.75"/>')
    for j, (name, pts) in enumerate(list(series.items())[1:], 1):
        color = COLORS[j % len(COLORS)]
        path = " ".join(f"{'M' if k == 0 else 'L'}{left + i * step + step / 2:.1f},{height - bottom - v * scale:.1f}"
                        for k, (i, v) in enumerate(pts))
        parts.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="1.5" stroke-dasharray="4 2"/>')
    for j, name in enumerate(series):
        parts.append(f'<rect x="{width - 110}" y="{top + 14 * j}" width="10" height="10" '
                     f'fill="{COLORS[j % len(COLORS)]}"/><text x="{width - 95}" y="{top + 14 * j + 9}">'
                     f'{html.escape(name)}</text>')
    parts.append(f'<text x="{left}" y="{height - 5}">layer 0</text>'
                 f'<text x="{left + count * step}" y="{height - 5}" text-anchor="end">layer {count - 1}</text>'
                 f'<text x="{left - 4}" y="{top + 10}" text-anchor="end">{y_hi:.2g}</text></svg>')
    return "".join(parts)
