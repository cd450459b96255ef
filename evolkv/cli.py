"""``evolkv``: search, store, look up and apply KV-cache compression configs."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from dataclasses import fields
from typing import Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from evolkv.errors import EvolKVError

class _Group(typer.core.TyperGroup):
    """Turns evolkv's errors into one line on stderr and exit code 2, never a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EvolKVError as e:
            Console(stderr=True).print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Exception as e:  # a database driver's error that a read let through: still one line
            if not type(e).__module__.startswith("sqlalchemy"):
                raise
            first = str(getattr(e, "orig", None) or e).splitlines()[0]
            Console(stderr=True).print(f"error: database error: {first} (is --db an evolkv database?)", markup=False,
                                       highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None


app = typer.Typer(cls=_Group, help="Search how to spend a KV-cache memory budget across an LLM's layers and heads, "
                       "store every run, and export the winner for inference.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
runs_app = typer.Typer(cls=_Group, help="Browse the search history.", no_args_is_help=True)
app.add_typer(runs_app, name="runs")
console = Console()
err = Console(stderr=True)

DB = typer.Option(None, "--db", help="Database URL or SQLite path [default: $EVOLKV_DB or ~/.evolkv/evolkv.db].")
JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")


def _store(db: Optional[str]):
    from evolkv.store.store import Store

    return Store(db)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


class _Count(MofNCompleteColumn):
    """"done/total" for a counted stage; nothing for one of unknown length (a spinner-like stage, not "0/?")."""

    def render(self, task):
        from rich.text import Text

        return Text("") if task.total is None else super().render(task)


class _RichReporter:
    """Draws a search's stages and generations as rich progress bars."""

    def __init__(self, progress: Progress, label: str = "KL") -> None:
        self.progress, self.task, self.gen_task, self.label = progress, None, None, label

    def stage(self, text: str, total: int | None = None) -> None:
        if self.task is not None:
            self.progress.update(self.task, visible=False)
        self.task = self.progress.add_task(text, total=total, best="")

    def advance(self, amount: int = 1) -> None:
        self.progress.advance(self.task, amount)

    def generation(self, gen: int, total: int, best: float, rate: float) -> None:
        if self.gen_task is None:
            if self.task is not None:
                self.progress.update(self.task, visible=False)
            self.gen_task = self.progress.add_task("search", total=total, best="")
        self.progress.update(self.gen_task, completed=gen,
                             best=f"best {self.label} {best:.4f}  {rate:.2f} evals/s")


OBJECTIVE_NAMES = {"kl": "KL", "nll": "NLL", "task": "task loss"}
OBJECTIVE_TITLES = {"kl": "KL to the full cache", "nll": "NLL of the gold answer",
                    "task": "1 - the task's metric of the greedy answer"}


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), _Count(), TimeElapsedColumn(),
                    TextColumn("{task.fields[best]}"), console=err, transient=False)


@contextmanager
def _searching(settings, db: Optional[str]):
    """The store, a progress reporter, and the model's executor for one or more searches (shut down after)."""
    from evolkv.pools import make_executor

    store = _store(db)
    _quiet_transformers()
    with _progress() as progress:
        reporter = _RichReporter(progress, OBJECTIVE_NAMES.get(settings.objective, "KL"))
        reporter.stage(f"load {settings.model or 'default model'}")
        loaded, executor = make_executor(settings)
        try:
            yield store, reporter, loaded, executor
        finally:
            if hasattr(executor, "shutdown"):
                executor.shutdown()


def _run_and_report(settings, run_id: Optional[str], db: Optional[str], as_json: bool, warm_start=None) -> None:
    from evolkv.config import Budget
    from evolkv.search.loop import run_search

    Budget.parse(settings.budget)  # fail on a bad budget before loading anything
    with _searching(settings, db) as (store, reporter, loaded, executor):
        detail = run_search(settings, loaded.spec, executor, store, run_id, reporter, warm_start=warm_start)
    _print_detail(detail, as_json)


