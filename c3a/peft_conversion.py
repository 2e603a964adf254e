"""Moving adapters between PEFT 0.21's own C3A format and ours, in both directions.

Why not ``peft.utils.register_peft_method``: it only accepts a name already present in the closed
``peft.utils.PeftType`` enum (it raises "Unknown PEFT type ... add an entry to PeftType"), and
"C3A" is taken by PEFT's own implementation. Registering a distinct name would mean mutating that
enum's internals, which is not clean; so this module converts checkpoints instead. Both formats use
the same kernel layout and row convention (C[r, c] = w[(c - r) mod p]) and PEFT divides by d_in, so
a kernel copies across unchanged when ``scale_by_d_in`` is true. Nothing here imports ``peft``.
"""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from c3a.config import C3AConfig
from c3a.adapter import _in_modules, _inject, c3a_layers, linear_layers, load_weights, set_adapters

PEFT_CONFIG_FILE = "adapter_config.json"
PEFT_WEIGHTS_FILE = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."
PEFT_KERNEL_SUFFIX = ".c3a_kernel"


def config_from_peft(peft_config: Mapping[str, Any]) -> C3AConfig:
    """Our config for a PEFT C3A ``adapter_config.json`` (PEFT always scales by 1/d_in)."""
    if peft_config.get("peft_type") != "C3A":
        raise ValueError(f"not a PEFT C3A adapter: peft_type={peft_config.get('peft_type')!r}")
    init = peft_config.get("init_weights", "xavier_uniform")
    init = {True: "zeros", False: "xavier_uniform"}.get(init, init) if isinstance(init, bool) else init
    return C3AConfig(target_modules=peft_config["target_modules"], block_size=int(peft_config["block_size"]),
                     block_size_pattern=dict(peft_config.get("block_size_pattern") or {}),
                     init_weights=init, scale_by_d_in=True)


def load_peft_c3a(base_model: nn.Module, path: str | Path, adapter_name: str = "default") -> nn.Module:
    """Load a folder written by PEFT's C3A ``save_pretrained`` into ``base_model`` as our adapter.

    Adapted layers and block sizes come from the saved kernels themselves; other saved tensors
    (``modules_to_save`` such as the classifier, biases with ``bias="all"``) overwrite the base
    model's parameters of the same name. Unused or missing tensors raise.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / PEFT_WEIGHTS_FILE).exists():
        raise FileNotFoundError(f"{path / PEFT_WEIGHTS_FILE} not found (only safetensors checkpoints are read)")
    config = config_from_peft(json.loads((path / PEFT_CONFIG_FILE).read_text()))
    tensors: dict = {}
    plan: dict[str, int] = {}
    for key, value in load_file(str(path / PEFT_WEIGHTS_FILE)).items():
        name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
        if name.endswith(PEFT_KERNEL_SUFFIX):
            layer = name[: -len(PEFT_KERNEL_SUFFIX)]
            plan[layer] = int(value.shape[-1])
            tensors[f"{layer}.c3a_kernel.{adapter_name}"] = value
        else:
            tensors[name] = value
    if not plan:
        raise ValueError(f"{path}: no C3A kernels in {PEFT_WEIGHTS_FILE}")
    linears = linear_layers(base_model)
    missing = [n for n in plan if n not in linears]
    if missing:
        raise ValueError(f"{path}: kernels for layers the model lacks: {missing[:5]}")
    _inject(base_model, plan, config, adapter_name)
    load_weights(base_model, tensors, source=str(path), adapters=[adapter_name])
    set_adapters(base_model, [adapter_name])
    return base_model


def export_peft_c3a(model: nn.Module, path: str | Path, adapter_name: str = "default",
                    modules_to_save: Sequence[str] = (), task_type: str | None = None) -> Path:
    """Write one of our adapters in PEFT's C3A format, for ``PeftModel.from_pretrained``.

    Layers are listed by full name; layers whose block size differs from the most common one get a
    ``block_size_pattern`` entry. Requires ``scale_by_d_in=True`` (PEFT has no other scaling).
    """
    from safetensors.torch import save_file

    layers = {n: m for n, m in c3a_layers(model).items() if adapter_name in m.c3a_kernel}
    if not layers:
        raise ValueError(f"C3A: no layer holds adapter {adapter_name!r}")
    if any(not m.configs[adapter_name].scale_by_d_in for m in layers.values()):
        raise ValueError("C3A: PEFT's C3A always scales by 1/d_in; export needs scale_by_d_in=True")
    if any(m.merged_adapters for m in layers.values()):
        raise RuntimeError("C3A: unmerge the adapters before exporting")
    sizes = {n: m.block_size[adapter_name] for n, m in layers.items()}
    default = Counter(sizes.values()).most_common(1)[0][0]
    pattern = {}
    for name, size in sizes.items():
        if size != default:
            if "." not in name:
                raise ValueError(f"C3A: cannot express layer {name!r} in PEFT's block_size_pattern")
            pattern[re.escape(name.split(".", 1)[1])] = size  # PEFT matches rf".*\.{key}$"
    tensors = {f"{PEFT_PREFIX}{n}{PEFT_KERNEL_SUFFIX}": m.c3a_kernel[adapter_name].detach().cpu().contiguous()
               for n, m in layers.items()}
    for name, param in model.named_parameters():
        if _in_modules(name, modules_to_save) and ".c3a_kernel." not in name:
            tensors[PEFT_PREFIX + name] = param.detach().cpu().contiguous().clone()
    config = {
        "peft_type": "C3A", "task_type": task_type, "block_size": default, "block_size_pattern": pattern,
        "target_modules": sorted(layers), "bias": "none", "init_weights": "xavier_uniform",
        "modules_to_save": list(modules_to_save) or None, "layers_to_transform": None,
        "layers_pattern": None, "inference_mode": True, "base_model_name_or_path": None, "revision": None,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / PEFT_CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(tensors, str(path / PEFT_WEIGHTS_FILE))
    return path
