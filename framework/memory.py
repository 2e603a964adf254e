"""Training memory: synthetic batches per task kind, and an estimate of the peak without a GPU.

``make memory`` / ``make memory-gpu`` measure a few real AdamW steps on synthetic batches (``BATCHES``: the
layout each kind's task feeds its training loss). ``estimate`` answers the question before any GPU is at
hand — does this row fit? — by building the row on the meta device (shapes, no storage, no compute) and
counting what a training step holds at its peak: every parameter and buffer, the gradients and AdamW's two
moments of what trains, and every tensor autograd saves for the backward pass (``saved_tensors_hooks`` during
one forward). Not counted: transient workspace, allocator fragmentation, the CUDA context. It is a floor to
compare methods side by side, not a measurement.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch


def _classification_tokens(cfg, task, batch_size: int, seq_len: int, generator) -> dict:
    input_ids = torch.randint(5, int(cfg.model.architecture.vocab_size), (batch_size, seq_len), generator=generator)
    num_labels = int(task.head().model_kwargs.get("num_labels", 2))
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
            "labels": torch.randint(0, max(num_labels, 1), (batch_size,), generator=generator)}


def _causal_lm_tokens(cfg, task, batch_size: int, seq_len: int, generator) -> dict:
    """Every token in the loss: the most an instruction batch of this length can cost."""
    input_ids = torch.randint(5, int(cfg.model.architecture.vocab_size), (batch_size, seq_len), generator=generator)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": input_ids.clone()}


def _images(cfg, task, batch_size: int, seq_len: int, generator) -> dict:
    """Images at the model's own size (``seq_len`` does not apply)."""
    arch = cfg.model.architecture
    size, channels = int(arch.image_size), int(arch.get("num_channels", 3))
    num_labels = int(task.head().model_kwargs.get("num_labels", 2))
    return {"pixel_values": torch.randn(batch_size, channels, size, size, generator=generator),
            "labels": torch.randint(0, num_labels, (batch_size,), generator=generator)}


#: a synthetic training batch per task kind: (cfg, task, batch_size, seq_len, generator) -> batch
BATCHES: dict[str, Callable[..., dict]] = {"sequence-classification": _classification_tokens,
                                           "causal-lm": _causal_lm_tokens, "image-classification": _images}


def synthetic_batch(cfg, task, batch_size: int, seq_len: int, generator=None) -> dict:
    if task.model_kind not in BATCHES:
        raise ValueError(f"no synthetic batch for task kind {task.model_kind!r}; kinds: {sorted(BATCHES)}")
    return BATCHES[task.model_kind](cfg, task, batch_size, seq_len, generator)


@dataclass(frozen=True)
class Estimate:
    """Bytes a training step holds at its peak, by kind."""

    weights: int  # every parameter (frozen and trainable)
    buffers: int  # e.g. BOFT's permutation matrices
    gradients: int  # of what trains
    optimizer: int  # AdamW's two moments of what trains
    activations: int  # tensors saved for the backward pass
    trainable: int  # trainable parameters (a count)

    @property
    def total(self) -> int:
        return self.weights + self.buffers + self.gradients + self.optimizer + self.activations

    def as_dict(self) -> dict[str, Any]:
        return {"weights": self.weights, "buffers": self.buffers, "gradients": self.gradients,
                "optimizer": self.optimizer, "activations": self.activations, "total": self.total,
                "trainable": self.trainable}


@contextlib.contextmanager
def _meta_safe_boft():
    """PEFT's BOFT fills its permutation matrices element by element (``.item()``), which meta tensors
    cannot do; for memory only their shape matters."""
    try:
        from peft.tuners.boft.layer import BOFTLayer
    except ImportError:
        yield
        return
    original = BOFTLayer.perm2mat
    BOFTLayer.perm2mat = lambda self, indices: torch.empty((len(indices), len(indices)))
    try:
        yield
    finally:
        BOFTLayer.perm2mat = original


def _nbytes(tensors) -> int:
    seen, total = set(), 0
    for tensor in tensors:
        storage = tensor.untyped_storage()
        if storage._cdata not in seen:
            seen.add(storage._cdata)
            total += storage.nbytes()
    return total


def build_on_meta(cfg):
    """The run's adapted model on the meta device (shapes only), assembled as the pipeline assembles it (without
    the run's input checks: ``--on-model`` stands a small model in); returns the ``Assembly``."""
    from framework.assembly import assemble

    with torch.device("meta"), _meta_safe_boft():
        return assemble(cfg, weights="meta", check_input=False)


def estimate(cfg, batch_size: int, seq_len: int) -> Estimate:
    """The peak of one training step of ``cfg`` (a composed run config; weights are never loaded)."""
    return estimate_built(build_on_meta(cfg), batch_size, seq_len)


def estimate_built(built, batch_size: int, seq_len: int) -> Estimate:
    """The peak of one training step of a row built by ``build_on_meta``."""
    model = built.adapted.model
    trainable = [p for _, p in built.adapted.head + built.adapted.adapter]
    held = {p.untyped_storage()._cdata for p in model.parameters()} | {b.untyped_storage()._cdata
                                                                       for b in model.buffers()}
    saved: list[torch.Tensor] = []

    def pack(tensor: torch.Tensor):
        if tensor.untyped_storage()._cdata not in held:
            saved.append(tensor)
        return tensor

    # no attention mask: it is all ones here, and models inspect its values (which meta tensors do not have)
    batch = {k: None if k == "attention_mask" else v.to("meta")
             for k, v in synthetic_batch(built.cfg, built.task, batch_size, seq_len).items()}
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        built.task.training_loss(model, batch)
    trainable_bytes = _nbytes(trainable)
    return Estimate(weights=_nbytes(model.parameters()), buffers=_nbytes(model.buffers()),
                    gradients=trainable_bytes, optimizer=2 * trainable_bytes, activations=_nbytes(saved),
                    trainable=sum(p.numel() for p in trainable))
