"""Hostile and careless input of every kind: one `error:` line, exit code 2, no traceback, the store unchanged;
read paths that never write; signals; and the properties behind it."""

from __future__ import annotations

import json
import math
import warnings

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import evolkv
from evolkv.cli import app
from evolkv.config import Budget, KVConfig, ModelSpec, uniform_config
from evolkv.errors import BudgetError, ConfigError, StoreError, TaskError
from evolkv.evaluators.tasks import from_jsonl
from evolkv.search.space import BudgetSpace
from evolkv.store.store import Store

SPEC = ModelSpec("toy", "llama", 4, 8, 2, 16, ["full_attention"] * 4)
runner = CliRunner()


def invoke(*args, **kwargs):
    return runner.invoke(app, [str(a) for a in args], **kwargs)


def one_line_error(result) -> str:
    assert result.exit_code == 2, result.output[-2000:]
    assert "Traceback" not in result.output
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("error:"), lines
    return lines[-1]


# -- configs -----------------------------------------------------------------------------------------------


def test_deeply_nested_binary_and_misspelt_configs_are_one_line(tmp_path):
    nested, binary, typo = tmp_path / "nested.json", tmp_path / "binary.json", tmp_path / "typo.json"
    nested.write_text("[" * 100_000)
    binary.write_bytes(bytes(range(256)) * 4)
    data = uniform_config(SPEC, Budget.parse("10%")).to_dict()
    data["layers"][0]["budgte"] = 0.2
    typo.write_text(json.dumps(data))
    assert "nested too deeply" in one_line_error(invoke("eval", "--config", nested))
    assert "not UTF-8" in one_line_error(invoke("eval", "--config", binary))
    assert "unknown field 'budgte'" in one_line_error(invoke("eval", "--config", typo))


def test_integral_float_bits_load_and_a_config_must_agree_with_itself():
    data = uniform_config(SPEC, Budget.parse("10%"), k_bits=4, v_bits=2).to_dict()
    data["layers"] = [{**layer, "k_bits": 4.0, "group_size": 32.0} for layer in data["layers"]]
    assert KVConfig.from_dict(data).layers[0].k_bits == 4
    data["layers"][0]["k_bits"] = 4.5
    with pytest.raises(ConfigError, match="whole number"):
        KVConfig.from_dict(data)
    data = uniform_config(SPEC, Budget.parse("100%")).to_dict()
    data["budget"] = "5%"
    with pytest.raises(ConfigError, match="'budget' says 5% but its layers keep 100%"):
        KVConfig.from_dict(data)


def _valid_dict() -> dict:
    space = BudgetSpace(SPEC, Budget.parse("20%"), per_head=True)
    import numpy as np

    return space.decode(np.linspace(-2, 2, space.n_var)).with_provenance(run_id="abc").to_dict()


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                      max_size=4), max_leaves=20)


@settings(max_examples=200, deadline=None)
@given(value=json_values)
def test_random_json_is_a_config_error_and_nothing_else(value):
    with pytest.raises(ConfigError):
        KVConfig.from_json(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_configs_load_or_raise_config_error(data):
    config = _valid_dict()
    parent, key, node = None, None, config
    for _ in range(data.draw(st.integers(1, 4))):  # walk to a random place in the document
        if isinstance(node, dict) and node:
            step = data.draw(st.sampled_from(sorted(node)))
        elif isinstance(node, list) and node:
            step = data.draw(st.integers(0, len(node) - 1))
        else:
            break
        parent, key, node = node, step, node[step]
    if parent is not None:
        if isinstance(parent, dict) and data.draw(st.booleans()):
            del parent[key]
        else:
            parent[key] = data.draw(json_values)
    try:
        cfg = KVConfig.from_json(json.dumps(config))
    except ConfigError:
        return
    assert KVConfig.from_json(cfg.to_json()) == cfg


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_config_json_round_trips(data):
    per_head = data.draw(st.booleans())
    budget = Budget("fraction", data.draw(st.floats(0.001, 0.99)))
    space = BudgetSpace(SPEC, budget, per_head=per_head)
    import numpy as np

    genes = np.array(data.draw(st.lists(st.floats(-3, 3), min_size=space.n_var, max_size=space.n_var)))
    cfg = space.decode(genes).with_provenance(label="x")
    again = KVConfig.from_json(cfg.to_json())
    assert again == cfg and again.hash() == cfg.hash() and again.provenance == cfg.provenance


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=12) | st.from_regex(r"\s*[0-9]{0,6}\.?[0-9]{0,4}\s*%?\s*", fullmatch=True))
def test_budget_strings_parse_or_raise_budget_error(text):
    try:
        budget = Budget.parse(text)
    except BudgetError:
        return
    assert (budget.kind == "fraction" and 0 < budget.value <= 1) or (budget.kind == "tokens" and budget.value >= 1)


