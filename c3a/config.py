"""C3A adapter configuration, validated on construction so bad settings fail before any model is touched.

Two notations for the block count exist (docs/paper.md §1): ``b`` is the paper's v1
notation (number of blocks along the input dim, block_size = d_in / b), ``block_size`` is the kernel
length p (PEFT and paper v4 notation). Exactly one of them is set.
"""
from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Union

INIT_CHOICES = ("xavier_uniform", "zeros", "gaussian", "kaiming_uniform")


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"C3A: {name}={value!r} must be a positive integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"C3A: {name}={value} must be a positive integer (> 0)")


@dataclass
class C3AConfig:
    """Hyperparameters of one C3A adapter.

    ``scale_by_d_in`` divides the adapter output by the layer's input size, as PEFT's C3A does; the
    paper's large learning rates (0.05–7) assume this factor, so keep it on to reuse them.
    """

    target_modules: Union[list[str], str]
    b: int | None = None
    block_size: int | None = None
    block_size_pattern: dict[str, int] = field(default_factory=dict)
    init_weights: str = "xavier_uniform"
    scale_by_d_in: bool = True

    def __post_init__(self) -> None:
        if (self.b is None) == (self.block_size is None):
            raise ValueError(
                f"C3A: set exactly one of b (number of blocks along the input dim, block_size = d_in / b) "
                f"or block_size (kernel length p); got b={self.b!r}, block_size={self.block_size!r}. "
                f"With Hydra, `method.block_size=128` also needs `method.b=null`.")
        if self.b is not None:
            _check_positive_int("b", self.b)
        if self.block_size is not None:
            _check_positive_int("block_size", self.block_size)
        self.target_modules = _normalise_targets(self.target_modules)
        pattern = dict(self.block_size_pattern or {})
        self.block_size_pattern = {str(k): v for k, v in pattern.items()}
        for key, value in self.block_size_pattern.items():
            _check_positive_int(f"block_size_pattern[{key!r}]", value)
            try:
                re.compile(key)
            except re.error as err:
                raise ValueError(f"C3A: block_size_pattern key {key!r} is not a valid regex: {err}") from None
        if self.init_weights not in INIT_CHOICES:
            raise ValueError(f"C3A: init_weights={self.init_weights!r} is not one of {list(INIT_CHOICES)}")
        if not isinstance(self.scale_by_d_in, bool):
            raise ValueError(f"C3A: scale_by_d_in={self.scale_by_d_in!r} must be true or false")

    # -- per-layer resolution -------------------------------------------------------------------
    def pattern_block_size(self, module_name: str) -> int | None:
        """Block size from ``block_size_pattern`` (first key that full-matches the name or a suffix)."""
        for key, value in self.block_size_pattern.items():
            if re.fullmatch(key, module_name) or re.fullmatch(rf".*\.(?:{key})", module_name):
                return value
        return None

    def resolve_block_size(self, module_name: str, d_in: int, d_out: int) -> int:
        """The kernel length for one layer; ``ValueError`` naming the layer and the valid choices."""
        override = self.pattern_block_size(module_name)
        if override is not None:
            block_size, how = override, f"block_size_pattern gives block_size={override}"
        elif self.block_size is not None:
            block_size, how = self.block_size, f"block_size={self.block_size}"
        else:
            block_size = d_in // self.b if d_in % self.b == 0 else None
            how = f"b={self.b} (block_size = d_in / b)"
        if block_size is not None and d_in % block_size == 0 and d_out % block_size == 0:
            return block_size
        sizes = common_block_sizes(d_in, d_out)
        raise ValueError(
            f"C3A: {how} does not fit layer {module_name!r} (Linear d_in={d_in}, d_out={d_out}): the block "
            f"size must divide both d_in and d_out. Valid block_size values: {sizes}; valid b values "
            f"(blocks along d_in): {sorted(d_in // p for p in sizes)}.")

    def scale(self, d_in: int) -> float:
        return 1.0 / d_in if self.scale_by_d_in else 1.0

    def label(self) -> str:
        """Table label: "C3A b=6" (v1 notation) or "C3A block=128"."""
        base = f"C3A b={self.b}" if self.b is not None else f"C3A block={self.block_size}"
        if self.block_size_pattern:
            base += " (" + ", ".join(f"{k}={v}" for k, v in self.block_size_pattern.items()) + ")"
        return base

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "C3AConfig":
        return cls(**dict(data))


def _normalise_targets(targets: Any) -> Union[list[str], str]:
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise ValueError(f"C3A: target_modules regex {targets!r} is invalid: {err}") from None
        return targets
    if targets is None or not hasattr(targets, "__iter__"):
        raise ValueError(
            f"C3A: target_modules={targets!r} must be a list of module names (matched as name suffixes) "
            f"or a regex string (full match)")
    names = [str(t) for t in targets]
    if not names:
        raise ValueError("C3A: target_modules is empty; name at least one linear layer, e.g. [query, value]")
    return names


def common_block_sizes(d_in: int, d_out: int) -> list[int]:
    """Every block size that divides both dimensions (ascending)."""
    g = math.gcd(d_in, d_out)
    return [p for p in range(1, g + 1) if g % p == 0]


def target_matches(targets: Union[list[str], str], module_name: str) -> bool:
    """PEFT's rule: a regex string full-matches the name; list entries match the name or a dotted suffix."""
    if isinstance(targets, str):
        return re.fullmatch(targets, module_name) is not None
    return any(module_name == t or module_name.endswith("." + t) for t in targets)
