"""Putting C3A into any model: inject, switch, merge, save/load.

Everything that can be wrong (targets that match nothing, block sizes that do not divide a layer) is
found by :func:`plan_c3a` before a single module is replaced, so a failed call leaves the model as
it was.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from c3a.config import C3AConfig, target_matches
from c3a.layer import C3ALinear

CONFIG_FILE = "c3a_config.json"
WEIGHTS_FILE = "c3a_model.safetensors"
FORMAT_VERSION = 1


# -- finding layers -------------------------------------------------------------------------------
def c3a_layers(model: nn.Module) -> dict[str, C3ALinear]:
    """Every ``C3ALinear`` in ``model`` by qualified name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, C3ALinear)}


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    """Adaptable layers: plain ``nn.Linear`` and ``C3ALinear`` (whose inner base layer is not listed)."""
    found: dict[str, nn.Module] = {}
    wrapped: list[str] = []
    for name, module in model.named_modules():
        if any(name.startswith(w + ".") for w in wrapped):
            continue
        if isinstance(module, C3ALinear):
            wrapped.append(name)
            found[name] = module
        elif isinstance(module, nn.Linear):
            found[name] = module
    return found


def _in_modules(name: str, modules: Iterable[str]) -> bool:
    """Component match, as ``head_parameters`` does it."""
    parts = set(name.split("."))
    return any(m in parts for m in modules)


def _describe_linears(linears: dict[str, nn.Module]) -> str:
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
    names = list(linears)
    shown = names if len(names) <= 30 else names[:30] + [f"... ({len(names)} in all)"]
    return f"name suffixes {suffixes}; layers {shown}"


def plan_c3a(model: nn.Module, config: C3AConfig, adapter_name: str = "default",
             exclude_modules: Sequence[str] = ()) -> dict[str, int]:
    """Target layer name -> block size, or ``ValueError``; the model is not touched.

    ``exclude_modules`` (component names such as a task head) are never targeted.
    """
    linears = linear_layers(model)
    candidates = {n: m for n, m in linears.items() if not _in_modules(n, exclude_modules)}
    targets = {n: m for n, m in candidates.items() if target_matches(config.target_modules, n)}
    if not targets:
        raise ValueError(
            f"C3A: target_modules={config.target_modules!r} match no linear layer"
            f"{f' (excluding {list(exclude_modules)})' if exclude_modules else ''}. The model's linear "
            f"layers: {_describe_linears(linears)}")
    plan: dict[str, int] = {}
    errors: list[str] = []
    for name, module in targets.items():
        if isinstance(module, C3ALinear) and adapter_name in module.c3a_kernel:
            raise ValueError(f"C3A: layer {name!r} already has an adapter named {adapter_name!r}")
        try:
            plan[name] = config.resolve_block_size(name, module.in_features, module.out_features)
        except ValueError as err:
            errors.append(str(err))
    if errors:
        more = f" (and {len(errors) - 1} more layers)" if len(errors) > 1 else ""
        raise ValueError(errors[0] + more)
    return plan


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def _inject(model: nn.Module, plan: dict[str, int], config: C3AConfig, adapter_name: str) -> None:
    before = c3a_layers(model)
    first = not before
    disabled = any(layer.adapters_disabled for layer in before.values())
    for name, block_size in plan.items():
        module = model.get_submodule(name)
        if not isinstance(module, C3ALinear):
            module = C3ALinear(module)
            module.adapters_disabled = disabled
            _replace(model, name, module)
        module.add_adapter(adapter_name, block_size, config)
        # like PEFT: the first adapter is active and trains; later ones wait for set_adapters
        module.c3a_kernel[adapter_name].requires_grad_(first)
        if first:
            module.active_adapters.append(adapter_name)


# -- public helpers -------------------------------------------------------------------------------
def add_c3a(model: nn.Module, config: C3AConfig, adapter_name: str = "default",
            exclude_modules: Sequence[str] = ()) -> nn.Module:
    """Add adapter ``adapter_name`` to every targeted linear layer of ``model`` (in place; returned).

    Only the adapted base layers are frozen; freezing the rest of the model is the caller's choice
    (``C3AMethod.apply`` freezes all but kernels and head).
    """
    plan = plan_c3a(model, config, adapter_name, exclude_modules)
    _inject(model, plan, config, adapter_name)
    return model


def adapter_names(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(a for layer in c3a_layers(model).values() for a in layer.c3a_kernel))


def active_adapters(model: nn.Module) -> list[str]:
    return list(dict.fromkeys(a for layer in c3a_layers(model).values() for a in layer.active_adapters))


def _layers_or_raise(model: nn.Module) -> dict[str, C3ALinear]:
    layers = c3a_layers(model)
    if not layers:
        raise ValueError("C3A: the model has no C3A layers (call add_c3a first)")
    return layers


def set_adapters(model: nn.Module, names: str | Sequence[str]) -> None:
    """Make ``names`` the active set; several active adapters add their deltas."""
    names = [names] if isinstance(names, str) else list(names)
    _layers_or_raise(model)
    known = adapter_names(model)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"C3A: unknown adapters {unknown}; the model has {known}")
    for layer in c3a_layers(model).values():
        layer.set_adapters([n for n in names if n in layer.c3a_kernel])