# -- search input ------------------------------------------------------------------------------------------


def test_a_token_budget_past_the_context_says_nothing_would_be_compressed(tmp_path):
    line = one_line_error(invoke("search", "--budget", "99999999", "--db", tmp_path / "x.db"))
    assert "nothing would be compressed" in line and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("content, words", [
    (b"", "is empty"),
    (b'{"context": "caf\xe9", "question": "q", "answers": ["a"]}\n', "not UTF-8"),
    (b"".join(b'{"context": "c%d", "question": "q", "answers": [""]}\n' % i for i in range(6)), "answer is empty"),
])
def test_bad_task_files(content, words, tmp_path):
    path = tmp_path / "task.jsonl"
    path.write_bytes(content)
    with pytest.raises(TaskError, match=words):
        from_jsonl(path, "search")


def test_a_sample_longer_than_the_model_is_refused_before_any_prefill(model_dirs, tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"context": "word " * 1000 + str(i), "question": "q?", "answers": ["a"]}) + "\n"
                            for i in range(8)))  # 5000 characters: the tiny models' context is 4096
    db = tmp_path / "x.db"
    line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "10%", "--tasks", path,
                                 "--db", db))
    assert "longer than the model's context of 4096" in line
    assert not db.exists() or not Store(str(db)).runs()  # refused before a run was stored


def test_out_of_memory_while_scoring_is_one_line_and_resume_finishes_with_fewer_per_forward(model_dirs, tmp_path,
                                                                                          monkeypatch):
    """Out of GPU memory in the middle of a search (other processes took it): one line naming `evolkv resume ID
    --batch-size N`; the generations already scored stay stored and the resumed run finishes."""
    from evolkv.evaluators.evaluator import Evaluator

    real, scored = Evaluator.score, []

    def crowded(self, configs, prepared, progress=None):
        scored.append(len(configs))
        if len(scored) == 3:  # the baselines and the first generation were scored: now every forward fails
            self._logprobs = lambda batch, prep: (_ for _ in ()).throw(
                RuntimeError("CUDA out of memory. Tried to allocate 416.00 MiB"))
        return real(self, configs, prepared, progress)  # the batch is retried one by one, and fails alone too

    monkeypatch.setattr(Evaluator, "score", crowded)
    db = tmp_path / "x.db"
    line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--tasks", "passkey",
                                 "--length", 200, "--samples", 1, "--generations", 2, "--population", 4,
                                 "--batch-size", 4, "--db", db))
    run = Store(str(db)).runs()[0]
    assert f"evolkv resume {run['id']} --batch-size 2" in line and run["status"] == "failed"
    monkeypatch.setattr(Evaluator, "score", real)
    result = invoke("resume", run["id"], "--batch-size", 2, "--db", db, "--json")
    assert result.exit_code == 0, result.output[-2000:]
    assert Store(str(db)).runs()[0]["status"] == "finished"


def test_no_cache_deprecation_warning_on_a_forward(loaded):
    import torch


    tiny = loaded["llama"]
    cfg = uniform_config(tiny.spec, Budget.parse("50%"))
    ids = torch.randint(3, 60, (1, 40)).to(tiny.model.device)
    with warnings.catch_warnings(record=True) as caught, torch.no_grad(), evolkv.apply(tiny.model, cfg):
        warnings.simplefilter("always")
        tiny.model.generate(ids, max_new_tokens=3, do_sample=False)
    assert not [w for w in caught if "deprecated" in str(w.message)], [str(w.message) for w in caught]


