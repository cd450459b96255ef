"""``evolkv``: search, store, look up and apply KV-cache compression configs."""

from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from evolkv import report
from evolkv.errors import EvolKVError
from evolkv.progress import err, reporting


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
console = report.console

TIMED_GENERATIONS = 1000  # --time without --generations: as many as the time allows, up to this many
DB = typer.Option(None, "--db", help="Database URL or SQLite path [default: $EVOLKV_DB or ~/.evolkv/evolkv.db].")
JSON = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
QUIET = typer.Option(False, "--quiet", "-q", help="No progress on stderr (bars on a terminal, plain timestamped "
                     "lines otherwise); errors and results still print.")


def _store(db: Optional[str], readonly: bool = False):
    """The store at ``db``; the read commands open it ``readonly`` (nothing created, written or migrated)."""
    from evolkv.store.store import Store

    return Store(db, readonly=readonly)


def _quiet_transformers() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()


@contextmanager
def _terminate_as_interrupt():
    """SIGTERM (what kill, systemd, Kubernetes and Slurm send) stops a search as Ctrl-C does: the run is marked
    interrupted, the line names `evolkv resume`, and everything evaluated stays stored."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _searching(settings, db: Optional[str], quiet: bool = False):
    """The store, a progress reporter, and the model's executor for one or more searches (shut down after)."""
    from evolkv.pools import make_executor

    store = _store(db)
    _quiet_transformers()
    label = report.OBJECTIVE_NAMES.get(settings.scoring.objective, "KL")
    with _terminate_as_interrupt(), reporting(label, quiet) as reporter:
        reporter.stage(f"load {settings.compute.model or 'default model'} on {settings.compute.device}")
        loaded, executor = make_executor(settings)
        try:
            yield store, reporter, loaded, executor
        finally:
            if hasattr(executor, "shutdown"):
                executor.shutdown()


