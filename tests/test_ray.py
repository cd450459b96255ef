"""The Ray executor (local Ray, 2 CPUs, 2 actors): the same objectives and winner as the local executor, and
a killed actor survived."""

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from evolkv.config import Budget, ScorerSpec  # noqa: E402
from evolkv.errors import EvolKVError  # noqa: E402
from evolkv.pools import make_executor  # noqa: E402
from evolkv.search.baselines import BASELINES, baseline  # noqa: E402
from evolkv.search.loop import SearchSettings, run_search  # noqa: E402
from evolkv.store.store import Store  # noqa: E402


def _settings(model_dirs, **extra):
    # a pool of 3 per task: each generation scores a draw of 2 per task, which spans both actors' shards
    return SearchSettings(model=model_dirs["qwen3"], budget="15%", generations=2, population=4, samples=2, pool=3,
                          length=200, tasks=["passkey", "multikey"], **extra)


@pytest.fixture(scope="module")
def executors(model_dirs):
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    every = list(BASELINES)  # kvzip among them: its replay pass runs in the actors too
    loaded, local = make_executor(_settings(model_dirs, baselines=every))
    _, remote = make_executor(_settings(model_dirs, executor="ray", workers=2, baselines=every))
    yield loaded, local, remote
    remote.shutdown()
    ray.shutdown()


def _configs(spec):
    return [baseline(name, spec, Budget.parse("15%"), ScorerSpec()) for name in BASELINES]


def test_ray_and_local_executors_give_identical_objectives(executors):
    loaded, local, remote = executors
    configs = _configs(loaded.spec)
    for split in ("search", "search@1", "validation", "heldout"):
        mine, theirs = local.evaluate(configs, split), remote.evaluate(configs, split)
        assert local.split_size(split) == remote.split_size(split) == (4 if split == "search@1" else 6 if split == "search" else 4)
        assert [s.objective for s in mine] == [s.objective for s in theirs]
        assert [s.metrics for s in mine] == [s.metrics for s in theirs]
    assert local.exact_match(configs[:2], "search") == remote.exact_match(configs[:2], "search")
    profiled = [cfg for cfg in configs if cfg.allocation or any(layer.heads is None for layer in cfg.layers)]
    mine, theirs = local.head_shares(profiled, "search"), remote.head_shares(profiled, "search")
    assert all(a == pytest.approx(b, abs=1e-12) for m, t in zip(mine, theirs) for a, b in zip(m, t))


def test_search_on_ray_reaches_the_local_winner(executors, model_dirs, tmp_path):
    loaded, local, remote = executors
    straight = run_search(_settings(model_dirs), loaded.spec, local, Store(str(tmp_path / "a.db")))
    distributed = run_search(_settings(model_dirs, executor="ray", workers=2), loaded.spec, remote,
                             Store(str(tmp_path / "b.db")))
    assert distributed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert distributed["winner"]["heldout_objective"] == straight["winner"]["heldout_objective"]
    assert distributed["results"] == straight["results"]


def test_an_actor_killed_mid_population_is_survived(executors):
    loaded, local, remote = executors
    configs = _configs(loaded.spec) * 3
    expected = [s.objective for s in local.evaluate(configs, "search")]
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("scores", remote.evaluate(configs, "search")))
    worker.start()
    time.sleep(0.5)  # the population is being scored
    remote.kill_actor(0)  # Ray restarts the actor and retries the call in flight
    worker.join(timeout=300)
    assert [s.objective for s in results["scores"]] == expected
    remote.kill_actor(1, restart=False)  # no restart: the executor starts a fresh actor, resubmits the shard
    assert [s.objective for s in remote.evaluate(configs, "search")] == expected


def test_unreachable_ray_address_is_one_clear_error(model_dirs):
    from evolkv.ray_executor import _connect

    with pytest.raises(EvolKVError, match="cannot reach the Ray cluster"):
        _connect("ray://127.0.0.1:9", 1)
