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
@pytest.mark.parametrize("seed", [0, 7])
def test_same_seed_same_candidates(name, seed):
    _, a = _run(name, seed)
    _, b = _run(name, seed, disturb=True)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("name", CASES, ids=NAMES)
def test_failed_evaluations_do_not_stop_the_search(name):
    opt, history = _run(name, 1, generations=5, fail_first=True)
    assert len(history) == 5 and np.isfinite(opt.best_f)
    first = next(((X - 1.0) ** 2).sum(axis=1)[1:] for X in history if len(X) > 1)  # CMA-ES starts with x0 alone
    assert opt.best_f < first.min()  # it kept learning past the failures


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


# -- each optimiser beats random search on a seeded toy problem, at the same number of evaluations ----------

DIM, POP, GENS, SEEDS = 8, 8, 12, (0, 1, 2)
SHIFT = np.linspace(-1.5, 2.0, DIM)  # the optimum, off-centre so the middle of the box is not already good


def _sphere(X):
    return ((X - SHIFT) ** 2).sum(axis=1)


def _pair(X):  # two objectives pulling toward SHIFT and -SHIFT
    return np.stack([_sphere(X), ((X + SHIFT) ** 2).sum(axis=1)], axis=1)


def _hypervolume(F, ref=(80.0, 80.0)):
    """Area dominated by the points of ``F`` [n, 2] inside the box up to ``ref`` (minimisation)."""
    points = sorted((f for f in F if f[0] < ref[0] and f[1] < ref[1]), key=lambda f: f[0])
    area, best_second = 0.0, ref[1]
    for first, second in points:
        if second < best_second:
            area += (ref[0] - first) * (best_second - second)
            best_second = second
    return area


def _optimised(case, seed):
    name, n_obj = case
    lower, upper = -3 * np.ones(DIM), 3 * np.ones(DIM)
    opt = make_optimizer(name, DIM, lower, upper, population=POP, seed=seed, n_obj=n_obj)
    seen = []
    for _ in range(GENS):
        X = opt.ask()
        F = _sphere(X) if n_obj == 1 else _pair(X)
        opt.tell(X, F)
        seen.append(F)
    F = np.concatenate(seen)
    return F.min() if n_obj == 1 else -_hypervolume(F)  # lower is better for both


def _random(n_obj, seed):
    X = np.random.default_rng(1000 + seed).uniform(-3, 3, (POP * GENS, DIM))
    return _sphere(X).min() if n_obj == 1 else -_hypervolume(_pair(X))


@pytest.mark.parametrize("name", CASES, ids=NAMES)
def test_each_optimizer_beats_random_search(name):
    ours = np.median([_optimised(name, seed) for seed in SEEDS])
    random = np.median([_random(name[1], seed) for seed in SEEDS])
    assert ours < random, f"{name}: {ours:.3f} (best loss or -hypervolume) vs random search {random:.3f}"


@pytest.mark.parametrize("name", ["cmaes", "ga", "de"])
def test_every_seed_is_scored_first_and_cma_es_starts_from_the_best(name):
    """Several starts (the best baseline, another budget's winner): each is evaluated in the first generation;
    CMA-ES, which takes one start, then samples around the best of them."""
    seeds = np.array([np.zeros(N), np.full(N, 1.0), np.full(N, -2.0)])  # the second is the optimum
    opt = make_optimizer(name, N, LOWER, UPPER, population=6, seed=0, x0=seeds)
    X = opt.ask()
    assert all(any(np.allclose(x, s) for x in X) for s in seeds)
    opt.tell(X, ((X - 1.0) ** 2).sum(axis=1))
    if name == "cmaes":
        assert np.allclose(opt.x0, seeds[1])
        nxt = opt.ask()
        assert np.abs(nxt.mean(axis=0) - 1.0).max() < 1.0  # CMA-ES samples around the best seed


