"""At inference time: the stored winner for a model and budget, and applying it, without the search stack.

    import evolkv
    cfg = evolkv.lookup("smollm2-135m", budget="10%")          # a KVConfig (what `evolkv lookup` prints)
    with evolkv.apply(model, "10%"):                            # look up by the model's name, then apply
        out = model.generate(input_ids, max_new_tokens=64)
    with evolkv.apply(model, "winner.json"):                    # or a config: a file, a KVConfig or its dict
        ...

Only the store (SQLAlchemy) and the runtime are imported: no optimiser, no evaluator, no Ray.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evolkv.config import Budget, KVConfig
from evolkv.errors import EvolKVError


def _names(model: Any) -> list[str]:
    """The names a model may be stored under: the string itself, or a transformers model's ``name_or_path``
    and its last part (a packaged alias's cache folder is named after the alias)."""
    if isinstance(model, str):
        return [model]
    path = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    if not path:
        raise EvolKVError("this model has no name_or_path to look its config up by: pass the model's name as "
                          "searched (evolkv.lookup('NAME', budget=...)) or a config (evolkv.apply(model, cfg))")
    return list(dict.fromkeys([str(path), Path(str(path)).name]))


def find(model: Any, budget: str | Budget, db: str | None = None) -> tuple[KVConfig, dict[str, Any]]:
    """(config, run info) of the best stored winner for ``model`` (a name as searched, or a loaded transformers
    model) at or under ``budget``: the largest stored budget, then the lowest held-out loss."""
    from evolkv.store.store import Store

    wanted = budget if isinstance(budget, Budget) else Budget.parse(budget)
    store = Store(db, readonly=True)
    names = _names(model)
    for name in names:
        found = store.lookup(name, wanted)
        if found is not None:
            return found
    raise EvolKVError(f"no stored winner for {names[0]} at or under {wanted} in {store.url}; run "
                      f"`evolkv search --model {names[0]} --budget {wanted}` first")


def lookup(model: Any, budget: str | Budget, db: str | None = None) -> KVConfig:
    """The best stored winner for ``model`` at or under ``budget``, as ``evolkv lookup`` ranks them."""
    return find(model, budget, db)[0]


def resolve(model: Any, config_or_budget: Any, db: str | None = None) -> KVConfig:
    """The config ``evolkv.apply`` applies: a ``KVConfig``, its dict, a path to its JSON, or a budget (``"10%"``,
    ``128``, a ``Budget``) to look the stored winner for ``model`` up by."""
    if isinstance(config_or_budget, KVConfig):
        return config_or_budget
    if isinstance(config_or_budget, dict):
        return KVConfig.from_dict(config_or_budget)
    if isinstance(config_or_budget, Path) or (isinstance(config_or_budget, str)
                                              and config_or_budget.endswith(".json")):
        return KVConfig.load(config_or_budget)
    if config_or_budget is None:
        raise EvolKVError("give a config or a budget to look one up by: evolkv.apply(model, '10%') or "
                          "evolkv.apply(model, 'winner.json')")
    return lookup(model, config_or_budget, db)


@contextmanager
def apply(model: Any, config_or_budget: Any = None, *, db: str | None = None,
          tokenizer: Any = None) -> Iterator[KVConfig]:
    """Compress ``model``'s KV cache inside the block with a config (a ``KVConfig``, its dict or a path to its
    JSON) or with the best stored winner for ``model`` at or under a budget; yields the config. A config with a
    scorer that replays the context (kvzip) also needs the ``tokenizer``."""
    from evolkv import runtime

    config = resolve(model, config_or_budget, db)
    with runtime.compress(model, config, tokenizer):
        yield config
