"""The search loop: an interrupted search resumes from the store and ends where an uninterrupted one does."""

from contextlib import contextmanager

import pytest

from evolkv.errors import SearchInterrupted
from evolkv.pools import make_executor
from evolkv.search.loop import SearchSettings, run_search
from evolkv.store.store import Store


class Interrupting:
    """Passes everything to a real executor, and raises KeyboardInterrupt at its ``stop_at``-th population."""

    def __init__(self, inner, stop_at):
        self.inner, self.stop_at, self.calls = inner, stop_at, 0
        self.samples, self.worker = inner.samples, inner.worker

    def prepare(self, split, progress=None):
        self.inner.prepare(split, progress)

    def evaluate(self, configs, split, progress=None, meanwhile=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.evaluate(configs, split, meanwhile=meanwhile)

    def exact_match(self, configs, split, progress=None):
        return self.inner.exact_match(configs, split, progress)

    def head_shares(self, configs, split):
        return self.inner.head_shares(configs, split)

    def split_size(self, split):
        return self.inner.split_size(split)


@contextmanager
def _recording(executor):
    """Every config ``executor`` scores inside the block, by hash."""
    seen, original = {}, executor.evaluate

    def recording(configs, split, progress=None, meanwhile=None):
        seen.update({cfg.hash(): cfg for cfg in configs})
        return original(configs, split, progress, meanwhile)

    executor.evaluate = recording
    try:
        yield seen
    finally:
        executor.evaluate = original


def _generation(rows, seen, generation):
    """The configs of search generation ``generation`` among a run's evaluation ``rows``."""
    return [seen[digest] for row, digest in rows if row.stage == "search" and row.generation == generation
            and digest in seen]


@pytest.mark.parametrize("optimizer,groups", [("cmaes", 0), ("ga", 2)])
def test_killed_search_resumes_to_the_same_result(model_dirs, tmp_path, optimizer, groups):
    settings = SearchSettings(model=model_dirs["qwen3"], budget="15%", optimizer=optimizer, generations=3,
                              population=4, samples=1, length=200, tasks=["passkey"], groups=groups)
    loaded, executor = make_executor(settings)
    straight = run_search(settings, loaded.spec, executor, Store(str(tmp_path / "a.db")))

    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=3), store)
    run_id = stopped.value.run_id
    assert store.run(run_id).status == "interrupted" and store.run(run_id).generations_done >= 1
    resumed = run_search(settings, loaded.spec, executor, store, run_id=run_id)
    assert resumed["status"] == "finished"
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert resumed["winner"]["search_objective"] == pytest.approx(straight["winner"]["search_objective"])


@pytest.mark.parametrize("mode,optimizer", [("quant", "nsga2"), ("quant", "optuna-nsga2"), ("joint", "optuna-tpe")])
def test_front_search_stores_a_pareto_front_and_resumes(model_dirs, tmp_path, mode, optimizer):
    """quant/joint: sensitivity-reduced space, a stored front (non-dominated, held-out re-scored), the winner
    under the target; an interrupted run resumes to the same winner (optuna's study lives in the same DB)."""
    settings = SearchSettings(model=model_dirs["llama"], budget="50%" if mode == "joint" else "100%", mode=mode,
                              optimizer=optimizer, generations=2, population=6, samples=1, length=200,
                              tasks=["passkey"], target_bits=6.0, group_size=32, clusters=2, baselines=["uniform"])
    if mode == "joint":  # residual windows and MiKV tiers picked per layer group too
        settings.space.residual, settings.space.evicted_bits = [0, 8], [0, 2]
    loaded, executor = make_executor(settings)
    straight = run_search(settings, loaded.spec, executor, Store(str(tmp_path / "a.db")))
    assert straight["status"] == "finished"
    front = straight["front"]
    assert front and all(a["objective"] > b["objective"] for a, b in zip(front, front[1:]))  # more bits, less loss
    searched = [(row.objective, row.metrics["bits"]) for row, _ in Store(str(tmp_path / "a.db")).evaluations(
        straight["id"]) if row.split == "search" and row.stage == "search" and row.objective is not None]
    for point in front:  # non-dominated: no evaluated candidate is at least as good on both axes and better on one
        assert not any(f <= point["objective"] and b <= point["bits"] and (f, b) != (point["objective"], point["bits"])
                       for f, b in searched)
    assert all(p["heldout_objective"] is not None for p in front)
    winner = [p for p in front if p["winner"]]
    results = straight["results"]
    # chosen on validation among the front points under the target and the uniform precisions under it
    contenders = {label: r["validation"]["objective"] for label, r in results.items() if "validation" in r
                  and label != "winner"}
    assert contenders and results["winner"]["validation"]["objective"] <= min(contenders.values()) + 1e-12
    if straight["winner"]["source"] == "search":
        assert len(winner) == 1 and winner[0]["bits"] <= 6.0
    else:  # a uniform precision won on validation: no front point is the winner
        assert not winner and straight["winner"]["source"] in results
    space = straight["derived"]["space"]
    assert space["log10_size_after"] < space["log10_size_before"]
    if mode == "joint":
        assert space["evicted_bits"] == [0, 2] and space["residuals"] == [0, 8]
    assert {"baseline:KV4", "baseline:KIVI-2", "baseline:full"} <= set(straight["results"])

    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=3), store)  # in generation 0
    resumed = run_search(settings, loaded.spec, executor, store, run_id=stopped.value.run_id)
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert [p["bits"] for p in resumed["front"]] == [p["bits"] for p in front]


