"""Quantizers by name. A new quantizer is one file in this package, decorated with ``@register(name)``, its
module added to ``MODULES`` in ``evolkv/quantizers/__init__.py``, and its load path in the kernels'
``load_entries`` under its ``kernel`` id."""

from __future__ import annotations

from collections.abc import Callable

QUANTIZERS: dict[str, object] = {}


def register(name: str) -> Callable[[type], type]:
    def add(cls: type) -> type:
        if name in QUANTIZERS and type(QUANTIZERS[name]) is not cls:
            raise ValueError(f"quantizer {name!r} is registered twice")
        instance = cls()
        instance.name = name
        QUANTIZERS[name] = instance
        return cls
    return add