def _run_and_report(settings, run_id: Optional[str], db: Optional[str], as_json: bool, warm_start=None,
                    quiet: bool = False) -> None:
    from evolkv.config import Budget
    from evolkv.search.loop import run_search

    from evolkv.pools import check_length

    Budget.parse(settings.space.budget)  # fail on a bad budget or length before anything loads or is stored
    check_length(settings)
    with _searching(settings, db, quiet) as (store, reporter, loaded, executor):
        detail = run_search(settings, loaded.spec, executor, store, run_id, reporter, warm_start=warm_start)
    report.print_detail(detail, as_json)


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
    generations: Optional[int] = typer.Option(None, min=1, help="Generations of the optimiser [default: 6 on the "
                                              "CPU, 20 on a GPU]."),
    population: Optional[int] = typer.Option(None, min=2, help="Candidates per generation [default: 8 on the CPU, "
                                             "16 on a GPU]."),
    optimizer: Optional[str] = typer.Option(None, help="tokens: cmaes (default) | ga | de | optuna-tpe | "
                                            "optuna-cmaes. quant/joint: nsga2 (default) | optuna-nsga2 | optuna-tpe."),
    step: float = typer.Option(0.15, min=0.001, max=0.5, help="tokens, cmaes: the first step, as a share of "
                               "each gene's range (0.15 moves a layer's budget by about 2.5x; 0.05 moves it by about a third and "
                               "often never leaves its uniform start)."),
    time_budget: Optional[str] = typer.Option(None, "--time", help="tokens: how long the optimiser's generations "
                                              "may run (90s, 5m, 1h); they stop when it is spent, the fixed stages "
                                              "(prefill, baselines, the winner's choice, held-out) come on top. "
                                              "Without --generations the generations are as many as fit."),
    restarts: int = typer.Option(0, min=0, help="tokens, cmaes: when 3 generations in a row find nothing better, "
                                 "start again from the best candidate with twice the step, up to this many times."),
    tasks: str = typer.Option("mix", help="Comma-separated tasks the search is scored on. Synthetic (generated "
                              "from --seed, offline): passkey, multikey, kvretrieval, niah_number, niah_word, "
                              "niah_uuid, multivalue, multiquery, vartrack, cwe, fwe, prose, code. Presets: mix "
                              "(passkey, vartrack, prose, code: one task of each kind) and ruler (the RULER-style "
                              "suite). Your data: a .jsonl file with context/question/answers, or hf:PATH[:SPLIT] "
                              "for a dataset saved on disk (README: tasks)."),
    samples: Optional[int] = typer.Option(None, min=1, help="Samples per task each generation is scored on "
                                          "[default: 4 on the CPU, 8 on a GPU]."),
    validation_samples: int = typer.Option(0, min=0, help="Samples per task of the validation split the winner "
                                           "is chosen on, among the best search candidates (or front points) and "
                                           "the baselines [default: --samples]."),
    heldout_samples: Optional[int] = typer.Option(None, min=0, help="Samples per task of the held-out split the "
                                                  "winner and every baseline are reported on; more gives steadier "
                                                  "tables [default: --samples on the CPU, 16 on a GPU]."),
    race: Optional[int] = typer.Option(None, min=0, help="tokens, --choose paired: when the leading contenders are "
                                       "within noise of each other on validation, score them on up to this many "
                                       "more validation samples per task before deciding (prefilled only then) "
                                       "[default: 0 on the CPU, 16 on a GPU]."),
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
    choose: str = typer.Option("paired", help="tokens: how the winner is picked among the finalists and the "
                               "baselines. paired: per-sample loss ratios to uniform on every unbiased sample (a "
                               "baseline's search samples count, it fitted nothing; a searched config's validation "
                               "samples), and a searched config ships only if it beats the best baseline beyond the "
                               "paired 95% interval, else that baseline ships (runs show says why). mean: the lowest "
                               "--aggregate value on validation. typical: mean, but a config displaces uniform only "
                               "if it is also better on the typical sample. metric: mean, but a config displaces "
                               "uniform only if its greedy task metric on validation is not below uniform's."),
    tolerance: float = typer.Option(0.1, min=0.0, help="tokens, --aggregate guarded: how much worse than uniform "
                                    "(0.1 = 10%) one task may get before it is penalised."),
    finalists: int = typer.Option(4, min=0, help="tokens: best search candidates re-scored on validation."),
    length: int = typer.Option(1000, min=16, help="Context length of synthetic samples, in tokens."),
    per_head: bool = typer.Option(False, "--per-head", help="Per KV head: tokens and joint modes search each "
                                  "layer's split of its tokens over its KV heads; quant and joint modes give each "
                                  "KV head of a layer group its own key/value bits."),
    arms: int = typer.Option(2, min=0, help="tokens: how many policies of the best baselines the search explores, "
                             "each a scorer and an allocation rule (static budgets, AdaKV's split, or a per-prompt "
                             "allocator with searched per-layer priors, per KV head too with --per-head, and static "
                             "share), each started at its best baseline: half the generations are shared between "
                             "them, the best continues with the rest. 1: only the best baseline's policy; 0: static "
                             "budgets with --scorer only."),
    arm_search: str = typer.Option("halving", help="tokens, two or more --arms: how the arms share the generations. "
                                   "halving: each arm its own --optimizer (CMA-ES) from its best baseline, an equal "
                                   "share of half the generations each, then the best arm the rest. tpe: one optuna "
                                   "TPE study picks the arm per candidate (a categorical) and each arm's genes "
                                   "conditional on it, its first trials every arm's baselines, for as many "
                                   "candidates."),
    knobs: int = typer.Option(0, min=0, help="tokens: also search the best arm's rule with --scorer at this many other "
                              "knob settings (observation window 32, pooling kernel 1, both, window 16 with kernel 7), "
                              "each an arm of its own in the successive halving; each adds a ranking per sample at "
                              "prefill."),
    groups: int = typer.Option(0, min=0, help="EvolKV schedule: optimise this many layer groups in turn "
                               "(tokens mode; quant/joint use --clusters)."),
    scorer: str = typer.Option("snapkv", help="Token scorer: snapkv | keynorm | streaming | tova | h2o | keydiff | criticalkv | defensivekv | rkv | mixkv | compresskv | expected_attention | kvzip (evolkv.scorers; README: adding a scorer)."),
    scorers: Optional[str] = typer.Option(None, help="Let the search pick each layer's scorer among these "
                                          "(comma-separated, e.g. snapkv,tova,criticalkv; tokens mode). Every "
                                          "one ranks each sample once at prefill; the first is the run's "
                                          "--scorer, which the baselines use."),
    query_aware: bool = typer.Option(True, "--query-aware/--query-agnostic", help="Compress after the question "
                                     "(SnapKV) or after the context alone (question asked later)."),
    baselines: Optional[str] = typer.Option(None, help="Baselines evaluated alongside: globaltopk, prefixkv, cake "
                                            "and dynamickv are per-prompt allocators of the same total "
                                            "(evolkv.allocators); kvzip is KVzip's scores spent over all layers and "
                                            "heads (one replay pass per sample). Also known: expected_attention "
                                            "(kvpress's default press: AdaKV + ExpectedAttention) [default: full,"
                                            "uniform,pyramid,adakv,streaming,globaltopk,prefixkv,cake,dynamickv,"
                                            "kvzip; on the CPU without kvzip, whose replay doubles each prefill]."),
    seed: int = typer.Option(0, help="Seed of the optimiser and the synthetic tasks."),
    batch_size: Optional[int] = typer.Option(None, min=1, help="Candidates scored in one batched forward [default: "
                                             "16 on a GPU, 8 on the CPU]."),
    device: str = typer.Option("auto", help="auto (CUDA where this machine has it, else the CPU; the run says "
                               "which) | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="Weights and activations: auto (bfloat16 on CUDA, float32 on the "
                              "CPU) | bfloat16 | float16 | float32. Stored with the run; resume uses it."),
    executor: str = typer.Option("local", help="local: score in this process. ray: shard the samples over "
                                 "Ray actors (one GPU each with --device cuda), same results as local."),
    workers: int = typer.Option(1, min=1, help="ray: number of actors."),
    ray_address: Optional[str] = typer.Option(None, help="ray: 'auto' or 'ray://host:10001' of a running "
                                              "cluster [default: start a local Ray]."),
    db: Optional[str] = DB,
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Search per-layer (and per-head) token budgets, or per-layer key/value precisions, that keep the
    model's answers closest to the full cache within the memory you give it."""
    from evolkv.settings import SearchSettings, default_effort, parse_duration

    optimizer = optimizer or ("cmaes" if mode == "tokens" else "nsga2")
    effort = default_effort(device)  # what the user leaves out follows the device
    seconds = parse_duration(time_budget) if time_budget is not None else 0.0
    generations = generations or (TIMED_GENERATIONS if seconds else effort["generations"])
    population = population or effort["population"]
    samples = samples or effort["samples"]
    heldout_samples = effort["heldout_samples"] if heldout_samples is None else heldout_samples
    race = effort["race"] if race is None else race
    batch_size = batch_size or effort["batch_size"]
    baselines = ",".join(effort["baselines"]) if baselines is None else baselines
    settings = SearchSettings(model=model, budget=budget, optimizer=optimizer, generations=generations,
                              mode=mode, target_bits=target_bits, group_size=group_size, residual=residual,
                              step=step, restarts=restarts, time=seconds,
                              evicted_bits=evicted_bits,
                              clusters=clusters, probe_samples=probe_samples, executor=executor,
                              workers=workers, ray_address=ray_address,
                              population=population, seed=seed, tasks=_tasks(tasks), samples=samples,
                              validation_samples=validation_samples,
                              heldout_samples=heldout_samples, race=race, pool=pool, aggregate=aggregate, choose=choose,
                              tolerance=tolerance,
                              objective=objective,
                              finalists=finalists, length=length, per_head=per_head, groups=groups, arms=arms,
                              knobs=knobs, arm_search=arm_search,
                              scorer=_split(scorers)[0] if scorers else scorer, scorers=_split(scorers or ""),
                              query_aware=query_aware, baselines=_split(baselines), batch_size=batch_size,
                              device=device, dtype=dtype)
    if budgets is None:
        settings.validate()
        _run_and_report(settings, None, db, as_json, quiet=quiet)
        return
    _run_budgets(settings, _budgets(budgets, budget, mode), db, as_json, quiet)


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


def _run_budgets(settings, budgets: list[str], db: Optional[str], as_json: bool, quiet: bool = False) -> None:
    """One search per budget in one process: the model is loaded and every split prefilled once (the
    executor keeps them), and each budget's first generation holds the previous (larger) budget's winner."""
    from evolkv.search.loop import run_search

    from evolkv.pools import check_length

    runs = [settings.replace(budget=b) for b in budgets]
    for one in runs:
        one.validate()
    check_length(runs[0])
    details, warm, started = [], None, time.perf_counter()
    with _searching(runs[0], db, quiet) as (store, reporter, loaded, executor):
        for one in runs:
            reporter.new_run()
            reporter.stage(f"budget {one.space.budget}")
            detail = run_search(one, loaded.spec, executor, store, None, reporter, warm_start=warm)
            details.append(detail)
            if getattr(executor, "load_seconds", None) is not None:
                executor.load_seconds = None  # the model load is a stage of the first budget's run only
            found = store.winner(detail["id"])
            warm = found[1] if found and detail["status"] == "finished" else warm
    if as_json:
        print(json.dumps(details, indent=2))
        return
    report.print_budgets(details, time.perf_counter() - started)


@app.command()
def resume(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
           batch_size: Optional[int] = typer.Option(None, min=1, help="Candidates scored in one batched forward "
                                                    "(fewer after running out of GPU memory; the scores do not "
                                                    "change) [default: the run's]."),
           db: Optional[str] = DB, as_json: bool = JSON, quiet: bool = QUIET) -> None:
    """Finish an interrupted search: finished generations are read back from the store, not re-evaluated."""
    from evolkv.settings import SearchSettings

    run = _store(db).run(run_id)
    if run.status == "finished":
        raise EvolKVError(f"run {run.id} is already finished")
    settings = SearchSettings.stored({"step": 0.05, **run.settings})  # a run stored without a step searched at 0.05
    if batch_size is not None:
        settings.scoring.batch_size = batch_size
    warm = (run.derived or {}).get("warm_start")  # a --budgets run: the same first generation as before
    found = _store(db).winner(warm) if warm else None
    _run_and_report(settings, run.id, db, as_json, warm_start=found[1] if found else None, quiet=quiet)


@runs_app.command("list")
def runs_list(limit: int = typer.Option(30, min=1, help="Newest runs to show."), db: Optional[str] = DB,
              as_json: bool = JSON) -> None:
    """The search history: id, model, budget (quant: precisions only; 20%+q: joint), optimizer, status (stale:
    its process is gone, `evolkv resume ID` finishes it), generations, best objective, date."""
    from evolkv.errors import MissingStoreError

    try:
        rows = _store(db, readonly=True).runs(limit)
    except MissingStoreError:
        rows = []
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    report.print_runs(rows)


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."), db: Optional[str] = DB,
              as_json: bool = JSON) -> None:
    """Per-generation progress, and the winner against every baseline on search and held-out splits."""
    report.print_detail(_store(db, readonly=True).detail(run_id), as_json)


