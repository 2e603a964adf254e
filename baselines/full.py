"""Full fine-tuning: every parameter trains; the head still forms its own group (its own LR)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from baselines.common import check_head, finish_adapted
from c3a.methods import Adapted, Method


class FullMethod(Method):
    name = "full"

    def __init__(self, name: str = "full"):
        self.name = name

    def validate(self, model: nn.Module, head_modules: Sequence[str]) -> None:
        check_head(model, head_modules)

    def apply(self, model: nn.Module, head_modules: Sequence[str]) -> Adapted:
        self.validate(model, head_modules)
        for param in model.parameters():
            param.requires_grad_(True)
        return finish_adapted(model, head_modules)

    def describe(self) -> dict:
        return {"name": self.name, "label": "Full"}
