"""Winners that hold on unseen data: three disjoint splits, draws from a search pool, the worst task counting,
and a winner chosen on validation that is never worse there than the best baseline."""

import json
import math

import pytest

from evolkv.evaluators.evaluator import Score
from evolkv.evaluators.tasks import from_jsonl, load_tasks
from evolkv.executors import draw_indices, draw_split
from evolkv.pools import make_executor
from evolkv.search.loop import SearchSettings, run_search
from evolkv.search.selection import admits, metric_guard
from evolkv.search.tokens import TokenSearch
from evolkv.store.models import Stage
from evolkv.store.store import Store


def test_the_three_splits_are_disjoint(loaded, tmp_path):
    tokenizer = loaded["llama"].tokenizer
    texts = {split: {s.context + s.question for s in load_tasks(["passkey", "multikey"], 6, 200, 0, split, tokenizer)}
             for split in ("search", "validation", "heldout")}
    assert all(len(v) == 12 for v in texts.values())
    assert not texts["search"] & texts["validation"] and not texts["search"] & texts["heldout"]
    assert not texts["validation"] & texts["heldout"]
    path = tmp_path / "t.jsonl"
    path.write_text("".join(json.dumps({"context": f"c{i}", "question": "q", "answers": [f"a{i}"]}) + "\n"
                            for i in range(60)))
    parts = {split: {s.uid for s in from_jsonl(path, split)} for split in ("search", "validation", "heldout")}
    assert sum(len(p) for p in parts.values()) == 60 and all(parts.values())
    assert not (parts["search"] & parts["validation"] or parts["search"] & parts["heldout"]
                or parts["validation"] & parts["heldout"])


def test_draws_take_samples_of_every_task_from_the_pool(loaded):
    pool = load_tasks(["passkey", "multikey"], 5, 100, 0, "search", loaded["llama"].tokenizer)
    first, again, second = (draw_indices(pool, 2, 0, draw_split(n)) for n in (0, 0, 1))
    assert first == again and first != second and first == sorted(first)
    assert [pool[i].task for i in first].count("passkey") == 2 and len(first) == 4


def test_aggregates_relative_to_uniform():
    settings = SearchSettings(aggregate="worst")
    strategy = TokenSearch.__new__(TokenSearch)
    strategy.settings = settings
    ref = Score(0.5, {"kl": 0.5, "a/kl": 0.9, "b/kl": 0.1})
    eps = 0.05 * 0.5
    # halves task a's loss, doubles task b's: its mean is better, its worst task ~1.8x uniform's after smoothing
    cand = Score(0.3, {"kl": 0.3, "a/kl": 0.9 / 2, "b/kl": 0.2})
    worst = (0.2 + eps) / (0.1 + eps)
    assert strategy.relative(cand, ref) == pytest.approx(worst)
    assert strategy.relative(ref, ref) == pytest.approx(1.0)
    settings.scoring.aggregate = "guarded"  # the mean ratio, plus 10 per unit of the worst task past 1.1
    assert strategy.relative(ref, ref) == pytest.approx(1.0)
    assert strategy.relative(cand, ref) == pytest.approx((0.3 + eps) / (0.5 + eps) + 10 * (worst - 1.1))
    assert strategy.relative(cand, ref) > 1  # a large loss on one task is not paid for by the mean
    # a small loss on b (5%, inside the 10% tolerance) with a large gain on a: told its mean ratio alone
    small = Score(0.3, {"kl": 0.3, "a/kl": 0.5, "b/kl": 0.1 + 0.05 * (0.1 + eps)})
    assert strategy.relative(small, ref) == pytest.approx((0.3 + eps) / (0.5 + eps))
    settings.scoring.tolerance = 0.0
    assert strategy.relative(small, ref) > (0.3 + eps) / (0.5 + eps)
    settings.scoring.aggregate = "mean"
    assert strategy.relative(cand, ref) == 0.3
    assert strategy.relative(Score(float("inf"), status="failed"), ref) == float("inf")


