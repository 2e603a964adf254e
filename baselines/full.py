"""Full fine-tuning: every parameter trains; the head still forms its own group (its own LR)."""
from __future__ import annotations

from torch import nn

from framework.method import Method
from framework.models import Head


class FullMethod(Method):
    name = "full"

    def adapt(self, model: nn.Module, head: Head) -> nn.Module:
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    def describe(self) -> dict:
        return {"name": self.name, "label": "Full"}
