"""Head only (linear probing): the backbone is frozen and only the task head trains."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from baselines.common import check_head, finish_adapted, freeze_all
from c3a.methods import Adapted, Method


class HeadOnlyMethod(Method):
    name = "head"

    def __init__(self, name: str = "head"):
        self.name = name

    def validate(self, model: nn.Module, head_modules: Sequence[str]) -> None:
        check_head(model, head_modules)

    def apply(self, model: nn.Module, head_modules: Sequence[str]) -> Adapted:
        self.validate(model, head_modules)
        freeze_all(model)
        return finish_adapted(model, head_modules)

    def describe(self) -> dict:
        return {"name": self.name, "label": "Head"}
