"""Store contract: the same checks for every backend URL given (SQLite here; PostgreSQL joins in CI later)."""

import math

import pytest

from evolkv.config import Budget, ModelSpec, uniform_config
from evolkv.errors import StoreError
from evolkv.evaluators.evaluator import Score
from evolkv.store.store import Store

SPEC = ModelSpec("toy", "llama", 2, 4, 2, 8, ["full_attention"] * 2)


def _run(store, run_id="run1", budget="10%"):
    store.create_run(run_id, SPEC, Budget.parse(budget), "cmaes", 0, {"budget": budget})
    return uniform_config(SPEC, Budget.parse(budget))


def test_runs_candidates_evaluations_and_winner(db_url):
    store = Store(db_url)
    cfg = _run(store)
    store.add_evaluation("run1", cfg, -1, "baseline:uniform", "search", Score(0.5, {"kl": 0.5}))
    store.add_evaluation("run1", cfg, 0, "search", "search", Score(0.5, {"kl": 0.5}))
    store.add_evaluation("run1", cfg, 0, "search", "search", Score(math.inf, status="failed", reason="OOM"))
    rows = store.find_evaluations("run1", cfg.hash(), "search")
    assert len(rows) == 3 and rows[2].status == "failed" and rows[2].objective is None
    store.set_winner("run1", cfg, 0.5, 0.4, {"kl": 0.4})
    store.update_run("run1", status="finished", best_objective=0.5)
    detail = Store(db_url).detail("run1")  # a fresh connection sees it all
    assert detail["status"] == "finished" and detail["winner"]["heldout_objective"] == 0.4
    assert detail["generations"][0]["failed"] == 1
    assert detail["results"]["baseline:uniform"]["search"]["objective"] == 0.5
    assert Store(db_url).runs()[0]["id"] == "run1"


def test_candidates_are_deduplicated(db_url):
    store = Store(db_url)
    cfg = _run(store)
    for _ in range(3):
        store.add_evaluation("run1", cfg, 0, "search", "search", Score(0.1))
    from sqlalchemy import func, select

    from evolkv.store.models import CandidateRow

    with store._session() as session:
        assert session.scalar(select(func.count()).select_from(CandidateRow)) == 1


def test_lookup_picks_largest_budget_at_or_under(db_url):
    store = Store(db_url)
    for run_id, budget, heldout in [("a", "5%", 0.3), ("b", "10%", 0.2), ("c", "20%", 0.1)]:
        cfg = _run(store, run_id, budget)
        store.set_winner(run_id, cfg, heldout, heldout, {})
    cfg, info = store.lookup("toy", Budget.parse("15%"))
    assert info["run_id"] == "b" and str(cfg.budget) == "10%"
    assert store.lookup("toy", Budget.parse("1%")) is None
    assert store.lookup("other", Budget.parse("50%")) is None


def test_unknown_and_ambiguous_run_ids(db_url):
    store = Store(db_url)
    _run(store, "abc1")
    _run(store, "abc2")
    assert store.run("abc1").id == "abc1"
    with pytest.raises(StoreError, match="ambiguous"):
        store.run("abc")
    with pytest.raises(StoreError, match="no run"):
        store.run("zzz")


@pytest.mark.parametrize("url", ["notadb://x", "postgresql+nodriver://u@localhost/db"])
def test_bad_urls_raise_store_error(url):
    with pytest.raises(StoreError):
        Store(url)


def test_unwritable_path_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        Store(str(blocker / "sub" / "evolkv.db"))
