"""GGUF weights converted once to a safetensors folder, then loaded from there.

transformers reads a GGUF file by dequantising every tensor (SmolLM2-135M: about 30 s, its tokenizer
another 7 s). The model builder calls ``converted_folder`` for entries with ``gguf_file``: the first
call writes ``config.json``, ``model.safetensors`` (float32) and the tokenizer files to
``<cache>/gguf/<name>-<sha256 prefix>/``; later calls return that folder at once. The key is the
GGUF file's content hash, so a changed file gets a new folder; the write is atomic (a temporary
folder renamed into place), so concurrent runs never read half a conversion.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from framework.fingerprint import file_sha256

DEFAULT_CACHE = "~/.cache/c3a"
CACHE_ENV = "C3A_CACHE_DIR"


def cache_root() -> Path:
    """Where conversions live: ``$C3A_CACHE_DIR`` or ``~/.cache/c3a``."""
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).expanduser() / "gguf"


def locate_gguf(source: str, gguf_file: str) -> Path:
    """The GGUF file of a local folder, or of a Hub repository (downloaded into the Hub cache)."""
    local = Path(source) / gguf_file
    if local.is_file():
        return local
    if Path(source).exists():
        raise FileNotFoundError(f"gguf_file {gguf_file!r} is not in {source}: it holds "
                                f"{sorted(p.name for p in Path(source).glob('*.gguf'))}")
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(source, gguf_file))


def convert(gguf: Path, target: Path) -> None:
    """Write the dequantised model and its tokenizer as a plain transformers folder."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = model.config
    for key in ("quantization_config", "_name_or_path"):
        if hasattr(config, key):
            delattr(config, key)
    config.save_pretrained(target)
    state = {}
    seen: dict[int, str] = {}
    for key, tensor in model.state_dict().items():
        if tensor.data_ptr() in seen:  # tied weights (SmolLM2's lm_head = embeddings): stored once
            continue
        seen[tensor.data_ptr()] = key
        state[key] = tensor.detach().contiguous()
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt", "converted_from": name})
    tokenizer.save_pretrained(target)


def converted_folder(source: str, gguf_file: str) -> Path:
    """The safetensors folder for ``gguf_file`` in ``source``, converting it on first use."""
    gguf = locate_gguf(source, gguf_file)
    target = cache_root() / f"{Path(gguf_file).stem}-{file_sha256(gguf)[:16]}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    staging.chmod(0o755)
    try:
        convert(gguf, staging)
        try:
            os.rename(staging, target)
        except OSError:  # another process finished first: its folder is as good as ours
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
