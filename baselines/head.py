"""Head only (linear probing): the backbone is frozen and only the task head trains."""
from __future__ import annotations

from torch import nn

from framework.method import Adapted, Head, Method, check_head, finish_adapted, freeze_all


class HeadOnlyMethod(Method):
    name = "head"

    def __init__(self, name: str = "head"):
        self.name = name

    def validate(self, model: nn.Module, head: Head) -> None:
        check_head(model, head)
        if not head.trains:
            raise ValueError(f"head-only training with a frozen head {list(head.modules)} trains nothing (the task "
                             f"keeps its head frozen, e.g. a causal LM's lm_head); choose another method")

    def apply(self, model: nn.Module, head: Head) -> Adapted:
        self.validate(model, head)
        freeze_all(model)
        return finish_adapted(model, head)

    def describe(self) -> dict:
        return {"name": self.name, "label": "Head"}