@app.command()
def search(
    budget: str = typer.Option("100%", "--budget", "-b", help="Token budget: '10%' of the context's KV entries, "
                               "or '128' tokens per KV head (average over layers and heads); below 100% in tokens "
                               "mode. Quant mode keeps every token (100% only); joint mode searches precisions "
                               "within this budget."),
    budgets: Optional[str] = typer.Option(None, help="tokens: several budgets in one run, e.g. 2%,5%,10%,20%: a "
                                          "winner stored per budget (lookup picks among them), sharing the model "
                                          "load and the prefill, each budget's first generation seeded with the "
                                          "next larger budget's winner."),
    mode: str = typer.Option("tokens", help="tokens: per-layer/head token budgets. quant: per-layer key/value "
                             "precisions (KVTuner) on a Pareto front of KL vs bits. joint: both together."),
    target_bits: float = typer.Option(4.0, help="quant/joint: pick the best front point at or under this many "
                                      "bits per KV element, compared at two decimals (16 = full cache; scales, "
                                      "zero points and residual window counted)."),
    group_size: int = typer.Option(128, help="quant/joint: KIVI group size (32, 64 or 128)."),
    residual: str = typer.Option("0,4,16", help="quant/joint: top-ranked entries (attention sinks, heavy "
                                 "hitters) kept at full precision; a comma list lets the search pick one per "
                                 "layer group (uniform baselines use the first)."),
    evicted_bits: str = typer.Option("0", help="joint: keep the tokens a budget evicts at this many bits "
                                     "(MiKV: 8, 4 or 2) instead of dropping them (0); a comma list like 0,2 "
                                     "lets the search pick per layer group. The tier's memory is counted."),
    clusters: int = typer.Option(6, min=1, help="quant/joint: layer groups that share a precision pair."),
    probe_samples: int = typer.Option(4, min=1, help="quant/joint: search samples the one-layer sensitivity "
                                      "pass runs on."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Alias from evolkv/configs/models.yaml, local "
                                        "directory or HF id in the local cache [default: embedded Gemma 3 270M]."),
    generations: int = typer.Option(6, min=1, help="Generations of the optimiser."),
    population: int = typer.Option(8, min=2, help="Candidates per generation."),
    optimizer: Optional[str] = typer.Option(None, help="tokens: cmaes (default) | ga | de | optuna-tpe | "
                                            "optuna-cmaes. quant/joint: nsga2 (default) | optuna-nsga2 | optuna-tpe."),
    step: float = typer.Option(0.15, min=0.001, max=0.5, help="tokens, cmaes: the first step, as a share of "
                               "each gene's range (0.15 moves a layer's budget by about 2.5x; 0.05 moves it by about a third and "
                               "often never leaves its uniform start)."),
    restarts: int = typer.Option(0, min=0, help="tokens, cmaes: when 3 generations in a row find nothing better, "
                                 "start again from the best candidate with twice the step, up to this many times."),
    tasks: str = typer.Option("mix", help="Comma-separated tasks the search is scored on. Synthetic (generated "
                              "from --seed, offline): passkey, multikey, kvretrieval, niah_number, niah_word, "
                              "niah_uuid, multivalue, multiquery, vartrack, cwe, fwe, prose, code. Presets: mix "
                              "(passkey, vartrack, prose, code: one task of each kind) and ruler (the RULER-style "
                              "suite). Your data: a .jsonl file with context/question/answers, or hf:PATH[:SPLIT] "
                              "for a dataset saved on disk (README: tasks)."),
    samples: int = typer.Option(4, min=1, help="Samples per task each generation is scored on, and on the "
                                "held-out split."),
    validation_samples: int = typer.Option(0, min=0, help="Samples per task of the validation split the winner "
                                           "is chosen on, among the best search candidates (or front points) and "
                                           "the baselines [default: --samples]."),
    heldout_samples: int = typer.Option(0, min=0, help="Samples per task of the held-out split the winner and "
                                        "every baseline are reported on; more gives steadier tables (one task "
                                        "such as code has few answer tokens per sample) [default: --samples]."),
    pool: int = typer.Option(0, min=0, help="tokens: samples per task in the search pool; above --samples each "
                             "generation is scored on a fresh draw of --samples from it (against overfitting; "
                             "prefilled once) [default: --samples, no resampling]."),
    objective: str = typer.Option("kl", help="What a candidate is scored by. kl: KL of the answer tokens to the "
                                  "full cache's (cheap, low noise). nll: the gold answer's NLL. task: 1 - the "
                                  "task's metric of a greedy answer (edit similarity for code, string match "
                                  "otherwise; EvolKV's objective; a decode per candidate). Held-out tables show KL "
                                  "and exact match whatever the objective."),
    aggregate: str = typer.Option("guarded", help="tokens: what the optimiser and the winner's choice see. "
                                  "guarded: the mean KL relative to uniform's on the same samples, heavily "
                                  "penalised when any one task gets more than --tolerance worse than uniform's. "
                                  "worst: the largest per-task ratio (no task's gain pays for another's loss). "
                                  "mean: the plain mean KL."),
    choose: str = typer.Option("mean", help="tokens: how validation picks the winner among the finalists and "
                               "the baselines. mean: the lowest --aggregate value. typical: the same, but a config "
                               "displaces uniform only if it is also better on the typical sample (geometric mean "
                               "of per-sample KL ratios below 1), against wins made by a few samples. metric: "
                               "the same, but a config displaces uniform only if its task metric on validation "
                               "(greedy answers: edit similarity for code, string match otherwise) is not below "
                               "uniform's; costs a greedy decode of uniform and of each contender tried (not the "
                               "default: on SmolLM2 code it shipped higher held-out KL than mean in 6 of 12 runs)."),
    tolerance: float = typer.Option(0.1, min=0.0, help="tokens, --aggregate guarded: how much worse than uniform "
                                    "(0.1 = 10%) one task may get before it is penalised."),
    finalists: int = typer.Option(4, min=0, help="tokens: best search candidates re-scored on validation."),
    length: int = typer.Option(1000, min=16, help="Context length of synthetic samples, in tokens."),
    per_head: bool = typer.Option(False, "--per-head", help="Per KV head: tokens and joint modes search each "
                                  "layer's split of its tokens over its KV heads; quant and joint modes give each "
                                  "KV head of a layer group its own key/value bits."),
    groups: int = typer.Option(0, min=0, help="EvolKV schedule: optimise this many layer groups in turn "
                               "(tokens mode; quant/joint use --clusters)."),
    scorer: str = typer.Option("snapkv", help="Token scorer: snapkv | keynorm | streaming | tova | h2o | keydiff | criticalkv | defensivekv | rkv | mixkv | compresskv | expected_attention | kvzip (evolkv.scorers; README: adding a scorer)."),
    scorers: Optional[str] = typer.Option(None, help="Let the search pick each layer's scorer among these "
                                          "(comma-separated, e.g. snapkv,tova,criticalkv; tokens mode). Every "
                                          "one ranks each sample once at prefill; the first is the run's "
                                          "--scorer, which the baselines use."),
    query_aware: bool = typer.Option(True, "--query-aware/--query-agnostic", help="Compress after the question "
                                     "(SnapKV) or after the context alone (question asked later)."),
    baselines: str = typer.Option("full,uniform,pyramid,adakv,streaming,globaltopk,prefixkv,cake,dynamickv,kvzip",
                                  help="Baselines evaluated alongside: globaltopk, prefixkv, cake and dynamickv "
                                  "are per-prompt allocators of the same total (evolkv.allocators); kvzip is "
                                  "KVzip's scores spent over all layers and heads (one replay pass per sample). "
                                  "Also known: expected_attention (kvpress's default press: AdaKV + "
                                  "ExpectedAttention)."),
    seed: int = typer.Option(0, help="Seed of the optimiser and the synthetic tasks."),
    batch_size: int = typer.Option(8, min=1, help="Candidates scored in one batched forward."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="Weights and activations: auto (bfloat16 on CUDA, float32 on the "
                              "CPU) | bfloat16 | float16 | float32. Stored with the run; resume uses it."),
    executor: str = typer.Option("local", help="local: score in this process. ray: shard the samples over "
                                 "Ray actors (one GPU each with --device cuda), same results as local."),
    workers: int = typer.Option(1, min=1, help="ray: number of actors."),
    ray_address: Optional[str] = typer.Option(None, help="ray: 'auto' or 'ray://host:10001' of a running "
                                              "cluster [default: start a local Ray]."),
    db: Optional[str] = DB,
    as_json: bool = JSON,
) -> None:
    """Search per-layer (and per-head) token budgets, or per-layer key/value precisions, that keep the
    model's answers closest to the full cache within the memory you give it."""
    from evolkv.settings import SearchSettings

    if mode not in ("tokens", "quant", "joint"):
        raise EvolKVError(f"mode must be tokens, quant or joint, not {mode!r}")
    if not 2.0 <= target_bits <= 16.0:
        raise EvolKVError(f"--target-bits {target_bits:g} is outside [2, 16] bits per KV element")
    optimizer = optimizer or ("cmaes" if mode == "tokens" else "nsga2")
    settings = SearchSettings(model=model, budget=budget, optimizer=optimizer, generations=generations,
                              mode=mode, target_bits=target_bits, group_size=group_size, residual=residual,
                              step=step, restarts=restarts,
                              evicted_bits=evicted_bits,
                              clusters=clusters, probe_samples=probe_samples, executor=executor,
                              workers=workers, ray_address=ray_address,
                              population=population, seed=seed, tasks=_tasks(tasks), samples=samples,
                              validation_samples=validation_samples,
                              heldout_samples=heldout_samples, pool=pool, aggregate=aggregate, choose=choose,
                              tolerance=tolerance,
                              objective=objective,
                              finalists=finalists, length=length, per_head=per_head, groups=groups,
                              scorer=_split(scorers)[0] if scorers else scorer, scorers=_split(scorers or ""),
                              query_aware=query_aware, baselines=_split(baselines), batch_size=batch_size,
                              device=device, dtype=dtype)
    if budgets is None:
        _validate(settings)
        _run_and_report(settings, None, db, as_json)
        return
    _run_budgets(settings, _budgets(budgets, budget, mode), db, as_json)


