"""Choose the executor a run's settings name: in-process (``local``) or Ray actors (``ray``).

Kept apart from ``evolkv.executors`` so that imports run one way: the Ray actors import the local executor,
and only this module imports both.
"""

from __future__ import annotations

from evolkv.errors import EvolKVError
from evolkv.executors import build_samples, make_local


def check_length(settings) -> None:
    """Refuse, before the model loads, a synthetic ``--length`` the model's positions do not cover (samples of
    it would be built, then refused one by one at prefill)."""
    from evolkv import models
    from evolkv.evaluators.tasks import TASKS

    if not any(task in TASKS for task in settings.data.tasks):
        return
    limit = models.context_limit(settings.compute.model)
    if limit and settings.data.length >= limit:
        raise EvolKVError(f"--length {settings.data.length} is past the context of "
                          f"{settings.compute.model or models.default_model()} ({limit} positions): give a --length "
                          "below it")


def make_executor(settings, reporter=None):
    """The executor ``settings.compute.executor`` names (``local`` or ``ray``) and the model's description."""
    settings.compute.resolve_auto()  # settings built in code, not validated: the default device here
    executor = settings.compute.executor
    if executor == "local":
        return make_local(settings)
    if executor != "ray":
        raise EvolKVError(f"unknown executor {executor!r}; known: local, ray")
    from evolkv import models

    try:
        from evolkv.ray_executor import RayExecutor
    except ImportError as e:
        raise EvolKVError("--executor ray needs the ray package: pip install 'evolkv[ray]'") from e
    loaded = models.load(settings.compute.model, "cpu", settings.compute.dtype, weights=False)  # the driver needs no weights
    samples = build_samples(settings, loaded.tokenizer)
    return loaded, RayExecutor(settings, samples, settings.compute.ray_address, settings.compute.workers)
