"""Experiment trackers (`conf/tracker/`): W&B (offline by default) and a no-op. Runs call only these five methods."""
from __future__ import annotations

import os
from typing import Any


class NullTracker:
    """``tracker=none``: records nothing beyond the local result file."""

    def start(self, run_name: str, config: dict, group: str | None = None) -> None: ...

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    def summary(self, values: dict[str, Any]) -> None: ...

    def log_image(self, name: str, path: str, caption: str = "", values: dict[str, Any] | None = None) -> None: ...

    def finish(self, failed: bool = False) -> None: ...


class WandbTracker(NullTracker):
    """Mirrors the run's config and metrics to W&B. ``mode=offline`` needs no account (``wandb sync`` later)."""

    MODES = ("offline", "online", "disabled")

    def __init__(self, project: str = "c3a-peft", entity: str | None = None, mode: str = "offline",
                 group: str | None = None, tags: list[str] | None = None, dir: str | None = None):
        if mode not in self.MODES:
            raise ValueError(f"tracker.mode={mode!r} is not one of {self.MODES}")
        self.project, self.entity, self.mode = project, entity, mode
        self.group, self.tags, self.dir = group, list(tags or []), dir
        self.run = None

    def start(self, run_name: str, config: dict, group: str | None = None) -> None:
        import wandb

        if self.dir:
            os.makedirs(self.dir, exist_ok=True)
        # no console capture or telemetry threads: offline runs must not wait on the network
        settings = wandb.Settings(console="off", silent=True, x_disable_stats=True)
        self.run = wandb.init(project=self.project, entity=self.entity, mode=self.mode, group=self.group or group,
                              name=run_name, tags=self.tags, dir=self.dir, config=config, reinit="finish_previous",
                              settings=settings)

    def log(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_image(self, name: str, path: str, caption: str = "", values: dict[str, Any] | None = None) -> None:
        """An image file (e.g. a sample grid) with optional scalar values beside it."""
        if self.run is not None:
            import wandb

            self.run.log({name: wandb.Image(str(path), caption=caption), **(values or {})})

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            for key, value in values.items():
                self.run.summary[key] = value

    def finish(self, failed: bool = False) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)
            self.run = None