def _budgets(text: str, budget: str, mode: str) -> list[str]:
    """--budgets: distinct budgets of one kind, largest first (each warm-starts the next)."""
    from evolkv.config import Budget

    if mode != "tokens":
        raise EvolKVError("--budgets searches token budgets: use it with --mode tokens")
    if budget != "100%":
        raise EvolKVError("give either --budget or --budgets, not both")
    parsed = {str(Budget.parse(item)): Budget.parse(item) for item in _split(text)}
    if len(parsed) < 2:
        raise EvolKVError("--budgets takes two or more budgets, e.g. 2%,5%,10%,20% (one: use --budget)")
    if len({b.kind for b in parsed.values()}) > 1:
        raise EvolKVError("--budgets mixes percentages and token counts: give one kind")
    return [text for text, _ in sorted(parsed.items(), key=lambda kv: -kv[1].value)]


def _run_budgets(settings, budgets: list[str], db: Optional[str], as_json: bool) -> None:
    """One search per budget in one process: the model is loaded and every split prefilled once (the
    executor keeps them), and each budget's first generation holds the previous (larger) budget's winner."""
    import dataclasses

    from evolkv.search.loop import run_search

    runs = [dataclasses.replace(settings, budget=b) for b in budgets]
    for one in runs:
        _validate(one)
    details, warm, started = [], None, time.perf_counter()
    with _searching(runs[0], db) as (store, reporter, loaded, executor):
        for one in runs:
            reporter.gen_task = None
            reporter.stage(f"budget {one.budget}")
            detail = run_search(one, loaded.spec, executor, store, None, reporter, warm_start=warm)
            details.append(detail)
            if getattr(executor, "load_seconds", None) is not None:
                executor.load_seconds = None  # the model load is a stage of the first budget's run only
            found = store.winner(detail["id"])
            warm = found[1] if found and detail["status"] == "finished" else warm
    if as_json:
        print(json.dumps(details, indent=2))
        return
    for detail in details:
        _print_detail(detail, False)
    table = Table("budget", "run", "winner", "search KL", "held-out KL", "uniform held-out KL",
                  title=f"one search per budget ({time.perf_counter() - started:.0f} s in all; "
                        "`evolkv lookup --budget B` returns the largest at or under B)")
    for detail in details:
        winner = detail.get("winner") or {}
        uniform = ((detail["results"].get("baseline:uniform") or {}).get("heldout") or {}).get("objective")
        table.add_row(detail["budget"], detail["id"], winner.get("source", "-"), _fmt(winner.get("search_objective")),
                      _fmt(winner.get("heldout_objective")), _fmt(uniform))
    console.print(table)


