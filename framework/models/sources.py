"""Where a model entry's weights and processor come from, and the error when they cannot be reached.

A model entry (``conf/model/*.yaml``) names a Hub id, a local folder, ``package:<module>/<subdir>`` for weights
shipped inside a pip package, optionally a ``gguf_file`` in it (converted once to a safetensors folder by
``framework.gguf_cache``), or ``null`` to build its ``architecture`` with random weights.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Mapping

import torch

from framework import hub

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: what to do when a transformers model cannot be loaded (the diffusion builder names its own remedy)
LOCAL_FILES = ("Point at local files with model.pretrained=/path/to/model (a folder with config.json or "
               "model_index.json and weights), use a pip-shipped model (model=minilm, model=smollm2), or "
               "model.pretrained=null to build the architecture with random weights.")


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


def offline_error(what: str, source: str, err: Exception, made_by: str | None = None,
                  remedy: str = LOCAL_FILES) -> OSError:
    """The error for weights that are neither local nor reachable, saying what to point at instead."""
    if made_by:  # weights this project makes locally (e.g. the Fashion-MNIST ViT)
        return OSError(f"cannot load {what} {source!r}: it does not exist yet; make it with `{made_by}`")
    return OSError(
        f"cannot load {what} {source!r}: it is not a local folder and the Hugging Face Hub is not reachable "
        f"({'offline mode is set' if hub.offline() else type(err).__name__}). {remedy}")


def check_source(model_cfg: Mapping[str, Any]) -> None:
    """Fail before compute when the weights cannot possibly be found (offline and not local)."""
    for key in ("pretrained", "tokenizer", "processor"):
        source = resolve_source(model_cfg.get(key))
        if source is None:
            continue
        if model_cfg.get("made_by") and not Path(source).exists():
            raise offline_error(f"the {key} weights" if key == "pretrained" else f"the {key}", source,
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
                raise offline_error("the model" if key == "pretrained" else f"the {key}", source,
                                    RuntimeError("offline"), model_cfg.get("made_by"))
    if model_cfg.get("dtype", "float32") not in DTYPES:
        raise ValueError(f"model.dtype={model_cfg.get('dtype')!r} is not one of {sorted(DTYPES)}")


def converted(model_cfg: Mapping[str, Any], source: str | None) -> str | None:
    """An entry with ``gguf_file`` loads weights and tokenizer from its safetensors conversion (made once)."""
    if source is None or not model_cfg.get("gguf_file"):
        return source
    from framework.gguf_cache import converted_folder

    return str(converted_folder(source, model_cfg["gguf_file"]))


def weights_source(model_cfg: Mapping[str, Any]) -> str | None:
    """Where the weights load from (None: build ``architecture`` with random weights)."""
    return converted(model_cfg, resolve_source(model_cfg.get("pretrained")))