def test_only_a_config_better_on_the_typical_sample_displaces_uniform():
    """The validation choice's guard: a lower mean KL made by a few samples does not ship."""
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR, aggregate as mean_scores, SampleScores
    from evolkv.search.objectives import typical_ratio

    def scored(*per_sample):  # per-sample KLs of one config -> its Score, as the evaluator aggregates them
        values = {"kl": list(per_sample), "logkl": [math.log(k + LOG_KL_FLOOR) for k in per_sample]}
        return mean_scores(SampleScores([values], {}))[0]

    uniform = scored(0.2, 0.2, 0.2, 0.2, 1.0)
    lucky = scored(0.3, 0.3, 0.3, 0.3, 0.5)  # lower mean (0.34 vs 0.36), worse on 4 samples of 5
    steady = scored(0.15, 0.15, 0.15, 0.15, 0.9)
    table = {"baseline:uniform": uniform, "finalist:0": lucky, "finalist:1": steady}
    assert lucky.objective < uniform.objective and typical_ratio(lucky, uniform) > 1
    assert typical_ratio(steady, uniform) < 1 and typical_ratio(uniform, uniform) == pytest.approx(1)
    assert [admits(label, table) for label in table] == [True, False, True]
    legacy = {"baseline:uniform": Score(0.36, {"kl": 0.36}), "finalist:0": Score(0.26, {"kl": 0.26})}
    assert admits("finalist:0", legacy)  # runs stored before per-sample logs: the mean alone


def _count_prefills(executor) -> list[int]:
    """The sizes of the sample lists ``executor``'s evaluator prefills, in order, as they are prefilled."""
    prepared: list[int] = []
    original = executor.evaluator.prepare
    executor.evaluator.prepare = lambda samples, progress=None: prepared.append(len(samples)) or original(samples,
                                                                                                         progress)
    return prepared


@pytest.mark.parametrize("choose", ["mean", "typical"])
def test_the_winner_is_chosen_on_validation_and_never_loses_there(model_dirs, tmp_path, choose):
    """A search on draws from a pool: every generation is scored on a fresh draw beside uniform (its
    reference), the pool is prefilled once, the winner is the best on validation among the finalists and the
    baselines, and runs show / lookup / export mark a baseline that won."""
    settings = SearchSettings(model=model_dirs["llama"], budget="20%", generations=3, population=4, samples=1,
                              pool=3, validation_samples=2, heldout_samples=3, length=200,
                              tasks=["passkey", "multikey"], finalists=2, choose=choose)
    loaded, executor = make_executor(settings)
    prepared = _count_prefills(executor)
    store = Store(str(tmp_path / "r.db"))
    detail = run_search(settings, loaded.spec, executor, store)
    assert detail["status"] == "finished"
    assert prepared == [6, 4, 6]  # the pool (3 per task), validation (2), held-out (3 per task): once each
    rows = [row for row, _ in store.evaluations(detail["id"])]
    draws = {row.split for row in rows if row.stage == Stage.SEARCH}
    assert draws == {"search@0", "search@1", "search@2"}
    assert {row.split for row in rows if row.label == "baseline:uniform"} >= draws  # the reference of each draw
    results = detail["results"]
    contenders = [label for label in results if label.startswith(("baseline:", "finalist:")) and label != "baseline:full"]
    assert any(label.startswith("finalist:") for label in contenders)
    from evolkv.evaluators.evaluator import Score
    from evolkv.search.objectives import aggregate, typical_ratio

    def score(label):
        got = results[label]["validation"]
        return Score(got["objective"], {k: v for k, v in got.items() if k != "objective"})

    def relative(label):  # the rule TokenSearch.relative applies (the run's --aggregate, guarded by default)
        return aggregate(score(label), score("baseline:uniform"), settings.scoring.aggregate, settings.scoring.tolerance)

    def typical(label):  # the geometric mean of the per-sample KL ratios to uniform
        return typical_ratio(score(label), score("baseline:uniform"))
    # --choose typical: only a contender better than uniform on the typical validation sample may displace it
    admitted = [label for label in contenders
                if choose == "mean" or label == "baseline:uniform" or typical(label) < 1]
    winner = relative("winner")
    assert all(winner <= relative(label) + 1e-12 for label in admitted)
    selection = detail["winner"]["selection"]
    assert selection["validation_typical_ratio"] == pytest.approx(typical("winner"))
    assert set(selection.get("passed_over", {})) == {label for label in contenders
                                                      if relative(label) < winner and label not in admitted}
    assert all("heldout" in results[label] for label in selection.get("passed_over", {}))
    assert set(results["winner"]) >= {"search", "validation", "heldout"}
    source = detail["winner"]["source"]
    if source != "search":  # the winner is that baseline's config
        assert results["winner"]["validation"]["objective"] == results[source]["validation"]["objective"]


