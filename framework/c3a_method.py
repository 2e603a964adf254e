"""C3A as a ``Method`` of the experiment framework, built by Hydra from ``conf/method/c3a.yaml``.

The adapter itself (``c3a``) knows nothing of the framework; this is the thin layer that turns its
config into the framework's ``Method`` interface.
"""
from __future__ import annotations

from torch import nn

from c3a.adapter import add_c3a, c3a_layers, plan_c3a
from c3a.config import C3AConfig
from framework.method import Method, freeze_all
from framework.models import Head


class C3AMethod(Method):
    def __init__(self, name: str = "c3a", b: int | None = None, block_size: int | None = None,
                 target_modules=None, block_size_pattern=None, init_weights: str = "xavier_uniform",
                 scale_by_d_in: bool = True, adapter_name: str = "default") -> None:
        super().__init__(name)
        self.adapter_name = adapter_name
        self.config = C3AConfig(target_modules=target_modules, b=b, block_size=block_size,
                                block_size_pattern=dict(block_size_pattern or {}),
                                init_weights=init_weights, scale_by_d_in=scale_by_d_in)

    def check_model(self, model: nn.Module, head: Head) -> None:
        plan_c3a(model, self.config, self.adapter_name, exclude_modules=head.modules)

    def adapt(self, model: nn.Module, head: Head) -> nn.Module:
        add_c3a(model, self.config, self.adapter_name, exclude_modules=head.modules)
        freeze_all(model)
        for layer in c3a_layers(model).values():
            if self.adapter_name in layer.c3a_kernel:
                layer.c3a_kernel[self.adapter_name].requires_grad_(True)
        return model

    def describe(self) -> dict:
        cfg = self.config
        targets = cfg.target_modules if isinstance(cfg.target_modules, str) else list(cfg.target_modules)
        return {"name": self.name, "label": cfg.label(), "b": cfg.b, "block_size": cfg.block_size,
                "target_modules": targets, "block_size_pattern": dict(cfg.block_size_pattern),
                "init_weights": cfg.init_weights, "scale_by_d_in": cfg.scale_by_d_in}
