"""Scorers by name. A new scorer is one file in this package, decorated with ``@register(name)``, and its
module name added to ``MODULES`` in ``evolkv/scorers/__init__.py``."""

from __future__ import annotations

from collections.abc import Callable

SCORERS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in SCORERS and SCORERS[name] is not cls:
            raise ValueError(f"scorer {name!r} is registered twice")
        SCORERS[name] = cls
        return cls
    return add
