"""At inference time: the stored winner for a model and budget, and applying it, without the search stack.

    import evolkv
    cfg = evolkv.lookup("smollm2-135m", budget="10%")          # a KVConfig (what `evolkv lookup` prints)
    with evolkv.apply(model, budget="10%"):                     # look up by the model's name, then apply
        out = model.generate(input_ids, max_new_tokens=64)

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
                          "searched (evolkv.lookup('NAME', budget=...)) or a config (evolkv.apply(model, config=cfg))")
    return list(dict.fromkeys([str(path), Path(str(path)).name]))


def find(model: Any, budget: str | Budget, db: str | None = None) -> tuple[KVConfig, dict[str, Any]]:
    """(config, run info) of the best stored winner for ``model`` (a name as searched, or a loaded transformers
    model) at or under ``budget``: the largest stored budget, then the lowest held-out loss."""
    from evolkv.store.store import Store

    wanted = budget if isinstance(budget, Budget) else Budget.parse(budget)
    store = Store(db)
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


@contextmanager
def apply(model: Any, budget: str | Budget | None = None, *, config: KVConfig | None = None,
          db: str | None = None, tokenizer: Any = None) -> Iterator[KVConfig]:
    """Look up the stored winner for ``model`` at or under ``budget`` (or take ``config``) and compress the
    model's KV cache with it inside the block; yields the config. A config with a scorer that replays the
    context (kvzip) also needs the ``tokenizer``."""
    from evolkv import runtime

    if config is None:
        if budget is None:
            raise EvolKVError("give a budget to look a config up by, or a config: apply(model, budget='10%')")
        config = lookup(model, budget, db)
    with runtime.apply(model, config, tokenizer):
        yield config
