"""Full fine-tuning: every parameter trains; the head still forms its own group (its own LR)."""
from __future__ import annotations

from torch import nn

from framework.method import Adapted, Head, Method, check_head, finish_adapted


class FullMethod(Method):
    name = "full"

    def __init__(self, name: str = "full"):
        self.name = name

    def validate(self, model: nn.Module, head: Head) -> None:
        check_head(model, head)

    def apply(self, model: nn.Module, head: Head) -> Adapted:
        self.validate(model, head)
        for param in model.parameters():
            param.requires_grad_(True)
        return finish_adapted(model, head)

    def describe(self) -> dict:
        return {"name": self.name, "label": "Full"}
