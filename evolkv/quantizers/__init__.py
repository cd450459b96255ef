"""KV-cache quantizers (KIVI first). ``QUANTIZERS[name]`` is the one instance of each; see ``base.Quantizer``.

Adding a quantizer: write ``evolkv/quantizers/<name>.py`` with a ``Quantizer`` subclass decorated
``@register("<name>")``, add the module to ``MODULES`` below, and give its dequantize path a branch in
``evolkv.kernels.quantize.load_entries`` under its ``kernel`` id.
"""

from __future__ import annotations

import importlib

from evolkv.quantizers.base import Quantizer
from evolkv.quantizers.registry import QUANTIZERS, register

MODULES = ("kivi",)
for _module in MODULES:
    importlib.import_module(f"evolkv.quantizers.{_module}")

__all__ = ["QUANTIZERS", "Quantizer", "register"]
