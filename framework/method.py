"""The one interface every fine-tuning method implements (C3A and every baseline).

A pipeline only ever calls ``method.validate(model, head)`` (before any compute) and
``method.apply(model, head)``; it never looks at which method it holds. Methods are built from
``conf/method/*.yaml`` with ``hydra.utils.instantiate`` (``_target_`` names the class), so there is
no name registry to keep in sync. ``head`` (``framework.models.Head``: models own heads) says which
modules form the task head and whether they train: a classifier trains with its own learning rate, a
causal LM's ``lm_head`` stays frozen. A frozen head tied to the input embeddings (many causal LMs)
freezes those embeddings too, even under full fine-tuning: they are one tensor.
"""
from __future__ import annotations

from abc import ABC
from dataclasses import dataclass, field

from torch import nn

from framework.models import Head, in_modules


@dataclass
class Adapted:
    """A model after a method was applied, with its trainable parameters split by role.

    ``head`` parameters (the task head, when it trains) get their own learning rate; ``adapter``
    parameters are everything else that trains. Both hold (qualified name, parameter) pairs.
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
    """A parameter-efficient (or reference) fine-tuning method.

    ``validate`` and ``apply`` are one sequence for every method (as PEFT's ``BaseTuner`` injects every
    tuner): check the hyperparameters, the head and the model → ``adapt`` (add the method's parameters,
    leave only them trainable) → give the head its gradients and split what trains. A method fills in
    the hooks ``check_hyperparameters``, ``check_model`` and ``adapt``, never the sequence.
    """

    #: short label used in result paths and tables, e.g. "c3a", "lora"
    name: str = "method"
    #: False for a method that only evaluates (zero-shot): it runs with ``trainer.epochs=0``
    trains: bool = True

    def __init__(self, name: str | None = None):
        if name is not None:  # configs set it; it names results and tables
            self.name = name

    def check_hyperparameters(self) -> None:
        """Raise ``ValueError`` for hyperparameters that are wrong whatever the model."""

    def check_model(self, model: nn.Module, head: Head) -> None:
        """Raise ``ValueError`` for what does not fit this model (the head is checked already)."""

    def validate(self, model: nn.Module, head: Head) -> None:
        """Raise ``ValueError`` for anything that can be checked before training starts."""
        self.check_hyperparameters()
        check_head(model, head)
        self.check_model(model, head)

    def adapt(self, model: nn.Module, head: Head) -> nn.Module:
        """Add the method's parameters (in place or by wrapping) and freeze all else; return the model.

        This default adds nothing and freezes everything (head-only training, zero-shot): the template then
        gives the head its gradients when it trains."""
        freeze_all(model)
        return model

    def apply(self, model: nn.Module, head: Head) -> Adapted:
        """Validate, adapt, then give the head its gradients (or take them away) and split what trains."""
        self.validate(model, head)
        return finish_adapted(self.adapt(model, head), head)

    def describe(self) -> dict:
        """The method's hyperparameters as plain data (recorded in results and table labels)."""
        return {"name": self.name}


def row_label(method: Method, configured: str | None = None) -> str:
    """The label a run's result and its table row carry: ``configured`` (the config's ``method_label``; a paper
    preset sets the paper's, e.g. "C3A b=4096/32"), else the method's own (e.g. "LoRA r=8")."""
    return configured or method.describe().get("label", method.name)


def head_parameters(model: nn.Module, head: Head) -> list[tuple[str, nn.Parameter]]:
    """(name, parameter) pairs that belong to the task head."""
    # remove_duplicate=False: a head tied to the embeddings (many causal LMs) is still found by its own name
    found, seen = [], set()
    for name, param in model.named_parameters(remove_duplicate=False):
        if in_modules(name, head.modules) and id(param) not in seen:
            seen.add(id(param))
            found.append((name, param))
    return found


def check_head(model: nn.Module, head: Head) -> None:
    """The head must exist: otherwise the 'excluding the head' counts would silently include nothing."""
    if not head.modules:
        raise ValueError("the head has no modules: name the task head's module(s), e.g. [classifier]")
    if not any(in_modules(name, head.modules) for name, _ in model.named_modules()):
        top = sorted(name for name, _ in model.named_children())
        raise ValueError(f"head modules {list(head.modules)} match no module of {type(model).__name__}; "
                         f"its top-level modules are {top}")


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of every nn.Linear: what a 'targets match nothing' error should list."""
    return [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]


def freeze_all(model: nn.Module) -> None:
    for param in model.parameters():
        param.requires_grad_(False)


def finish_adapted(model: nn.Module, head: Head) -> Adapted:
    """Give the head its gradients (or take them away) and split what trains into head and adapter.

    The caller has already frozen the backbone except for the method's own parameters.
    """
    head_params = head_parameters(model, head)
    head_ids = {id(param) for _, param in head_params}
    for _, param in head_params:
        param.requires_grad_(head.trains)
    adapter = [(name, param) for name, param in model.named_parameters()
               if param.requires_grad and id(param) not in head_ids]
    return Adapted(model=model, head=head_params if head.trains else [], adapter=adapter)