@app.command()
def resume(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
           batch_size: Optional[int] = typer.Option(None, min=1, help="Candidates scored in one batched forward "
                                                    "(fewer after running out of GPU memory; the scores do not "
                                                    "change) [default: the run's]."),
           db: Optional[str] = DB, as_json: bool = JSON) -> None:
    """Finish an interrupted search: finished generations are read back from the store, not re-evaluated."""
    from evolkv.settings import SearchSettings

    run = _store(db).run(run_id)
    if run.status == "finished":
        raise EvolKVError(f"run {run.id} is already finished")
    known = {f.name for f in fields(SearchSettings)}
    stored = {k: v for k, v in run.settings.items() if k in known}
    settings = SearchSettings(**{"step": 0.05, **stored})  # runs stored before --step searched at 0.05
    if batch_size is not None:
        settings.batch_size = batch_size
    warm = (run.derived or {}).get("warm_start")  # a --budgets run: the same first generation as before
    found = _store(db).winner(warm) if warm else None
    _run_and_report(settings, run.id, db, as_json, warm_start=found[1] if found else None)


@runs_app.command("list")
def runs_list(limit: int = typer.Option(30, min=1, help="Newest runs to show."), db: Optional[str] = DB,
              as_json: bool = JSON) -> None:
    """The search history: id, model, budget (quant: precisions only; 20%+q: joint), optimizer, status (stale:
    its process is gone, `evolkv resume ID` finishes it), generations, best objective, date."""
    rows = _store(db).runs(limit)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(Column("id", no_wrap=True), Column("model", no_wrap=True, overflow="ellipsis"),
                  Column("budget", no_wrap=True), Column("optimizer", no_wrap=True), Column("status", no_wrap=True),
                  Column("gens", no_wrap=True), Column("best KL", no_wrap=True), Column("created", no_wrap=True),
                  box=box.SIMPLE_HEAD, pad_edge=False, padding=0, show_edge=False)
    for r in rows:  # fits 80 columns: a model path shows its last part, the objective 3 significant digits
        budget = {"quant": "quant", "joint": f"{r['budget']}+q"}.get(r["mode"], r["budget"])
        best = "-" if r["best_objective"] is None else f"{r['best_objective']:.3g}"
        table.add_row(r["id"], _short_model(r["model"]), budget, r["optimizer"], r["status"],
                      str(r["generations_done"]), best, (r["created_at"] or "").replace("T", " ")[5:16])
    console.print(table if rows else "no runs yet: start one with `evolkv search --budget 10%`")
    stale = [r["id"] for r in rows if r["status"] == "stale"]
    if stale:
        console.print(f"stale (its process is gone): `evolkv resume {stale[0]}`", soft_wrap=True)


def _short_model(name: str) -> str:
    parts = [p for p in name.replace("\\", "/").split("/") if p]
    return parts[-1] if name.startswith(("/", ".", "~")) and parts else name


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."), db: Optional[str] = DB,
              as_json: bool = JSON) -> None:
    """Per-generation progress, and the winner against every baseline on search and held-out splits."""
    _print_detail(_store(db).detail(run_id), as_json)


def _print_detail(detail: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(detail, indent=2))
        return
    console.print(f"[bold]run {detail['id']}[/bold]  {detail['model']}  budget {detail['budget']}  "
                  f"{detail['optimizer']}  status {detail['status']}")
    settings = detail.get("settings") or {}
    title = "generations" if settings.get("mode", "tokens") == "tokens" else \
        f"generations (best and mean over candidates at or under {settings.get('target_bits'):g} bits)"
    progress = Table("gen", "evaluated", "failed", "best", "mean", "best so far", title=title)
    for g in detail["generations"]:
        progress.add_row(str(g["generation"] + 1), str(g["evaluated"]), str(g["failed"]), _fmt(g["best"]),
                         _fmt(g["mean"]), _fmt(g["best_so_far"]))
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
    results = Table(Column("config", no_wrap=True), f"search\n{name}", f"valid.\n{name}", f"held-out\n{name}",
                    f"search\n{metric}", f"held-out\n{metric}", "gap",
                    title=f"winner vs baselines ({OBJECTIVE_TITLES.get(settings.get('objective', 'kl'), '')}: lower "
                          f"is better; gap = held-out / search {name}; {metric} of greedy answers: higher is better)")
    for label, splits in ordered:
        get = lambda split, key="objective": (splits.get(split) or {}).get(key)  # noqa: E731
        answers = lambda split: task_metric(splits[split]) if splits.get(split) else None  # noqa: E731
        gap = get("heldout") / get("search") if get("heldout") is not None and get("search") else None
        results.add_row(_config_name(label, source), _fmt(get("search")), _fmt(get("validation")),
                        _fmt(get("heldout")), _fmt(answers("search/em"), 3), _fmt(answers("heldout/em"), 3),
                        _fmt(gap, 2))
    console.print(results)
    _print_paired(ordered, source, metric)
    if source != "search" and detail.get("winner"):
        console.print(f"[bold]no search candidate beat {source.removeprefix('baseline:')} on the validation "
                      f"split: the winner is that baseline[/bold]")
    selection = (detail.get("winner") or {}).get("selection") or {}
    passed = selection.get("passed_over") or {}
    checked = selection.get("validation_task_metric") or {}
    if checked:  # --choose metric: lower KL than the winner, but worse answers than uniform's
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
    space = (detail.get("derived") or {}).get("space")
    if space:
        console.print(f"precision space: 10^{space['log10_size_before']:.1f} assignments -> "
                      f"10^{space['log10_size_after']:.1f} after pruning and clustering into "
                      f"{len(space['groups'])} layer groups")
    if detail.get("front"):
        front = Table("point", "bits", "search KL", "held-out KL", "held-out NLL", "precisions", "",
                      title="Pareto front (export one with `evolkv export ID --point N`)")
        for p in detail["front"]:
            front.add_row(str(p["point"]), _fmt(p["bits"], 3), _fmt(p["objective"]), _fmt(p["heldout_objective"]),
                          _fmt((p["heldout_metrics"] or {}).get("nll")), p["precisions"], "winner" if p["winner"] else "")
        console.print(front)