def disable_adapters(model: nn.Module) -> None:
    for layer in _layers_or_raise(model).values():
        layer.disable_adapters()


def enable_adapters(model: nn.Module) -> None:
    for layer in _layers_or_raise(model).values():
        layer.enable_adapters()


def merge_adapters(model: nn.Module) -> None:
    """Fold the active adapters into the base weights (forward then costs nothing extra)."""
    for layer in _layers_or_raise(model).values():
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    for layer in _layers_or_raise(model).values():
        layer.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Merge the active adapters and put the plain ``nn.Linear`` layers back; returns the model."""
    for name, layer in _layers_or_raise(model).items():
        layer.merge()
        if not name:
            return layer.base_layer
        _replace(model, name, layer.base_layer)
    return model


# -- save / load ----------------------------------------------------------------------------------
def save_c3a(model: nn.Module, path: str | Path, modules_to_save: Sequence[str] = ()) -> Path:
    """Write ``c3a_config.json`` and ``c3a_model.safetensors`` (kernels, plus every parameter of the
    ``modules_to_save`` components such as a trained head) to the folder ``path``."""
    from safetensors.torch import save_file

    layers = _layers_or_raise(model)
    if any(layer.merged_adapters for layer in layers.values()):
        raise RuntimeError("C3A: unmerge the adapters before saving (merged weights are not saved)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    configs: dict[str, C3AConfig] = {}
    plans: dict[str, dict[str, int]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for lname, layer in layers.items():
        for adapter, kernel in layer.c3a_kernel.items():
            configs.setdefault(adapter, layer.configs[adapter])
            plans.setdefault(adapter, {})[lname] = layer.block_size[adapter]
            tensors[f"{lname}.c3a_kernel.{adapter}"] = kernel.detach().cpu().contiguous()
    extra = [(n, p) for n, p in model.named_parameters() if _in_modules(n, modules_to_save) and ".c3a_kernel." not in n]
    if modules_to_save and not extra:
        raise ValueError(f"C3A: modules_to_save={list(modules_to_save)} match no parameter of the model")
    for name, param in extra:
        tensors[name] = param.detach().cpu().contiguous().clone()
    meta = {
        "format": "c3a", "version": FORMAT_VERSION,
        "adapters": {a: {"config": configs[a].to_dict(), "layers": plans[a]} for a in configs},
        "active_adapters": active_adapters(model),
        "adapters_disabled": any(layer.adapters_disabled for layer in layers.values()),
        "modules_to_save": list(modules_to_save),
    }
    (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
    save_file(tensors, str(path / WEIGHTS_FILE))
    return path


def load_c3a(base_model: nn.Module, path: str | Path) -> nn.Module:
    """Inject the adapters saved by :func:`save_c3a` into ``base_model`` and load their weights.

    The saved layer list (not the target patterns) decides where adapters go, so the result matches
    what was saved even if matching rules or exclusions differed. Every tensor must be used.
    """
    from safetensors.torch import load_file

    path = Path(path)
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("format") != "c3a":
        raise ValueError(f"C3A: {path / CONFIG_FILE} is not a C3A adapter config")
    tensors = load_file(str(path / WEIGHTS_FILE))
    linears = linear_layers(base_model)
    for adapter, entry in meta["adapters"].items():
        missing = [n for n in entry["layers"] if n not in linears]
        if missing:
            raise ValueError(f"C3A: saved adapter {adapter!r} targets layers the model lacks: {missing[:5]}; "
                             f"the model's linear layers: {_describe_linears(linears)}")
        _inject(base_model, dict(entry["layers"]), C3AConfig.from_dict(entry["config"]), adapter)
    load_weights(base_model, tensors, source=str(path), adapters=list(meta["adapters"]))
    set_adapters(base_model, meta["active_adapters"])
    if meta.get("adapters_disabled"):
        disable_adapters(base_model)
    return base_model


@torch.no_grad()
def load_weights(model: nn.Module, tensors: dict[str, torch.Tensor], source: str = "checkpoint",
                 adapters: Sequence[str] = ()) -> None:
    """Copy named tensors into the model's parameters; every name must exist with the same shape,
    and every kernel of ``adapters`` must be present (a partly loaded adapter is never silent)."""
    params = dict(model.named_parameters())
    unknown = [n for n in tensors if n not in params]
    if unknown:
        raise ValueError(f"C3A: {source} holds tensors the model has no parameter for: {unknown[:5]}")
    for name, value in tensors.items():
        if params[name].shape != value.shape:
            raise ValueError(f"C3A: {source}: {name} has shape {tuple(value.shape)}, "
                             f"the model expects {tuple(params[name].shape)}")
        params[name].copy_(value.to(params[name].dtype))
    expected = [n for n in params if any(n.endswith(f".c3a_kernel.{a}") for a in adapters)]
    absent = [n for n in expected if n not in tensors]
    if absent:
        raise ValueError(f"C3A: {source} lacks kernels for {absent[:5]}")
