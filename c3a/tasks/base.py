"""The task interface: a task owns its data, splits, collation, loss, metric and head kind.

Nothing downstream of ``Task.build`` knows which task it is: the trainer asks the task for
``splits``, ``collate``, ``loss`` and ``compute_metrics`` and reads ``selection_metric``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable

import torch


@dataclass(frozen=True)
class HeadSpec:
    """What head the model needs: ``num_labels`` outputs; regression uses one output and MSE."""

    num_labels: int
    problem_type: str  # "single_label_classification" | "regression"


class Task(ABC):
    name: str
    #: metric key used to choose the best epoch (higher is better)
    selection_metric: str

    @abstractmethod
    def validate(self) -> None:
        """Raise ``ValueError``/``FileNotFoundError`` before compute (missing data, bad options)."""

    def check_data(self) -> None:
        """Read (not tokenise) the data, so that malformed input is reported before any compute."""

    @abstractmethod
    def head(self) -> HeadSpec: ...

    @abstractmethod
    def splits(self, tokenizer) -> dict[str, Any]:
        """Tokenised ``{"train", "val", "test"}`` datasets (torch-indexable, rows are dicts)."""

    @abstractmethod
    def collate(self, tokenizer) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
        """Batch builder with dynamic padding; the batch holds ``labels``."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def compute_metrics(self, predictions, references) -> dict[str, float]:
        """Metrics from raw logits (as numpy) and labels; includes ``selection_metric``."""

    def describe(self) -> dict:
        """Settings recorded in the result (split protocol, sizes, data source)."""
        return {"name": self.name}
