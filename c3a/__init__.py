"""C3A: parameter-efficient fine-tuning with block-circulant adapters (circular convolution).

The public API is exported lazily so that ``import c3a.results`` (and the other light modules) does
not pay for importing torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "C3AConfig": "c3a.config",
    "C3ALinear": "c3a.layer",
    "C3AMethod": "c3a.model",
    "add_c3a": "c3a.model",
    "plan_c3a": "c3a.model",
    "c3a_layers": "c3a.model",
    "adapter_names": "c3a.model",
    "active_adapters": "c3a.model",
    "set_adapters": "c3a.model",
    "disable_adapters": "c3a.model",
    "enable_adapters": "c3a.model",
    "merge_adapters": "c3a.model",
    "unmerge_adapters": "c3a.model",
    "merge_and_unload": "c3a.model",
    "save_c3a": "c3a.model",
    "load_c3a": "c3a.model",
    "load_peft_c3a": "c3a.peft_integration",
    "export_peft_c3a": "c3a.peft_integration",
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
