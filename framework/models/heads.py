"""The task head: one type for what a task asks of it and where it sits in a model.

A task says what its head needs (``Task.head()``: config arguments such as ``num_labels``, whether it trains,
whether it is its own); the model entry says which modules form it for the task's model kind
(``head_modules`` in ``conf/model/*.yaml``). The assembly (``framework.assembly``) puts the two together into
the ``Head`` that methods receive.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Head:
    """The task head inside a model.

    ``modules``: module-name components that form it (from the model entry; empty in what a task returns);
    ``trains``: whether its parameters train (a classifier: yes; an LM head: no);
    ``model_kwargs``: what goes to the model's config (``num_labels``, ``problem_type``, ``id2label``...);
    ``fresh``: the head belongs to the task's own classes, so a head the checkpoint happens to fill (a
    classifier with the same class count) is initialised anew, as a missing one is.
    """

    modules: tuple[str, ...] = ()
    trains: bool = True
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    fresh: bool = False

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))
        object.__setattr__(self, "trains", bool(self.trains))


def in_modules(name: str, modules: Sequence[str]) -> bool:
    """Whether a qualified name lies in one of ``modules`` (matched by name component).

    ``classifier`` matches ``classifier.dense.weight`` and ``base_model.model.classifier.out_proj.bias``
    alike (PEFT wrappers add prefixes).
    """
    parts = set(name.split("."))
    return any(m in parts for m in modules)


def reinitialise_loaded_head(model: nn.Module, modules: Sequence[str], loading: Mapping[str, Any]) -> None:
    """A checkpoint that holds the whole head (a classifier fine-tuned on classes of the same count) would hand
    it to the task silently: initialise the head as transformers initialises a missing one."""
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
    log.warning("the checkpoint's head %s was initialised anew (the task trains its own head): %s", list(modules),
                ", ".join(loaded))