def _print_per_task(ordered: list[tuple[str, dict[str, Any]]], source: str, split: str, columns: dict[str, str],
                    digits: int, title: str) -> None:
    """One row per config that has ``split``'s figures: column header -> the metric key shown under it."""
    table = Table(Column("config", no_wrap=True), *columns, title=title)
    for label, splits in ordered:
        figures = splits.get(split) or {}
        if figures:
            table.add_row(_config_name(label, source), *(_fmt(figures.get(key), digits) for key in columns.values()))
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
            table.add_row(_config_name(label, source), f"{c['gap']:+.3f}", f"[{c['low']:+.3f}, {c['high']:+.3f}]",
                          str(c["wins"]), str(c["losses"]), f"{c['p']:.2f}")
    console.print(table)


def _config_name(label: str, source: str) -> str:
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
                      str(st["evaluations"] or "-"), _fmt(rate, 1))
    console.print(table)


@app.command()
def export(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
           out: Optional[str] = typer.Option(None, "--out", "-o", help="File to write [default: stdout]."),
           point: Optional[int] = typer.Option(None, "--point", help="Export this point of the run's Pareto "
                                               "front (see `evolkv runs show`) instead of the winner."),
           max_bits: Optional[float] = typer.Option(None, "--max-bits", help="Export the front point with the "
                                                    "lowest search loss at or under this many bits."),
           fmt: str = typer.Option("json", "--format", help="json | kvpress: the same evolkv.kvconfig/1 JSON, "
                                   "checked to fit a kvpress press (token budgets only), which "
                                   "evolkv.integrations.kvpress.EvolKVPress.from_file loads."),
           db: Optional[str] = DB) -> None:
    """Write a run's winning config (or a point of its Pareto front) as versioned JSON (evolkv.kvconfig/1)."""
    if fmt not in ("json", "kvpress"):
        raise EvolKVError(f"unknown --format {fmt!r}; known: json, kvpress")
    from evolkv.allocation import within_bits

    store = _store(db)
    if point is not None or max_bits is not None:
        if point is not None and max_bits is not None:
            raise EvolKVError("give --point or --max-bits, not both")
        front = store.front(run_id)
        if not front:
            raise EvolKVError(f"run {run_id} has no Pareto front (token-budget runs have a single winner)")
        if point is not None:
            if not 0 <= point < len(front):
                raise EvolKVError(f"--point {point} is not on the front (points 0..{len(front) - 1})")
            info, cfg = front[point]
        else:
            under = [(info, cfg) for info, cfg in front if within_bits(info["bits"], max_bits)]
            if not under:
                raise EvolKVError(f"no front point at or under {max_bits:g} bits (the smallest has "
                                  f"{front[0][0]['bits']:.3g})")
            info, cfg = min(under, key=lambda item: item[0]["objective"])
        if fmt == "kvpress":
            from evolkv.integrations import kvpress_check

            kvpress_check(cfg)
        _emit(cfg.with_provenance(run_id=store.run(run_id).id, front_point=info["point"], bits=info["bits"],
                                  search_objective=info["objective"], heldout_objective=info["heldout_objective"]),
              out)
        return
    found = store.winner(run_id)
    if found is None:
        raise EvolKVError(f"run {run_id} has no winner yet (unfinished or failed)")
    source = found[1].provenance.get("source", "search")
    if source != "search":
        err.print(f"note: this winner is the {source.removeprefix('baseline:')} baseline: no search candidate "
                  "beat it on the validation split (provenance.source)")
    if fmt == "kvpress":
        from evolkv.integrations import kvpress_check

        kvpress_check(found[1])
        err.print(f"load it in kvpress with: EvolKVPress.from_file({str(out or 'FILE')!r}) "
                  "(from evolkv.integrations.kvpress import EvolKVPress)")
    _emit(found[1], out)


@app.command()
def plot(run_id: Optional[str] = typer.Argument(None, help="Run id (or a unique prefix)."),
         out: Optional[str] = typer.Option(None, "--out", "-o", help="Image to write (.png, .svg, .pdf) "
                                           "[default: front.png, budgets.png or curve.png]."),
         split: str = typer.Option("heldout", help="Loss of the points on: heldout | search."),
         curve: bool = typer.Option(False, "--curve", help="Held-out KL against budget for every stored token "
                                    "run of --model: the winners and the baselines."),
         model: Optional[str] = typer.Option(None, "--model", "-m", help="--curve: the model, as searched "
                                             "[default: the embedded one]."),
         db: Optional[str] = DB) -> None:
    """Draw a run: a quant/joint run's Pareto front (quality loss vs bits per KV element, baselines as points);
    a token run's per-layer budgets beside uniform and pyramid (a layers x KV heads heatmap when per-head).
    With --curve, quality against budget for a model's stored runs."""
    from evolkv.plots import plot_budgets, plot_curve, plot_front

    if split not in ("search", "heldout"):  # front points are stored with their search and held-out loss
        raise EvolKVError(f"split must be 'search' or 'heldout', not {split!r}")
    store = _store(db)
    if curve:
        from evolkv.models import default_model

        name = model or default_model()
        points = []
        for row in store.runs(100000):
            if row["model"].lower() != name.lower() or row["mode"] != "tokens" or row["status"] != "finished":
                continue
            detail = store.detail(row["id"])
            if not detail.get("winner") or not detail["budget"].endswith("%"):
                continue
            values = {label.removeprefix("baseline:"): (splits.get(split) or {}).get("objective")
                      for label, splits in detail["results"].items()
                      if label == "winner" or (label.startswith("baseline:") and label != "baseline:full")}
            points.append({"budget": float(detail["budget"].rstrip("%")) / 100, "values": values})
        if not points:
            raise EvolKVError(f"no finished token run of {name} with a percentage budget to draw; "
                              "run `evolkv search --model ... --budgets 2%,5%,10%,20%` first")
        out = out or "curve.png"
        plot_curve(name, points, out, split)
        err.print(f"wrote {out} ({len(points)} runs)")
        return
    if run_id is None:
        raise EvolKVError("give a run id, or --curve for a model's quality against budget")
    detail = store.detail(run_id)
    if detail.get("front"):
        out = out or "front.png"
        plot_front(detail, out, split)
    else:
        found = store.winner(detail["id"])
        if found is None:
            raise EvolKVError(f"run {detail['id']} has no winner to draw (status {detail['status']})")
        from evolkv.search.baselines import baseline

        cfg = found[1]
        references = {name: baseline(name, cfg.model, cfg.budget, cfg.scorer) for name in ("uniform", "pyramid")}
        out = out or "budgets.png"
        plot_budgets(detail, cfg, references, out)
    err.print(f"wrote {out}")


