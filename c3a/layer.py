"""``C3ALinear``: a frozen ``nn.Linear`` plus one or more block-circulant adapters.

Each adapter owns a float32 kernel of shape (d_out/p, d_in/p, p) and adds ``scale * C(kernel) x``.
Several active adapters add their deltas (PEFT 0.21 chains them, feeding one adapter's output into
the next; that is a bug this layer does not copy).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from c3a.circulant import block_circulant_matmul, block_circulant_matrix, c3a_linear
from c3a.config import C3AConfig


class C3ALinear(nn.Module):
    """Wraps ``base_layer`` (frozen); adapters are added with :meth:`add_adapter`."""

    def __init__(self, base_layer: nn.Linear) -> None:
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"C3A adapts nn.Linear layers only, got {type(base_layer).__name__}")
        self.base_layer = base_layer
        base_layer.requires_grad_(False)
        self.in_features = base_layer.in_features
        self.out_features = base_layer.out_features
        self.c3a_kernel = nn.ParameterDict()
        self.block_size: dict[str, int] = {}
        self.scale: dict[str, float] = {}
        self.configs: dict[str, C3AConfig] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.adapters_disabled = False

    # -- adapters -------------------------------------------------------------------------------
    def add_adapter(self, name: str, block_size: int, config: C3AConfig) -> None:
        """Create adapter ``name``'s kernel (float32, on the base weight's device) and initialise it."""
        if name in self.c3a_kernel:
            raise ValueError(f"C3A: adapter {name!r} already exists on this layer")
        if self.in_features % block_size or self.out_features % block_size:
            raise ValueError(
                f"C3A: block_size={block_size} must divide d_in={self.in_features} and d_out={self.out_features}")
        device = self.base_layer.weight.device
        kernel = torch.zeros(self.out_features // block_size, self.in_features // block_size, block_size,
                             dtype=torch.float32, device=device)
        self.c3a_kernel[name] = nn.Parameter(kernel)
        self.block_size[name] = block_size
        self.scale[name] = config.scale(self.in_features)
        self.configs[name] = config
        self.reset_kernel(name, config.init_weights)

    @torch.no_grad()
    def reset_kernel(self, name: str, init_weights: str) -> None:
        """PEFT 0.21's C3A distributions; fans are those of the whole layer, not of a block."""
        kernel = self.c3a_kernel[name]
        if init_weights == "zeros":
            kernel.zero_()
        elif init_weights == "gaussian":
            nn.init.normal_(kernel)
        elif init_weights == "xavier_uniform":
            std = math.sqrt(2.0 / (self.in_features + self.out_features))
            nn.init.uniform_(kernel, -math.sqrt(3.0) * std, math.sqrt(3.0) * std)
        elif init_weights == "kaiming_uniform":
            bound = math.sqrt(1.0 / self.in_features)
            nn.init.uniform_(kernel, -bound, bound)
        else:
            raise ValueError(f"C3A: unknown init_weights {init_weights!r}")

    def delete_adapter(self, name: str) -> None:
        self._require(name)
        if name in self.merged_adapters:
            self.unmerge()
        del self.c3a_kernel[name]
        for table in (self.block_size, self.scale, self.configs):
            table.pop(name)
        self.active_adapters = [a for a in self.active_adapters if a != name]

    def set_adapters(self, names: list[str]) -> None:
        """Make exactly ``names`` active (their kernels train, others are frozen); unmerges first."""
        for name in names:
            self._require(name)
        if self.merged_adapters:
            self.unmerge()
        self.active_adapters = list(dict.fromkeys(names))
        for name, kernel in self.c3a_kernel.items():
            kernel.requires_grad_(name in self.active_adapters)

    def disable_adapters(self) -> None:
        """Base output only; merged weights are restored so the base layer is really the base."""
        if self.merged_adapters:
            self.unmerge()
        self.adapters_disabled = True

    def enable_adapters(self) -> None:
        self.adapters_disabled = False

    def _require(self, name: str) -> None:
        if name not in self.c3a_kernel:
            raise ValueError(f"C3A: no adapter {name!r} on this layer (have {list(self.c3a_kernel)})")

    # -- merging --------------------------------------------------------------------------------
    def delta_weight(self, name: str) -> torch.Tensor:
        """The dense float32 update ``scale * C(kernel)`` of shape (d_out, d_in)."""
        self._require(name)
        return block_circulant_matrix(self.c3a_kernel[name].float()) * self.scale[name]

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every active, not yet merged adapter into the base weight."""
        if self.adapters_disabled:
            raise RuntimeError("C3A: adapters are disabled; enable them before merging")
        weight = self.base_layer.weight
        for name in self.active_adapters:
            if name not in self.merged_adapters:
                weight.data += self.delta_weight(name).to(weight.dtype)
                self.merged_adapters.append(name)

    @torch.no_grad()
    def unmerge(self) -> None:
        weight = self.base_layer.weight
        while self.merged_adapters:
            weight.data -= self.delta_weight(self.merged_adapters.pop()).to(weight.dtype)

    # -- compute --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.adapters_disabled:
            return self.base_layer(x)
        pending = [a for a in self.active_adapters if a not in self.merged_adapters]
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if not pending:
            return self.base_layer(x)
        if len(pending) == 1:
            name = pending[0]
            return c3a_linear(x, weight, bias, self.c3a_kernel[name], self.scale[name])
        x32 = x.to(torch.float32)
        delta = sum(block_circulant_matmul(x32, self.c3a_kernel[a]) * self.scale[a] for a in pending)
        out = F.linear(x, weight, bias)
        return out + delta.to(out.dtype)

    def _apply(self, fn, recurse: bool = True):
        """Kernels keep float32 under ``model.to(dtype)``/``.half()``; only their device follows ``fn``."""

        def device_only(t: torch.Tensor) -> torch.Tensor:
            moved = fn(t)
            return moved if moved.dtype == t.dtype else t.to(moved.device)

        self.base_layer._apply(fn, recurse)
        self.c3a_kernel._apply(device_only, recurse)
        return self

    def extra_repr(self) -> str:
        adapters = ", ".join(f"{n}: block_size={p}" for n, p in self.block_size.items())
        return f"adapters=[{adapters}], active={self.active_adapters}, merged={self.merged_adapters}"