def test_sigkill_then_resume_reproduces_the_uninterrupted_result(model_dirs, tmp_path):
    """A real process killed with SIGKILL mid-search (no cleanup at all), then `evolkv resume`."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import time

    args = ["--model", model_dirs["qwen3"], "--budget", "15%", "--generations", "12", "--population", "4",
            "--samples", "1", "--length", "200", "--tasks", "passkey", "--json"]
    cli = [sys.executable, "-c", "from evolkv.cli import main; main()"]
    env = {**os.environ, "EVOLKV_KERNELS": "torch"}
    straight = json.loads(subprocess.run(cli + ["search", *args, "--db", str(tmp_path / "a.db")], env=env,
                                         capture_output=True, text=True, check=True).stdout)
    db = str(tmp_path / "b.db")
    proc = subprocess.Popen(cli + ["search", *args, "--db", db], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    store = None
    deadline = time.time() + 240
    while time.time() < deadline:
        time.sleep(0.05)
        if os.path.exists(db):
            store = store or Store(db)
            runs = store.runs()
            if runs and runs[0]["generations_done"] >= 2:
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run_id = store.runs()[0]["id"]
    assert store.run(run_id).status == "running"  # SIGKILL leaves no chance to record anything
    resumed = subprocess.run(cli + ["resume", run_id, "--db", db, "--json"], env=env, capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    detail = json.loads(resumed.stdout)
    assert detail["status"] == "finished"
    assert detail["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert detail["winner"]["heldout_objective"] == straight["winner"]["heldout_objective"]


@pytest.mark.parametrize("per_head", [False, True])
def test_the_winner_is_never_worse_than_the_best_baseline_on_validation(model_dirs, tmp_path, per_head):
    """--choose mean: every baseline at the budget competes on validation: a search too short to find anything
    better ships the best one (one task: the worst-task ratio orders configs as their KL does)."""
    settings = SearchSettings(model=model_dirs["qwen3"], budget="10%", optimizer="cmaes", generations=1,
                              population=2, samples=1, length=200, tasks=["passkey"], per_head=per_head,
                              choose="mean")
    loaded, executor = make_executor(settings)
    detail = run_search(settings, loaded.spec, executor, Store(str(tmp_path / "a.db")))
    valid = {label: r["validation"]["objective"] for label, r in detail["results"].items() if label != "baseline:full"}
    assert valid["winner"] <= min(valid.values()) + 1e-12
    if detail["winner"]["source"] != "search":
        assert valid["winner"] == valid[detail["winner"]["source"]]


class Recording(Interrupting):
    """Records, per config scored, whether it stores the KV heads of a layer at different precisions."""

    def __init__(self, inner, stop_at=0):
        super().__init__(inner, stop_at)
        self.per_head: dict[str, bool] = {}

    def evaluate(self, configs, split, progress=None, meanwhile=None):
        self.per_head.update({cfg.hash(): any(layer.head_bits for layer in cfg.layers) for cfg in configs})
        return super().evaluate(configs, split, progress, meanwhile)


class HeadSplits(Interrupting):
    """Records, per config scored, each layer's split of its tokens over its KV heads."""

    def __init__(self, inner, stop_at=0):
        super().__init__(inner, stop_at)
        self.splits: dict[str, tuple] = {}
        self.budgets: dict[str, tuple] = {}

    def evaluate(self, configs, split, progress=None, meanwhile=None):
        self.splits.update({cfg.hash(): tuple(tuple(round(h, 6) for h in layer.heads or ()) for layer in cfg.layers)
                            for cfg in configs})
        self.budgets.update({cfg.hash(): tuple(round(layer.budget, 9) for layer in cfg.layers) for cfg in configs})
        return super().evaluate(configs, split, progress, meanwhile)


