"""BitFit: train only the biases of the backbone (PEFT has no BitFit).

Every parameter named ``bias`` outside the head trains: all linear biases and the LayerNorm biases
in the encoder and embeddings. On RoBERTa-base that is 102,144 (Table 2); on a BERT layout the pooler
is part of the head when the model config lists it in ``head_modules`` (MiniLM does).
"""
from __future__ import annotations

from torch import nn

from framework.method import Method, freeze_all, head_parameters
from framework.models import Head


def backbone_biases(model: nn.Module, head: Head) -> list[tuple[str, nn.Parameter]]:
    head_ids = {id(p) for _, p in head_parameters(model, head)}
    return [(name, p) for name, p in model.named_parameters()
            if name.rsplit(".", 1)[-1] == "bias" and id(p) not in head_ids]


class BitFitMethod(Method):
    name = "bitfit"

    def check_model(self, model: nn.Module, head: Head) -> None:
        if not backbone_biases(model, head):
            raise ValueError(f"bitfit: {type(model).__name__} has no bias parameters outside the head "
                             f"{list(head.modules)} (e.g. LLaMA's linears and RMSNorms have none)")

    def adapt(self, model: nn.Module, head: Head) -> nn.Module:
        freeze_all(model)
        for _, param in backbone_biases(model, head):
            param.requires_grad_(True)
        return model

    def describe(self) -> dict:
        return {"name": self.name, "label": "BitFit"}
