"""Every documented search option either runs or refuses with one line: the genes always decode to a valid
config, a candidate that cannot be built or scored is data (not a crash), and the CLI's option cross-product
finishes on a tiny model."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from evolkv.allocation import layer_capacity, plan_tokens
from evolkv.cli import app
from evolkv.config import Budget, ModelSpec
from evolkv.errors import ConfigError
from evolkv.search.space import BOUND, BudgetSpace, SubSpace

# -- 1. decoding any gene vector gives a valid config that spends the budget --------------------------------


@st.composite
def spaces(draw):
    layers = draw(st.integers(1, 40))
    kv_heads = draw(st.sampled_from([1, 2, 3, 8]))
    sliding = draw(st.booleans())
    types = [draw(st.sampled_from(["sliding_attention", "full_attention"])) if sliding else "full_attention"
             for _ in range(layers)]
    spec = ModelSpec("prop", "gemma3_text" if sliding else "llama", layers, kv_heads * 2, kv_heads, 16, types,
                     sliding_window=draw(st.integers(16, 600)) if sliding else None)
    context = draw(st.integers(64, 9000))
    if draw(st.booleans()):
        budget = Budget("fraction", draw(st.floats(0.001, 0.99)))
    else:
        budget = Budget("tokens", draw(st.integers(1, context)))
    return BudgetSpace(spec, budget, per_head=draw(st.booleans()), context=context)


def genes(n: int):
    edge = st.sampled_from([-BOUND, BOUND, 0.0, -BOUND * 1.5, BOUND * 1.5])  # the bounds, and past them (clipped)
    return st.lists(st.one_of(edge, st.floats(-BOUND, BOUND)), min_size=n, max_size=n).map(np.array)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_genes_decode_to_a_valid_config_spending_the_budget(data):
    space = data.draw(spaces())
    view = space
    if data.draw(st.booleans()) and space.model.num_layers > 1:  # EvolKV's group schedule: a subspace
        group = data.draw(st.lists(st.integers(0, space.model.num_layers - 1), min_size=1, unique=True))
        view = SubSpace(space, sorted(group), data.draw(genes(space.n_var)))
    cfg = view.decode(data.draw(genes(view.n_var)))  # raises ConfigError if invalid
    mean, floor = space.budget.value, space.floor * space.budget.value
    assert cfg.mean_budget == pytest.approx(mean, rel=1e-9, abs=1e-12)
    top = 1.0 if space.budget.kind == "fraction" else space.context
    for layer in cfg.layers:
        assert floor - 1e-12 <= layer.budget <= top
        assert layer.heads is not None and sum(layer.heads) == pytest.approx(1.0)
    capacity = [layer_capacity(space.model, i, space.context) for i in range(space.model.num_layers)]
    plan = plan_tokens(cfg, space.context, capacity)
    assert bool((plan >= 0).all()) and all(int(row.max()) <= cap for row, cap in zip(plan, capacity))


@pytest.mark.parametrize("budget", ["0.1%", "20%", "30%", "50%", "90%", "99%"])
def test_extreme_genes_at_high_budgets_stay_within_the_context(budget):
    """The cases that crashed: all weight on one layer at budgets >= 20%."""
    spec = ModelSpec("gemma-like", "llama", 18, 4, 1, 16, ["full_attention"] * 18)
    space = BudgetSpace(spec, Budget.parse(budget), per_head=True)
    for layer in range(spec.num_layers):
        x = np.full(space.n_var, -BOUND)
        x[layer] = BOUND
        cfg = space.decode(x)
        assert max(lay.budget for lay in cfg.layers) <= 1.0
        assert cfg.mean_budget == pytest.approx(space.budget.value)


# -- 3. a candidate that cannot be built or scored is stored as failed and the search goes on --------------


def test_unbuildable_and_unscorable_candidates_are_failures_not_crashes(loaded, monkeypatch, tmp_path):
    from evolkv.executors import make_local
    from evolkv.search import loop
    from evolkv.store.store import Store

    tiny = loaded["llama"]
    settings = loop.SearchSettings(model=tiny.spec.name, budget="20%", optimizer="ga", generations=2, population=4,
                                   samples=1, length=120, tasks=["passkey"], baselines=["uniform"])
    monkeypatch.setattr("evolkv.models.load", lambda *a, **k: tiny)
    _, executor = make_local(settings)

    decode, poisoned = BudgetSpace.decode, {}
    told = []

    class Spy:  # the optimiser: marks which candidates fail, records what it is told
        def __init__(self, inner):
            self.inner = inner

        def ask(self):
            X = self.inner.ask()
            poisoned["build"] = X[1]  # cannot be built
            poisoned["score"] = decode(self._space, X[2]).hash()  # cannot be scored (an OOM, say)
            return X

        def tell(self, X, F):
            told.append(np.asarray(F))
            self.inner.tell(X, F)

    def flaky_decode(self, x):
        if "build" in poisoned and np.array_equal(x, poisoned["build"]):
            raise ConfigError("injected: layer 3 keeps 1.0001 of the context")
        return decode(self, x)

    from evolkv.search import tokens

    make = tokens.make_optimizer

    def spy(*args, **kwargs):
        optimizer = Spy(make(*args, **kwargs))
        optimizer._space = BudgetSpace(tiny.spec, Budget.parse(settings.space.budget), context=settings.data.length)
        return optimizer

    monkeypatch.setattr(tokens, "make_optimizer", spy)
    monkeypatch.setattr(BudgetSpace, "decode", flaky_decode)
    original = executor.evaluate

    def evaluate(configs, split, progress=None, meanwhile=None):
        scores = original(configs, split, progress, meanwhile)
        for cfg, score in zip(configs, scores):
            if split == "search" and cfg.hash() == poisoned.get("score"):
                score.status, score.reason, score.objective = "failed", "RuntimeError: injected OOM", math.inf
        return scores

    monkeypatch.setattr(executor, "evaluate", evaluate)
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    detail = loop.run_search(settings, tiny.spec, executor, store)

    assert detail["status"] == "finished" and detail["winner"] is not None
    assert [g["failed"] for g in detail["generations"]] == [2, 2]
    reasons = {row.reason for row, _ in store.evaluations(detail["id"]) if row.status == "failed"}
    assert any("injected: layer 3" in r for r in reasons) and "RuntimeError: injected OOM" in reasons
    assert all(np.isinf(F[1]) and np.isinf(F[2]) and np.isfinite(F[0]) for F in told)


# -- 4. the CLI over the cross-product of the options that change the search path ---------------------------

MODES = {"tokens": ["cmaes", "ga", "de", "optuna-tpe", "optuna-cmaes", "nsga2"],
         "quant": ["nsga2", "optuna-nsga2", "optuna-tpe", "cmaes"],
         "joint": ["nsga2", "optuna-nsga2", "optuna-tpe", "ga"]}
AXES = {"per_head": [False, True], "groups": [0, 2], "scorer": ["snapkv", "keynorm", "streaming"],
        "query": ["--query-aware", "--query-agnostic"], "budget": ["1%", "30%", "95%", "100%"]}


def _all_pairs(combos: list[tuple]) -> list[tuple]:
    """A subset of ``combos`` holding every pair of values of any two axes that ``combos`` hold (greedy,
    deterministic)."""
    def pairs_of(c):
        return {(i, c[i], j, c[j]) for i, j in itertools.combinations(range(len(c)), 2)}

    todo = set().union(*map(pairs_of, combos))
    chosen = []
    while todo:
        best = max(combos, key=lambda c: len(pairs_of(c) & todo))
        chosen.append(best)
        todo -= pairs_of(best)
    return chosen


def _combos(exhaustive: bool):
    """(mode, optimizer, per_head, groups, scorer, query, budget): all of them, or every pair of values among
    the combinations that must run, plus every pair among all of them (the refusals)."""
    all_combos = [(mode, opt, *rest) for mode, opts in MODES.items() for opt in opts
                  for rest in itertools.product(*AXES.values())]
    if exhaustive:
        return all_combos
    runs = _all_pairs([c for c in all_combos if _refusal(*c) is None])
    return runs + [c for c in _all_pairs(all_combos) if c not in runs]


def _refusal(mode, optimizer, per_head, groups, scorer, query, budget):
    """The one-line refusal ``--help`` announces for a combination, or None when it must run."""
    multi = optimizer in ("nsga2", "optuna-nsga2", "optuna-tpe")
    if mode != "tokens" and not multi:
        return "needs a multi-objective optimizer"
    if mode == "quant" and budget != "100%":
        return "--mode quant keeps every token"
    if mode != "tokens" and groups:
        return "--groups is the token search's layer schedule"
    if mode == "tokens" and optimizer in ("nsga2", "optuna-nsga2"):
        return "needs two objectives"
    if mode == "tokens" and budget == "100%":
        return "give a --budget below 100%"
    return None


# each refusal, and where ``evolkv search --help`` states that incompatibility
HELP_SAYS = {"needs a multi-objective optimizer": "quant/joint: nsga2 (default) | optuna-nsga2 | optuna-tpe",
             "--mode quant keeps every token": "Quant mode keeps every token (100% only)",
             "--groups is the token search's layer schedule": "(tokens mode; quant/joint use --clusters)",
             "needs two objectives": "tokens: cmaes (default) | ga | de | optuna-tpe | optuna-cmaes",
             "give a --budget below 100%": "below 100% in tokens mode"}


def _search_help() -> str:
    text = CliRunner().invoke(app, ["search", "--help"], terminal_width=200).output
    return " ".join(text.replace("│", " ").split())


def _run_combo(model, db, combo):
    mode, optimizer, per_head, groups, scorer, query, budget = combo
    args = ["search", "--model", model, "--mode", mode, "--optimizer", optimizer, "--scorer", scorer, query,
            "--budget", budget, "--groups", str(groups), "--generations", "2", "--population", "3",
            "--samples", "1", "--length", "96", "--tasks", "passkey", "--db", db, "--json",
            "--clusters", "2", "--probe-samples", "1", "--residual", "0,4"]
    if per_head:
        args.append("--per-head")
    result = CliRunner().invoke(app, args)
    expected = _refusal(*combo)
    if expected is None:
        assert result.exit_code == 0, (combo, result.output[-2000:])
        assert json.loads(result.stdout)["status"] == "finished", combo
    else:
        lines = [line for line in result.output.strip().splitlines() if line.strip()]
        assert result.exit_code == 2 and "Traceback" not in result.output, (combo, result.output[-2000:])
        assert lines[-1].startswith("error:") and expected in lines[-1], (combo, lines[-1])
        assert HELP_SAYS[expected] in _search_help(), f"--help does not state: {expected}"


PAIRWISE = _combos(exhaustive=False)


@pytest.mark.parametrize("combo", PAIRWISE, ids=["-".join(map(str, c)) for c in PAIRWISE])
def test_cli_option_pairs_finish_or_refuse_in_one_line(combo, model_dirs, tmp_path):
    _run_combo(model_dirs["llama"], f"sqlite:///{tmp_path / 'evolkv.db'}", combo)


@pytest.mark.slow
@pytest.mark.exhaustive
@pytest.mark.parametrize("combo", [c for c in _combos(exhaustive=True) if c not in PAIRWISE])
def test_cli_option_cross_product_long_tail(combo, model_dirs, tmp_path):
    _run_combo(model_dirs["qwen3"], f"sqlite:///{tmp_path / 'evolkv.db'}", combo)
