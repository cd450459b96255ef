"""Choose the executor a run's settings name: in-process (``local``) or Ray actors (``ray``).

Kept apart from ``evolkv.executors`` so that imports run one way: the Ray actors import the local executor,
and only this module imports both.
"""

from __future__ import annotations

from evolkv.errors import EvolKVError
from evolkv.executors import build_samples, make_local


def make_executor(settings, reporter=None):
    """The executor ``settings.compute.executor`` names (``local`` or ``ray``) and the model's description."""
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