# -- store -------------------------------------------------------------------------------------------------


def test_lookup_ranks_a_lossless_winner_best(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    budget = Budget.parse("10%")
    for run_id, heldout in (("aa01", 0.3), ("aa02", 0.0), ("aa03", None)):
        store.create_run(run_id, SPEC, budget, "cmaes", 0, {})
        cfg = uniform_config(SPEC, budget).with_provenance(run_id=run_id)
        store.set_winner(run_id, cfg, 0.1, heldout, {})
    assert store.lookup("toy", budget)[1]["run_id"] == "aa02"


def test_runs_list_fits_80_columns_and_shows_stale_runs(tmp_path):
    import socket

    db = f"sqlite:///{tmp_path / 'x.db'}"
    store = Store(db)
    spec = ModelSpec("gemma-3-270m", "gemma3_text", 4, 8, 2, 16, ["full_attention"] * 4)
    store.create_run("0123456789ab", spec, Budget.parse("10%"), "optuna-cmaes", 0, {}, "tokens")
    store.update_run("0123456789ab", status="running", owner=f"{socket.gethostname()}:999999999",
                     best_objective=0.012345)
    out = invoke("runs", "list", "--db", db, terminal_width=80).output
    assert "gemma-3-270m" in out and "0.0123" in out and "…" not in out
    assert "stale" in out and "evolkv resume 0123456789ab" in out
    assert max(len(line) for line in out.splitlines()) <= 80


def test_bad_run_ids_are_one_line_and_touch_nothing(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    Store(db).create_run("ef0d12345678", SPEC, Budget.parse("10%"), "cmaes", 0, {})
    for run_id in ("ef0d%", "e_0d", "%", ""):
        for command in (["export", run_id], ["runs", "show", run_id], ["resume", run_id]):
            assert "not a run id" in one_line_error(invoke(*command, "--db", db))
    assert invoke("runs", "show", "ef0d", "--db", db).exit_code == 0


def test_an_unknown_arm_search_is_one_line_naming_the_choices(tmp_path):
    db = tmp_path / "x.db"
    line = one_line_error(invoke("search", "--budget", "10%", "--arm-search", "bandit", "--db", db))
    assert "halving or tpe" in line and "'bandit'" in line
    assert not db.exists() or not Store(str(db)).runs()


# -- the bad-input matrix: every command x every kind of malformed input -----------------------------------

KINDS = ("budget", "model", "config", "db", "run id", "task file", "device", "dtype")
COMMANDS = {  # command -> (its arguments, the kinds of input it takes)
    "search": (["search", "--budget", "10%"], ["budget", "model", "db", "task file", "device", "dtype"]),
    "eval": (["eval", "--baseline", "uniform"], ["budget", "model", "config", "task file", "device", "dtype"]),
    "lookup": (["lookup", "--budget", "10%"], ["budget", "db"]),
    "export": (["export", "aaaa"], ["db", "run id"]),
    "resume": (["resume", "aaaa"], ["db", "run id"]),
    "runs show": (["runs", "show", "aaaa"], ["db", "run id"]),
    "runs list": (["runs", "list"], ["db"]),
    "plot": (["plot", "aaaa"], ["db", "run id"]),
}
MATRIX = [(c, b) for c, (_, kinds) in COMMANDS.items() for b in kinds]


def _counts(path) -> dict[str, int]:
    import sqlite3

    if not path.exists():
        return {}
    with sqlite3.connect(path) as connection:
        tables = [r[0] for r in connection.execute("select name from sqlite_master where type='table'")]
        return {t: connection.execute(f'select count(*) from "{t}"').fetchone()[0] for t in tables}


def _with(args: list[str], option: str, value: str) -> list[str]:
    if option in args:
        i = args.index(option)
        return args[:i] + [option, value] + args[i + 2:]
    return args + [option, value]


@pytest.mark.parametrize("command, bad", MATRIX, ids=[f"{c}-{b}".replace(" ", "_") for c, b in MATRIX])
def test_bad_input_matrix(command, bad, tmp_path, model_dirs):
    """Every command x every malformed input it takes: exit 2, one `error:` line, the store unchanged."""
    db = tmp_path / "x.db"
    Store(f"sqlite:///{db}").create_run("aaaa00000000", SPEC, Budget.parse("10%"), "cmaes", 0, {})
    before = _counts(db)
    nested, empty = tmp_path / "nested.json", tmp_path / "empty.jsonl"
    nested.write_text("[" * 100_000)
    empty.write_text("")
    args = list(COMMANDS[command][0])
    if command not in ("eval",):
        args = _with(args, "--db", str(db))
    if command in ("search", "eval") and bad != "model":
        args = _with(args, "--model", model_dirs["llama"])
    if bad == "budget":
        args = _with(args, "--budget", "12abc%")
    elif bad == "model":
        args = _with(args, "--model", "/no/such/model")
    elif bad == "config":
        args = [a for a in args if a not in ("--baseline", "uniform")] + ["--config", str(nested)]
    elif bad == "db":
        args = _with(args, "--db", "notadb://x")
    elif bad == "run id":
        args = [a if a != "aaaa" else "aa%" for a in args]
    elif bad == "task file":
        args = _with(args, "--tasks", str(empty))
    elif bad == "device":
        args = _with(args, "--device", "tpu")
    elif bad == "dtype":
        args = _with(args, "--dtype", "int3")
    one_line_error(invoke(*args))
    assert _counts(db) == before


def test_store_error_on_bad_url():
    with pytest.raises(StoreError):
        Store("notadb://x")
    assert math.isfinite(1.0)


# -- upgrades and concurrency ------------------------------------------------------------------------------


def test_a_database_of_the_first_schema_revision_is_read_only_until_migrated(tmp_path):
    """Reads never migrate: an old schema is one line naming `evolkv migrate`, which upgrades it; then it lists."""
    import shutil
    import sqlite3
    from pathlib import Path

    db = tmp_path / "old.db"
    shutil.copy(Path(__file__).parent / "fixtures" / "evolkv-rev0001.db", db)
    before = db.read_bytes()
    for command in (["runs", "list"], ["runs", "show", "0a1b"], ["export", "0a1b2c"], ["lookup", "--budget", "10%",
                                                                                      "--model", "gemma-3-270m"]):
        assert "evolkv migrate --db" in one_line_error(invoke(*command, "--db", db))
    assert db.read_bytes() == before
    assert invoke("migrate", "--db", db).exit_code == 0
    listed = json.loads(invoke("runs", "list", "--db", db, "--json").stdout)
    assert [(r["id"], r["status"], r["best_objective"]) for r in listed] == [("0a1b2c3d4e5f", "finished", 0.0123)]
    shown = json.loads(invoke("runs", "show", "0a1b", "--db", db, "--json").stdout)
    assert shown["winner"]["heldout_objective"] == 0.015 and shown["timings"] == {}
    exported = invoke("export", "0a1b2c", "--db", db)
    assert exported.exit_code == 0 and json.loads(exported.stdout)["budget"] == "10%"
    with sqlite3.connect(db) as connection:
        assert connection.execute("select version_num from evolkv_schema_version").fetchone()[0] == "0004"


def test_four_searches_into_one_database_at_once(db_url, model_dirs, tmp_path):
    """4 processes, one SQLite file (or one PostgreSQL database): every evaluation of every run is stored, and
    nobody sees `database is locked`."""
    import subprocess
    import sys

    args = ["--model", model_dirs["llama"], "--generations", "3", "--population", "4", "--samples", "1",
            "--length", "120", "--tasks", "passkey", "--db", db_url, "--json"]
    procs = [subprocess.Popen([sys.executable, "-m", "evolkv", "search", "--budget", f"{10 + 5 * i}%", "--seed",
                               str(i), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-2000:]
        assert "locked" not in err
    store = Store(db_url)
    for out, _ in outputs:
        detail = json.loads(out)
        rows = store.evaluations(detail["id"])
        assert detail["status"] == "finished"
        assert sum(g["evaluated"] for g in detail["generations"]) == sum(1 for row, _ in rows if row.stage == "search")
        assert {"winner", "baseline:uniform"} <= set(detail["results"])
        assert all(set(r) >= {"search", "heldout"} for label, r in detail["results"].items()
                   if not label.startswith("finalist:"))  # finalists: validation only


def test_every_stage_of_a_search_has_a_progress_total(loaded, monkeypatch, tmp_path):
    """No `0/?` bars: exact match (and every other counted stage) says how much there is to do."""
    from evolkv.executors import make_local
    from evolkv.search.loop import Reporter, SearchSettings, run_search

    tiny = loaded["llama"]
    monkeypatch.setattr("evolkv.models.load", lambda *a, **k: tiny)
    settings = SearchSettings(model=tiny.spec.name, budget="20%", generations=1, population=2, samples=1,
                              length=100, tasks=["passkey"], baselines=["uniform"])
    _, executor = make_local(settings)

    class Recorder(Reporter):
        def __init__(self):
            self.stages, self.done = {}, {}

        def stage(self, text, total=None):
            self.current = text
            self.stages[text], self.done[text] = total, 0

        def advance(self, amount=1):
            self.done[self.current] += amount

    reporter = Recorder()
    run_search(settings, tiny.spec, executor, Store(f"sqlite:///{tmp_path / 'x.db'}"), reporter=reporter)
    exact = {k: v for k, v in reporter.stages.items() if k.startswith("exact-match")}
    assert list(exact) == ["exact-match accuracy on the heldout split"] and all(total == 1 for total in exact.values())
    assert all(reporter.done[k] == exact[k] for k in exact)


def test_stages_and_derived_data_move_to_their_columns_on_upgrade(tmp_path):
    """Revision 0004: negative generations become stages, a run's precision space leaves its settings."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config

    from evolkv.store.store import MIGRATIONS

    url = f"sqlite:///{tmp_path / 'x.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        command.upgrade(config, "0003")
        connection.execute(sa.text("insert into models values (1, 'toy', :f, '{}')"), {"f": SPEC.fingerprint})
        connection.execute(sa.text(
            "insert into runs (id, model_id, mode, budget, budget_kind, budget_value, optimizer, seed, settings, "
            "status, generations_done, created_at) values ('abcd', 1, 'quant', '100%', 'fraction', 1.0, 'nsga2', 0, "
            ":s, 'finished', 1, '2026-11-20 10:00:00')"), {"s": json.dumps({"mode": "quant", "space": {"groups": [[0]]}})})
        connection.execute(sa.text("insert into candidates values (1, 'h', 1, '{}')"))
        for i, generation in enumerate((-1, -3, 0, -2)):
            connection.execute(sa.text(
                "insert into evaluations (id, run_id, candidate_id, generation, label, split, objective, metrics, "
                "status, reason, duration_s, worker, created_at) values (:i, 'abcd', 1, :g, 'x', 'search', 0.1, "
                "'{}', 'ok', '', 0, 'local', '2026-11-20 10:00:00')"), {"i": i + 1, "g": generation})
    engine.dispose()
    store = Store(url)
    run = store.run("abcd")
    assert run.derived == {"space": {"groups": [[0]]}} and "space" not in run.settings
    stages = [(row.stage, row.generation) for row, _ in store.evaluations("abcd")]
    assert stages == [("baseline", None), ("sensitivity", None), ("search", 0), ("final", None)]


@pytest.mark.parametrize("spec, words", [("hf:{tmp}/none", "does not exist"), ("nope", "unknown task"),
                                         ("hf:{tmp}/odd.jsonl", "no answers column")])
def test_bad_hf_tasks_are_one_line_and_store_nothing(spec, words, model_dirs, tmp_path):
    (tmp_path / "odd.jsonl").write_text('{"question": "q", "reply": "r"}\n' * 8)
    line = one_line_error(invoke("search", "--budget", "20%", "--model", model_dirs["llama"], "--tasks",
                                 spec.format(tmp=tmp_path), "--length", 64, "--db", f"sqlite:///{tmp_path}/x.db"))
    assert words in line and not (tmp_path / "x.db").exists()


# -- hostile input: numbers, files that are not files, mistyped rows, drivers, read-only stores, signals ---------


def _hash(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def test_an_overflowing_budget_is_one_line(tmp_path):
    for budget in ("1e309", "1e309%", "-1e309"):
        assert "budget" in one_line_error(invoke("search", "--budget", budget, "--db", tmp_path / "x.db"))
    assert not (tmp_path / "x.db").exists()


def test_task_files_that_are_not_regular_files_are_refused_before_they_are_opened(tmp_path, model_dirs):
    import os

    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)  # opening it would block until a writer came
    db = tmp_path / "x.db"
    for path in (zero, fifo, tmp_path):
        for spec in (str(path), f"hf:{path}"):
            if path == tmp_path and not spec.startswith("hf:"):
                continue
            line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "10%", "--tasks", spec,
                                         "--db", db))
            assert "regular file" in line or "no .jsonl" in line, line
    assert not db.exists()


def test_a_task_file_over_the_size_cap_is_refused_and_the_cap_can_be_raised(tmp_path, monkeypatch):
    path = tmp_path / "big.jsonl"
    row = json.dumps({"context": "c" * 1000, "question": "q", "answers": ["a"]})
    path.write_text("\n".join(row.replace('"q"', f'"q{i}"') for i in range(2000)))  # about 2 MiB
    monkeypatch.setenv("EVOLKV_MAX_TASK_MB", "1")
    with pytest.raises(TaskError, match="EVOLKV_MAX_TASK_MB"):
        from_jsonl(path, None)
    monkeypatch.setenv("EVOLKV_MAX_TASK_MB", "4")
    assert len(from_jsonl(path, None)) == 2000


@pytest.mark.parametrize("row, words", [
    ({"context": "c", "question": "q", "answers": None}, "answers must be"),
    ({"context": "c", "question": "q", "answers": [None]}, "answers must be"),
    ({"context": "c", "question": "q", "answers": [True]}, "answers must be"),
    ({"context": "c", "question": "q", "answers": {"a": 1}}, "answers must be"),
    ({"context": "c", "question": "q", "answers": []}, "answers must be"),
    ({"context": None, "question": "q", "answers": ["a"]}, "context must be a string"),
    ({"context": "c", "question": 7, "answers": ["a"]}, "question must be a string"),
    ([1, 2], "a JSON object"),
])
def test_mistyped_task_rows_are_refused_not_stringified(row, words, tmp_path, model_dirs):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps(row) + "\n")
    db = tmp_path / "x.db"
    line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "10%", "--tasks", path,
                                 "--db", db))
    assert words in line and not db.exists()
    hf = tmp_path / "rows"
    hf.mkdir()
    (hf / "train.jsonl").write_text(json.dumps(row if isinstance(row, dict) else {"x": row}) + "\n")
    line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "10%", "--tasks", f"hf:{hf}",
                                 "--db", db))
    assert not db.exists()


def test_a_database_url_whose_driver_is_missing_is_one_line(tmp_path):
    for command in (["runs", "list"], ["search", "--budget", "10%"], ["lookup", "--budget", "10%"]):
        assert "driver" in one_line_error(invoke(*command, "--db", "mysql://user@localhost/x"))


def test_reads_never_create_a_database_or_its_directory(tmp_path):
    missing = tmp_path / "new" / "dir" / "x.db"
    listed = invoke("runs", "list", "--db", f"sqlite:///{missing}")
    assert listed.exit_code == 0 and "no runs yet" in listed.output
    for command in (["runs", "show", "abcd"], ["export", "abcd"], ["plot", "abcd"], ["lookup", "--budget", "10%"]):
        assert "no evolkv database" in one_line_error(invoke(*command, "--db", f"sqlite:///{missing}"))
    with pytest.raises(StoreError, match="no evolkv database"):
        evolkv.lookup("toy", "10%", db=str(missing))
    assert not (tmp_path / "new").exists()


def _stored_winner(db):
    store = Store(f"sqlite:///{db}")
    cfg = uniform_config(SPEC, Budget.parse("10%")).with_provenance(run_id="ab12cd34ef56", source="search")
    store.create_run("ab12cd34ef56", SPEC, Budget.parse("10%"), "cmaes", 0, {})
    store.set_winner("ab12cd34ef56", cfg, 0.5, 0.6, {})
    store.update_run("ab12cd34ef56", status="finished", best_objective=0.5)
    store.engine.dispose()


def test_a_read_only_database_is_read_without_a_write(tmp_path):
    """A database baked into a serving image: the file 444 and its directory 555 (for a non-root user; root
    ignores modes, so there the check is that nothing changes). Every read works; nothing is written."""
    import os

    folder = tmp_path / "ro"
    folder.mkdir()
    db = folder / "x.db"
    _stored_winner(db)
    before, names = _hash(db), sorted(os.listdir(folder))
    db.chmod(0o444)
    folder.chmod(0o555)
    try:
        assert invoke("runs", "list", "--db", db).exit_code == 0
        shown = invoke("runs", "show", "ab12", "--db", db, "--json")
        assert shown.exit_code == 0 and json.loads(shown.stdout)["status"] == "finished"
        assert invoke("export", "ab12", "--db", db).exit_code == 0
        assert invoke("lookup", "--budget", "10%", "--model", "toy", "--db", db).exit_code == 0
        assert evolkv.lookup("toy", "10%", db=str(db)).budget == Budget.parse("10%")
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
    assert _hash(db) == before
    if os.geteuid() != 0:
        assert sorted(os.listdir(folder)) == names


def test_a_model_directory_with_a_malicious_pickle_is_one_line_and_runs_nothing(tmp_path, model_dirs):
    import pickle
    import shutil
    from pathlib import Path

    source = Path(model_dirs["llama"])
    bad = tmp_path / "evil-model"
    shutil.copytree(source, bad)
    for weights in bad.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (bad / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    line = one_line_error(invoke("eval", "--model", bad, "--baseline", "uniform", "--samples", "1", "--length", "100",
                                 "--tasks", "passkey"))
    assert "cannot load model" in line and not marker.exists()


def test_lengths_past_the_models_context_are_refused_before_any_work(tmp_path, model_dirs):
    import time

    db = tmp_path / "x.db"
    started = time.perf_counter()
    line = one_line_error(invoke("search", "--model", model_dirs["llama"], "--budget", "10%", "--length", "10000000",
                                 "--db", db))
    assert "past the context" in line and time.perf_counter() - started < 60 and not db.exists()
    line = one_line_error(invoke("generate", "--model", model_dirs["llama"], "--full", "-p", "x" * 100_000))
    assert "positions" in line


def test_a_config_named_for_another_model_is_refused(tmp_path, model_dirs):
    from evolkv.models import load

    spec = load(model_dirs["llama"], weights=False).spec
    cfg = uniform_config(spec, Budget.parse("10%"))
    other = tmp_path / "other.json"
    KVConfig.from_dict({**cfg.to_dict(), "model": {**cfg.to_dict()["model"], "name": "llama-3-8b"}}).save(other)
    for command in (["eval", "--config", other, "--samples", "1", "--length", "100", "--tasks", "passkey"],
                    ["generate", "--config", other, "-p", "x"]):
        line = one_line_error(invoke(*command, "--model", model_dirs["llama"]))
        assert "config is for llama-3-8b" in line


def test_sigterm_stops_a_search_as_ctrl_c_does(tmp_path, model_dirs):
    """SIGTERM (kill, systemd, Kubernetes, Slurm): the run is `interrupted`, one line names `evolkv resume`."""
    import signal
    import subprocess
    import sys
    import time

    db = tmp_path / "x.db"
    proc = subprocess.Popen([sys.executable, "-m", "evolkv", "search", "--model", model_dirs["llama"], "--budget",
                             "10%", "--generations", "50", "--population", "4", "--samples", "1", "--length", "120",
                             "--tasks", "passkey", "--baselines", "full,uniform", "--db", str(db)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if db.exists():
            try:
                runs = Store(f"sqlite:///{db}", readonly=True).runs()
            except StoreError:
                continue
            if runs and runs[0]["generations_done"] >= 1:
                break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    assert "Traceback" not in err and "evolkv resume" in err.strip().splitlines()[-1]
    assert Store(f"sqlite:///{db}").runs()[0]["status"] == "interrupted"
