"""``evolkv export --format lukv``: the searched budgets as the prune-ratio curve stock kvpress's LUKVPress reads
(``[99, layers, kv_heads]``, row i at compression (i + 1)%), from every budget stored for the model."""

import dataclasses

import numpy as np
import pytest
from typer.testing import CliRunner

from evolkv.cli import app
from evolkv.config import Budget, ModelSpec, uniform_config
from evolkv.errors import ConfigError
from evolkv.integrations import lukv
from evolkv.store.store import Store

SPEC = ModelSpec("toy", "llama", 4, 8, 2, 16, ["full_attention"] * 4)
runner = CliRunner()


def _shaped(budget: str, weights, shares):
    base = uniform_config(SPEC, Budget.parse(budget))
    layers = tuple(dataclasses.replace(layer, budget=layer.budget * w, heads=shares)
                   for layer, w in zip(base.layers, weights))
    return dataclasses.replace(base, layers=layers)


def _store_winner(store, run_id, cfg, heldout):
    store.create_run(run_id, SPEC, cfg.budget, "cmaes", 0, {})
    store.set_winner(run_id, cfg.with_provenance(run_id=run_id), 0.5, heldout, {})
    store.update_run(run_id, status="finished", best_objective=0.5)


def test_rows_at_stored_budgets_are_the_winners_and_rows_between_are_interpolated():
    low = _shaped("10%", (0.5, 1.5, 1.0, 1.0), (0.7, 0.3))
    high = _shaped("30%", (1.0, 1.0, 1.0, 1.0), (0.5, 0.5))
    curve = lukv.curve([high, low])
    assert curve.shape == (99, 4, 2) and curve.dtype == np.float32
    np.testing.assert_allclose(1 - curve[89], lukv.keep_fractions(low), atol=1e-6)  # compression 90% = 10% kept
    np.testing.assert_allclose(1 - curve[69], lukv.keep_fractions(high), atol=1e-6)
    np.testing.assert_allclose((1 - curve[79]).mean(), 0.20, atol=1e-6)  # between: the row's budget on average
    np.testing.assert_allclose(1 - curve[79], (lukv.keep_fractions(low) + lukv.keep_fractions(high)) / 2, atol=1e-6)
    assert (curve >= 0).all() and (curve <= 1).all()
    np.testing.assert_allclose((1 - curve[94]), lukv.keep_fractions(low) / 2, atol=1e-6)  # below: the shape scaled


def test_configs_a_curve_cannot_hold_are_refused():
    tokens = uniform_config(SPEC, Budget.parse("128"))
    adaptive = dataclasses.replace(uniform_config(SPEC, Budget.parse("10%")),
                                   layers=tuple(dataclasses.replace(l, heads=None)
                                                for l in uniform_config(SPEC, Budget.parse("10%")).layers))
    for cfg, words in ((tokens, "tokens per head"), (adaptive, "per prompt")):
        with pytest.raises(ConfigError, match=words):
            lukv.curve([cfg])


def test_export_writes_a_plain_npy_from_every_stored_budget_of_the_model(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    store = Store(db)
    _store_winner(store, "aa0000000001", _shaped("10%", (0.5, 1.5, 1.0, 1.0), (0.7, 0.3)), 0.2)
    _store_winner(store, "aa0000000002", _shaped("10%", (1.0, 1.0, 1.0, 1.0), (0.5, 0.5)), 0.9)  # worse: not used
    _store_winner(store, "aa0000000003", _shaped("30%", (1.0, 1.0, 1.0, 1.0), (0.5, 0.5)), 0.1)
    out = tmp_path / "curve.npy"
    result = runner.invoke(app, ["export", "aa0000000003", "--format", "lukv", "--out", str(out), "--db", db])
    assert result.exit_code == 0, result.output
    assert "_budget_curves = numpy.load" in result.stderr and "10%, 30%" in result.stderr
    curve = np.load(out, allow_pickle=False)
    assert curve.shape == (99, 4, 2)
    np.testing.assert_allclose(1 - curve[89], lukv.keep_fractions(_shaped("10%", (0.5, 1.5, 1.0, 1.0), (0.7, 0.3))),
                               atol=1e-6)
    missing = runner.invoke(app, ["export", "aa0000000003", "--format", "lukv", "--db", db])
    assert missing.exit_code == 2 and "--out" in missing.output
