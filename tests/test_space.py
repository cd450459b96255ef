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


def test_a_scorer_gene_per_layer_picks_among_the_choices_and_round_trips():
    choices = (ScorerSpec("snapkv"), ScorerSpec("tova"), ScorerSpec("criticalkv"))
    space = BudgetSpace(SPEC, Budget.parse("10%"), choices[0], per_head=True, choices=choices)
    assert space.n_var == 6 + 6 * 2 + 6
    genes = np.zeros(space.n_var)
    # slices 0.5 wide from -3 name snapkv, tova, criticalkv, snapkv, ... in turn
    genes[-6:] = [-3.0, -2.4, -2.1, -1.6, 0.1, 3.0]  # slices 0, 1, 1, 2, 6, 11 (the last slice ends at 3)
    cfg = space.decode(genes)
    assert [cfg.scorer_of(i).name for i in range(6)] == ["snapkv", "tova", "tova", "criticalkv", "snapkv",
                                                         "criticalkv"]
    assert cfg.layers[0].scorer is None and [s.name for s in cfg.scorers()] == ["snapkv", "tova", "criticalkv"]
    assert [again.name for again in map(space.decode(space.encode(cfg)).scorer_of, range(6))] == \
        [cfg.scorer_of(i).name for i in range(6)]
    group = SubSpace(space, [4], space.encode(cfg))
    assert group.n_var == 1 + 2 + 1 and group.decode(np.array([0, 0, 0, -2.4])).scorer_of(4).name == "tova"
    assert all(abs(space.scorer_gene(i)) <= 0.75 for i in range(3))  # every choice one slice from the middle
    one = BudgetSpace(SPEC, Budget.parse("10%"), choices[0], choices=choices[:1])  # one choice: no gene
    assert one.n_var == 6 and all(layer.scorer is None for layer in one.decode(np.zeros(6)).layers)