@app.command()
def lookup(budget: str = typer.Option(..., "--budget", "-b", help="Largest budget you can afford."),
           model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name as searched."),
           out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the config to this file."),
           db: Optional[str] = DB, as_json: bool = JSON) -> None:
    """Best stored config for a model at or under a budget, without running anything."""
    from evolkv.deploy import find
    from evolkv.models import default_model

    cfg, info = find(model or default_model(), budget, db)
    if out:
        cfg.save(out)
    source = cfg.provenance.get("source", "search")
    if as_json:
        print(json.dumps({**info, "source": source, "config": cfg.to_dict()}, indent=2))
    else:
        marked = "" if source == "search" else f"  (= {source.removeprefix('baseline:')}: no search candidate beat it)"
        console.print(f"run {info['run_id']}  budget {info['budget']}  search KL {_fmt(info['search_objective'])}"
                      f"  held-out KL {_fmt(info['heldout_objective'])}{marked}" + (f"  -> {out}" if out else ""))


@app.command("eval")
def evaluate(
    config: Optional[str] = typer.Option(None, "--config", "-c", help="Config JSON to score."),
    baseline: Optional[str] = typer.Option(None, help="Or a baseline: full | uniform | pyramid | adakv | streaming | "
                                           "globaltopk | prefixkv | cake | dynamickv | kvzip | "
                                           "expected_attention."),
    budget: str = typer.Option("10%", "--budget", "-b", help="Budget of the baseline."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the embedded one)."),
    tasks: str = typer.Option("mix", help="Comma-separated tasks, presets (mix, ruler), .jsonl files or "
                              "hf:PATH[:SPLIT] (see search --help)."),
    samples: int = typer.Option(10, min=1, help="Samples per task."),
    length: int = typer.Option(1000, min=16, help="Context length of synthetic samples, in tokens."),
    split: str = typer.Option("heldout", help="search | validation | heldout."),
    seed: int = typer.Option(0, help="Seed of the synthetic tasks."),
    query_aware: bool = typer.Option(True, "--query-aware/--query-agnostic", help="Compress after the question."),
    scorer: str = typer.Option("snapkv", help="Token scorer of a --baseline: snapkv | keynorm | streaming | tova | h2o | keydiff | criticalkv | defensivekv | rkv | mixkv | compresskv | expected_attention | kvzip "
                               "(a --config brings its own)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on the CPU) | bfloat16 | float16 | "
                              "float32."),
    as_json: bool = JSON,
) -> None:
    """Score one config (or baseline): KL to the full cache, gold NLL and greedy exact match."""
    from evolkv.config import Budget, KVConfig, ScorerSpec
    from evolkv.evaluators.tasks import SPLITS
    from evolkv.pools import make_executor
    from evolkv.search.baselines import baseline as make_baseline
    from evolkv.settings import SearchSettings

    if (config is None) == (baseline is None):
        raise EvolKVError("give exactly one of --config FILE or --baseline NAME")
    cfg = KVConfig.load(config) if config else None
    settings = SearchSettings(model=model, tasks=_tasks(tasks), samples=samples, length=length, seed=seed,
                              query_aware=query_aware, device=device, dtype=dtype,
                              scorer=cfg.scorer.name if cfg else scorer,
                              window=cfg.scorer.window if cfg else 8)
    _validate(settings)
    if split not in SPLITS:
        raise EvolKVError(f"split must be {', '.join(SPLITS)}, not {split!r}")
    wanted = Budget.parse(budget)
    _quiet_transformers()
    with _progress() as progress:
        reporter = _RichReporter(progress)
        reporter.stage(f"load {model or 'default model'}")
        loaded, executor = make_executor(settings)
        if cfg is None:
            cfg = make_baseline(baseline, loaded.spec, wanted, ScorerSpec(scorer, window=settings.window))
        cfg.check_fits(loaded.spec)
        if hasattr(executor, "evaluator"):  # a config may rank with a kernel other than the default's
            executor.evaluator.add_scorers(cfg.scorers())
        reporter.stage(f"prefill {split} samples", total=len(executor.samples[split]))
        executor.prepare(split, progress=reporter.advance)
        reporter.stage("score")
        score = executor.evaluate([cfg], split)[0]
        accuracy = executor.exact_match([cfg], split)[0]
    result = {"config": cfg.label, "budget": str(cfg.budget), "split": split, "samples": len(executor.samples[split]),
              "status": score.status, "reason": score.reason, "kl": score.objective, **score.metrics, **accuracy}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table("metric", "value", title=f"{cfg.label} at {cfg.budget} on {result['samples']} {split} samples")
    for key, value in result.items():
        if not isinstance(value, list) and (key not in ("config", "budget", "split", "samples", "reason") or value):
            table.add_row(key, _fmt(value, 4))  # per_sample (each sample's own metric): in --json only
    console.print(table)