def test_per_head_token_search_refines_a_per_layer_search_and_resumes(model_dirs, tmp_path):
    """tokens --per-head: --generations over the layers' budgets with every layer's head split held at the best
    start's, then half as many over the splits alone, the layers' budgets held at the best found and AdaKV's
    split (profiled on the search samples) among the starts; an interruption in the second half resumes to the
    same winner."""
    settings = SearchSettings(model=model_dirs["qwen3"], budget="20%", optimizer="cmaes", generations=4,
                              population=4, samples=1, length=200, tasks=["passkey"], per_head=True,
                              baselines=["uniform", "adakv"], arms=0)
    loaded, executor = make_executor(settings)
    recording, store = HeadSplits(executor), Store(str(tmp_path / "a.db"))
    straight = run_search(settings, loaded.spec, recording, store)
    assert straight["status"] == "finished" and straight["generations_done"] == 6
    by_generation: dict[int, set] = {}
    for row, digest in store.evaluations(straight["id"]):
        if row.stage == "search":
            by_generation.setdefault(row.generation, set()).add(recording.splits[digest])
    assert len(set().union(*(by_generation[g] for g in range(4)))) == 1  # per layer: one split over the heads
    assert len(by_generation[4] - by_generation[0]) >= 1  # then per KV head, from the second half's first generation
    second = {recording.budgets[digest] for row, digest in store.evaluations(straight["id"])
              if row.stage == "search" and row.generation >= 4}
    assert len(second) == 1  # the layers' budgets held
    from evolkv.config import Budget, ScorerSpec
    from evolkv.search.baselines import baseline

    scorer = ScorerSpec(settings.space.scorer, window=settings.space.window)
    adakv = executor.head_shares([baseline("adakv", loaded.spec, Budget.parse("20%"), scorer)], "search")[0]
    assert max(abs(share - 0.5) for layer in adakv for share in layer) > 0.01  # the heads' importance differs
    assert any(max(abs(a - b) for got, want in zip(split, adakv) for a, b in zip(got, want)) < 1e-5
               for split in by_generation[4])  # transplanted
    assert store.run(straight["id"]).derived["transplanted"] == ["baseline:adakv"]
    on_uniform = [(row, digest) for row, digest in store.evaluations(straight["id"])
                  if row.label == "uniform+split:adakv" and row.split == "validation"]
    assert len(on_uniform) == 1  # uniform's layer budgets with AdaKV's split: a contender on validation
    assert recording.budgets[on_uniform[0][1]] == recording.budgets[
        next(d for row, d in store.evaluations(straight["id"]) if row.label == "baseline:uniform")]
    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:  # calls: baselines, generations 1-5 (0: the scored starts)
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=6), store)
    assert store.run(stopped.value.run_id).generations_done == 5  # inside the second half
    resumed = run_search(settings, loaded.spec, executor, store, run_id=stopped.value.run_id)
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert resumed["winner"]["heldout_objective"] == straight["winner"]["heldout_objective"]


def test_per_head_precisions_refine_the_per_layer_front_and_resume(model_dirs, tmp_path):
    """quant --per-head: --generations of one pair per layer group, then half as many of one pair per KV head
    started from that front; an interruption in the per-head half resumes to the same winner."""
    settings = SearchSettings(model=model_dirs["llama"], budget="100%", mode="quant", optimizer="nsga2", generations=2,
                              population=4, samples=1, length=200, tasks=["passkey"], target_bits=6.0, group_size=32,
                              clusters=2, baselines=["uniform"], per_head=True)
    loaded, executor = make_executor(settings)
    recording, store = Recording(executor), Store(str(tmp_path / "a.db"))
    straight = run_search(settings, loaded.spec, recording, store)
    assert straight["status"] == "finished" and straight["generations_done"] == 3
    by_generation: dict[int, set[bool]] = {}
    for row, digest in store.evaluations(straight["id"]):
        if row.stage == "search":
            by_generation.setdefault(row.generation, set()).add(recording.per_head[digest])
    assert by_generation[0] == by_generation[1] == {False}  # per layer group: every head alike
    assert True in by_generation[2]  # per KV head
    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:  # calls: baselines, sensitivity, then 3 generations' scoring
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=5), store)
    assert store.run(stopped.value.run_id).generations_done >= 2  # in the per-head half
    resumed = run_search(settings, loaded.spec, executor, store, run_id=stopped.value.run_id)
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert [p["bits"] for p in resumed["front"]] == [p["bits"] for p in straight["front"]]


