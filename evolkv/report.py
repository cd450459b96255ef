"""What the commands print: a run's tables (``runs show``, the end of ``search``), the run history, a
``--budgets`` summary and an ``eval`` result; ``--json`` prints the same data as JSON instead."""

from __future__ import annotations

import json
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Column, Table

console = Console()

OBJECTIVE_NAMES = {"kl": "KL", "nll": "NLL", "task": "task loss"}
OBJECTIVE_TITLES = {"kl": "KL to the full cache", "nll": "NLL of the gold answer",
                    "task": "1 - the task's metric of the greedy answer"}


def fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def short_model(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return parts[-1] if name.startswith(("/", ".", "~")) and parts else name


def continued(arms: dict[str, Any]) -> str:
    """What a run's ``derived.arms`` says of the arm that continued (and its stage per KV head, where it had one)."""
    heads = arms.get("head_priors")
    went = f"{arms['continued']} continued"
    if arms.get("arm_search") == "tpe":  # one study over every arm: how many candidates each was given
        given = ", ".join(f"{name} {count}" for name, count in (arms.get("trials") or {}).items())
        went = f"one TPE study over the arms ({given} candidates); {arms['continued']} best"
    return went + (f", then its priors per KV head ({heads} generations)" if heads else "")


def print_detail(detail: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(detail, indent=2))
        return
    settings = detail.get("settings") or {}
    device = f"  on {settings['device']}" if settings.get("device") else ""
    console.print(f"[bold]run {detail['id']}[/bold]  {detail['model']}  budget {detail['budget']}  "
                  f"{detail['optimizer']}  status {detail['status']}{device}")
    title = "generations" if settings.get("mode", "tokens") == "tokens" else \
        f"generations (best and mean over candidates at or under {settings.get('target_bits'):g} bits)"
    progress = Table("gen", "evaluated", "failed", "best", "mean", "best so far", title=title)
    for g in detail["generations"]:
        progress.add_row(str(g["generation"] + 1), str(g["evaluated"]), str(g["failed"]), fmt(g["best"]),
                         fmt(g["mean"]), fmt(g["best_so_far"]))
    console.print(progress)
    _print_timings(detail.get("timings") or {})
    from evolkv.evaluators.tasks import own_metric, task_metric

    name = OBJECTIVE_NAMES.get(settings.get("objective", "kl"), "KL")
    source = (detail.get("winner") or {}).get("source", "search")
    ordered = sorted(detail["results"].items(), key=lambda kv: (kv[0] != "winner", kv[0].startswith("finalist:")))
    # greedy answers: each task's own metric (edit similarity for code, string match otherwise)
    answered = sorted({key.split("/")[0] for _, splits in ordered for key in (splits.get("heldout/em") or {})
                       if "/" in key})
    metrics = {own_metric(task) for task in answered} or {"em"}
    metric = {"em": "EM", "sim": "edit sim."}[metrics.pop()] if len(metrics) == 1 else "task metric"
    answer_splits = [split for split in ("search/em", "heldout/em")  # runs decode the held-out split
                     if split == "heldout/em" or any(splits.get(split) for _, splits in ordered)]
    results = Table(Column("config", no_wrap=True), f"search\n{name}", f"valid.\n{name}", f"held-out\n{name}",
                    *[f"{'search' if split == 'search/em' else 'held-out'}\n{metric}" for split in answer_splits],
                    "gap",
                    title=f"winner vs baselines ({OBJECTIVE_TITLES.get(settings.get('objective', 'kl'), '')}: lower "
                          f"is better; gap = held-out / search {name}; {metric} of greedy answers: higher is better)")
    for label, splits in ordered:
        get = lambda split, key="objective": (splits.get(split) or {}).get(key)  # noqa: E731
        answers = lambda split: task_metric(splits[split]) if splits.get(split) else None  # noqa: E731
        gap = get("heldout") / get("search") if get("heldout") is not None and get("search") else None
        results.add_row(config_name(label, source), fmt(get("search")), fmt(get("validation")),
                        fmt(get("heldout")), *[fmt(answers(split), 3) for split in answer_splits], fmt(gap, 2))
    console.print(results)
    _print_paired(ordered, source, metric)
    selection = (detail.get("winner") or {}).get("selection") or {}
    evidence = selection.get("selection_evidence") or {}
    if source != "search" and detail.get("winner"):
        console.print(f"[bold]no search candidate beat {source.removeprefix('baseline:')} on the validation "
                      f"split: the winner is that baseline[/bold]")
    passed = selection.get("passed_over") or {}
    checked = selection.get("validation_task_metric") or {}
    if evidence.get("ratio_to_uniform"):
        _print_evidence(evidence, source)
    elif checked:  # --choose metric: lower KL than the winner, but worse answers than uniform's
        uniform = checked.get("baseline:uniform", float("nan"))
        console.print(f"task metric on validation (uniform {uniform:.3f}; a config displaces uniform only if not "
                      "below it): " + ", ".join(f"{label} {value:.3f}" for label, value in checked.items()
                                                if label != "baseline:uniform"))
    elif passed:  # better on the mean KL, not on the typical sample: a few samples' large KL made the mean
        console.print("passed over (lower mean KL than the winner on validation, but not below uniform on the "
                      "typical sample; geometric mean of per-sample KL ratios to uniform): "
                      + ", ".join(f"{label} {ratio:.2f}" for label, ratio in passed.items()))
    tasks = sorted({key.removesuffix("/kl") for _, splits in ordered for key in (splits.get("heldout") or {})
                    if key.endswith("/kl")})
    if len(tasks) > 1:  # one task's gain must not hide another's loss
        _print_per_task(ordered, source, "heldout", {t: f"{t}/kl" for t in tasks}, 4, "held-out KL per task")
    if len(answered) > 1:
        _print_per_task(ordered, source, "heldout/em", {f"{t}\n{own_metric(t)}": f"{t}/{own_metric(t)}"
                                                        for t in answered}, 3,
                        "held-out greedy answers per task (em: string match, sim: edit similarity)")
    arms = (detail.get("derived") or {}).get("arms")
    if arms:
        best = arms.get("best") or {}
        console.print("arms searched (scorer and rule, best told value; 1 = uniform): " + ", ".join(
            f"{name} {fmt(best.get(name), 3)}" for name in arms["searched"]) + f"; {continued(arms)}",
            soft_wrap=True)
    stopped = (detail.get("derived") or {}).get("stopped_by_time")
    if stopped:
        console.print(f"--time spent: the generations stopped after {stopped['generation']} "
                      f"({stopped['seconds']:.0f} s)")
    space = (detail.get("derived") or {}).get("space")
    if space:
        console.print(f"precision space: 10^{space['log10_size_before']:.1f} assignments -> "
                      f"10^{space['log10_size_after']:.1f} after pruning and clustering into "
                      f"{len(space['groups'])} layer groups")
    if detail.get("front"):
        front = Table("point", "bits", "search KL", "held-out KL", "held-out NLL", "precisions", "",
                      title="Pareto front (export one with `evolkv export ID --point N`)")
        for p in detail["front"]:
            front.add_row(str(p["point"]), fmt(p["bits"], 3), fmt(p["objective"]), fmt(p["heldout_objective"]),
                          fmt((p["heldout_metrics"] or {}).get("nll")), p["precisions"], "winner" if p["winner"] else "")
        console.print(front)


def _print_evidence(evidence: dict[str, Any], source: str) -> None:
    """How ``--choose paired`` picked the winner: every contender's mean per-sample loss ratio to uniform on its
    unbiased samples, the winner against the runner-up and uniform with their paired 95% intervals, and why."""
    table = Table(Column("config", no_wrap=True), "ratio to\nuniform", "samples",
                  title="how the winner was chosen (geometric mean of per-sample loss ratios to uniform, < 1: "
                        "better; a baseline's search samples count beside validation)")
    samples = evidence.get("samples") or {}
    for label, ratio in list(evidence["ratio_to_uniform"].items())[:8]:
        table.add_row(config_name(label, source) if label != source else f"{label} (ships)", f"{ratio:.3f}",
                      str(samples.get(label, "-")))
    console.print(table)
    for key, who in (("vs_best_baseline", "the leader against the best baseline"),
                     ("vs_runner_up", "the winner against the runner-up"), ("vs_uniform", "the winner against")):
        c = evidence.get(key)
        if not c:
            continue
        other = (c.get("config") or c.get("baseline") or "uniform").removeprefix("baseline:")
        noise = "  (within noise)" if c["low"] <= 1.0 <= c["high"] else ""
        console.print(f"{who}, {other}: ratio {c['ratio']:.3f}, paired 95% interval [{c['low']:.3f}, "
                      f"{c['high']:.3f}] on {c['samples']} samples{noise}", soft_wrap=True)
    for label, reason in (evidence.get("passed_over") or {}).items():
        console.print(f"passed over, {label.removeprefix('baseline:')}: {reason}", soft_wrap=True)
    race = evidence.get("race")
    if race:
        names = ", ".join(label.removeprefix("baseline:") for label in race["configs"])
        console.print(f"close call raced: {names} scored on {race['samples']} more validation samples; before the "
                      f"race {race['before'].removeprefix('baseline:')} led", soft_wrap=True)
    if evidence.get("reason"):
        console.print(f"[bold]{evidence['reason']}[/bold]", soft_wrap=True)


def _print_per_task(ordered: list[tuple[str, dict[str, Any]]], source: str, split: str, columns: dict[str, str],
                    digits: int, title: str) -> None:
    """One row per config that has ``split``'s figures: column header -> the metric key shown under it."""
    table = Table(Column("config", no_wrap=True), *columns, title=title)
    for label, splits in ordered:
        figures = splits.get(split) or {}
        if figures:
            table.add_row(config_name(label, source), *(fmt(figures.get(key), digits) for key in columns.values()))
    console.print(table)


def _print_paired(ordered: list[tuple[str, dict[str, Any]]], source: str, metric: str) -> None:
    """The winner's held-out greedy answers against every other config's, sample by sample (runs stored since
    per-sample values were kept): whether a task-metric gap is more than the samples drawn."""
    from evolkv.evaluators.paired import compare

    mine = (dict(ordered).get("winner", {}).get("heldout/em") or {}).get("per_sample")
    if not mine:
        return
    title = (f"held-out {metric}, the winner against each config on the same {len(mine)} samples (paired bootstrap; "
             "an interval holding 0: within sample noise)")
    table = Table(Column("against", no_wrap=True), "winner\n- it", Column("95% interval", no_wrap=True),
                  "samples\nbetter", "samples\nworse", "sign\ntest p", title=title)
    for label, splits in ordered:
        theirs = (splits.get("heldout/em") or {}).get("per_sample")
        if label != "winner" and theirs and len(theirs) == len(mine):
            c = compare(mine, theirs)
            table.add_row(config_name(label, source), f"{c['gap']:+.3f}", f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                          str(c["wins"]), str(c["losses"]), f"{c['p']:.2f}")
    console.print(table)


def config_name(label: str, source: str) -> str:
    if label == "winner" and source != "search":
        return f"winner (= {source.removeprefix('baseline:')})"
    return label.removeprefix("baseline:")


def _print_timings(timings: dict[str, Any]) -> None:
    stages = timings.get("stages") or []
    if not stages:
        return
    total = sum(st["seconds"] for st in stages)
    peak = timings.get("peak_gpu_gib")
    table = Table("stage", "seconds", "share", "evaluations", "evals/s",
                  title=f"where the time went: {total:.1f} s" + (f", peak GPU memory {peak:.2f} GiB" if peak else ""))
    for st in stages:
        rate = st["evaluations"] / st["seconds"] if st["evaluations"] and st["seconds"] > 0 else None
        table.add_row(st["stage"], f"{st['seconds']:.2f}", f"{st['seconds'] / total:.0%}" if total else "-",
                      str(st["evaluations"] or "-"), fmt(rate, 1))
    console.print(table)


def print_runs(rows: list[dict[str, Any]]) -> None:
    """The run history as a table that fits 80 columns, and the command that finishes a stale run."""
    table = Table(Column("id", no_wrap=True), Column("model", no_wrap=True, overflow="ellipsis"),
                  Column("budget", no_wrap=True), Column("optimizer", no_wrap=True), Column("status", no_wrap=True),
                  Column("gens", no_wrap=True), Column("best KL", no_wrap=True), Column("created", no_wrap=True),
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0, show_edge=False)
    for r in rows:  # fits 80 columns: a model path shows its last part, the objective 3 significant digits
        budget = {"quant": "quant", "joint": f"{r['budget']}+q"}.get(r["mode"], r["budget"])
        best = "-" if r["best_objective"] is None else f"{r['best_objective']:.3g}"
        table.add_row(r["id"], short_model(r["model"]), budget, r["optimizer"], r["status"],
                      str(r["generations_done"]), best, (r["created_at"] or "").replace("T", " ")[5:16])
    console.print(table if rows else "no runs yet: start one with `evolkv search --budget 10%`")
    stale = [r["id"] for r in rows if r["status"] == "stale"]
    if stale:
        console.print(f"stale (its process is gone): `evolkv resume {stale[0]}`", soft_wrap=True)


def print_budgets(details: list[dict[str, Any]], seconds: float) -> None:
    """Each budget's run, then one line per budget: its winner against uniform on held-out data."""
    for detail in details:
        print_detail(detail, False)
    table = Table("budget", "run", "winner", "search KL", "held-out KL", "uniform held-out KL",
                  title=f"one search per budget ({seconds:.0f} s in all; "
                        "`evolkv lookup --budget B` returns the largest at or under B)")
    for detail in details:
        winner = detail.get("winner") or {}
        uniform = ((detail["results"].get("baseline:uniform") or {}).get("heldout") or {}).get("objective")
        table.add_row(detail["budget"], detail["id"], winner.get("source", "-"), fmt(winner.get("search_objective")),
                      fmt(winner.get("heldout_objective")), fmt(uniform))
    console.print(table)


def print_eval(result: dict[str, Any], cfg) -> None:
    """``evolkv eval``'s figures for one config."""
    table = Table("metric", "value", title=f"{cfg.label} at {cfg.budget} on {result['samples']} {result['split']} samples")
    for key, value in result.items():
        if not isinstance(value, list) and (key not in ("config", "budget", "split", "samples", "reason") or value):
            table.add_row(key, fmt(value, 4))  # per_sample (each sample's own metric): in --json only
    console.print(table)
