"""The one model builder: a model entry (``conf/model/*.yaml``) × a task's model kind → a model.

A model entry says where the weights come from (Hub id, local folder, ``package:<module>/<subdir>``
for weights shipped inside a pip package, optionally a ``gguf_file`` in it (converted once to a
safetensors folder by ``framework.gguf_cache``), or ``null`` to build the
``architecture`` with random weights), which modules are its head for each model kind it supports,
and its adapter targets. Every caller builds through here: the pipeline (real model and the weightless
skeleton that methods are validated on), ``make params`` and ``make memory``.

``weights``: ``"pretrained"`` (the entry's source; random when it has none), ``"random"`` (the
architecture at random init, never a download) or ``"meta"`` (shapes only, no memory).
Offline with nothing cached, loading fails at once with a message that says how to point at local files.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from framework import hub
from framework.tasks.base import HeadSpec

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
WEIGHTS = ("pretrained", "random", "meta")
#: model kind → transformers Auto class, or "module:function" of a builder for kinds that are not one model
MODEL_KINDS: dict[str, str] = {
    "sequence-classification": "AutoModelForSequenceClassification",
    "causal-lm": "AutoModelForCausalLM",
    "image-classification": "AutoModelForImageClassification",
    "diffusion": "framework.diffusion_model:build_diffusion_model",
}
#: processor kind → transformers Auto class (``none``: the task needs no processor)
PROCESSORS = {"tokenizer": "AutoTokenizer", "image_processor": "AutoImageProcessor"}


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


def _offline_error(what: str, source: str, err: Exception, made_by: str | None = None) -> OSError:
    if made_by:  # weights this project makes locally (e.g. the Fashion-MNIST ViT)
        return OSError(f"cannot load {what} {source!r}: it does not exist yet; make it with `{made_by}`")
    return OSError(
        f"cannot load {what} {source!r}: it is not a local folder and the Hugging Face Hub is not reachable "
        f"({'offline mode is set' if hub.offline() else type(err).__name__}). Point at local files with "
        f"model.pretrained=/path/to/model (a folder with config.json or model_index.json and weights), use a pip-shipped "
        f"model (model=minilm, model=smollm2), or model.pretrained=null to build the architecture with "
        f"random weights.")


def check_source(model_cfg: Mapping[str, Any]) -> None:
    """Fail before compute when the weights cannot possibly be found (offline and not local)."""
    for key in ("pretrained", "tokenizer", "processor"):
        source = resolve_source(model_cfg.get(key))
        if source is None:
            continue
        if model_cfg.get("made_by") and not Path(source).exists():
            raise _offline_error(f"the {key} weights" if key == "pretrained" else f"the {key}", source,
                                 RuntimeError("missing"), model_cfg.get("made_by"))
        if not Path(source).exists() and hub.offline():
            try:  # a Hub id may still be in the local cache
                from huggingface_hub import try_to_load_from_cache
                # a transformers repo has config.json at its root, a diffusers pipeline model_index.json
                names = ("config.json", "model_index.json") if key == "pretrained" else ("tokenizer_config.json",)
                cached = next((hit for hit in (try_to_load_from_cache(source, name) for name in names)
                               if isinstance(hit, str)), None)
            except Exception:  # noqa: BLE001 - any failure means "not cached"
                cached = None
            if not isinstance(cached, str):
                raise _offline_error("the model" if key == "pretrained" else f"the {key}", source,
                                     RuntimeError("offline"), model_cfg.get("made_by"))
    if model_cfg.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"model.dtype={model_cfg.get('dtype')!r} is not one of {sorted(DTYPES)}")


def head_modules(model_cfg: Mapping[str, Any], kind: str) -> list[str]:
    """The entry's head modules for a model kind, or ``ValueError`` naming the kinds it supports."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {list(MODEL_KINDS)}")
    heads = dict(model_cfg.get("head_modules") or {})
    if kind not in heads:
        raise ValueError(f"model {model_cfg.get('name')!r} has no {kind} head: it supports the task kinds "
                         f"{sorted(heads)} (model.head_modules)")
    return list(heads[kind])


