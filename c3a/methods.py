"""The one interface every fine-tuning method implements (C3A and every baseline).

A trainer only ever calls ``method.validate(model, head_modules)`` (before any compute) and
``method.apply(model, head_modules)``; it never looks at which method it holds. Methods are built
from ``conf/method/*.yaml`` with ``hydra.utils.instantiate`` (``_target_`` names the class), so
there is no name registry to keep in sync.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Sequence

from torch import nn


@dataclass
class Adapted:
    """A model after a method was applied, with its trainable parameters split by role.

    ``head`` parameters (the task head) get their own learning rate; ``adapter`` parameters are
    everything else that trains. Both hold (qualified name, parameter) pairs in module order.
    """

    model: nn.Module
    head: list[tuple[str, nn.Parameter]] = field(default_factory=list)
    adapter: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def num_adapter_params(self) -> int:
        """Trainable parameters excluding the task head (the paper's #params column)."""
        return sum(p.numel() for _, p in self.adapter)

    def num_head_params(self) -> int:
        return sum(p.numel() for _, p in self.head)

    def trainable_state_dict(self) -> dict:
        """Everything that trains, by qualified name: what checkpoints and best-epoch snapshots keep."""
        return {name: p.detach().clone() for name, p in self.head + self.adapter}


class Method(ABC):
    """A parameter-efficient (or reference) fine-tuning method."""

    #: short label used in result paths and tables, e.g. "c3a", "lora"
    name: str = "method"

    def validate(self, model: nn.Module, head_modules: Sequence[str]) -> None:
        """Raise ``ValueError`` for anything that can be checked before training starts."""

    @abstractmethod
    def apply(self, model: nn.Module, head_modules: Sequence[str]) -> Adapted:
        """Adapt ``model`` in place or wrap it; freeze all but the method's parameters and the head."""

    def describe(self) -> dict:
        """The method's hyperparameters as plain data (recorded in results and table labels)."""
        return {"name": self.name}


def head_parameters(model: nn.Module, head_modules: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that belong to a task head, matched by module-name component.

    A head module named ``classifier`` matches ``classifier.dense.weight`` and
    ``base_model.model.classifier.out_proj.bias`` alike (PEFT wrappers add prefixes).
    """
    heads = set(head_modules)
    found = []
    for name, param in model.named_parameters():
        parts = name.split(".")
        if any(part in heads for part in parts):
            found.append((name, param))
    return found
