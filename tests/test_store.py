"""Store contract: the same checks for every backend URL given (SQLite here; PostgreSQL joins in CI later)."""

import math

import pytest

from evolkv.config import Budget, ModelSpec, uniform_config
from evolkv.errors import StoreError
from evolkv.evaluators.evaluator import Score
from evolkv.store.models import Stage
from evolkv.store.store import Store

SPEC = ModelSpec("toy", "llama", 2, 4, 2, 8, ["full_attention"] * 2)


def _run(store, run_id="run1", budget="10%"):
    store.create_run(run_id, SPEC, Budget.parse(budget), "cmaes", 0, {"budget": budget})
    return uniform_config(SPEC, Budget.parse(budget))


def test_runs_candidates_evaluations_and_winner(db_url):
    store = Store(db_url)
    cfg = _run(store)
    store.add_evaluation("run1", cfg, None, "baseline:uniform", "search", Score(0.5, {"kl": 0.5}), stage=Stage.BASELINE)
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


def test_a_population_is_stored_in_one_write_and_found_in_one_query(db_url):
    store = Store(db_url)
    cfg = _run(store)
    other = uniform_config(SPEC, Budget.parse("20%"))
    store.add_evaluations("run1", [(cfg, 1, "search", "search", Score(0.3), "ray:2xgpu", Stage.SEARCH),
                                   (other, 1, "search", "search", Score(0.2), "ray:2xgpu", Stage.SEARCH),
                                   (cfg, 1, "search", "validation", Score(0.4), "ray:2xgpu", Stage.SEARCH)])
    found = store.find_many("run1", [cfg.hash(), other.hash(), "0" * 24], "search")
    assert set(found) == {cfg.hash(), other.hash()}
    assert [r.objective for r in found[cfg.hash()]] == [0.3] and found[other.hash()][0].worker == "ray:2xgpu"
    assert store.find_evaluations("run1", cfg.hash(), "validation")[0].objective == 0.4
    store.add_evaluations("run1", [])  # nothing to store is no write


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
        store.run("fff")
    for pattern in ("zzz", "%", "", "ab_1", "abc%"):  # a prefix is literal hex, never a LIKE pattern
        with pytest.raises(StoreError, match="not a run id"):
            store.run(pattern)


@pytest.mark.parametrize("url", ["notadb://x", "postgresql+nodriver://u@localhost/db"])
def test_bad_urls_raise_store_error(url):
    with pytest.raises(StoreError):
        Store(url)


def test_unwritable_path_raises_store_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError):
        Store(str(blocker / "sub" / "evolkv.db"))


def test_a_database_made_before_migrations_is_upgraded_not_broken(db_url):
    """evolkv 0.1 created its tables directly (no alembic_version, no front_points): opening it upgrades it."""
    import sqlalchemy as sa

    from evolkv.store.models import Base

    from sqlalchemy.orm import Session

    from evolkv.store.models import ModelRow, RunRow

    engine = sa.create_engine(db_url)
    old_tables = [t for name, t in Base.metadata.tables.items() if name != "front_points"]
    Base.metadata.create_all(engine, tables=old_tables)
    with Session(engine) as session:  # a run 0.1 stored
        session.add(ModelRow(id=1, name="toy", fingerprint=SPEC.fingerprint, spec=SPEC.to_dict()))
        session.add(RunRow(id="old", model_id=1, mode="budget", budget="10%", budget_kind="fraction",
                           budget_value=0.1, optimizer="cmaes", seed=0, settings={}, status="finished",
                           generations_done=3))
        session.commit()
    engine.dispose()
    store = Store(db_url)
    assert store.run("old").status == "finished" and store.runs()[0]["id"] == "old"
    cfg = uniform_config(SPEC, Budget.parse("10%"))
    store.set_winner("old", cfg, 0.5, 0.4, {})
    with sa.create_engine(db_url).connect() as connection:
        assert connection.execute(sa.text("select version_num from evolkv_schema_version")).scalar() == "0004"
        assert "front_points" in sa.inspect(connection).get_table_names()
    store.set_front("old", [(cfg, 0.5, 16.0, 0.4, {"kl": 0.4}, True)])
    point, config = Store(db_url).front("old")[0]
    assert point["winner"] and point["bits"] == 16.0 and config.hash() == cfg.hash()


def test_schema_from_migrations_equals_the_models(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from evolkv.store.models import Base

    store = Store(db_url)
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": "evolkv_schema_version"})
        assert compare_metadata(context, Base.metadata) == []


def _writer(url, run_id, count):
    store = Store(url)
    cfg = _run(store, run_id)
    for i in range(count):
        store.add_evaluation(run_id, cfg, i, "search", "search", Score(float(i)))
    store.update_run(run_id, status="finished")


def test_two_writers_on_one_sqlite_file_both_complete(tmp_path):
    import multiprocessing

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_writer, args=(url, f"run{i}", 150)) for i in range(2)]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
    assert [w.exitcode for w in writers] == [0, 0]
    store = Store(url)
    for i in range(2):
        assert store.run(f"run{i}").status == "finished"
        assert len(store.evaluations(f"run{i}")) == 150
