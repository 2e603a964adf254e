"""Baseline fine-tuning methods, each a ``framework.method.Method`` built from ``conf/method/<name>.yaml``.

PEFT-built: LoRA, VeRA, BOFT, (IA)3 (``baselines.peft_methods``). Plain PyTorch: BitFit, full
fine-tuning and head-only.
"""
from baselines.bitfit import BitFitMethod
from baselines.full import FullMethod
from baselines.head import HeadOnlyMethod
from baselines.peft_methods import BOFTMethod, IA3Method, LoRAMethod, PeftMethod, VeRAMethod

__all__ = ["BitFitMethod", "BOFTMethod", "FullMethod", "HeadOnlyMethod", "IA3Method", "LoRAMethod",
           "PeftMethod", "VeRAMethod"]