@app.command()
def export(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
           out: Optional[str] = typer.Option(None, "--out", "-o", help="File to write [default: stdout]."),
           point: Optional[int] = typer.Option(None, "--point", help="Export this point of the run's Pareto "
                                               "front (see `evolkv runs show`) instead of the winner."),
           max_bits: Optional[float] = typer.Option(None, "--max-bits", help="Export the front point with the "
                                                    "lowest search loss at or under this many bits."),
           fmt: str = typer.Option("json", "--format", help="json | kvpress: the same evolkv.kvconfig/1 JSON, "
                                   "checked to fit a kvpress press (token budgets only), which "
                                   "evolkv.integrations.kvpress.EvolKVPress.from_file loads | lukv: the "
                                   "[99, layers, kv_heads] prune-ratio curve stock kvpress's LUKVPress reads (.npy; "
                                   "every budget stored for the run's model, the ones between interpolated)."),
           db: Optional[str] = DB) -> None:
    """Write a run's winning config (or a point of its Pareto front) as versioned JSON (evolkv.kvconfig/1), or
    the model's searched budgets as a kvpress LUKVPress curve."""
    if fmt not in ("json", "kvpress", "lukv"):
        raise EvolKVError(f"unknown --format {fmt!r}; known: json, kvpress, lukv")
    if fmt == "lukv":
        _export_lukv(run_id, out, db)
        return
    from evolkv.allocation import within_bits

    store = _store(db, readonly=True)
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


