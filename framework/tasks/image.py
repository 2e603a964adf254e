"""Image classification behind the ``Task`` interface: the paper's ViT experiments (Tables A1, A2, A5).

Data (``image_data.py``): the Hub, a folder tree (one folder per class), ``path,label`` CSV files, or
scikit-learn's digits. The split protocol is explicit and recorded (``split``):

- ``source``: the data's own train and test; its val split when it has one (EuroSAT, RESISC45), otherwise
  val is carved from train with ``split_seed`` (``val_size``; null = the paper's val count, ``sizes.val``);
- ``pooled``: every image of the data is pooled and cut into ``sizes`` (train/val/test counts) with
  ``split_seed``: for data with no split (digits, EuroSAT as distributed) or whose split differs from the
  paper's (DTD: 5,640 images cut 4,060/452/1,128 in Table A1, the Hub copy has 3,760/1,880).

Images go through the model's image processor (resize, rescale, normalise) in the collate function;
``augmentation=flip_crop`` adds a random crop (80-100 % of the area) and a horizontal flip to training
images only. Images whose colour mode differs from what the model takes (grayscale for an RGB model) are
converted and counted in ``describe()``. Every image is decoded once before any compute (``check_data``),
so a truncated or unreadable file, an empty class folder or a label outside the class list stops the run
with the file named.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from framework.checks import is_int
from framework.models import Head
from framework.tasks import image_data
from framework.tasks.base import Task

log = logging.getLogger(__name__)

SOURCES = ("hub", "folder", "csv", "sklearn_digits")
SPLIT_MODES = ("source", "pooled")
AUGMENTATIONS = ("none", "flip_crop")
SPLITS = ("train", "val", "test")
CHANNEL_MODES = {3: "RGB", 1: "L"}


def flip_crop(image, scale: tuple[float, float] = (0.8, 1.0), ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """A random crop of 80-100 % of the area (aspect 3:4-4:3), then a horizontal flip with probability 1/2.

    Draws from torch's RNG, which the trainer seeds and checkpoints, so resumed runs see the same crops.
    """
    from PIL import Image

    width, height = image.size
    for _ in range(10):
        area = width * height * float(torch.empty(1).uniform_(*scale))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]))))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            x = int(torch.randint(0, width - w + 1, (1,)))
            y = int(torch.randint(0, height - h + 1, (1,)))
            image = image.crop((x, y, x + w, y + h))
            break
    if float(torch.rand(1)) < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image


AUGMENT: dict[str, Optional[Callable]] = {"none": None, "flip_crop": flip_crop}


class ImageSplit(torch.utils.data.Dataset):
    """Rows ``indices`` of a source; items are ``{"image": PIL image in ``mode``, "labels": int}``."""

    def __init__(self, source: image_data.ImageSource, indices: np.ndarray, mode: str):
        self.source, self.indices, self.mode = source, np.asarray(indices, dtype=np.int64), mode

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict:
        row = int(self.indices[position])
        image = self.source.open(row)
        if image.mode != self.mode:
            image = image.convert(self.mode)
        return {"image": image, "labels": int(self.source.labels[row])}


class ImageCollator:
    """PIL images → (augmentation) → the model's image processor → ``{"pixel_values", "labels"}``."""

    def __init__(self, processor, augment: Optional[Callable] = None):
        self.processor, self.augment = processor, augment

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        images = [row["image"] for row in rows]
        if self.augment is not None:
            images = [self.augment(image) for image in images]
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor([row["labels"] for row in rows], dtype=torch.long)}


