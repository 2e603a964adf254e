"""C3A: parameter-efficient fine-tuning with block-circulant adapters (circular convolution).

The public API is exported lazily: ``import c3a`` pays for torch only when a name is used. The adapter
imports nothing from the experiment framework (``framework/``), which uses it like any other method.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "C3AConfig": "c3a.config",
    "C3ALinear": "c3a.layer",
    "add_c3a": "c3a.adapter",
    "plan_c3a": "c3a.adapter",
    "c3a_layers": "c3a.adapter",
    "adapter_names": "c3a.adapter",
    "active_adapters": "c3a.adapter",
    "set_adapters": "c3a.adapter",
    "disable_adapters": "c3a.adapter",
    "enable_adapters": "c3a.adapter",
    "merge_adapters": "c3a.adapter",
    "unmerge_adapters": "c3a.adapter",
    "merge_and_unload": "c3a.adapter",
    "save_c3a": "c3a.adapter",
    "load_c3a": "c3a.adapter",
    "load_peft_c3a": "c3a.peft_conversion",
    "export_peft_c3a": "c3a.peft_conversion",
    "block_circulant_matrix": "c3a.circulant",
    "block_circulant_matmul": "c3a.circulant",
    "c3a_linear": "c3a.circulant",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'c3a' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
