"""The PEFT-library baselines: LoRA, VeRA, BOFT and (IA)3 (Table 2), DoRA (Tables 3 and 4).

One shared base builds a PEFT config, checks it against the model before any compute, wraps the
model with ``get_peft_model`` (no ``task_type``: the head is ours, not PEFT's ``modules_to_save``) and
then gives the head back its gradients. Target matching uses PEFT's own rule, so what ``validate``
reports is exactly what PEFT will adapt.
"""
from __future__ import annotations

import warnings
from abc import abstractmethod

from torch import nn

from framework.method import Adapted, Method, linear_layer_names
from framework.models import Head, in_modules


def _as_targets(targets) -> str | list[str]:
    """A regex string stays a string; any sequence (Hydra's ListConfig included) becomes a list of str."""
    if targets is None:
        raise ValueError("target_modules is required (a list of module names or a full-match regex)")
    if isinstance(targets, str):
        return targets
    return [str(t) for t in targets]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _dropout(name: str, value) -> None:
    if not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class PeftMethod(Method):
    """A method built from a PEFT config; subclasses say which config and which hyperparameters."""

    def __init__(self, target_modules, name: str | None = None):
        super().__init__(name)
        self.target_modules = _as_targets(target_modules)

    @abstractmethod
    def peft_config(self):
        """The PEFT config (without task_type) this method applies."""

    def check_targets(self, model: nn.Module, targets: dict[str, nn.Linear]) -> None:
        """Raise ValueError for hyperparameters that do not fit the matched layers' shapes."""

    def hyperparameters(self) -> dict:
        return {"target_modules": self.target_modules}

    def label(self) -> str:
        return self.name

    def describe(self) -> dict:
        return {"name": self.name, "label": self.label(), **self.hyperparameters()}

    def matched_modules(self, model: nn.Module) -> dict[str, nn.Module]:
        """Modules PEFT would adapt, by qualified name (PEFT's own matching rule)."""
        from peft.tuners.tuners_utils import _ExcludedModule, check_target_module_exists

        config = self.peft_config()
        found = {}
        for name, module in model.named_modules():
            match = check_target_module_exists(config, name)
            if match and not isinstance(match, _ExcludedModule):
                found[name] = module
        return found

    def check_model(self, model: nn.Module, head: Head) -> None:
        matched = self.matched_modules(model)
        if not matched:
            raise ValueError(
                f"{self.name}: target_modules {self.target_modules!r} match no module of "
                f"{type(model).__name__}. Its linear layers are: {linear_layer_names(model)}")
        not_linear = {name: type(m).__name__ for name, m in matched.items() if not isinstance(m, nn.Linear)}
        if not_linear:
            raise ValueError(f"{self.name}: target_modules {self.target_modules!r} match modules that are "
                             f"not nn.Linear: {not_linear}. Linear layers: {linear_layer_names(model)}")
        in_head = [name for name in matched if in_modules(name, head.modules)]
        if in_head:
            raise ValueError(f"{self.name}: target_modules {self.target_modules!r} match layers inside the "
                             f"task head {list(head.modules)}: {in_head}; the head trains in full already")
        self.check_targets(model, matched)

    def adapt(self, model: nn.Module, head: Head) -> nn.Module:
        from peft import get_peft_model

        return get_peft_model(model, self.peft_config())


class LoRAMethod(PeftMethod):
    """LoRA: ΔW = (alpha / r) · B A with A (r × d_in), B (d_out × r); r(d_in + d_out) per layer."""

    name = "lora"

    def __init__(self, target_modules, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 name: str = "lora"):
        super().__init__(target_modules, name)
        self.r, self.lora_alpha, self.lora_dropout = r, lora_alpha, lora_dropout

    def check_hyperparameters(self) -> None:
        _positive_int("lora r", self.r)
        if not float(self.lora_alpha) > 0:
            raise ValueError(f"lora_alpha must be > 0, got {self.lora_alpha!r}")
        _dropout("lora_dropout", self.lora_dropout)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.target_modules)

    def hyperparameters(self) -> dict:
        return {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.lora_dropout,
                **super().hyperparameters()}

    def label(self) -> str:
        return f"LoRA r={self.r}"


class DoRAMethod(LoRAMethod):
    """DoRA: LoRA's update applied to the direction of W, plus a trained magnitude vector (d_out per layer).

    PEFT's LoRA with ``use_dora=True``; trainable: r(d_in + d_out) + d_out per layer.
    """

    name = "dora"

    def __init__(self, target_modules, r: int = 8, lora_alpha: float = 8, lora_dropout: float = 0.0,
                 name: str = "dora"):
        super().__init__(target_modules, r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, name=name)

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                          target_modules=self.target_modules, use_dora=True)

    def label(self) -> str:
        return f"DoRA r={self.r}"


class VeRAMethod(PeftMethod):
    """VeRA: frozen shared random A, B; trains scaling vectors d (r) and b (d_out) per layer."""

    name = "vera"

    def __init__(self, target_modules, r: int = 1024, vera_dropout: float = 0.0, d_initial: float = 0.1,
                 projection_prng_key: int = 0, name: str = "vera"):
        super().__init__(target_modules, name)
        self.r, self.vera_dropout, self.d_initial = r, vera_dropout, d_initial
        self.projection_prng_key = projection_prng_key

    def check_hyperparameters(self) -> None:
        _positive_int("vera r", self.r)
        _dropout("vera_dropout", self.vera_dropout)

    def peft_config(self):
        from peft import VeraConfig

        return VeraConfig(r=self.r, vera_dropout=self.vera_dropout, d_initial=self.d_initial,
                          projection_prng_key=self.projection_prng_key, target_modules=self.target_modules)

    def hyperparameters(self) -> dict:
        return {"r": self.r, "vera_dropout": self.vera_dropout, "d_initial": self.d_initial,
                "projection_prng_key": self.projection_prng_key, **super().hyperparameters()}

    def label(self) -> str:
        return f"VeRA r={self.r}"