def test_the_metric_rule_ships_the_best_kl_whose_answers_are_not_worse_than_uniforms():
    """--choose metric: contenders better than uniform on validation KL are tried best first; one whose greedy
    task metric on validation is below uniform's is passed over, the first not below it ships."""
    from evolkv.evaluators.tasks import task_metric

    strategy = TokenSearch.__new__(TokenSearch)
    strategy.settings = SearchSettings(aggregate="mean", choose="metric")
    scored = {"baseline:uniform": Score(0.5, {"kl": 0.5}), "baseline:pyramid": Score(0.9, {"kl": 0.9}),
              "finalist:0": Score(0.2, {"kl": 0.2}), "finalist:1": Score(0.3, {"kl": 0.3}),
              "finalist:2": Score(0.4, {"kl": 0.4})}
    answers = {"baseline:uniform": 0.50, "finalist:0": 0.40, "finalist:1": 0.55, "finalist:2": 0.9}

    class Job:  # the loop's task_metrics, as code samples' edit similarity
        decoded: list[str] = []

        def task_metrics(self, configs, labels, split):
            assert split == "validation"
            self.decoded += labels
            return [{"sim": answers[label], "code/sim": answers[label], "em": 0.0, "code/em": 0.0} for label in labels]

    job = Job()
    contenders = dict.fromkeys(scored)
    assert metric_guard(job, contenders, scored, strategy.relative) == ("finalist:1", {"baseline:uniform": 0.5,
                                                                             "finalist:0": 0.4, "finalist:1": 0.55})
    assert job.decoded == ["baseline:uniform", "finalist:0", "finalist:1"]  # finalist:2 and pyramid never decoded
    answers["finalist:1"] = 0.45
    assert metric_guard(Job(), contenders, scored, strategy.relative)[0] == "finalist:2"
    answers["finalist:2"] = 0.1
    assert metric_guard(Job(), contenders, scored, strategy.relative)[0] == "baseline:uniform"
    # several tasks: each task's own metric, equal weights
    assert task_metric({"em": 0.5, "sim": 0.1, "code/sim": 0.6, "code/em": 0.0, "passkey/em": 1.0,
                        "passkey/sim": 0.2}) == pytest.approx(0.8)


def test_a_search_that_chooses_by_the_task_metric_stores_what_it_decoded(model_dirs, tmp_path):
    """--choose metric end to end: uniform's validation answers are decoded and stored, and a winner other than
    uniform answers no worse than uniform on validation."""
    from evolkv.evaluators.tasks import task_metric

    settings = SearchSettings(model=model_dirs["llama"], budget="20%", generations=2, population=4, samples=1,
                              validation_samples=2, heldout_samples=1, length=200, tasks=["passkey", "code"],
                              finalists=2, choose="metric")
    loaded, executor = make_executor(settings)
    store = Store(str(tmp_path / "m.db"))
    detail = run_search(settings, loaded.spec, executor, store)
    assert detail["status"] == "finished"
    decoded = {row.label: row.metrics for row, _ in store.evaluations(detail["id"]) if row.split == "validation/em"}
    assert "baseline:uniform" in decoded
    check = detail["winner"]["selection"]["validation_task_metric"]
    assert check == pytest.approx({label: task_metric(metrics) for label, metrics in decoded.items()})
    source = detail["winner"]["source"]
    if source != "baseline:uniform":
        shipped = source if source.startswith("baseline:") else next(label for label in check
                                                                      if label.startswith("finalist:"))
        assert check[shipped] >= check["baseline:uniform"]


