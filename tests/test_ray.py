"""The Ray executor (local Ray, CPU actors): same objectives as the local executor, survives a killed actor."""

import threading
import time

import pytest

ray = pytest.importorskip("ray")

from evolkv.config import Budget, uniform_config  # noqa: E402
from evolkv.errors import EvolKVError  # noqa: E402
from evolkv.executors import make_executor  # noqa: E402
from evolkv.search.baselines import BASELINES, baseline  # noqa: E402
from evolkv.search.loop import SearchSettings, run_search  # noqa: E402
from evolkv.store.store import Store  # noqa: E402


@pytest.fixture(scope="module")
def ray_local():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _settings(model_dirs, **extra):
    return SearchSettings(model=model_dirs["qwen3"], budget="15%", generations=2, population=4, samples=3,
                          length=200, tasks=["passkey", "multikey"], **extra)


def _configs(spec):
    configs = [baseline(name, spec, Budget.parse("15%"), uniform_config(spec, Budget.parse("15%")).scorer)
               for name in BASELINES]
    return configs


def test_ray_and_local_executors_give_identical_objectives(model_dirs, ray_local):
    loaded, local = make_executor(_settings(model_dirs))
    _, remote = make_executor(_settings(model_dirs, executor="ray", workers=2))
    configs = _configs(loaded.spec)
    for split in ("search", "heldout"):
        mine, theirs = local.evaluate(configs, split), remote.evaluate(configs, split)
        assert [s.objective for s in mine] == [s.objective for s in theirs]
        assert [s.metrics for s in mine] == [s.metrics for s in theirs]
    assert local.exact_match(configs[:2], "search") == remote.exact_match(configs[:2], "search")
    remote.shutdown()


def test_an_actor_killed_mid_population_is_survived(model_dirs, ray_local):
    loaded, local = make_executor(_settings(model_dirs))
    _, remote = make_executor(_settings(model_dirs, executor="ray", workers=2))
    configs = _configs(loaded.spec)
    expected = [s.objective for s in local.evaluate(configs, "search")]
    results = {}
    worker = threading.Thread(target=lambda: results.setdefault("scores", remote.evaluate(configs, "search")))
    worker.start()
    time.sleep(1.0)  # the actors are loading the model or scoring
    remote.kill_actor(0)
    worker.join(timeout=300)
    assert [s.objective for s in results["scores"]] == expected
    # and with Ray's own restart disabled, the executor starts a fresh actor and resubmits the shard
    remote.kill_actor(1, restart=False)
    assert [s.objective for s in remote.evaluate(configs, "search")] == expected
    remote.shutdown()


def test_search_on_ray_reaches_the_local_winner(model_dirs, tmp_path, ray_local):
    settings = _settings(model_dirs)
    loaded, local = make_executor(settings)
    straight = run_search(settings, loaded.spec, local, Store(str(tmp_path / "a.db")))
    ray_settings = _settings(model_dirs, executor="ray", workers=2)
    _, remote = make_executor(ray_settings)
    distributed = run_search(ray_settings, loaded.spec, remote, Store(str(tmp_path / "b.db")))
    remote.shutdown()
    assert distributed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert distributed["winner"]["heldout_objective"] == straight["winner"]["heldout_objective"]


def test_unreachable_ray_address_is_one_clear_error(model_dirs):
    if ray.is_initialized():
        ray.shutdown()
    with pytest.raises(EvolKVError, match="cannot reach the Ray cluster"):
        make_executor(_settings(model_dirs, executor="ray", workers=1, ray_address="ray://127.0.0.1:9"))