@app.command()
def generate(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The prompt text."),
    prompt_file: Optional[str] = typer.Option(None, "--prompt-file", help="Or read the prompt from this UTF-8 file."),
    config: Optional[str] = typer.Option(None, "--config", "-c", help="A config JSON (evolkv export)."),
    budget: Optional[str] = typer.Option(None, "--budget", "-b", help="Or the best stored winner for the model at or "
                                         "under this budget (as evolkv lookup); with --baseline, that baseline "
                                         "at this budget."),
    baseline: Optional[str] = typer.Option(None, help="A baseline at --budget instead of a stored winner: uniform "
                                           "| pyramid | adakv | streaming | globaltopk | prefixkv | cake | dynamickv "
                                           "| kvzip | expected_attention."),
    full: bool = typer.Option(False, "--full", help="Or the full cache, through the same path (to compare)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model (default: the embedded one)."),
    max_new_tokens: int = typer.Option(64, "--max-new-tokens", "-n", min=1, help="Tokens to generate (greedy; "
                                       "no early stop at end-of-sequence, the text is cut there)."),
    device: str = typer.Option("cpu", help="cpu | cuda | cuda:N (CUDA: the decode step runs as a CUDA graph)."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on the CPU) | bfloat16 | float16 | "
                              "float32."),
    compiled: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model's norms and MLPs "
                                  "first (fewer kernels per step; compiling takes a while)."),
    db: Optional[str] = DB,
    as_json: bool = JSON,
) -> None:
    """Generate with a config the way a server would (evolkv.serving): the prompt compressed at prefill, each
    layer's cache preallocated at its exact size, every decode step one CUDA graph on GPU. Prints the text,
    prefill time, decode speed and the cache's bytes beside the full cache's."""
    import torch

    from evolkv.allocation import dense_kv_bytes
    from evolkv.config import Budget, KVConfig, ScorerSpec
    from evolkv.devices import resolve_device, resolve_dtype
    from evolkv.models import load
    from evolkv.serving import Generator, compile_blocks

    chosen = [name for name, given in (("--config", config), ("--budget", budget), ("--full", full)) if given]
    if len(chosen) != 1:
        raise EvolKVError("give exactly one of --config FILE, --budget B (a stored winner, or --baseline NAME at B) "
                          "or --full")
    if baseline and not budget:
        raise EvolKVError("--baseline needs --budget")
    if (prompt is None) == (prompt_file is None):
        raise EvolKVError("give exactly one of --prompt TEXT or --prompt-file FILE")
    text = prompt if prompt is not None else _read_text(prompt_file)
    if not text.strip():
        raise EvolKVError("the prompt is empty")
    wanted = Budget.parse(budget) if budget else None
    cfg = KVConfig.load(config) if config else None
    device = resolve_device(device)
    _quiet_transformers()
    with _progress() as progress:
        reporter = _RichReporter(progress)
        reporter.stage(f"load {model or 'default model'}")
        loaded = load(model, device, resolve_dtype(dtype, device))
        if wanted is not None and baseline:
            from evolkv.search.baselines import baseline as make_baseline

            cfg = make_baseline(baseline, loaded.spec, wanted, ScorerSpec())
        elif wanted is not None:
            from evolkv.deploy import find

            cfg = find(loaded.name, wanted, db)[0]
        gen = Generator(loaded.model, cfg, loaded.tokenizer)  # a config for another model: one error here
        if compiled:
            reporter.stage("compile norms and MLPs")
            compile_blocks(loaded.model)
        ids = loaded.tokenizer(text, return_tensors="pt").input_ids.to(device)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        reporter.stage(f"prefill {ids.shape[1]} tokens")
        start = time.perf_counter()
        first = gen.prefill(ids, None, max_new_tokens)
        sync()
        prefill_s = time.perf_counter() - start
        reporter.stage(f"decode {max_new_tokens} tokens")
        warm = gen.decode(min(1, max_new_tokens - 1))  # the first step captures the CUDA graph: not timed
        timed = max_new_tokens - 1 - warm.shape[1]
        start = time.perf_counter()
        rest = gen.decode(timed)
        sync()
        decode_s = time.perf_counter() - start
    tokens = torch.cat([first[:, None], warm, rest], 1)[0].tolist()
    eos = loaded.tokenizer.eos_token_id
    shown = tokens[:tokens.index(eos)] if eos in tokens else tokens
    full_bytes = dense_kv_bytes(loaded.spec, ids.shape[1], next(loaded.model.parameters()).element_size())
    result = {"model": loaded.name, "config": "full cache" if cfg is None else cfg.label,
              "budget": None if cfg is None else str(cfg.budget), "device": device,
              "prompt_tokens": ids.shape[1], "new_tokens": len(tokens), "prefill_s": prefill_s,
              "decode_ms_per_token": decode_s * 1000 / timed if timed else None,
              "tokens_per_s": timed / decode_s if timed and decode_s > 0 else None,
              "kv_bytes": gen.cache.nbytes(room=False), "full_kv_bytes": full_bytes, "cuda_graph": gen.cuda_graph,
              "text": loaded.tokenizer.decode(shown, skip_special_tokens=True)}
    if as_json:
        print(json.dumps(result, indent=2))
        return
    console.print(result["text"], markup=False, highlight=False)
    speed = (f"decode {result['decode_ms_per_token']:.2f} ms/token ({result['tokens_per_s']:.0f} tokens/s)"
             if timed else "decode: too few tokens to time")
    err.print(f"{result['config']} on {loaded.name}, {device}: {ids.shape[1]} prompt tokens, prefill "
              f"{prefill_s:.2f} s, {speed}; KV cache {result['kv_bytes'] / 2**20:.1f} MiB vs "
              f"{full_bytes / 2**20:.1f} MiB full ({result['kv_bytes'] / full_bytes:.1%})", highlight=False)


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        raise EvolKVError(f"prompt file {path} does not exist") from None
    except UnicodeDecodeError:
        raise EvolKVError(f"prompt file {path} is not UTF-8 text") from None
    except OSError as error:
        raise EvolKVError(f"cannot read prompt file {path}: {error.strerror}") from None


