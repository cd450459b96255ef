"""Contract every optimiser backend must pass (optuna's BasicSamplerTestCase in spirit)."""

import numpy as np
import pytest

from evolkv.errors import ConfigError
from evolkv.search.optimizers import MULTI_OBJECTIVE, OPTIMIZERS, make_optimizer

N = 5
LOWER, UPPER = -3 * np.ones(N), 3 * np.ones(N)
# every backend, single-objective where it can be, and each multi-objective one on two objectives
CASES = [(n, 1) for n in OPTIMIZERS if n not in ("nsga2", "optuna-nsga2")] + [(n, 2) for n in sorted(MULTI_OBJECTIVE)]
NAMES = [f"{n}/{k}obj" for n, k in CASES]


def _run(case, seed, generations=4, fail_first=False, disturb=False, storage=None):
    name, n_obj = case
    opt = make_optimizer(name, N, LOWER, UPPER, population=6, seed=seed, n_obj=n_obj, storage=storage,
                         study_name="contract")
    history = []
    for _ in range(generations):
        if disturb:  # other code drawing from numpy's global RNG must not change the candidates
            np.random.rand(3)
        X = opt.ask()
        F = ((X - 1.0) ** 2).sum(axis=1)
        if n_obj == 2:  # a trade-off: near 1 against near -1
            F = np.stack([F, ((X + 1.0) ** 2).sum(axis=1)], axis=1)
        if fail_first:
            F[0] = np.inf
        opt.tell(X, F)
        history.append(X.copy())
    return opt, history


@pytest.mark.parametrize("name", CASES, ids=NAMES)
def test_asks_within_bounds(name):
    _, history = _run(name, 0)
    for X in history:
        assert X.ndim == 2 and X.shape[1] == N
        assert (X >= LOWER).all() and (X <= UPPER).all()


@pytest.mark.parametrize("name", CASES, ids=NAMES)
@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_candidates(name, seed):
    _, a = _run(name, seed)
    _, b = _run(name, seed, disturb=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", CASES, ids=NAMES)
def test_failed_evaluations_do_not_stop_the_search(name):
    opt, history = _run(name, 1, generations=5, fail_first=True)
    assert len(history) == 5 and np.isfinite(opt.best_f)
    assert (opt.best_x >= LOWER).all() and (opt.best_x <= UPPER).all()


def test_unknown_optimizer():
    with pytest.raises(ConfigError):
        make_optimizer("nope", N, LOWER, UPPER, 4, 0)


def test_optuna_study_lives_in_the_run_database(tmp_path):
    """Stored where optuna-dashboard finds it; a second run under the same name starts the study afresh."""
    import optuna

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    _, first = _run(("optuna-nsga2", 2), 3, generations=2, storage=url)
    _, again = _run(("optuna-nsga2", 2), 3, generations=2, storage=url)
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    study = optuna.load_study(study_name="contract", storage=url)
    assert len(study.trials) == 12 and len(study.best_trials) >= 1


def test_single_objective_optimizer_refuses_two_objectives():
    with pytest.raises(ConfigError):
        make_optimizer("cmaes", N, LOWER, UPPER, 4, 0, n_obj=2)
    with pytest.raises(ConfigError):
        make_optimizer("nsga2", N, LOWER, UPPER, 4, 0, n_obj=1)
