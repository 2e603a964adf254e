"""Head only (linear probing): the backbone is frozen and only the task head trains."""
from __future__ import annotations

from torch import nn

from framework.method import Method
from framework.models import Head


class HeadOnlyMethod(Method):
    name = "head"

    def check_model(self, model: nn.Module, head: Head) -> None:
        if not head.trains:
            raise ValueError(f"head-only training with a frozen head {list(head.modules)} trains nothing (the task "
                             f"keeps its head frozen, e.g. a causal LM's lm_head); choose another method")

    def describe(self) -> dict:
        return {"name": self.name, "label": "Head"}