def _converted(model_cfg: Mapping[str, Any], source: str | None) -> str | None:
    """An entry with ``gguf_file`` loads weights and tokenizer from its safetensors conversion (made once)."""
    if source is None or not model_cfg.get("gguf_file"):
        return source
    from framework.gguf_cache import converted_folder

    return str(converted_folder(source, model_cfg["gguf_file"]))


def weights_source(model_cfg: Mapping[str, Any]) -> str | None:
    """Where the weights load from (None: build ``architecture`` with random weights)."""
    return _converted(model_cfg, resolve_source(model_cfg.get("pretrained")))


def model_config(model_cfg: Mapping[str, Any], head: HeadSpec):
    """The transformers config of the entry with the task's head: from ``architecture``, or the source's."""
    from transformers import AutoConfig

    source = weights_source(model_cfg)
    if source is None:
        arch = {k: v for k, v in dict(model_cfg["architecture"]).items() if v is not None}
        return AutoConfig.for_model(arch.pop("model_type"), **arch, **dict(head.model_kwargs))
    return AutoConfig.from_pretrained(source, **dict(head.model_kwargs))


def _resolve(target: str) -> Any:
    if ":" in target:
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    import transformers

    return getattr(transformers, target)


def build_model(model_cfg: Mapping[str, Any], kind: str, head: HeadSpec, weights: str = "pretrained") -> nn.Module:
    """The model of ``kind`` for the entry, with the task's head (see the module docstring for ``weights``)."""
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; valid kinds: {list(MODEL_KINDS)}")
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} is not one of {WEIGHTS}")
    builder = _resolve(MODEL_KINDS[kind])
    if not hasattr(builder, "from_config"):  # a kind made of several models (diffusion)
        return builder(model_cfg, head, weights)
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
        raise _offline_error("the model", source, err, model_cfg.get("made_by")) from err
    if head.fresh:
        _reinitialise_loaded_head(model, head_modules(model_cfg, kind), loading)
    return model


def _reinitialise_loaded_head(model: nn.Module, modules: list[str], loading: Mapping[str, Any]) -> None:
    """A checkpoint that holds the whole head (a classifier fine-tuned on classes of the same count) would hand
    it to the task silently: initialise the head as transformers initialises a missing one."""
    from framework.method import in_modules

    initialised = set(loading.get("missing_keys") or ()) | {k[0] for k in loading.get("mismatched_keys") or ()}
    names = [n for n, _ in model.named_parameters() if in_modules(n, modules)]
    loaded = [n for n in names if n not in initialised]
    if not names or len(loaded) < len(names):  # the checkpoint lacks (part of) the head: that part is new
        return                                 # already, and a pretrained part (e.g. BERT's pooler) stays
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in modules:
            for param in module.parameters():  # transformers skips tensors it marked as loaded
                if hasattr(param, "_is_hf_initialized"):
                    del param._is_hf_initialized
            module.apply(model._init_weights)
    log.warning("the checkpoint's head %s was initialised anew (the task trains its own head): %s", modules,
                ", ".join(loaded))


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
    loader: Callable = _resolve(PROCESSORS[kind]).from_pretrained
    source = _converted(model_cfg, source) if kind == "tokenizer" else source
    try:
        return loader(source)
    except OSError as err:
        if Path(source).exists():
            raise
        raise _offline_error(f"the {kind}", source, err) from err


def position_limit(config) -> int | None:
    """How many tokens the model's position embeddings take (None: no fixed limit).

    RoBERTa-style models start positions after the padding index, so they take
    ``max_position_embeddings - pad_token_id - 1`` tokens (514 → 512).
    """
    limit = getattr(config, "max_position_embeddings", None)
    if limit is None:
        return None
    if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
        return int(limit) - int(getattr(config, "pad_token_id", 1) or 0) - 1
    return int(limit)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