def test_another_budgets_winner_joins_the_first_generation_with_its_shape(monkeypatch):
    """--budgets: the previous (larger) budget's winner, its per-layer shares kept and its total scaled to this
    budget, is the second start of the first generation (after the best baseline)."""
    import dataclasses

    import numpy as np

    from evolkv.config import Budget, ModelSpec, ScorerSpec
    from evolkv.search.baselines import baseline

    spec = ModelSpec("toy", "llama", 4, 8, 2, 16, ["full_attention"] * 4)
    scorer = ScorerSpec("snapkv", window=8)
    settings = SearchSettings(budget="10%", per_head=True, population=4, length=1000)
    strategy = TokenSearch(settings, spec, Budget.parse("10%"), scorer)
    strategy.observe_baselines({name: Score(1.0 + i, {"kl": 1.0 + i}) for i, name in enumerate(strategy.baselines)})
    wide = baseline("uniform", spec, Budget.parse("25%"), scorer)
    shares = [0.10, 0.20, 0.30, 0.40]
    layers = [dataclasses.replace(layer, budget=0.25 * 4 * share, heads=(0.7, 0.3))
              for layer, share in zip(wide.layers, shares)]
    strategy.warm_start(dataclasses.replace(wide, layers=tuple(layers)))
    seeded = strategy.seeds[1]
    assert seeded.budget == Budget.parse("10%")
    assert np.allclose([layer.budget for layer in seeded.layers], [0.10 * 4 * s for s in shares])
    assert all(layer.heads == (0.7, 0.3) for layer in seeded.layers)
    import evolkv.search.tokens as tokens

    made, original = {}, tokens.make_optimizer
    monkeypatch.setattr(tokens, "make_optimizer",
                        lambda *args, **kwargs: made.update(kwargs) or original(*args, **kwargs))
    view, _, _ = next(strategy.blocks(None))
    assert np.allclose(made["x0"][1], np.clip(view.encode(seeded), *view.bounds))  # the second start
    # another scorer's winner does not fit this space: ignored
    before = list(strategy.seeds)
    strategy.warm_start(dataclasses.replace(seeded, scorer=ScorerSpec("keynorm", window=8)))
    assert strategy.seeds == before


# -- --choose paired: per-sample statistics on every unbiased sample -------------------------------------------


def _per_sample(values):
    return Score(sum(values) / len(values), {"kl": sum(values) / len(values), "per_sample": list(values)})


def test_paired_choice_counts_a_baselines_search_samples_and_ships_a_baseline_when_within_noise():
    """The code 10% case: a baseline far better on the search samples but unlucky on a few validation samples
    leads once its unbiased search samples count; a searched config that only ties it on validation does not ship."""
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR
    from evolkv.search.selection import choose_paired

    uniform_val, uniform_search = [0.5, 0.6, 0.4, 0.5], [0.5] * 12
    validation = {"baseline:uniform": _per_sample(uniform_val),
                  "baseline:kvzip": _per_sample([0.3, 0.9, 0.25, 0.3]),  # one bad validation sample
                  "baseline:streaming": _per_sample([0.35, 0.4, 0.3, 0.35]),
                  "finalist:0": _per_sample([0.28, 0.45, 0.22, 0.3])}
    search = {"baseline:uniform": _per_sample(uniform_search), "baseline:kvzip": _per_sample([0.25] * 12),
              "baseline:streaming": _per_sample([0.55] * 12)}
    label, evidence = choose_paired(validation, search, LOG_KL_FLOOR)
    assert evidence["samples"]["baseline:kvzip"] == 16 and evidence["samples"]["finalist:0"] == 4
    assert label == "baseline:kvzip"  # on validation means alone streaming (0.35) beats kvzip (0.44)
    assert evidence["ratio_to_uniform"]["baseline:kvzip"] < evidence["ratio_to_uniform"]["baseline:streaming"]
    assert "vs_runner_up" in evidence and "vs_uniform" in evidence and evidence["reason"]


def test_a_searched_leader_ships_only_beyond_the_paired_interval():
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR
    from evolkv.search.selection import choose_paired

    n = 24
    uniform = [0.5 + 0.1 * (i % 3) for i in range(n)]
    base = {"baseline:uniform": _per_sample(uniform)}
    search = {"baseline:uniform": _per_sample(uniform)}
    noisy = [u * (0.7 if i % 2 else 1.25) for i, u in enumerate(uniform)]  # better on average, not on every sample
    label, evidence = choose_paired({**base, "finalist:0": _per_sample(noisy)}, search, LOG_KL_FLOOR)
    assert label == "baseline:uniform" and evidence["within_noise"] and "within noise" in evidence["reason"]
    steady = [u * 0.8 for u in uniform]  # better on every sample
    label, evidence = choose_paired({**base, "finalist:0": _per_sample(steady)}, search, LOG_KL_FLOOR)
    assert label == "finalist:0" and evidence["vs_best_baseline"]["high"] < 1.0
    assert not evidence["within_noise_of_uniform"]


