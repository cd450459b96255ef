"""The CLI end to end on a tiny local model, and every bad input as one clear line with a non-zero exit."""

import json

import pytest
from typer.testing import CliRunner

from evolkv.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def searched(model_dirs, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'evolkv.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--generations", 2,
                    "--population", 3, "--samples", 1, "--length", 200, "--tasks", "passkey,multikey",
                    "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return db, json.loads(result.stdout), model_dirs["llama"]


def test_search_stores_run_with_winner_and_baselines(searched):
    _, detail, _ = searched
    assert detail["status"] == "finished" and detail["winner"]["heldout_objective"] is not None
    assert {"winner", "baseline:uniform", "baseline:full", "baseline:pyramid", "baseline:adakv",
            "baseline:streaming"} <= set(detail["results"])
    assert set(detail["results"]["winner"]) == {"search", "validation", "heldout", "heldout/em"}
    assert "baseline:kvzip" not in detail["results"] and "kvzip" not in detail["settings"]["baselines"]  # a CPU run
    assert [g["generation"] for g in detail["generations"]] == [0, 1]


def test_a_baseline_that_wins_is_shipped_and_marked(model_dirs, tmp_path):
    """With no finalists the winner can only be a baseline: it is, and runs show, export and lookup say so."""
    db = f"sqlite:///{tmp_path / 'b.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--generations", 1,
                    "--population", 2, "--samples", 1, "--length", 200, "--tasks", "passkey",
                    "--finalists", 0, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    source = detail["winner"]["source"]
    assert source.startswith("baseline:") and source != "baseline:full"
    shown = invoke("runs", "show", detail["id"], "--db", db)
    assert f"winner (= {source.removeprefix('baseline:')})" in shown.stdout
    assert "no search candidate beat" in " ".join(shown.stdout.split())
    exported = invoke("export", detail["id"], "--db", db)
    assert json.loads(exported.stdout)["provenance"]["source"] == source and "note:" in exported.stderr
    found = invoke("lookup", "--model", detail["model"], "--budget", "20%", "--db", db)
    assert found.exit_code == 0 and f"(= {source.removeprefix('baseline:')}" in found.stdout


def _chosen_then_restored(model_dirs, db, choose: str, **selection):
    """A tiny search with ``--choose choose``; its winner is stored again with ``selection`` in its provenance (as if
    validation had decided so). Returns (the search's JSON, what runs show prints, on one line)."""
    from evolkv.config import KVConfig
    from evolkv.store.store import Store

    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--generations", 1,
                    "--population", 2, "--samples", 1, "--length", 200, "--tasks", "passkey", "--choose", choose,
                    "--db", db, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    cfg = KVConfig.from_dict(json.loads(invoke("export", detail["id"], "--db", db).stdout))
    Store(str(db)).set_winner(detail["id"], cfg.with_provenance(**selection), detail["winner"]["search_objective"],
                              detail["winner"]["heldout_objective"], detail["winner"]["heldout_metrics"])
    return detail, " ".join(invoke("runs", "show", detail["id"], "--db", db).stdout.split())


def test_runs_show_names_what_the_typical_sample_rule_passed_over(model_dirs, tmp_path):
    """--choose typical records how the winner was chosen; runs show prints the contenders it passed over."""
    db = tmp_path / "t.db"  # as if a finalist with a lower mean had been passed over
    detail, shown = _chosen_then_restored(model_dirs, db, "typical", passed_over={"finalist:0": 1.25})
    selection = detail["winner"]["selection"]
    assert selection["selected_on"] == "validation" and "validation_typical_ratio" in selection
    assert "passed over" in shown and "finalist:0 1.25" in shown
    again = json.loads(invoke("runs", "show", detail["id"], "--db", db, "--json").stdout)
    assert again["winner"]["selection"]["passed_over"] == {"finalist:0": 1.25}


def test_runs_show_prints_the_task_metric_check(model_dirs, tmp_path):
    """--choose metric: runs show prints uniform's validation task metric and each contender's that was decoded."""
    checked = {"baseline:uniform": 0.5, "finalist:0": 0.25}  # as if a finalist with a lower KL had answered worse
    detail, shown = _chosen_then_restored(model_dirs, tmp_path / "m.db", "metric", validation_task_metric=checked)
    assert "baseline:uniform" in detail["winner"]["selection"]["validation_task_metric"]
    assert "task metric on validation (uniform 0.500" in shown and "finalist:0 0.250" in shown


def test_runs_list_and_show(searched):
    db, detail, _ = searched
    listed = json.loads(invoke("runs", "list", "--db", db, "--json").stdout)
    assert listed[0]["id"] == detail["id"] and listed[0]["budget"] == "20%"
    shown = invoke("runs", "show", detail["id"][:6], "--db", db)
    assert shown.exit_code == 0 and "winner" in shown.stdout and "uniform" in shown.stdout
    assert "held-out KL per task" in shown.stdout and "multikey" in shown.stdout and "gap" in shown.stdout


def test_export_lookup_and_eval_round_trip(searched, tmp_path):
    db, detail, model = searched
    out = tmp_path / "cfg.json"
    assert invoke("export", detail["id"], "--out", out, "--db", db).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["schema"] == "evolkv.kvconfig/1" and exported["provenance"]["run_id"] == detail["id"]
    found = json.loads(invoke("lookup", "--model", model, "--budget", "25%", "--db", db, "--json").stdout)
    assert found["run_id"] == detail["id"] and found["config"]["layers"] == exported["layers"]
    for_kvpress = invoke("export", detail["id"], "--format", "kvpress", "--db", db)
    if "allocation" in exported:  # the winner may be a per-prompt allocation baseline, which a press cannot run
        assert "allocation" in _one_line_error(for_kvpress)
    else:
        assert for_kvpress.exit_code == 0 and json.loads(for_kvpress.stdout)["layers"] == exported["layers"]
        assert "EvolKVPress.from_file" in for_kvpress.stderr
    assert "known: json, kvpress" in _one_line_error(invoke("export", detail["id"], "--format", "yaml", "--db", db))
    scored = invoke("eval", "--model", model, "--config", out, "--tasks", "passkey", "--samples", 1,
                    "--length", 200, "--json")
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["status"] == "ok"


def _one_line_error(result):
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert "Traceback" not in result.output
    return lines[-1]


@pytest.mark.parametrize("budget", ["0", "150%", "abc", "0%"])
def test_bad_budgets(budget, tmp_path):
    line = _one_line_error(invoke("search", "--budget", budget, "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and "budget" in line


def test_unknown_model(tmp_path):
    line = _one_line_error(invoke("search", "--budget", "10%", "--model", "no/such-model", "--db",
                                  tmp_path / "x.db"))
    assert "no/such-model" in line


def test_malformed_and_mismatched_configs(searched, tmp_path, model_dirs):
    db, detail, _ = searched
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "not valid JSON" in _one_line_error(invoke("eval", "--model", model_dirs["qwen3"], "--config", bad))
    good = tmp_path / "good.json"
    invoke("export", detail["id"], "--out", good, "--db", db)
    line = _one_line_error(invoke("eval", "--model", model_dirs["qwen3"], "--config", good, "--samples", 1,
                                  "--length", 100))
    assert "config is for" in line


def test_bad_db_and_unknown_run(tmp_path):
    assert "bad database URL" in _one_line_error(invoke("runs", "list", "--db", "nosuch://x"))
    assert "no evolkv database" in _one_line_error(invoke("runs", "show", "beef", "--db", tmp_path / "x.db"))
    assert "no run" in _one_line_error(invoke("resume", "beef", "--db", tmp_path / "x.db"))
    assert "not a run id" in _one_line_error(invoke("resume", "nope", "--db", tmp_path / "x.db"))
    assert "no stored winner" in _one_line_error(invoke("lookup", "--budget", "10%", "--db", tmp_path / "x.db"))


def test_resume_of_finished_run_is_refused(searched):
    db, detail, _ = searched
    assert "already finished" in _one_line_error(invoke("resume", detail["id"], "--db", db))


def test_help_explains():
    result = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--budget" in result.stdout and "tokens per KV head" in result.stdout


@pytest.fixture(scope="module")
def quant_searched(model_dirs, tmp_path_factory):
    db = f"sqlite:///{tmp_path_factory.mktemp('quant') / 'evolkv.db'}"
    result = invoke("search", "--mode", "quant", "--target-bits", 6, "--group-size", 32, "--clusters", 2,
                    "--residual", "0,8",
                    "--model", model_dirs["llama"], "--generations", 2, "--population", 6, "--samples", 1,
                    "--length", 200, "--tasks", "passkey", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    return db, json.loads(result.stdout)


def test_quant_search_front_is_shown_plotted_and_exported(quant_searched, tmp_path):
    db, detail = quant_searched
    assert detail["mode"] == "quant" and detail["front"]
    shown = invoke("runs", "show", detail["id"], "--db", db)
    assert shown.exit_code == 0 and "Pareto front" in shown.stdout and "KIVI-2" in shown.stdout
    image = tmp_path / "front.png"
    assert invoke("plot", detail["id"], "--out", image, "--db", db).exit_code == 0
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    last = len(detail["front"]) - 1
    out = tmp_path / "point.json"
    assert invoke("export", detail["id"], "--point", last, "--out", out, "--db", db).exit_code == 0
    exported = json.loads(out.read_text())
    assert exported["provenance"]["front_point"] == last
    assert exported["provenance"]["bits"] == pytest.approx(detail["front"][last]["bits"])
    cheapest = detail["front"][0]["bits"]
    picked = json.loads(invoke("export", detail["id"], "--max-bits", cheapest, "--db", db).stdout)
    assert picked["provenance"]["front_point"] == 0
    line = _one_line_error(invoke("export", detail["id"], "--point", 0, "--format", "kvpress", "--db", db))
    assert "token budgets only" in line
    assert "not on the front" in _one_line_error(invoke("export", detail["id"], "--point", 99, "--db", db))
    assert "no front point" in _one_line_error(invoke("export", detail["id"], "--max-bits", 0.5, "--db", db))


@pytest.mark.parametrize("bits", [1, 17])
def test_target_bits_out_of_range(bits, tmp_path):
    line = _one_line_error(invoke("search", "--mode", "quant", "--target-bits", bits, "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and "--target-bits" in line


@pytest.mark.parametrize("args, flag", [(["--mode", "joint", "--budget", "50%", "--evicted-bits", "3"], "--evicted-bits"),
                                        (["--mode", "quant", "--evicted-bits", "2"], "--evicted-bits")])
def test_bad_evicted_bits(args, flag, tmp_path, model_dirs):
    line = _one_line_error(invoke("search", *args, "--model", model_dirs["llama"], "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and flag in line


@pytest.mark.parametrize("residual", ["abc", "4,-1"])
def test_bad_residual_choices(residual, tmp_path, model_dirs):
    line = _one_line_error(invoke("search", "--mode", "quant", "--residual", residual, "--model",
                                  model_dirs["llama"], "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and "--residual" in line


def test_imported_config_with_bits_outside_the_allowed_set(searched, tmp_path, model_dirs):
    db, detail, model = searched
    good = tmp_path / "good.json"
    invoke("export", detail["id"], "--out", good, "--db", db)
    data = json.loads(good.read_text())
    data["layers"][1]["k_bits"] = 3
    bad = tmp_path / "bits.json"
    bad.write_text(json.dumps(data))
    line = _one_line_error(invoke("eval", "--model", model, "--config", bad))
    assert line.startswith("error:") and "k_bits=3" in line


def test_token_run_has_no_front_and_plots_its_budgets(searched, tmp_path):
    db, detail, _ = searched
    assert "no Pareto front" in _one_line_error(invoke("export", detail["id"], "--point", 0, "--db", db))
    drawn = invoke("plot", detail["id"], "--out", tmp_path / "b.png", "--db", db)
    assert drawn.exit_code == 0 and (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"
    assert "cannot write plot" in _one_line_error(invoke("plot", detail["id"], "--out", tmp_path / "b.nope",
                                                         "--db", db))


def test_unreachable_ray_address_and_unknown_executor(tmp_path, model_dirs):
    pytest.importorskip("ray")
    line = _one_line_error(invoke("search", "--budget", "10%", "--model", model_dirs["llama"], "--executor", "ray",
                                  "--ray-address", "ray://127.0.0.1:9", "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and "cannot reach the Ray cluster" in line
    line = _one_line_error(invoke("search", "--budget", "10%", "--executor", "dask", "--db", tmp_path / "x.db"))
    assert "unknown executor" in line


@pytest.mark.parametrize("args, words", [
    (["--device", "gpu"], "is not one of auto, cpu, cuda, cuda:N"),
    (["--dtype", "float8"], "is not one of auto, bfloat16, float16, float32"),
    (["--device", "cuda:99"], "CUDA device"),
])
def test_bad_device_and_dtype_are_one_line_before_anything_loads(args, words, tmp_path):
    line = _one_line_error(invoke("search", "--budget", "10%", *args, "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and words in line
    assert not (tmp_path / "x.db").exists()  # nothing was created


def test_cuda_on_a_machine_without_it_names_the_fix(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    line = _one_line_error(invoke("eval", "--baseline", "uniform", "--device", "cuda"))
    assert "no CUDA device" in line and "--device cpu" in line


def test_device_auto_is_the_default_and_takes_cuda_where_there_is_one():
    import torch

    from evolkv.devices import resolve_device
    from evolkv.settings import SearchSettings

    assert SearchSettings().compute.device == "auto"
    assert resolve_device("auto") == ("cuda:0" if torch.cuda.is_available() else "cpu")


def test_the_default_effort_follows_the_device():
    """On a GPU a default search scores hundreds of candidates against every default baseline and reports on 16
    held-out samples per task; on a CPU it leaves out KVzip, whose context replay is one more forward of every
    prefill (the README's CPU run stays within 4 minutes). A GPU scores a generation in one forward per sample."""
    from evolkv.settings import DEFAULT_BASELINES, default_effort

    cpu, gpu = default_effort("cpu"), default_effort("cuda:1")
    assert gpu["generations"] * gpu["population"] >= 300 and gpu["heldout_samples"] >= 16 and gpu["race"] >= 16
    assert gpu["baselines"] == list(DEFAULT_BASELINES) and "kvzip" in gpu["baselines"]
    assert cpu == {"generations": 6, "population": 8, "samples": 4, "heldout_samples": 0,  # the README's CPU run
                   "race": 0, "batch_size": 8, "baselines": [name for name in DEFAULT_BASELINES if name != "kvzip"]}
    assert gpu["batch_size"] == gpu["population"]  # a generation in one forward per sample


def test_one_search_for_several_budgets(model_dirs, tmp_path):
    """--budgets: a winner per budget, the largest first, each later one seeded with the previous winner, the
    model loaded and the samples prefilled once; lookup picks the largest stored budget at or under its own."""
    from evolkv.store.store import Store

    db = f"sqlite:///{tmp_path / 'm.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budgets", "10%,25%", "--generations", 1,
                    "--population", 3, "--samples", 1, "--length", 200, "--tasks", "passkey", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)
    assert (first["budget"], second["budget"]) == ("25%", "10%")
    assert first["status"] == second["status"] == "finished" and first["winner"] and second["winner"]
    assert second["derived"]["warm_start"] == first["id"] and "warm_start" not in first["derived"]
    stages = [s["stage"] for s in second["timings"]["stages"]]
    assert "model load" not in stages  # loaded once, for the first budget
    prefill = {s["stage"]: s["seconds"] for s in second["timings"]["stages"] if s["stage"].startswith("prefill")}
    firsts = {s["stage"]: s["seconds"] for s in first["timings"]["stages"] if s["stage"].startswith("prefill")}
    assert sum(prefill.values()) < 0.2 * sum(firsts.values())  # the executor kept every split's prefill
    found = json.loads(invoke("lookup", "--model", model_dirs["llama"], "--budget", "20%", "--db", db,
                              "--json").stdout)
    assert found["run_id"] == second["id"]
    # plots: a token run's per-layer budgets, and quality against budget over the stored runs
    for args, name in (([first["id"]], "budgets.png"), (["--curve", "--model", model_dirs["llama"]], "curve.png")):
        drawn = invoke("plot", *args, "--out", tmp_path / name, "--db", db)
        assert drawn.exit_code == 0, drawn.output
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "(2 runs)" in " ".join(invoke("plot", "--curve", "--model", model_dirs["llama"], "--out", tmp_path / "c.svg",
                                         "--db", db).output.split())
    assert "no finished token run" in _one_line_error(invoke("plot", "--curve", "--model", "other", "--db", db))
    assert "give a run id" in _one_line_error(invoke("plot", "--db", db))


def test_per_head_budgets_plot_as_a_heatmap(tmp_path):
    import dataclasses

    from evolkv.config import Budget, ModelSpec, ScorerSpec
    from evolkv.plots import plot_budgets
    from evolkv.search.baselines import baseline

    spec = ModelSpec("toy", "llama", 4, 9, 3, 16, ["full_attention"] * 4)
    refs = {name: baseline(name, spec, Budget.parse("5%"), ScorerSpec("snapkv")) for name in ("uniform", "pyramid")}
    winner = dataclasses.replace(refs["uniform"], layers=tuple(
        dataclasses.replace(layer, budget=0.05 * w, heads=(0.5, 0.3, 0.2))
        for layer, w in zip(refs["uniform"].layers, (0.4, 0.8, 1.2, 1.6))))
    out = tmp_path / "heads.png"
    plot_budgets({"id": "abc", "model": "toy", "budget": "5%", "winner": {"source": "search"}}, winner, refs, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("args, words", [
    (["--budgets", "10%"], "two or more"),
    (["--budgets", "10%,64"], "one kind"),
    (["--budgets", "10%,20%", "--budget", "5%"], "not both"),
    (["--budgets", "10%,20%", "--mode", "quant"], "--mode tokens"),
    (["--budgets", "10%,abc"], "budget"),
])
def test_bad_budgets_lists(args, words, tmp_path):
    line = _one_line_error(invoke("search", *args, "--db", tmp_path / "x.db"))
    assert words in line and not (tmp_path / "x.db").exists()


@pytest.mark.parametrize("objective, header", [("nll", "NLL"), ("task", "task loss")])
def test_other_objectives_score_and_show_what_they_optimise(objective, header, model_dirs, tmp_path):
    """--objective nll scores candidates by the gold answer's NLL, --objective task by 1 - the task's metric of a
    greedy answer (edit similarity for code); KL is still measured and shown per task."""
    db = f"sqlite:///{tmp_path / 'o.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--generations", 1,
                    "--population", 3, "--samples", 1, "--length", 200, "--tasks", "passkey,code",
                    "--objective", objective, "--db", db, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["status"] == "finished" and detail["settings"]["objective"] == objective
    for label in ("winner", "baseline:uniform"):
        search = detail["results"][label]["search"]
        assert search["objective"] == pytest.approx(search[objective]) and "kl" in search and "code/kl" in search
    full = detail["results"]["baseline:full"]["search"]
    if objective == "task":
        assert 0.0 <= full["task"] <= 1.0 and {"passkey/task", "code/task"} <= set(full)
    shown = invoke("runs", "show", detail["id"], "--db", db)
    assert f"search {header}" in " ".join(shown.stdout.split()) and "held-out KL per task" in shown.stdout
    # greedy answers: each task's own metric (string match for passkey, edit similarity for code), per task too
    assert "task metric of greedy answers" in " ".join(shown.stdout.split())
    assert "held-out greedy answers per task" in " ".join(shown.stdout.split())
    winner = detail["results"]["winner"]["heldout/em"]
    assert f"{(winner['passkey/em'] + winner['code/sim']) / 2:.3f}" in shown.stdout
    # and sample by sample against every baseline (a paired bootstrap interval, samples better and worse)
    assert len(winner["per_sample"]) == 2 and "the winner against each config on the same 2" in \
        " ".join(shown.stdout.split())


def test_unknown_objective_is_one_line(tmp_path):
    line = _one_line_error(invoke("search", "--budget", "10%", "--objective", "bleu", "--db", tmp_path / "x.db"))
    assert "--objective must be one of kl, nll, task" in line and not (tmp_path / "x.db").exists()
    line = _one_line_error(invoke("search", "--budget", "10%", "--choose", "median", "--db", tmp_path / "x.db"))
    assert "--choose must be one of paired, mean, typical, metric" in line and not (tmp_path / "x.db").exists()


def test_lookup_and_apply_in_python_without_the_search_stack(searched, loaded, monkeypatch):
    """An inference process asks the store for the winner and applies it: by name or by the loaded model's
    name_or_path, with the search stack (optimisers, evaluator, Ray) never imported."""
    import subprocess
    import sys

    import torch

    import evolkv
    from evolkv.errors import EvolKVError

    db, detail, model_dir = searched
    code = ("import sys, evolkv; cfg = evolkv.lookup(sys.argv[1], budget='25%', db=sys.argv[2]); "
            "print(cfg.provenance['run_id'], sorted(m for m in sys.modules if m.split('.')[0] in "
            "('pymoo', 'optuna', 'ray', 'cma') or m.startswith(('evolkv.search', 'evolkv.evaluators'))))")
    out = subprocess.run([sys.executable, "-c", code, model_dir, db], capture_output=True, text=True, check=True)
    assert out.stdout.split(" ", 1) == [detail["id"], "[]\n"]
    model = loaded["llama"].model
    monkeypatch.setattr(model, "name_or_path", model_dir)
    ids = torch.randint(3, 100, (1, 48))
    with evolkv.apply(model, "20%", db=db) as cfg:
        assert cfg.provenance["run_id"] == detail["id"]
        generated = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 52)
    with pytest.raises(EvolKVError, match="no stored winner"):
        evolkv.lookup(model_dir, budget="5%", db=db)
    with pytest.raises(EvolKVError, match="give a config or a budget"):
        with evolkv.apply(model, db=db):
            pass


def test_scorers_are_searched_per_layer_and_the_winner_exports_them(model_dirs, tmp_path):
    db = f"sqlite:///{tmp_path / 's.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--generations", 2,
                    "--population", 6, "--samples", 1, "--length", 200, "--tasks", "passkey,multikey",
                    "--scorers", "snapkv,tova,criticalkv", "--db", db, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["settings"]["scorers"] == ["snapkv", "tova", "criticalkv"] and detail["settings"]["scorer"] == "snapkv"
    from sqlalchemy import create_engine, text

    with create_engine(db).connect() as con:  # the candidates the search scored picked scorers per layer
        picked = {layer.get("scorer", {}).get("name", "snapkv")
                  for (config,) in con.execute(text("SELECT config FROM candidates"))
                  for layer in json.loads(config)["layers"]}
    assert {"tova", "criticalkv"} & picked
    out = tmp_path / "w.json"
    assert invoke("export", detail["id"], "--db", db, "--out", out).exit_code == 0
    from evolkv.config import KVConfig

    cfg = KVConfig.load(out)
    evaluated = invoke("eval", "--model", model_dirs["llama"], "--config", out, "--samples", 1, "--length", 200,
                       "--tasks", "passkey", "--json")
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["status"] == "ok"
    if cfg.provenance.get("source", "search") == "search":  # a searched winner: the run's scorers, layer by layer
        assert {s.name for s in cfg.scorers()} <= {"snapkv", "tova", "criticalkv"}


@pytest.mark.parametrize("args, words", [
    (["--scorers", "snapkv"], "two or more scorers"),
    (["--scorers", "snapkv,nope"], "unknown scorer 'nope'"),
    (["--scorers", "snapkv,tova", "--mode", "joint"], "belongs to the token search"),
])
def test_bad_scorers_lists(args, words, tmp_path):
    line = _one_line_error(invoke("search", "--budget", "10%", *args, "--db", tmp_path / "x.db"))
    assert words in line and not (tmp_path / "x.db").exists()


def test_help_names_every_registered_scorer():
    from evolkv.scorers import SCORERS

    for command in ("search", "eval"):
        text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}).stdout  # no wrapping inside names
        assert [name for name in SCORERS if name not in text] == [], command


def test_generate_serves_a_stored_winner_a_baseline_and_the_full_cache(searched, tmp_path):
    """``evolkv generate``: the searched winner looked up by budget, a baseline, and the full cache; the text
    is the serving path's (equal to ``Generator``'s), the cache's bytes below the full cache's."""
    import torch

    from evolkv.models import load
    from evolkv.serving import Generator

    db, _, model = searched
    prompt = "the pass key is 4521. remember it. " * 8
    runs = {}
    for name, args in {"winner": ["--budget", "20%"], "uniform": ["--budget", "20%", "--baseline", "uniform"],
                       "full": ["--full"]}.items():
        result = invoke("generate", "--model", model, "--prompt", prompt, "-n", 5, "--db", db, "--json", *args)
        assert result.exit_code == 0, result.output
        runs[name] = json.loads(result.stdout)
    assert runs["full"]["config"] == "full cache" and runs["full"]["kv_bytes"] == runs["full"]["full_kv_bytes"]
    for name in ("winner", "uniform"):
        assert runs[name]["kv_bytes"] < 0.4 * runs[name]["full_kv_bytes"] and runs[name]["new_tokens"] == 5
    loaded = load(model)
    ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    tokens = Generator(loaded.model, None).generate(ids, max_new_tokens=5)[0, ids.shape[1]:].tolist()
    eos = loaded.tokenizer.eos_token_id
    tokens = tokens[:tokens.index(eos)] if eos in tokens else tokens
    assert runs["full"]["text"] == loaded.tokenizer.decode(tokens, skip_special_tokens=True)
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text(prompt, encoding="utf-8")
    from_file = invoke("generate", "--model", model, "--prompt-file", prompt_file, "-n", 5, "--full", "--json")
    assert json.loads(from_file.stdout)["text"] == runs["full"]["text"]
    assert torch.is_tensor(ids)


def test_generate_bad_input_is_one_line(searched, model_dirs, tmp_path):
    db, _, model = searched
    other = tmp_path / "other.json"
    assert invoke("lookup", "--budget", "20%", "--model", model, "--db", db, "--out", other).exit_code == 0
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9".encode("latin-1"))
    cases = {
        ("--full", "--budget", "10%", "-p", "x"): "exactly one of --config",
        ("-p", "x"): "exactly one of --config",
        ("--full",): "exactly one of --prompt",
        ("--full", "-p", "x", "--prompt-file", bad): "exactly one of --prompt",
        ("--full", "--prompt-file", tmp_path / "missing.txt"): "does not exist",
        ("--full", "--prompt-file", bad): "not UTF-8",
        ("--full", "-p", "   "): "empty",
        ("--budget", "3%", "-p", "x", "--db", db): "evolkv search",
        ("--baseline", "uniform", "-p", "x", "--full"): "--baseline needs --budget",
        ("--budget", "10%", "--baseline", "nope", "-p", "x"): "unknown baseline",
        ("--full", "-p", "word " * 5000): "positions",
    }
    for args, message in cases.items():
        result = invoke("generate", "--model", model, *args)
        assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output, (args, result.output)
        assert len(result.stderr.strip().splitlines()) == 1 or result.stderr.count("error:") == 1
    wrong = invoke("generate", "--model", model_dirs["qwen3"], "--config", other, "-p", "x")
    assert wrong.exit_code == 2 and "config is for" in wrong.stderr


def test_a_stage_of_unknown_length_shows_no_count():
    """A counted stage shows done/total; one of unknown length (generate's prefill and decode) shows nothing, not
    "0/?"."""
    from rich.progress import Progress

    from evolkv.progress import _Count

    progress = Progress()
    column = _Count()
    progress.add_task("decode 4 tokens", total=None)
    progress.add_task("exact-match", total=4, completed=1)
    unknown, counted = progress.tasks
    assert column.render(unknown).plain == ""
    assert column.render(counted).plain == "1/4"


@pytest.mark.parametrize("given", ["soon", "0", "-5m", "inf", "5d"])
def test_a_time_that_is_not_a_duration_is_one_line(given, tmp_path):
    line = _one_line_error(invoke("search", "--budget", "10%", "--time", given, "--db", tmp_path / "x.db"))
    assert line.startswith("error:") and "--time" in line and "5m" in line
    assert not (tmp_path / "x.db").exists()


def test_time_stops_the_generations_and_runs_show_says_so(model_dirs, tmp_path):
    """--time without --generations: as many generations as fit (here the least a block of generations runs; one
    arm is one block), then the winner's choice and the held-out report as always."""
    db = f"sqlite:///{tmp_path / 't.db'}"
    result = invoke("search", "--model", model_dirs["llama"], "--budget", "20%", "--time", "0.01s", "--arms", 1,
                    "--population",
                    3, "--samples", 1, "--length", 200, "--tasks", "passkey", "--baselines", "uniform,adakv",
                    "--db", db, "--json")
    assert result.exit_code == 0, result.output
    detail = json.loads(result.stdout)
    assert detail["status"] == "finished" and detail["winner"] is not None
    stopped = detail["derived"]["stopped_by_time"]["generation"]  # a first generation read back from the store
    assert len(detail["generations"]) == stopped <= 2  # (the start is uniform, scored as a baseline) takes no time
    shown = invoke("runs", "show", detail["id"], "--db", db)
    assert f"--time spent: the generations stopped after {stopped}" in shown.stdout
