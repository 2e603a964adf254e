"""Models: the one builder, the task head, position limits and the diffusion pipeline as one module.

This package imports nothing from ``framework.tasks`` or ``framework.method``: tasks and methods import it,
never the other way (``tests/test_assembly.py`` checks it in a fresh interpreter). Import from here, not from
the modules inside:

- ``builder``: model entry × model kind × head → model (pretrained / random / meta), processors,
- ``heads``: ``Head`` (what a task asks of its head and where it sits in the model), ``in_modules``,
- ``sources``: where weights come from (Hub id, folder, pip package, GGUF), the offline check,
- ``positions``: how many tokens a model's position embeddings take,
- ``diffusion``: a Stable Diffusion pipeline as one ``nn.Module`` (built through ``build_model``).
"""
from framework.models.builder import (MODEL_KINDS, PROCESSORS, WEIGHTS, build_model, build_processor, count_parameters,
                                      head_modules, locate_head, model_config)
from framework.models.diffusion import DiffusionModel, DiffusionSpec, find_diffusion_model
from framework.models.heads import Head, in_modules
from framework.models.positions import position_limit
from framework.models.sources import DTYPES, check_source, resolve_source, weights_source

__all__ = ["DTYPES", "MODEL_KINDS", "PROCESSORS", "WEIGHTS", "DiffusionModel", "DiffusionSpec", "Head", "build_model",
           "build_processor", "check_source", "count_parameters", "find_diffusion_model", "head_modules", "in_modules",
           "locate_head", "model_config", "position_limit", "resolve_source", "weights_source"]
