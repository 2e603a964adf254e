"""One assembly of a run's model: check source → head → build → check model → validate method → apply.

Every caller assembles here and none repeats the steps: the pipeline (a weightless skeleton before any compute,
then the run's model), the memory estimate and measurement, the cost model and ``make params``
(``framework.paper_tables.build_row``). It imports no trainer: assembling a model needs none.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hydra.utils import instantiate
from torch import nn

from framework import models
from framework.method import Adapted, Method
from framework.models import Head
from framework.tasks.base import Task


@dataclass
class Assembly:
    """A config's task, method and model, built and checked."""

    cfg: Any
    task: Task
    method: Method
    head: Head  # the task's head with the model entry's modules: what the method received
    model: nn.Module  # as built (the method adapts it in place or wraps it: see ``adapted.model``)
    adapted: Adapted | None  # None when assembled with ``apply=False``


def assemble(cfg, weights: str = "pretrained", *, task: Task | None = None, method: Method | None = None,
             apply: bool = True, check_input: bool = True) -> Assembly:
    """Build ``cfg``'s model (``weights``: see ``framework.models.build_model``) with its task's head and apply
    its method.

    ``task``/``method``: instances already made from ``cfg`` (the pipeline keeps its own), else instantiated here.
    ``apply=False`` stops after the method's validation (the pipeline's skeleton check before any compute).
    ``check_input=False`` skips the run's input checks (the weights' source is reachable, the task fits the
    model's positions): a build that only counts (memory, cost, parameters) may stand a small model in for the
    row's, whose positions the task's sequence length need not fit.
    """
    task = instantiate(cfg.task, _convert_="all") if task is None else task
    method = instantiate(cfg.method, _convert_="all") if method is None else method
    if check_input:
        models.check_source(cfg.model)
    head = models.locate_head(cfg.model, task.model_kind, task.head())
    model = models.build_model(cfg.model, task.model_kind, head, weights=weights)
    if check_input:
        task.check_model(getattr(model, "config", None))
    if not apply:
        method.validate(model, head)
        return Assembly(cfg, task, method, head, model, None)
    return Assembly(cfg, task, method, head, model, method.apply(model, head))  # apply validates first
