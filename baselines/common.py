"""What every baseline does after choosing what trains: give the head its gradients, split the groups.

Kept apart from the methods so that BitFit, full and head-only (plain PyTorch) and the PEFT-built
methods produce their ``Adapted`` the same way.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from c3a.methods import Adapted, head_parameters


def check_head(model: nn.Module, head_modules: Sequence[str]) -> None:
    """The head must exist: otherwise the 'excluding the head' counts would silently include nothing."""
    if not head_modules:
        raise ValueError("head_modules is empty: name the task head's module(s), e.g. [classifier]")
    if not head_parameters(model, head_modules):
        top = sorted({name.split(".")[0] for name, _ in model.named_children()})
        raise ValueError(
            f"head_modules {list(head_modules)} match no parameter of {type(model).__name__}; "
            f"its top-level modules are {top}")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every nn.Linear: what a 'targets match nothing' error should list."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def finish_adapted(model: nn.Module, head_modules: Sequence[str]) -> Adapted:
    """Make every head parameter trainable and split what trains into head and adapter groups.

    The caller has already frozen the backbone except for the method's own parameters.
    """
    head = head_parameters(model, head_modules)
    head_ids = {id(param) for _, param in head}
    for _, param in head:
        param.requires_grad_(True)
    adapter = [(name, param) for name, param in model.named_parameters()
               if param.requires_grad and id(param) not in head_ids]
    return Adapted(model=model, head=head, adapter=adapter)


def freeze_all(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)