def _arms_search(model_dirs, tmp_path, baselines, **more):
    """A 4-generation --arms 2 --per-head search of the tiny Qwen3 (2 KV heads) against ``baselines`` (``more``:
    other settings): (settings, the loaded model, its executor, the store in tmp_path/a.db, the result, every
    config scored by hash)."""
    settings = SearchSettings(model=model_dirs["qwen3"], budget="20%", optimizer="cmaes", generations=4,
                              population=4, samples=1, length=200, tasks=["passkey"], per_head=True,
                              baselines=baselines, arms=2, **more)
    loaded, executor = make_executor(settings)
    store = Store(str(tmp_path / "a.db"))
    with _recording(executor) as seen:
        result = run_search(settings, loaded.spec, executor, store)
    return settings, loaded, executor, store, result, seen


def test_the_search_starts_each_arm_at_its_best_baseline_continues_the_best_and_resumes(model_dirs, tmp_path):
    """--arms 2: the best baseline's policy (scorer and rule) and the next best distinct one are searched a
    generation each, each started at its baselines, then the arm with the lowest told value continues with the
    rest of the generations; an interruption there resumes to the same winner."""
    from evolkv.search.space import Arm

    settings, loaded, executor, store, straight, seen = _arms_search(model_dirs, tmp_path,
                                                                     ["uniform", "adakv", "globaltopk", "cake"])
    assert straight["status"] == "finished"
    arms = store.run(straight["id"]).derived["arms"]
    assert len(arms["searched"]) == 2 and arms["continued"] in arms["searched"] and arms["first_round"] == 1
    rows = store.evaluations(straight["id"])
    baseline_kl = {row.label: row.objective for row, _ in rows if row.stage == "baseline" and row.split == "search"}
    best = min((label for label in baseline_kl if label != "baseline:full"), key=baseline_kl.get)
    from evolkv.config import Budget, ScorerSpec
    from evolkv.search.baselines import baseline

    scorer = ScorerSpec(settings.space.scorer, window=settings.space.window)
    assert arms["searched"][0] == Arm.of(baseline(best.removeprefix("baseline:"), loaded.spec, Budget.parse("20%"),
                                                  scorer)).name  # the best baseline's arm first
    for generation, name in enumerate(arms["searched"]):  # each arm's generation holds its own policies only
        configs = _generation(rows, seen, generation)
        assert configs and {Arm.of(cfg).name for cfg in configs} == {name}, name
    later = {row.generation for row, _ in rows if row.stage == "search" and row.generation >= 2}
    assert later and min(later) == 2  # the continued arm's generations
    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:  # calls: baselines, generations 1-3, then the second round
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=4), store)
    resumed = run_search(settings, loaded.spec, executor, store, run_id=stopped.value.run_id)
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert store.run(resumed["id"]).derived["arms"] == arms


def test_a_continued_per_prompt_arm_searches_its_priors_per_kv_head_last(model_dirs, tmp_path, monkeypatch):
    """--per-head: a per-prompt arm that continues ends, as the home arm does, with half as many generations
    over each layer's split of its priors over the KV heads, its layers' priors and static share held at the
    arm's best."""
    import math

    from evolkv.search.space import Arm
    from evolkv.search.tokens import TokenSearch

    observe = TokenSearch.observe

    def favour_per_prompt(self, view, X, configs, scores):  # whatever the scores, the per-prompt arm continues
        observe(self, view, X, configs, scores)
        for arm in self.arm_best:
            if not arm.per_prompt:
                self.arm_best[arm] = math.inf

    monkeypatch.setattr(TokenSearch, "observe", favour_per_prompt)
    _, _, _, store, result, seen = _arms_search(model_dirs, tmp_path, ["uniform", "globaltopk"])
    assert result["status"] == "finished"
    arms = store.run(result["id"]).derived["arms"]
    assert arms["continued"].startswith("globaltopk") and arms["rest"] == 2 and arms["head_priors"] == 1
    rows = store.evaluations(result["id"])
    last = _generation(rows, seen, 4)
    assert last and all(Arm.of(cfg).name == arms["continued"] for cfg in last)
    assert len({tuple(layer.budget for layer in cfg.layers) for cfg in last}) == 1  # the layers' priors held
    assert any(layer.heads != (0.5, 0.5) for cfg in last for layer in cfg.layers)  # the heads' split searched


