"""The one model builder: a model entry (``conf/model/*.yaml``) × a task's model kind × its head → a model.

A model entry says where the weights come from (``framework.models.sources``), which modules are its head
for each model kind it supports, and its adapter targets. Every model is built here: the run's (through
``framework.assembly``), the weightless skeleton methods are validated on, ``make params``/``make memory``'s,
and DreamBooth's base model for class images.

``weights``: ``"pretrained"`` (the entry's source; random when it has none), ``"random"`` (the
architecture at random init, never a download) or ``"meta"`` (shapes only, no memory).
Offline with nothing cached, loading fails at once with a message that says how to point at local files.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from framework.models.diffusion import build_diffusion_model
from framework.models.heads import Head, reinitialise_loaded_head
from framework.models.sources import DTYPES, converted, offline_error, resolve_source, weights_source

WEIGHTS = ("pretrained", "random", "meta")
#: model kind → the transformers Auto class that makes it, or the builder of a kind that is several models
MODEL_KINDS: dict[str, str | Callable[..., nn.Module]] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "diffusion": build_diffusion_model,
}
#: processor kind → transformers Auto class (``none``: the task needs no processor)
PROCESSORS = {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"}


def head_modules(model_cfg: Mapping[str, Any], kind: str) -> list[str]:
    """The entry's head modules for a model kind, or ``ValueError`` naming the kinds it supports."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {list(MODEL_KINDS)}")
    heads = dict(model_cfg.get("head_modules") or {})
    if kind not in heads:
        raise ValueError(f"model {model_cfg.get('name')!r} has no {kind} head: it supports the task kinds "
                         f"{sorted(heads)} (model.head_modules)")
    return list(heads[kind])


def locate_head(model_cfg: Mapping[str, Any], kind: str, head: Head) -> Head:
    """The task's ``head`` with the entry's modules for ``kind``: the head a method receives."""
    return dataclasses.replace(head, modules=head_modules(model_cfg, kind))


def model_config(model_cfg: Mapping[str, Any], head: Head):
    """The transformers config of the entry with the task's head: from ``architecture``, or the source's."""
    from transformers import AutoConfig

    source = weights_source(model_cfg)
    if source is None:
        arch = {k: v for k, v in dict(model_cfg["architecture"]).items() if v is not None}
        return AutoConfig.for_model(arch.pop("model_type"), **arch, **dict(head.model_kwargs))
    return AutoConfig.from_pretrained(source, **dict(head.model_kwargs))


def _auto_class(name: str) -> Any:
    import transformers

    return getattr(transformers, name)


def build_model(model_cfg: Mapping[str, Any], kind: str, head: Head, weights: str = "pretrained") -> nn.Module:
    """The model of ``kind`` for the entry, with the task's head (see the module docstring for ``weights``)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {list(MODEL_KINDS)}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is not one of {WEIGHTS}")
    if callable(MODEL_KINDS[kind]):  # a kind made of several models (diffusion)
        return MODEL_KINDS[kind](model_cfg, head, weights)
    builder = _auto_class(MODEL_KINDS[kind])
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    source = weights_source(model_cfg)
    if weights == "meta":
        with torch.device("meta"):
            return builder.from_config(model_config(model_cfg, head)).to(dtype)
    if weights == "random" or source is None:
        if weights == "random" and source is not None:
            model_cfg = {**dict(model_cfg), "pretrained": None}
        return builder.from_config(model_config(model_cfg, head)).to(dtype)
    try:
        model, loading = builder.from_pretrained(source, dtype=dtype, output_loading_info=True,
                                                 **dict(head.model_kwargs))
    except OSError as err:
        if Path(source).exists():
            raise
        raise offline_error("the model", source, err, model_cfg.get("made_by")) from err
    if head.fresh:
        reinitialise_loaded_head(model, head_modules(model_cfg, kind), loading)
    return model


def build_processor(model_cfg: Mapping[str, Any], kind: str):
    """The input processor a task asks for (``tokenizer``, ``image_processor``; ``none`` gives None)."""
    if kind == "none":
        return None
    if kind not in PROCESSORS:
        raise ValueError(f"unknown processor kind {kind!r}; valid kinds: {[*PROCESSORS, 'none']}")
    key = "tokenizer" if kind == "tokenizer" else "processor"
    source = resolve_source(model_cfg.get(key) or model_cfg.get("pretrained"))
    if source is None:
        raise ValueError(f"model {model_cfg.get('name')!r} has no {kind}: set model.{key} to a Hub id or folder")
    loader: Callable = _auto_class(PROCESSORS[kind]).from_pretrained
    source = converted(model_cfg, source) if kind == "tokenizer" else source
    try:
        return loader(source)
    except OSError as err:
        if Path(source).exists():
            raise
        raise offline_error(f"the {kind}", source, err) from err


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
