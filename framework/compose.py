"""Composing ``conf/`` in Python exactly as ``run.py`` does (scripts, tests, table builders).

Hydra's runtime fields are set as a launched run would have them, so every interpolation resolves.
"""
from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def compose_config(overrides: list[str], root: str | Path | None = None):
    """The composed run config for ``overrides``; ``root`` (if given) becomes ``paths.root_dir``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    runtime = Path(root) if root is not None else ROOT
    prefix = [f"paths.root_dir={root}"] if root is not None else []
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*prefix, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(runtime / "outputs")
            cfg.hydra.runtime.cwd = str(runtime)
        HydraConfig.instance().set_config(cfg)
    return cfg