def test_arm_search_tpe_searches_the_arms_in_one_study_started_at_their_baselines(model_dirs, tmp_path):
    """--arm-search tpe: one TPE study over the arms for the generations halving would share, every arm's
    baselines its first trials (the best baseline among them), each candidate a point of the arm it picked; the
    run resumes to the same winner."""
    from evolkv.config import Budget, ScorerSpec
    from evolkv.search.baselines import baseline
    from evolkv.search.space import Arm

    settings, loaded, executor, store, straight, seen = _arms_search(
        model_dirs, tmp_path, ["uniform", "adakv", "globaltopk", "cake"], arm_search="tpe")
    assert straight["status"] == "finished"
    arms = store.run(straight["id"]).derived["arms"]
    assert arms["arm_search"] == "tpe" and arms["generations"] == 4 and len(arms["searched"]) == 2
    assert sum(arms["trials"].values()) == 4 * settings.search.population
    from evolkv.report import continued

    assert continued(arms).startswith("one TPE study over the arms (") and f"{arms['continued']} best" in continued(arms)
    rows = store.evaluations(straight["id"])
    baseline_kl = {row.label.removeprefix("baseline:"): row.objective for row, _ in rows
                   if row.stage == "baseline" and row.split == "search" and row.label != "baseline:full"}
    best = baseline(min(baseline_kl, key=baseline_kl.get), loaded.spec, Budget.parse("20%"),
                    ScorerSpec(settings.space.scorer, window=settings.space.window))
    first = _generation(rows, seen, 0)
    assert best.hash() in {cfg.hash() for cfg in first}  # the best baseline is one of the study's first trials
    for generation in range(4):
        assert {Arm.of(cfg).name for cfg in _generation(rows, seen, generation)} <= set(arms["searched"])
    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=3), store)
    resumed = run_search(settings, loaded.spec, executor, store, run_id=stopped.value.run_id)
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]


def test_head_priors_decode_even_genes_to_the_incumbent_and_weigh_each_kv_head():
    import dataclasses

    import numpy as np
    import torch

    from evolkv.allocators import prior_weights
    from evolkv.config import Budget, ModelSpec, uniform_config
    from evolkv.search.space import HeadPriors

    spec = ModelSpec("toy", "llama", 3, 4, 2, 8, ["full_attention"] * 3)
    incumbent = dataclasses.replace(uniform_config(spec, Budget.parse("20%")), allocation="globaltopk")
    view = HeadPriors(incumbent)
    assert view.n_var == 6 and view.decode(np.zeros(6)) == incumbent and not view.decode(np.zeros(6)).prior
    moved = view.decode(np.array([1.0, -1.0, 0.0, 0.0, 0.0, 0.0]))
    weights = prior_weights(moved)
    assert moved.prior and weights[0, 0] > 1.0 > weights[0, 1]
    assert torch.allclose(weights[1:], torch.ones(2, 2, dtype=weights.dtype))
    assert np.allclose(view.encode(moved), [1.0, -1.0, 0.0, 0.0, 0.0, 0.0])


def test_knobs_search_the_best_arms_rule_with_the_scorer_at_other_knobs(model_dirs, tmp_path):
    """--knobs 1: beside the arms of the best baselines, the best arm's rule with the run's scorer observing 32
    queries is an arm of its own, started at the best baseline's config with that scorer, its ranking prepared at
    prefill with the others."""
    from evolkv.config import ScorerSpec
    from evolkv.search.space import Arm

    settings = SearchSettings(model=model_dirs["qwen3"], budget="20%", optimizer="cmaes", generations=6,
                              population=3, samples=1, length=200, tasks=["passkey"],
                              baselines=["uniform", "globaltopk"], arms=2, knobs=1)
    loaded, executor = make_executor(settings)
    assert "snapkv:32:5" in executor.evaluator.scorers
    store = Store(str(tmp_path / "k.db"))
    with _recording(executor) as seen:
        result = run_search(settings, loaded.spec, executor, store)
    assert result["status"] == "finished"
    arms = store.run(result["id"]).derived["arms"]
    assert len(arms["searched"]) == 3 and arms["searched"][2] == "globaltopk:snapkv:32:5"  # names with the knobs
    assert arms["searched"][0] == "globaltopk:snapkv:8:5"  # where two arms would share one
    rows = store.evaluations(result["id"])
    third = _generation(rows, seen, 2)
    assert third and {Arm.of(cfg) for cfg in third} == {Arm(ScorerSpec("snapkv", window=32), "globaltopk")}
