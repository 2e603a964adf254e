"""Entry point: ``python run.py model=… method=… task=… [experiment=…] [seed=…]`` (``-m`` sweeps).

Composition root only: Hydra composes ``conf/``; ``framework.pipeline.run`` does the work.
"""
from __future__ import annotations

import logging
import os
import sys

for _var in ("HF_HUB_DISABLE_TELEMETRY", "TOKENIZERS_PARALLELISM"):
    os.environ.setdefault(_var, "1" if _var.endswith("TELEMETRY") else "false")
# paths.root_dir: results, caches and Hydra's folders live under the directory run.py is started from
os.environ.setdefault("C3A_ROOT", os.getcwd())

from framework import threads  # noqa: E402 - before torch loads: OMP_WAIT_POLICY is read once, at load

threads.configure()

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("run")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from framework.pipeline import InputError, run
    from framework.results import RunInProgressError

    if cfg.print_config:
        print(OmegaConf.to_yaml(cfg, resolve=True))
    sweeping = HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        result = run(cfg)
    except InputError as err:
        log.error("bad input: %s", err)
        if sweeping:  # one bad cell must not stop the sweep
            return None
        sys.exit(2)
    except RunInProgressError as err:  # another process is running this very run: nothing is recorded
        log.error("%s", err)
        if sweeping:  # the other sweep does this cell
            return None
        sys.exit(3)
    except Exception:  # noqa: BLE001 - recorded as a failed result by the pipeline
        log.exception("run failed (recorded as failed)")
        if sweeping:
            return None
        sys.exit(1)
    # the sweep objective (e.g. the Optuna LR search) is the validation score, never test
    return result.best_val.get(result.selection_metric)


if __name__ == "__main__":
    main()
