"""The task interface: a task owns everything that is specific to its kind of learning.

The trainer (``framework.trainer``) knows optimizers, schedules, accumulation, checkpoints and
best-epoch selection; it does not know what a batch holds or what a model returns. It asks the task:

- ``model_kind``: which model class the one model builder makes (``framework.models.MODEL_KINDS``),
- ``processor_kind``: which input processor (a tokenizer, an image processor, or none),
- ``head()``: a ``framework.models.Head`` with the head's config arguments (e.g. ``num_labels``) and whether
  it trains,
- ``splits(processor)`` / ``collate(processor, split)``: data, per split,
- ``training_loss(model, batch)``: a scalar loss,
- ``eval_step(model, batch, processor)``: one evaluation batch's outputs; the trainer loops over the split
  in eval mode under ``torch.no_grad()`` and gathers each batch's outputs across processes,
- ``metrics(outputs)``: the split's metrics from the gathered outputs, ``selection_metric`` among them,
- ``artifacts(model, output_dir, tracker, test_outputs)``: anything written once at the end (e.g. sample
  images), from the best state and the gathered outputs of its test pass.

A task keeps no state between these calls: what one needs from another (the tokenizer, the outputs of a
pass) is passed to it by the trainer.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

import torch

from framework.models import Head

PROCESSOR_KINDS = ("tokenizer", "image_processor", "none")


class Task(ABC):
    name: str
    #: metric key used to choose the best epoch (higher is better)
    selection_metric: str
    #: one of framework.models.MODEL_KINDS
    model_kind: str
    #: one of PROCESSOR_KINDS
    processor_kind: str = "tokenizer"

    @abstractmethod
    def validate(self) -> None:
        """Raise ``ValueError``/``FileNotFoundError`` before compute (missing data, bad options)."""

    def check_data(self) -> None:
        """Read (not tokenise) the data, so that malformed input is reported before any compute."""

    def check_model(self, model_config) -> None:
        """Raise ``ValueError`` when the task cannot run on this model config (e.g. sequences too long)."""

    def data_files(self) -> list:
        """The local files and folders the task reads (none for Hub data): their contents are fingerprinted,
        so a completed result is reused only for the same data."""
        return []

    def check_processor(self, processor) -> None:
        """Raise ``ValueError`` when the task cannot use the model's processor (e.g. a chat template it lacks)."""

    @property
    def has_train_data(self) -> bool:
        """False for an evaluation-only task (no training source): it runs with ``trainer.epochs=0``."""
        return True

    @abstractmethod
    def head(self) -> Head:
        """What the task asks of the model's head (``model_kwargs``, ``trains``, ``fresh``); the model entry
        names its modules (``framework.models.locate_head``)."""

    @abstractmethod
    def splits(self, processor) -> dict[str, Any]:
        """``{"train", "val", "test"}`` datasets (torch-indexable; train and val empty without train data)."""

    @abstractmethod
    def collate(self, processor, split: str) -> Callable[[list], dict]:
        """The batch builder for ``split`` ("train", "val" or "test")."""

    @abstractmethod
    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        """The scalar loss of one training batch."""

    @abstractmethod
    def eval_step(self, model: torch.nn.Module, batch: dict, processor) -> Any:
        """One evaluation batch's outputs, which the trainer gathers across processes: tensors with the batch as
        dim 0 (a tensor, or a tuple/dict of them), or a list of per-example records (plain Python values)."""

    @abstractmethod
    def metrics(self, outputs: list) -> dict[str, float]:
        """The split's metrics from every batch's gathered ``eval_step`` outputs, in order; ``selection_metric``
        among them."""

    def artifacts(self, model: torch.nn.Module, output_dir, tracker, test_outputs: list) -> dict[str, str]:
        """Write end-of-run outputs (with the best state loaded; ``test_outputs``: the gathered outputs of that
        state's test pass); returns {name: path}."""
        return {}

    def describe(self) -> dict:
        """Settings recorded in the result (split protocol, sizes, data source)."""
        return {"name": self.name}
