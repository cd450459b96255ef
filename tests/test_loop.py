"""The search loop: an interrupted search resumes from the store and ends where an uninterrupted one does."""

import pytest

from evolkv.errors import SearchInterrupted
from evolkv.executors import make_executor
from evolkv.search.loop import SearchSettings, run_search
from evolkv.store.store import Store


class Interrupting:
    """Passes everything to a real executor, and raises KeyboardInterrupt at its ``stop_at``-th population."""

    def __init__(self, inner, stop_at):
        self.inner, self.stop_at, self.calls = inner, stop_at, 0
        self.samples, self.worker = inner.samples, inner.worker

    def prepare(self, split, progress=None):
        self.inner.prepare(split, progress)

    def evaluate(self, configs, split, progress=None):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        return self.inner.evaluate(configs, split)

    def exact_match(self, configs, split):
        return self.inner.exact_match(configs, split)


@pytest.mark.parametrize("optimizer,groups", [("cmaes", 0), ("ga", 2)])
def test_killed_search_resumes_to_the_same_result(model_dirs, tmp_path, optimizer, groups):
    settings = SearchSettings(model=model_dirs["qwen3"], budget="15%", optimizer=optimizer, generations=3,
                              population=4, samples=1, length=200, tasks=["passkey"], groups=groups)
    loaded, executor = make_executor(settings)
    straight = run_search(settings, loaded.spec, executor, Store(str(tmp_path / "a.db")))

    store = Store(str(tmp_path / "b.db"))
    with pytest.raises(SearchInterrupted) as stopped:
        run_search(settings, loaded.spec, Interrupting(executor, stop_at=3), store)
    run_id = stopped.value.run_id
    assert store.run(run_id).status == "interrupted" and store.run(run_id).generations_done >= 1
    resumed = run_search(settings, loaded.spec, executor, store, run_id=run_id)
    assert resumed["status"] == "finished"
    assert resumed["winner"]["config_hash"] == straight["winner"]["config_hash"]
    assert resumed["winner"]["search_objective"] == pytest.approx(straight["winner"]["search_objective"])