class ImageClassificationTask(Task):
    model_kind = "image-classification"
    processor_kind = "image_processor"
    selection_metric = "accuracy"

    def __init__(self, name: str, source: str = "hub", data_dir: Optional[str] = None,
                 hub_dataset: Optional[str] = None, hub_config: Optional[str] = None,
                 hub_splits: Optional[dict[str, str]] = None, image_column: str = "image",
                 label_column: str = "label", split: str = "source", sizes: Optional[dict[str, int]] = None,
                 val_size: int | float | None = None, split_seed: int = 0, classes: Optional[list[str]] = None,
                 augmentation: str = "none", max_train_samples: Optional[int] = None,
                 max_eval_samples: Optional[int] = None, cache_dir: str | os.PathLike = "~/.cache/c3a"):
        self.name, self.source, self.split = name, source, split
        self.data_dir = None if data_dir is None else str(data_dir)
        self.hub_dataset, self.hub_config = hub_dataset, hub_config
        self.hub_splits = dict(hub_splits or {"train": "train", "test": "test"})
        self.image_column, self.label_column = image_column, label_column
        self.sizes = None if sizes is None else dict(sizes)
        self.val_size, self.split_seed = val_size, split_seed
        self.classes = None if classes is None else [str(c) for c in classes]
        self.augmentation = augmentation
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.cache_dir = Path(cache_dir).expanduser()
        self._pools: Optional[dict[str, image_data.ImageSource]] = None
        self._class_names: Optional[list[str]] = None
        self._checks: dict[str, dict] = {}
        self._info: dict[str, Any] = {}
        self._model: dict[str, Any] = {}
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        for key, value, choices in (("source", self.source, SOURCES), ("split", self.split, SPLIT_MODES),
                                    ("augmentation", self.augmentation, AUGMENTATIONS)):
            if value not in choices:
                raise ValueError(f"task.{key}={value!r} is not valid; choose one of {list(choices)}")
        if self.source in ("folder", "csv"):
            if self.data_dir is None:
                raise ValueError(f"task.source={self.source} needs task.data_dir (the folder with the images)")
            if not Path(self.data_dir).expanduser().is_dir():
                raise FileNotFoundError(f"task.data_dir={self.data_dir} is not a folder")
        if self.source == "hub":
            if not self.hub_dataset:
                raise ValueError("task.source=hub needs task.hub_dataset (a Hub dataset id)")
            unknown = set(self.hub_splits) - set(SPLITS)
            if unknown or "train" not in self.hub_splits or (self.split == "source" and "test" not in self.hub_splits):
                raise ValueError(f"task.hub_splits={self.hub_splits} must map train, test (and optionally val) "
                                 f"to the dataset's split names")
        if self.source == "sklearn_digits" and self.split != "pooled":
            raise ValueError("task.source=sklearn_digits has no train/test split of its own: set task.split=pooled")
        sizes = self.sizes or {}
        if self.split == "pooled" and set(sizes) != set(SPLITS):
            raise ValueError(f"task.split=pooled needs task.sizes with train, val and test counts, got {self.sizes}")
        for key, value in sizes.items():
            if key not in SPLITS or not (is_int(value) and value >= 1):
                raise ValueError(f"task.sizes.{key}={value!r}: sizes take the keys {list(SPLITS)} with counts >= 1")
        val = self.val_size
        if not (val is None or (is_int(val) and val >= 1) or (isinstance(val, float) and 0.0 < val < 1.0)):
            raise ValueError(f"task.val_size={val!r} is invalid; use null (task.sizes.val), an integer count "
                             f">= 1, or a fraction in (0, 1)")
        if not is_int(self.split_seed):
            raise ValueError(f"task.split_seed={self.split_seed!r} must be an integer")
        for key in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, key)
            if value is not None and not (is_int(value) and value >= 1):
                raise ValueError(f"task.{key}={value!r} must be null or an integer >= 1")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise ValueError(f"task.classes has duplicates: {self.classes}")
        if self.classes is not None:
            image_data.require_two_classes(self.classes, "task.classes")

    def check_data(self) -> None:
        """List every image and decode each once (cached), so bad files fail before any compute."""
        for pool_name, source in self._load_pools().items():
            if pool_name not in self._checks:
                self._checks[pool_name] = image_data.check_images(source, self.cache_dir)

    def check_model(self, model_config) -> None:
        channels = int(getattr(model_config, "num_channels", 3))
        if channels not in CHANNEL_MODES:
            raise ValueError(f"{self.name}: the model takes {channels}-channel images; this task feeds "
                             f"{sorted(CHANNEL_MODES)} (grayscale or RGB)")
        self._model = {"num_channels": channels, "image_size": getattr(model_config, "image_size", None)}

    def head(self) -> Head:
        names = self.class_names()
        # ignore_mismatched_sizes: a checkpoint whose classifier has another class count gets a fresh one
        return Head(model_kwargs={"id2label": dict(enumerate(names)),
                                  "label2id": {n: i for i, n in enumerate(names)},
                                  "num_labels": len(names), "ignore_mismatched_sizes": True}, trains=True,
                    fresh=True)

    # ------------------------------------------------------------------- data
    def class_names(self) -> list[str]:
        """``task.classes`` when given (no data read: e.g. counting parameters), else the data's classes."""
        if self.classes is not None:
            return list(self.classes)
        self._load_pools()
        return list(self._class_names)

    def _load_pools(self) -> dict[str, image_data.ImageSource]:
        """``{"train", "val"?, "test"}`` (split=source) or ``{"all"}`` (split=pooled), read once."""
        if self._pools is not None:
            return self._pools
        if self.source == "sklearn_digits":
            pool, names = image_data.load_sklearn_digits()
            parts = {"all": pool}
        elif self.source == "hub":
            parts, names = image_data.load_hub(self.hub_dataset, self.hub_config, self.hub_splits,
                                               self.image_column, self.label_column, self.classes)
        else:
            parts, names = self._read_local()
        if self.classes is not None:
            names = self.classes
        if self.split == "pooled" and "all" not in parts:
            parts = {"all": image_data.PooledImages([parts[s] for s in SPLITS if s in parts], "pooled")}
        self._pools, self._class_names = parts, list(names)
        return parts

    def _read_local(self) -> tuple[dict[str, image_data.ImageSource], list[str]]:
        root = Path(self.data_dir).expanduser()
        if self.source == "csv":
            files = {s: root / f"{s}.csv" for s in SPLITS if (root / f"{s}.csv").is_file()}
            required = ("train", "test") if self.split == "source" else ()
            if not files or any(s not in files for s in required):
                raise FileNotFoundError(f"{root} must hold train.csv and test.csv (val.csv optional; with "
                                        f"task.split=pooled any of them), found {sorted(p.name for p in files.values())}")
            # the training labels define the classes (all labels when every file is pooled without a train.csv)
            listed = [files["train"]] if "train" in files else list(files.values())
            names = self.classes or image_data.require_two_classes(
                sorted({label for path in listed for label in image_data.csv_labels(path)}),
                " and ".join(str(path) for path in listed))
            return {s: image_data.read_csv(path, names, f"{s}.csv") for s, path in files.items()}, names
        folders = {s: root / s for s in SPLITS if (root / s).is_dir()}
        if not folders:
            if self.split != "pooled":
                raise FileNotFoundError(f"{root} has no train/ and test/ folders; lay the images out as "
                                        f"{root}/train/<class>/<image> and {root}/test/<class>/<image>, or set "
                                        f"task.split=pooled to cut train/val/test from {root}/<class>/<image>")
            folders = {"all": root}
        elif self.split == "source" and not {"train", "test"} <= set(folders):
            raise FileNotFoundError(f"{root} needs both train/ and test/ folders (val/ optional), "
                                    f"found {sorted(folders)}")
        class_root = folders.get("train", folders.get("all", root))
        names = self.classes or image_data.require_two_classes(image_data.class_folders(class_root), str(class_root))
        parts, skipped = {}, 0
        for split_name, folder in folders.items():
            parts[split_name], count = image_data.read_class_folders(folder, names, f"{split_name}/")
            skipped += count
        self._info["non_image_files_skipped"] = skipped
        return parts, names

    def _resolve_val_size(self, n_train: int) -> int:
        if self.val_size is None:
            if not self.sizes or "val" not in self.sizes:
                raise ValueError(f"{self.name}: the data has no val split; set task.sizes.val or task.val_size")
            count = int(self.sizes["val"])
        elif isinstance(self.val_size, float):
            count = round(self.val_size * n_train)
        else:
            count = int(self.val_size)
        if not 1 <= count < n_train:
            raise ValueError(f"{self.name}: a val split of {count} from {n_train} training images leaves none on "
                             f"one side; set task.val_size")
        return count

    def split_indices(self) -> dict[str, tuple[str, np.ndarray]]:
        """``{split: (pool, row indices)}`` under the configured protocol and subsets."""
        pools = self._load_pools()
        split_seq, train_seq, eval_seq = np.random.SeedSequence(self.split_seed).spawn(3)
        split_rng = np.random.default_rng(split_seq)
        if self.split == "pooled":
            n_all, counts = len(pools["all"]), [int(self.sizes[s]) for s in SPLITS]
            if sum(counts) > n_all:
                raise ValueError(f"{self.name}: task.sizes {self.sizes} add up to {sum(counts)} but the data has "
                                 f"{n_all} images")
            order, ends = split_rng.permutation(n_all), np.cumsum(counts)
            out = {s: ("all", np.sort(order[end - n:end])) for s, n, end in zip(SPLITS, counts, ends)}
            self._info["unused_images"] = n_all - int(ends[-1])
        else:
            n_train = len(pools["train"])
            if "val" in pools:
                out = {"train": ("train", np.arange(n_train)), "val": ("val", np.arange(len(pools["val"])))}
            else:
                n_val = self._resolve_val_size(n_train)
                order = split_rng.permutation(n_train)
                out = {"train": ("train", np.sort(order[n_val:])), "val": ("train", np.sort(order[:n_val]))}
                self._info["val_carved_from_train"] = n_val
            out["test"] = ("test", np.arange(len(pools["test"])))
        self._info["full_sizes"] = {s: len(rows) for s, (_, rows) in out.items()}
        if self.max_train_samples is not None and self.max_train_samples < len(out["train"][1]):
            pool, rows = out["train"]
            out["train"] = (pool, np.sort(rows[np.random.default_rng(train_seq).permutation(len(rows))[:self.max_train_samples]]))
        for name in ("val", "test"):
            pool, rows = out[name]
            if self.max_eval_samples is not None and self.max_eval_samples < len(rows):
                out[name] = (pool, np.sort(rows[np.random.default_rng(eval_seq).permutation(len(rows))[:self.max_eval_samples]]))
        return out

    def data_files(self) -> list:
        return [self.data_dir] if self.source in ("folder", "csv") and self.data_dir is not None else []

    def check_processor(self, processor) -> None:
        self._image_mode(processor)

    def _image_mode(self, processor) -> str:
        mean = getattr(processor, "image_mean", None)
        processor_channels = len(mean) if isinstance(mean, (list, tuple)) else None
        channels = self._model.get("num_channels", processor_channels or 3)
        if processor_channels is not None and processor_channels != channels:
            raise ValueError(f"{self.name}: the image processor normalises {processor_channels} channels but the "
                             f"model takes {channels}; use the processor that belongs to the model (model.processor)")
        size, image_size = getattr(processor, "size", None), self._model.get("image_size")
        height = size.get("height") if isinstance(size, dict) else getattr(size, "height", None)
        width = size.get("width") if isinstance(size, dict) else getattr(size, "width", None)
        if image_size and height and width and (int(height), int(width)) != (int(image_size), int(image_size)):
            raise ValueError(f"{self.name}: the image processor resizes to {height}x{width} but the model takes "
                             f"{image_size}x{image_size} images; use the model's own processor (model.processor)")
        return CHANNEL_MODES[channels]

    def splits(self, processor) -> dict[str, ImageSplit]:
        self.validate()
        self.check_data()
        mode = self._image_mode(processor)
        pools = self._load_pools()
        result = {name: ImageSplit(pools[pool], rows, mode) for name, (pool, rows) in self.split_indices().items()}
        converted: dict[str, int] = {}
        for check in self._checks.values():
            for found, count in check["modes"].items():
                if found != mode:
                    converted[f"{found}->{mode}"] = converted.get(f"{found}->{mode}", 0) + count
        self._info.update(sizes={name: len(split) for name, split in result.items()}, image_mode=mode,
                          converted=converted, processor=_processor_summary(processor))
        if converted:
            log.warning("%s: converting %s images to %s (the model takes %s images)", self.name,
                        ", ".join(f"{n} {m.split('->')[0]}" for m, n in converted.items()), mode, mode)
        return result

    def collate(self, processor, split: str) -> ImageCollator:
        if split not in SPLITS:
            raise ValueError(f"split={split!r} is not one of {list(SPLITS)}")
        return ImageCollator(processor, AUGMENT[self.augmentation] if split == "train" else None)

    # ------------------------------------------------------- loss and metrics
    def _logits(self, model, batch: dict) -> torch.Tensor:
        logits, classes = model(pixel_values=batch["pixel_values"]).logits, len(self.class_names())
        if logits.ndim != 2 or logits.shape[-1] != classes or logits.shape[0] != batch["labels"].shape[0]:
            raise ValueError(f"{self.name}: the model's logits have shape {tuple(logits.shape)}; expected "
                             f"({batch['labels'].shape[0]}, {classes}): one per class")
        return logits.float()

    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        return F.cross_entropy(self._logits(model, batch), batch["labels"])

    def eval_step(self, model: torch.nn.Module, batch: dict, processor) -> tuple[torch.Tensor, ...]:
        """Per example: the predicted class, the label and the cross-entropy."""
        logits = self._logits(model, batch)
        return logits.argmax(-1), batch["labels"], F.cross_entropy(logits, batch["labels"], reduction="none")

    def metrics(self, outputs: list) -> dict[str, float]:
        correct, total, loss_sum = 0, 0, 0.0
        for predicted, labels, losses in outputs:
            correct += int((predicted == labels).sum())
            total += int(labels.numel())
            loss_sum += float(losses.sum())
        if total == 0:
            raise ValueError(f"{self.name}: the evaluated split is empty")
        return {"accuracy": correct / total, "loss": loss_sum / total}

    def describe(self) -> dict:
        info = self._info
        return {
            "name": self.name,
            "source": {"kind": self.source, "data_dir": self.data_dir, "hub_dataset": self.hub_dataset,
                       "hub_config": self.hub_config, "hub_splits": self.hub_splits if self.source == "hub" else None},
            "split": self.split, "split_seed": self.split_seed,
            "paper_sizes": self.sizes, "sizes": info.get("sizes"), "full_sizes": info.get("full_sizes"),
            "matches_paper_sizes": (info.get("full_sizes") == self.sizes) if self.sizes and info.get("full_sizes") else None,
            "val_carved_from_train": info.get("val_carved_from_train"), "unused_images": info.get("unused_images"),
            "max_train_samples": self.max_train_samples, "max_eval_samples": self.max_eval_samples,
            "num_classes": len(self._class_names) if self._class_names else None, "classes": self._class_names,
            "augmentation": self.augmentation, "image_mode": info.get("image_mode"),
            "image_modes": {pool: check["modes"] for pool, check in self._checks.items()},
            "converted": info.get("converted"), "non_image_files_skipped": info.get("non_image_files_skipped"),
            "processor": info.get("processor"), "selection_metric": self.selection_metric,
        }


def _processor_summary(processor) -> dict:
    """The settings that decide the pixels (recorded with the result), as plain JSON data."""
    import json

    keys = ("size", "do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std")
    config = json.loads(processor.to_json_string()) if hasattr(processor, "to_json_string") else {}
    return {"class": type(processor).__name__, **{key: config.get(key) for key in keys}}
