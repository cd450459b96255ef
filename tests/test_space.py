import numpy as np
import pytest

from evolkv.config import Budget, ModelSpec
from evolkv.search.baselines import BASELINES, baseline
from evolkv.config import ScorerSpec
from evolkv.search.space import BudgetSpace, SubSpace

SPEC = ModelSpec("toy", "llama", 6, 8, 2, 16, ["full_attention"] * 6)


@pytest.mark.parametrize("budget", ["5%", "40%", "64"])
@pytest.mark.parametrize("per_head", [False, True])
def test_every_decoded_candidate_spends_exactly_the_budget(budget, per_head):
    space = BudgetSpace(SPEC, Budget.parse(budget), per_head=per_head)
    rng = np.random.default_rng(0)
    for _ in range(20):
        cfg = space.decode(rng.uniform(-3, 3, space.n_var))
        assert cfg.mean_budget == pytest.approx(space.budget.value, rel=1e-9)
        assert min(layer.budget for layer in cfg.layers) >= space.floor * space.budget.value - 1e-12


def test_encode_decode_round_trip_and_zero_is_uniform():
    space = BudgetSpace(SPEC, Budget.parse("10%"), per_head=True)
    assert all(layer.budget == pytest.approx(0.1) for layer in space.decode(np.zeros(space.n_var)).layers)
    cfg = space.decode(np.random.default_rng(1).uniform(-2, 2, space.n_var))
    again = space.decode(space.encode(cfg))
    assert [round(layer.budget, 6) for layer in again.layers] == [round(layer.budget, 6) for layer in cfg.layers]


def test_subspace_keeps_other_layers_at_incumbent():
    space = BudgetSpace(SPEC, Budget.parse("10%"))
    incumbent = np.linspace(-1, 1, space.n_var)
    sub = SubSpace(space, [0, 1], incumbent)
    x = sub.full(np.array([2.0, 2.0]))
    assert sub.n_var == 2 and np.allclose(x[2:], incumbent[2:])


@pytest.mark.parametrize("name", list(BASELINES))
def test_baselines_spend_the_budget(name):
    cfg = baseline(name, SPEC, Budget.parse("10%"), ScorerSpec())
    expected = 1.0 if name == "full" else 0.1
    assert cfg.mean_budget == pytest.approx(expected)
