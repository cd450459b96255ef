"""Ray executor: one actor per GPU (or ``--workers`` CPU actors), each holding a shard of the samples.

The only module that imports ``ray``. Each actor loads the model once and prefills its shard of every split:
every ``world``-th sample from its rank on, so that each shard holds every task in equal measure (contiguous
blocks would give one actor the long tasks' samples and leave the others waiting). A population is broadcast
to every actor as config JSON; each returns the per-sample metric values of its shard, which the driver joins
and averages with exactly rounded sums: the same bits the local executor computes on the same samples.

Faults: an actor that dies (killed process, out of memory) is restarted by Ray, which retries the call in
flight; if retries run out the driver starts a fresh actor and resubmits that shard. A candidate whose
evaluation raises inside an actor is split off and retried alone, then recorded as failed (the evaluator's
own rule), so one bad candidate never fails a population.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RaySystemError

from evolkv.config import KVConfig
from evolkv.errors import EvolKVError
from evolkv.evaluators.evaluator import SampleScores, Score, aggregate, summarise

RESUBMITS = 2  # fresh actors started for one shard before the population fails


@ray.remote(max_restarts=-1, max_task_retries=2)
class _Worker:
    """Loads the model once; prefills and scores its shard of each split."""

    def __init__(self, settings: dict[str, Any], rank: int, world: int, threads: int) -> None:
        import torch

        from evolkv.executors import make_local
        from evolkv.settings import SearchSettings

        torch.set_num_threads(threads)  # the driver's: CPU reductions then sum in the same order as local

        self.settings = SearchSettings.stored(settings)
        if self.settings.compute.device.startswith("cuda"):
            self.settings.compute.device = "cuda"  # Ray gives this actor its own GPU as device 0
        self.rank, self.world = rank, world
        _, self.local = make_local(self.settings, shard=(rank, world))

    def pid(self) -> int:
        return os.getpid()

    def peak_memory_gib(self) -> float | None:
        from evolkv.devices import peak_memory_gib

        return peak_memory_gib(self.settings.compute.device)

    def score(self, configs_json: list[str], split: str) -> SampleScores:
        configs = [KVConfig.from_json(text) for text in configs_json]
        return self.local.evaluator.score_samples(configs, self.local.prepared(split))

    def exact_match(self, configs_json: list[str], split: str) -> list[dict[str, list[float]]]:
        configs = [KVConfig.from_json(text) for text in configs_json]
        return self.local.evaluator.exact_match_samples(configs, self.local.prepared(split))

    def head_counts(self, configs_json: list[str], split: str) -> list[list[list[float]]]:
        configs = [KVConfig.from_json(text) for text in configs_json]
        return self.local.evaluator.head_counts(configs, self.local.prepared(split))


class RayExecutor:
    """Scores populations on ``workers`` Ray actors (see the module docstring)."""

    def __init__(self, settings, samples: dict[str, list], address: str | None = None, workers: int = 1) -> None:
        _connect(address, workers)
        self.settings, self.samples = settings, samples
        self.world = workers
        self.worker = f"ray:{workers}x{'gpu' if settings.compute.device.startswith('cuda') else 'cpu'}"
        self._actors = [self._start(rank) for rank in range(workers)]

    def _start(self, rank: int):
        gpus = 1 if self.settings.compute.device.startswith("cuda") else 0
        import torch

        return _Worker.options(num_gpus=gpus, num_cpus=1).remote(self.settings.to_dict(), rank, self.world,
                                                                 torch.get_num_threads())

    def prepare(self, split: str, progress: Callable[[], None] | None = None) -> None:
        """Actors prefill lazily on their first call for ``split``; nothing to do ahead of it."""
        if progress:
            for _ in range(self.split_size(split)):
                progress()

    def split_size(self, split: str) -> int:
        from evolkv.executors import DRAW, draw_indices

        if DRAW in split:
            return len(draw_indices(self.samples["search"], self.settings.data.samples, self.settings.seed, split))
        return len(self.samples.get(split, []))

    def evaluate(self, configs: Sequence[KVConfig], split: str, progress: Callable[[int], None] | None = None,
                 meanwhile: Callable[[], None] | None = None) -> list[Score]:
        """Scores of ``configs`` on ``split``; ``meanwhile`` runs on the driver while the actors score."""
        payload = [cfg.to_json(indent=None) for cfg in configs]
        parts = self._map("score", payload, split, meanwhile)
        if progress:
            progress(len(configs) * self.split_size(split))
        return aggregate(SampleScores.concat(parts, self._positions(split)), self.settings.scoring.objective)

    def _positions(self, split: str) -> list[list[int]]:
        """Each actor's samples' places in ``split`` (its shard is every ``world``-th sample from its rank on; of a
        draw, the drawn samples it holds, in the draw's order)."""
        from evolkv.executors import DRAW, draw_indices

        world = len(self._actors)
        if DRAW in split:
            drawn = draw_indices(self.samples["search"], self.settings.data.samples, self.settings.seed, split)
            return [[place for place, i in enumerate(drawn) if i % world == rank] for rank in range(world)]
        return [list(range(rank, len(self.samples[split]), world)) for rank in range(world)]

    def exact_match(self, configs: Sequence[KVConfig], split: str,
                    progress: Callable[[int], None] | None = None) -> list[dict[str, float]]:
        payload = [cfg.to_json(indent=None) for cfg in configs]
        parts = self._map("exact_match", payload, split)
        if progress:  # the actors' shards end together
            progress(self.split_size(split))
        joined: list[dict[str, list[float]]] = [{} for _ in configs]
        for part in parts:
            for merged, mine in zip(joined, part):
                for key, values in mine.items():
                    if key != "own":  # interleaved below
                        merged.setdefault(key, []).extend(values)
        for c, merged in enumerate(joined):  # each sample's own metric back in the split's order (shards are strided)
            own = [part[c].get("own", []) for part in parts]
            merged["own"] = [own[i % len(own)][i // len(own)] for i in range(sum(map(len, own)))]
        return [summarise(h) for h in joined]

    def head_shares(self, configs: Sequence[KVConfig], split: str) -> list[list[list[float]]]:
        """``LocalExecutor.head_shares`` over every actor's shard: the shards' counts summed, then shared."""
        from evolkv.executors import head_shares

        parts = self._map("head_counts", [cfg.to_json(indent=None) for cfg in configs], split)
        return [head_shares(np.sum([part[c] for part in parts], axis=0).tolist()) for c in range(len(configs))]

    def _map(self, method: str, payload: list[str], split: str,
             meanwhile: Callable[[], None] | None = None) -> list[Any]:
        """Call ``method`` on every actor (and ``meanwhile`` here, while they work); restart and resubmit the
        shard of an actor that died."""
        pending = {rank: getattr(actor, method).remote(payload, split) for rank, actor in enumerate(self._actors)}
        if meanwhile:
            meanwhile()
        results: dict[int, Any] = {}
        attempts = dict.fromkeys(pending, 0)
        while pending:
            rank, ref = next(iter(pending.items()))
            try:
                results[rank] = ray.get(ref)
                del pending[rank]
            except (RayActorError, RaySystemError) as e:
                attempts[rank] += 1
                if attempts[rank] > RESUBMITS:
                    raise EvolKVError(f"ray worker {rank} died {attempts[rank]} times: {str(e).splitlines()[0]}") from e
                self._actors[rank] = self._start(rank)
                pending[rank] = getattr(self._actors[rank], method).remote(payload, split)
        return [results[rank] for rank in range(self.world)]

    def peak_memory_gib(self) -> float | None:
        """The largest peak GPU memory of any actor (None on CPU actors, or when an actor cannot answer)."""
        if not self.settings.compute.device.startswith("cuda"):
            return None
        try:
            peaks = ray.get([actor.peak_memory_gib.remote() for actor in self._actors], timeout=30)
        except (RayActorError, RaySystemError, GetTimeoutError):
            return None
        return max((p for p in peaks if p is not None), default=None)

    def actor_pids(self) -> list[int]:
        return ray.get([actor.pid.remote() for actor in self._actors])

    def kill_actor(self, rank: int, restart: bool = True) -> None:
        """Kill one actor's process (tests and chaos drills); Ray restarts it unless ``restart`` is False."""
        ray.kill(self._actors[rank], no_restart=not restart)

    def shutdown(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)


def _connect(address: str | None, workers: int) -> None:
    """Join the cluster at ``address`` (``auto``, ``ray://host:port`` or ``host:port``) or start a local one."""
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            with socket.create_connection((host or "127.0.0.1", int(port)), timeout=3):
                pass
        except (OSError, ValueError) as e:
            raise EvolKVError(f"cannot reach the Ray cluster at {address}: {e}") from e
    if ray.is_initialized():
        return
    try:
        if address:
            ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        else:
            ray.init(num_cpus=max(workers, os.cpu_count() or 1), include_dashboard=False,
                     logging_level="ERROR", log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError, GetTimeoutError) as e:
        raise EvolKVError(f"cannot connect to the Ray cluster at {address or 'a local instance'}: "
                          f"{str(e).splitlines()[0]}") from e
