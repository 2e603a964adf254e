"""Loading a model entry (``conf/model/*.yaml``) with the head a task asks for.

A model entry says where the weights come from (Hub id, local folder, ``package:<module>/<subdir>``
for weights shipped inside a pip package, or ``null`` to build the ``architecture`` with random
weights) and which modules are its head and its adapter targets. Offline with nothing cached, loading
fails at once with a message that says how to point at a local model.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from c3a.tasks.base import HeadSpec

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def offline() -> bool:
    return any(os.environ.get(var, "").lower() in ("1", "true", "yes") for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_source(source: str | None) -> str | None:
    """Turn ``package:<module>/<subdir>`` into the folder inside site-packages; other values pass through."""
    if source is None or not str(source).startswith("package:"):
        return source
    module, _, subdir = str(source)[len("package:"):].partition("/")
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model source {source!r}: the Python package {module!r} is not installed "
            f"(pip install {module.replace('_', '-')})")
    folder = Path(list(spec.submodule_search_locations)[0]) / subdir
    if not folder.is_dir():
        raise FileNotFoundError(f"model source {source!r}: {folder} does not exist")
    return str(folder)


def _offline_error(what: str, source: str, err: Exception) -> OSError:
    return OSError(
        f"cannot load {what} {source!r}: it is not a local folder and the Hugging Face Hub is not reachable "
        f"({'HF_HUB_OFFLINE is set' if offline() else type(err).__name__}). Point at local files with "
        f"model.pretrained=/path/to/model (a folder with config.json and weights), use the pip-shipped "
        f"model=minilm, or model.pretrained=null to build the architecture with random weights.")


def check_source(model_cfg: Mapping[str, Any]) -> None:
    """Fail before compute when the weights cannot possibly be found (offline and not local)."""
    for key in ("pretrained", "tokenizer"):
        source = resolve_source(model_cfg.get(key))
        if source is None:
            continue
        if not Path(source).exists() and offline():
            try:  # a Hub id may still be in the local cache
                from huggingface_hub import try_to_load_from_cache
                cached = try_to_load_from_cache(source, "config.json" if key == "pretrained" else "tokenizer_config.json")
            except Exception:  # noqa: BLE001 - any failure means "not cached"
                cached = None
            if not isinstance(cached, str):
                raise _offline_error("the model" if key == "pretrained" else "the tokenizer", source,
                                     RuntimeError("offline"))
    if model_cfg.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"model.dtype={model_cfg.get('dtype')!r} is not one of {sorted(DTYPES)}")


def _head_kwargs(head: HeadSpec) -> dict[str, Any]:
    return {"num_labels": head.num_labels, "problem_type": head.problem_type}


def model_config(model_cfg: Mapping[str, Any], head: HeadSpec):
    """The transformers config of the entry with the task's head: from `architecture`, or the source's."""
    from transformers import AutoConfig

    source = resolve_source(model_cfg.get("pretrained"))
    if source is None:
        arch = {k: v for k, v in dict(model_cfg["architecture"]).items() if v is not None}
        return AutoConfig.for_model(arch.pop("model_type"), **arch, **_head_kwargs(head))
    return AutoConfig.from_pretrained(source, **_head_kwargs(head))


def build_model(model_cfg: Mapping[str, Any], head: HeadSpec) -> nn.Module:
    """A sequence classifier from the entry: pretrained weights, or the architecture at random init."""
    from transformers import AutoModelForSequenceClassification

    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    source = resolve_source(model_cfg.get("pretrained"))
    if source is None:
        return AutoModelForSequenceClassification.from_config(model_config(model_cfg, head)).to(dtype)
    try:
        return AutoModelForSequenceClassification.from_pretrained(source, dtype=dtype, **_head_kwargs(head))
    except OSError as err:
        if Path(source).exists():
            raise
        raise _offline_error("the model", source, err) from err


def build_tokenizer(model_cfg: Mapping[str, Any]):
    from transformers import AutoTokenizer

    source = resolve_source(model_cfg.get("tokenizer") or model_cfg.get("pretrained"))
    if source is None:
        raise ValueError(f"model {model_cfg.get('name')!r} has no tokenizer: set model.tokenizer to a Hub id or folder")
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        if Path(source).exists():
            raise
        raise _offline_error("the tokenizer", source, err) from err


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