class BOFTMethod(PeftMethod):
    """BOFT: an orthogonal butterfly rotation of W's input side plus an output scale.

    PEFT replaces any butterfly factor by 1 (no butterfly: block-diagonal OFT) whenever its CUDA
    extension cannot be compiled: on every CPU machine and on GPU machines without nvcc/ninja. The
    paper's "BOFT b=8 m=2" count (165,888 / 442,368) is that factor-1 adapter; a real factor 2 has
    313,344 / 835,584. ``emulate_peft_cpu_fallback=True`` asks PEFT for factor 1 explicitly, so every
    machine builds the paper's adapter; ``False`` asks for the nominal factor and raises if PEFT falls back.
    """

    name = "boft"

    def __init__(self, target_modules, boft_block_size: int = 8, boft_n_butterfly_factor: int = 2,
                 boft_dropout: float = 0.0, emulate_peft_cpu_fallback: bool = True, name: str = "boft"):
        super().__init__(target_modules, name)
        self.boft_block_size, self.boft_n_butterfly_factor = boft_block_size, boft_n_butterfly_factor
        self.boft_dropout, self.emulate_peft_cpu_fallback = boft_dropout, emulate_peft_cpu_fallback

    @property
    def built_butterfly_factor(self) -> int:
        return 1 if self.emulate_peft_cpu_fallback else self.boft_n_butterfly_factor

    def check_hyperparameters(self) -> None:
        _positive_int("boft_block_size", self.boft_block_size)
        _positive_int("boft_n_butterfly_factor", self.boft_n_butterfly_factor)
        _dropout("boft_dropout", self.boft_dropout)

    def check_targets(self, model: nn.Module, targets: dict[str, nn.Linear]) -> None:
        p, m = self.boft_block_size, self.built_butterfly_factor
        need = p * 2 ** (m - 1)
        bad = {name: layer.in_features for name, layer in targets.items() if layer.in_features % need}
        if bad:
            raise ValueError(f"boft: in_features must be a multiple of boft_block_size·2^(factor-1) = {need} "
                             f"(block {p}, factor {m}); these layers are not: {bad}")

    def peft_config(self):
        from peft import BOFTConfig

        return BOFTConfig(boft_block_size=self.boft_block_size, boft_n_butterfly_factor=self.built_butterfly_factor,
                          boft_dropout=self.boft_dropout, target_modules=self.target_modules)

    def apply(self, model: nn.Module, head: Head) -> Adapted:
        with warnings.catch_warnings():
            if self.built_butterfly_factor == 1:  # PEFT's fallback to factor 1 changes nothing then
                warnings.filterwarnings("ignore", message="Failed to load the CUDA extension")
                warnings.filterwarnings("ignore", message="Setting boft_n_butterfly_factor to 1")
            adapted = super().apply(model, head)
        built = {p.shape[0] for name, p in adapted.adapter if ".boft_R." in name}
        if built != {self.built_butterfly_factor}:
            raise RuntimeError(
                f"boft: asked PEFT for butterfly factor {self.built_butterfly_factor} but it built {sorted(built)}: "
                f"its CUDA extension did not compile (PEFT then uses factor 1). Set "
                f"method.emulate_peft_cpu_fallback=true for the paper's factor-1 adapter, or install nvcc and ninja.")
        return adapted

    def hyperparameters(self) -> dict:
        return {"boft_block_size": self.boft_block_size, "boft_n_butterfly_factor": self.boft_n_butterfly_factor,
                "built_butterfly_factor": self.built_butterfly_factor, "boft_dropout": self.boft_dropout,
                "emulate_peft_cpu_fallback": self.emulate_peft_cpu_fallback, **super().hyperparameters()}

    def label(self) -> str:
        return f"BOFT b={self.boft_block_size} m={self.boft_n_butterfly_factor}"


class IA3Method(PeftMethod):
    """(IA)3: a learned vector rescales each target's output, or its input for feed-forward targets."""

    name = "ia3"

    def __init__(self, target_modules, feedforward_modules, name: str = "ia3"):
        super().__init__(target_modules, name)
        self.feedforward_modules = _as_targets(feedforward_modules)

    def check_hyperparameters(self) -> None:
        if isinstance(self.target_modules, str) != isinstance(self.feedforward_modules, str):
            raise ValueError("ia3: target_modules and feedforward_modules must both be regex strings or both "
                             f"lists, got {self.target_modules!r} and {self.feedforward_modules!r}")

    def check_targets(self, model: nn.Module, targets: dict[str, nn.Linear]) -> None:
        from peft.tuners.ia3.model import IA3Model

        config = self.peft_config()
        feedforward = [name for name in targets if IA3Model._check_target_module_feedforward(config, name)]
        if not feedforward:
            raise ValueError(f"ia3: feedforward_modules {self.feedforward_modules!r} match none of the targeted "
                             f"layers {sorted(targets)}")

    def peft_config(self):
        from peft import IA3Config

        return IA3Config(target_modules=self.target_modules, feedforward_modules=self.feedforward_modules)

    def hyperparameters(self) -> dict:
        return {**super().hyperparameters(), "feedforward_modules": self.feedforward_modules}

    def label(self) -> str:
        return "(IA)3"