def _export_lukv(run_id: str, out: Optional[str], db: Optional[str]) -> None:
    from evolkv.integrations import lukv

    if not out:
        raise EvolKVError("--format lukv writes a binary .npy: give --out curve.npy")
    store = _store(db, readonly=True)
    found = store.winner(run_id)
    if found is None:
        raise EvolKVError(f"run {run_id} has no winner yet (unfinished or failed)")
    lukv.check(found[1])
    model = found[1].model.name
    winners = [cfg for cfg in store.winners_by_budget(model)
               if cfg.model.fingerprint == found[1].model.fingerprint and cfg.scorer == found[1].scorer]
    usable = []
    for cfg in winners:
        try:
            lukv.check(cfg)
        except EvolKVError:
            continue  # another run of the model that a curve cannot carry: its budget is interpolated over
        usable.append(cfg)
    lukv.save(out, usable)
    budgets = ", ".join(str(cfg.budget) for cfg in usable)
    err.print(f"wrote {out}: prune ratios [99, {found[1].model.num_layers}, {found[1].model.num_kv_heads}] from "
              f"{model}'s winners at {budgets}. In kvpress: press = LUKVPress(SnapKVPress(window_size="
              f"{found[1].scorer.window}), compression_ratio=0.9, sink=0, window=0); "
              f"press._budget_curves = numpy.load({out!r})", soft_wrap=True, highlight=False)


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
    store = _store(db, readonly=True)
    if curve:
        from evolkv.models import default_model

        name = model or default_model()
        points = store.budget_curve(name, split)
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