def test_a_searched_leader_tied_with_a_baseline_ships_when_it_beats_uniform_and_uniform_is_the_simplest():
    """Within noise of the best baseline but better than uniform on every sample, the searched leader ships (the
    lowest mean is the best estimate); a baseline that leads but is within noise of uniform gives way to uniform."""
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR
    from evolkv.search.selection import choose_paired
    from evolkv.search.tokens import _passed_over_reasons

    n = 24
    uniform = [0.5 + 0.1 * (i % 3) for i in range(n)]
    base = {"baseline:uniform": _per_sample(uniform)}
    search = {"baseline:uniform": _per_sample(uniform)}
    adakv = [u * 0.8 for u in uniform]
    leader = [u * (0.55 if i % 2 else 0.98) for i, u in enumerate(uniform)]  # ties adakv, beats uniform
    label, evidence = choose_paired({**base, "baseline:adakv": _per_sample(adakv), "finalist:0": _per_sample(leader)},
                                    {**search, "baseline:adakv": _per_sample(adakv)}, LOG_KL_FLOOR)
    assert label == "finalist:0" and evidence["within_noise"] and evidence["vs_best_baseline"]["high"] >= 1.0
    assert "beats uniform beyond noise" in evidence["reason"]
    noisy = [u * (0.7 if i % 2 else 1.25) for i, u in enumerate(uniform)]  # leads uniform on average only
    label, evidence = choose_paired({**base, "baseline:cake": _per_sample(noisy)},
                                    {**search, "baseline:cake": _per_sample(noisy)}, LOG_KL_FLOOR)
    assert evidence["leader"] == "baseline:cake" and label == "baseline:uniform"
    assert evidence["simplest"] == "baseline:cake" and "uniform, the simplest config, ships" in evidence["reason"]
    reasons = _passed_over_reasons({"baseline:cake": 0.95}, label, evidence)
    assert "within noise of uniform" in reasons["baseline:cake"]


def test_close_calls_name_the_contenders_within_noise_of_the_leader_and_pooled_scores_decide():
    """A searched leader tied with a baseline on a few validation samples is raced; after more samples where it
    is better on every one, it ships."""
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR
    from evolkv.search.selection import choose_paired, close_calls, pooled

    uniform = [0.5, 0.6, 0.4, 0.5]
    validation = {"baseline:uniform": _per_sample(uniform),
                  "baseline:adakv": _per_sample([0.45, 0.5, 0.38, 0.45]),
                  "baseline:streaming": _per_sample([2.0, 2.5, 1.9, 2.2]),  # far behind: not raced
                  "finalist:0": _per_sample([0.3, 0.7, 0.2, 0.5])}
    search = {"baseline:uniform": _per_sample(uniform), "baseline:adakv": _per_sample([0.45, 0.5, 0.38, 0.45]),
              "baseline:streaming": _per_sample([2.0] * 4)}
    label, evidence = choose_paired(validation, search, LOG_KL_FLOOR)
    assert evidence["leader"] == "finalist:0" and evidence["within_noise"] and label == "baseline:adakv"
    close = close_calls(validation, search, LOG_KL_FLOOR)
    assert close[0] == "finalist:0" and "baseline:adakv" in close and "baseline:uniform" in close
    assert "baseline:streaming" not in close
    more_uniform = [0.5 + 0.05 * (i % 4) for i in range(16)]
    more = {"baseline:uniform": _per_sample(more_uniform),
            "baseline:adakv": _per_sample([u * 0.9 for u in more_uniform]),
            "finalist:0": _per_sample([u * 0.6 for u in more_uniform])}
    raced = {name: pooled(validation[name], more[name]) for name in more}
    assert len(raced["finalist:0"].metrics["per_sample"]) == 20
    label, evidence = choose_paired(raced, search, LOG_KL_FLOOR)
    assert label == "finalist:0" and evidence["vs_best_baseline"]["samples"] == 20
    # a clear leader is not raced
    clear = {**validation, "finalist:0": _per_sample([u * 0.3 for u in uniform])}
    clear["baseline:adakv"] = _per_sample([u * 1.5 for u in uniform])
    assert close_calls(clear, {"baseline:uniform": search["baseline:uniform"]}, LOG_KL_FLOOR) == []