def test_cmaes_restarts_from_the_incumbent_with_a_larger_step_when_it_stalls():
    """Nothing beats the start (a bowl around it): after ``patience`` generations CMA-ES starts again from the
    incumbent with twice the step, as many times as ``restarts`` allows, then keeps going."""
    bowl = lambda X: 1.0 + (X ** 2).sum(axis=1)  # noqa: E731
    opt = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, step=0.05, restarts=2)
    steps = []
    for _ in range(12):
        X = opt.ask()
        opt.tell(X, bowl(X))
        steps.append(opt.step)
    assert steps[0] == 0.05 and max(steps) == 0.2 and opt.restarts == 0
    assert np.array_equal(opt.x0, opt.best_x)
    still = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, step=0.05)
    for _ in range(6):
        X = still.ask()
        still.tell(X, bowl(X))
    assert still.step == 0.05 and still.restarts == 0  # no restarts unless asked


def test_cmaes_spends_no_generation_on_a_start_it_was_told():
    """CMA-ES's first generation is its start alone: after a generation of seeds (the best of them is the start,
    already scored), after a restart, or given ``x0_value``, the next population asked is a sampled one."""
    seeds = np.stack([np.zeros(N), np.ones(N)])
    opt = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, x0=seeds)
    X = opt.ask()
    assert np.array_equal(X, seeds)
    opt.tell(X, ((X - 1.0) ** 2).sum(axis=1))
    assert opt.ask().shape == (6, N)  # sampled around the better seed, not that seed again
    told = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, x0=np.ones(N), x0_value=0.0)
    assert told.ask().shape == (6, N)
    asked = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, x0=np.ones(N))
    assert np.array_equal(asked.ask(), np.ones((1, N)))  # a start nobody scored is scored first
    restarting = make_optimizer("cmaes", N, LOWER, UPPER, population=6, seed=0, x0=np.zeros(N), restarts=1)
    restarting.tell(restarting.ask(), np.zeros(1))  # the start is the best there will be: restarts after patience
    for _ in range(3):
        X = restarting.ask()
        restarting.tell(X, 1.0 + (X ** 2).sum(axis=1))
    assert restarting.restarts == 0 and restarting.ask().shape == (6, N)


def test_arm_tpe_asks_the_seeds_first_and_only_the_picked_arms_genes():
    """``--arm-search tpe``: a point is gene 0 (the arm) and each arm's genes in turn; the seeds (each arm's starts)
    are the first trials, and a candidate of one arm leaves the other arm's genes at that arm's start."""
    from evolkv.search.optuna_backend import ArmTPE

    segments = [("a", 1, 2), ("b", 3, 3)]
    lower = np.array([0.0, -3, -3, -3, -3, -3])
    upper = np.array([1.5, 3, 3, 3, 3, 3])
    seeds = np.array([[1.5, 0.1, 0.2, 1.0, 1.0, 1.0], [0.5, 2.0, 2.0, 0.3, 0.3, 0.3]])
    opt = ArmTPE(segments, 6, lower, upper, population=8, seed=0, x0=seeds)
    seen = {"a": 0, "b": 0}
    for generation in range(4):
        X = opt.ask()
        if generation == 0:  # the seeds, each as a point of its own arm
            assert np.allclose(X[0, [0, 3, 4, 5]], seeds[0, [0, 3, 4, 5]]) and np.allclose(X[1, :3], seeds[1, :3])
        for x in X:
            arm = "b" if x[0] >= 1 else "a"
            seen[arm] += 1
            other = slice(3, 6) if arm == "a" else slice(1, 3)
            assert np.allclose(x[other], [1.0] * 3 if arm == "a" else [2.0, 2.0])  # the other arm at its start
        opt.tell(X, np.where(X[:, 0] >= 1, ((X[:, 3:] - 1) ** 2).sum(axis=1), 5.0))  # arm b pays
    assert seen["a"] and seen["b"] > seen["a"] and opt.best_f < 0.5