@app.command("report")
def html_report(run_id: str = typer.Argument(..., help="Run id (or a unique prefix)."),
           out: str = typer.Option("run.html", "--out", "-o", help="The HTML file to write."),
           db: Optional[str] = DB) -> None:
    """One self-contained HTML page about a run, to look at or share: the winner against every baseline (a chart
    and the table), the allocation per layer and KV head, quality against budget for the model, the per-task
    breakdown, where the time went, and the settings with the command that reruns it. No network at view time."""
    from evolkv.html_report import render

    store = _store(db, readonly=True)
    detail = store.detail(run_id)
    found = store.winner(detail["id"])
    winner, references, curve = (found[1] if found else None), {}, []
    if winner is not None and detail["mode"] != "quant":
        from evolkv.search.baselines import baseline

        references = {name: baseline(name, winner.model, winner.budget, winner.scorer) for name in ("uniform", "pyramid")}
    if detail["mode"] not in ("quant", "joint"):
        curve = store.budget_curve(detail["model"])
    try:
        with open(out, "w", encoding="utf-8") as handle:
            handle.write(render(detail, winner, references, curve))
    except OSError as e:
        raise EvolKVError(f"cannot write {out}: {e.strerror}") from None
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
        evidence = cfg.provenance.get("selection_evidence") or {}
        if evidence:
            marked += ("  within noise of uniform on validation" if evidence.get("within_noise_of_uniform")
                       else "  better than uniform beyond noise on validation")
        console.print(f"run {info['run_id']}  budget {info['budget']}  search KL {report.fmt(info['search_objective'])}"
                      f"  held-out KL {report.fmt(info['heldout_objective'])}{marked}" + (f"  -> {out}" if out else ""))


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
    device: str = typer.Option("auto", help="auto (CUDA where this machine has it, else the CPU; the run says "
                               "which) | cpu | cuda | cuda:N."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on the CPU) | bfloat16 | float16 | "
                              "float32."),
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Score one config (or baseline): KL to the full cache, gold NLL and greedy exact match."""
    from evolkv.config import Budget, KVConfig, ScorerSpec
    from evolkv.evaluators.tasks import SPLITS
    from evolkv.pools import check_length, make_executor
    from evolkv.search.baselines import baseline as make_baseline
    from evolkv.settings import SearchSettings

    if (config is None) == (baseline is None):
        raise EvolKVError("give exactly one of --config FILE or --baseline NAME")
    cfg = KVConfig.load(config) if config else None
    settings = SearchSettings(model=model, tasks=_tasks(tasks), samples=samples, length=length, seed=seed,
                              query_aware=query_aware, device=device, dtype=dtype,
                              scorer=cfg.scorer.name if cfg else scorer,
                              window=cfg.scorer.window if cfg else 8)
    settings.validate()
    check_length(settings)
    if split not in SPLITS:
        raise EvolKVError(f"split must be {', '.join(SPLITS)}, not {split!r}")
    wanted = Budget.parse(budget)
    _quiet_transformers()
    with reporting(quiet=quiet) as reporter:
        reporter.stage(f"load {model or 'default model'} on {settings.compute.device}")
        loaded, executor = make_executor(settings)
        if cfg is None:
            cfg = make_baseline(baseline, loaded.spec, wanted, ScorerSpec(scorer, window=settings.space.window))
        if config:
            cfg.check_named(loaded.spec)
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
    report.print_eval(result, cfg)


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
    device: str = typer.Option("auto", help="auto (CUDA where this machine has it, else the CPU) | cpu | cuda | "
                               "cuda:N (CUDA: the decode step runs as a CUDA graph)."),
    dtype: str = typer.Option("auto", help="auto (bfloat16 on CUDA, float32 on the CPU) | bfloat16 | float16 | "
                              "float32."),
    compiled: bool = typer.Option(False, "--compile/--no-compile", help="torch.compile the model's norms and MLPs "
                                  "first (fewer kernels per step; compiling takes a while)."),
    db: Optional[str] = DB,
    as_json: bool = JSON,
    quiet: bool = QUIET,
) -> None:
    """Generate with a config the way a server would (evolkv.serving): the prompt compressed at prefill, each
    layer's cache preallocated at its exact size, every decode step one CUDA graph on GPU. Prints the text,
    prefill time, decode speed and the cache's bytes beside the full cache's."""
    from evolkv.allocation import dense_kv_bytes
    from evolkv.config import Budget, KVConfig, ScorerSpec
    from evolkv.devices import resolve_device, resolve_dtype
    from evolkv.models import context_limit, load
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
    with reporting(quiet=quiet) as reporter:
        reporter.stage(f"load {model or 'default model'} on {device}")
        head = load(model, device, resolve_dtype(dtype, device), weights=False)  # the prompt is checked first
        prompt_ids = head.tokenizer(text, return_tensors="pt").input_ids
        limit = context_limit(model)
        if limit and prompt_ids.shape[1] + max_new_tokens > limit:
            raise EvolKVError(f"the prompt is {prompt_ids.shape[1]} tokens; with {max_new_tokens} new ones that is past "
                              f"{head.name}'s {limit} positions: shorten it or ask for fewer tokens (-n)")
        loaded = load(model, device, resolve_dtype(dtype, device))
        if wanted is not None and baseline:
            from evolkv.search.baselines import baseline as make_baseline

            cfg = make_baseline(baseline, loaded.spec, wanted, ScorerSpec())
        elif wanted is not None:
            from evolkv.deploy import find

            cfg = find(loaded.name, wanted, db)[0]
        if config:
            cfg.check_named(loaded.spec)
        gen = Generator(loaded.model, cfg, loaded.tokenizer)  # a config for another model: one error here
        if compiled:
            reporter.stage("compile norms and MLPs")
            compile_blocks(loaded.model)
        ids = prompt_ids.to(device)
        run = gen.timed(ids, max_new_tokens, reporter.stage)
    tokens, prefill_s, decode_s, timed = run["tokens"], run["prefill_s"], run["decode_s"], run["timed_steps"]
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
def migrate(db: Optional[str] = DB) -> None:
    """Bring a database's schema to this evolkv's (the read commands open a database read-only and never
    upgrade it; every search does, on open)."""
    from evolkv.store.store import head_revision

    store = _store(db)
    console.print(f"{store.url}: schema revision {head_revision()}")


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


def main() -> None:
    app()