def test_the_race_split_holds_validation_samples_past_the_first_and_leaves_validation_as_it_was():
    from evolkv.executors import RACE, build_samples
    from evolkv.settings import SearchSettings
    from evolkv.testing import char_tokenizer

    tokenizer = char_tokenizer()
    plain = build_samples(SearchSettings(tasks=["passkey", "prose"], samples=2, length=64), tokenizer)
    raced = build_samples(SearchSettings(tasks=["passkey", "prose"], samples=2, length=64, race=3), tokenizer)
    assert [s.uid for s in raced["validation"]] == [s.uid for s in plain["validation"]]
    assert len(raced[RACE]) == 6 and plain[RACE] == []
    assert not {s.uid for s in raced[RACE]} & {s.uid for s in raced["validation"]}


def test_a_close_call_is_raced_on_more_validation_samples_prefilled_only_then(model_dirs, tmp_path, monkeypatch):
    """The contenders ``close_calls`` names (here: every baseline, whatever the tiny model's values) are scored on
    the race split, prefilled then, once; the choice is made on validation and race samples pooled, and the
    evidence says what was raced."""
    import evolkv.search.tokens as tokens

    monkeypatch.setattr(tokens, "close_calls", lambda validation, search, floor: ["baseline:adakv", "baseline:pyramid",
                                                                                 "baseline:uniform"])
    settings = SearchSettings(model=model_dirs["llama"], budget="20%", generations=2, population=4, samples=1,
                              validation_samples=1, heldout_samples=1, race=2, length=200,
                              tasks=["passkey", "multikey"], finalists=2, baselines=["uniform", "pyramid", "adakv"])
    loaded, executor = make_executor(settings)
    prepared = _count_prefills(executor)
    store = Store(str(tmp_path / "r.db"))
    detail = run_search(settings, loaded.spec, executor, store)
    assert detail["status"] == "finished"
    evidence = detail["winner"]["selection"]["selection_evidence"]
    race = evidence["race"]
    assert race["samples"] == 4 and "baseline:uniform" in race["configs"] and len(race["configs"]) >= 2
    assert prepared == [2, 2, 2, 4]  # search, validation, held-out, then the race split once
    rows = [row for row, _ in store.evaluations(detail["id"])]
    assert {row.label for row in rows if row.split == "race"} == set(race["configs"])
    assert set(evidence["samples"]) == set(race["configs"])
    assert all(n == 2 + 4 + 2 for n in evidence["samples"].values())  # validation, race, and a baseline's search
    stages = [stage["stage"] for stage in store.run(detail["id"]).timings["stages"]]
    assert "race" in stages and "prefill race" in stages


def test_every_contender_with_a_better_validation_value_says_why_it_did_not_ship():
    from evolkv.search.tokens import _passed_over_reasons

    evidence = {"ratio_to_uniform": {"finalist:0": 0.9, "baseline:adakv": 0.95, "baseline:uniform": 1.0,
                                     "finalist:1": 1.02},
                "leader": "finalist:0", "within_noise": True}
    reasons = _passed_over_reasons({"finalist:0": 0.8, "finalist:1": 0.97, "finalist:2": 0.9}, "baseline:adakv",
                                   evidence)
    assert "within noise" in reasons["finalist:0"]
    assert "1.020" in reasons["finalist:1"] and "0.950" in reasons["finalist:1"]
    assert "raced" in reasons["finalist:2"]


def test_fewer_paired_samples_than_the_minimum_never_ship_a_searched_config():
    """A bootstrap of one gap has no width: a searched config better on the one validation sample is within
    noise, and a close call."""
    from evolkv.evaluators.evaluator import LOG_KL_FLOOR
    from evolkv.search.selection import choose_paired, close_calls

    validation = {"baseline:uniform": _per_sample([0.5]), "finalist:0": _per_sample([0.1])}
    label, evidence = choose_paired(validation, {}, LOG_KL_FLOOR)
    assert label == "baseline:uniform" and evidence["within_noise"] and "fewer than 4 samples" in evidence["reason"]
    assert close_calls(validation, {}, LOG_KL_FLOOR) == ["finalist:0", "baseline:uniform"]
