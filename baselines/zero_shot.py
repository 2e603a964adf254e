"""Zero-shot: the pretrained model as it is — nothing added, nothing trained (Table 4's zero-shot rows).

Runs with ``trainer.epochs=0`` (``conf/method/zero_shot.yaml`` sets it): the trainer then scores the test
sets once, and the result file, tables and sweeps treat the row like any other run.
"""
from __future__ import annotations

from torch import nn

from framework.method import Method
from framework.models import Head


class ZeroShotMethod(Method):
    name = "zero-shot"
    trains = False

    def check_model(self, model: nn.Module, head: Head) -> None:
        if head.trains:
            raise ValueError(f"method=zero_shot scores the model as it is, but this task trains a new head "
                             f"{list(head.modules)} whose weights would be random; zero-shot needs a task that "
                             f"keeps the model's own head (instruction tasks: sst2-instruct, math, code, ...)")

    def describe(self) -> dict:
        return {"name": self.name, "label": "Zero-shot"}