@app.command()
def models() -> None:
    """Model aliases from evolkv/configs/models.yaml (none is downloaded: each must be local)."""
    from evolkv.models import _aliases

    data = _aliases()
    table = Table("alias", "source", title=f"default: {data.get('default')}")
    for name, entry in data.get("aliases", {}).items():
        table.add_row(name, entry.get("package") and f"package {entry['package']}" or entry.get("path")
                      or entry.get("hf_id"))
    console.print(table)


def _emit(cfg, out: Optional[str]) -> None:
    if out:
        cfg.save(out)
        err.print(f"wrote {out}")
    else:
        print(cfg.to_json())


def _tasks(text: str) -> list[str]:
    """--tasks: comma-separated names with the presets expanded; an hf: spec keeps its FIELD=COLUMN pairs."""
    from evolkv.evaluators.tasks import expand

    names: list[str] = []
    for part in _split(text):
        if "=" in part and names and names[-1].startswith("hf:") and not part.startswith("hf:"):
            names[-1] += "," + part
        else:
            names.append(part)
    return expand(names)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _validate(settings) -> None:
    from evolkv.config import Budget
    from evolkv.scorers import SCORERS
    from evolkv.evaluators.tasks import TASKS
    from evolkv.evaluators.tasks import check as check_task
    from evolkv.search.baselines import BASELINES
    from evolkv.search.optimizers import check_objectives
    from evolkv.search.objectives import AGGREGATES
    from evolkv.search.selection import CHOICES
    from evolkv.evaluators.evaluator import OBJECTIVES

    from evolkv.devices import resolve_device, resolve_dtype

    budget = Budget.parse(settings.budget)
    if not (settings.executor == "ray" and settings.ray_address):  # a remote cluster's GPUs are not ours to see
        settings.device = resolve_device(settings.device)  # no silent CPU fall back
    settings.dtype = resolve_dtype(settings.dtype, settings.device)
    for task in settings.tasks:
        check_task(task)
    if not settings.tasks:
        raise EvolKVError("give at least one task")
    synthetic = all(task in TASKS for task in settings.tasks)
    if budget.kind == "tokens" and synthetic and budget.value >= settings.length and settings.mode != "quant":
        raise EvolKVError(f"--budget {budget} tokens per KV head keeps all of a {settings.length}-token context: "
                          "nothing would be compressed; give fewer tokens or a percentage like 10%")
    check_objectives(settings.optimizer, 1 if settings.mode == "tokens" else 2)
    if settings.executor not in ("local", "ray"):
        raise EvolKVError(f"unknown executor {settings.executor!r}; known: local, ray")
    if settings.mode != "tokens":
        from evolkv.config import ALLOWED_GROUPS
        if settings.group_size not in ALLOWED_GROUPS:
            raise EvolKVError(f"--group-size {settings.group_size} is not one of {ALLOWED_GROUPS}")
        from evolkv.search.precision import parse_evicted, parse_residuals

        try:
            settings.residual = list(parse_residuals(settings.residual))
        except EvolKVError as exc:
            raise EvolKVError(f"--residual: {exc}") from None
        try:
            settings.evicted_bits = list(parse_evicted(settings.evicted_bits))
        except EvolKVError as exc:
            raise EvolKVError(f"--evicted-bits: {exc}") from None
        if settings.mode == "quant" and any(settings.evicted_bits):
            raise EvolKVError("--evicted-bits keeps tokens a budget evicts: use it with --mode joint --budget B")
        if settings.mode == "quant" and budget.value != 1.0:
            raise EvolKVError("--mode quant keeps every token (--budget 100%); to search token budgets and "
                              "precisions together use --mode joint --budget B")
        if settings.groups > 1:
            raise EvolKVError("--groups is the token search's layer schedule; --mode quant and joint group "
                              "layers with --clusters")
    elif budget.value == 1.0 and budget.kind == "fraction":
        raise EvolKVError("give a --budget below 100% to search token budgets (or --mode quant)")
    if settings.objective not in OBJECTIVES:
        raise EvolKVError(f"--objective must be one of {', '.join(OBJECTIVES)}, not {settings.objective!r}")
    if settings.aggregate not in AGGREGATES:
        raise EvolKVError(f"--aggregate must be one of {', '.join(AGGREGATES)}, not {settings.aggregate!r}")
    if settings.choose not in CHOICES:
        raise EvolKVError(f"--choose must be one of {', '.join(CHOICES)}, not {settings.choose!r}")
    if settings.mode != "tokens" and settings.pool:
        raise EvolKVError("--pool (a fresh draw of the search samples each generation) belongs to the token "
                          "search (--mode tokens)")
    for name in [settings.scorer, *settings.scorers]:
        if name not in SCORERS:
            raise EvolKVError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
    if settings.scorers and (settings.mode != "tokens" or len(set(settings.scorers)) < 2):
        raise EvolKVError("--scorers takes two or more scorers, and belongs to the token search (--mode tokens): "
                          "with one, give --scorer")
    for name in settings.baselines:
        if name not in BASELINES:
            raise EvolKVError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")


def main() -> None:
    app()
