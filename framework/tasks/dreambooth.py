"""DreamBooth-style text-to-image fine-tuning of a latent diffusion model's UNet (docs/paper.md §4).

The paper announces a text-to-image experiment without settings; this task follows DreamBooth: a
few instance images of one subject with a prompt holding a rare identifier ("a photo of sks dog"),
optionally with prior preservation (class images made by the base model from the class prompt,
generated once and cached, trained alongside with weight ``prior_loss_weight``). The loss is the
noise-prediction MSE under the model's own noise schedule (v-prediction models predict velocity).

Splits: ``train`` is the instance images (``repeats`` times per epoch) and their class pairs. ``val``
and ``test`` are fixed (image, noise, timestep) draws, each draw given by a seed, so every epoch is
scored on the same draws: val and test use different seeds. Their images are the training images by
default (a subject has 3-5 photos), or the last ``val_images`` files held out of training.
The selection metric is ``neg_loss`` (higher is better). At the end a grid of samples (rows: fixed
prompts, columns: fixed seeds) is saved as PNG and sent to the tracker, with CLIP-T/CLIP-I scores when
a CLIP model is available; otherwise the result says why they were skipped.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F

from framework import hub, models
from framework.io import atomic_write, atomic_write_text
from framework.models import DiffusionSpec, Head, find_diffusion_model
from framework.tasks.base import Task
from framework.tasks.dreambooth_data import (
    DreamBoothTrainSet,
    FixedDraws,
    clip_scores,
    collate_draws,
    collate_train,
    image_files,
    image_grid,
    read_images,
    to_pixels,
)

SAMPLERS = ("dpm_solver", "ddim")
#: diffusers' StableDiffusionPipeline refuses image sides not divisible by 8, whatever the model's factors
SAMPLING_MULTIPLE = 8
#: seed offsets of the fixed draws: val, test and sampling never share a seed
VAL_SEEDS, TEST_SEEDS, CLASS_SEEDS = 10_000, 20_000, 30_000


def _positive_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"task.{name}={value!r} must be an integer >= {minimum}")


class DreamBoothTask(Task):
    name = "dreambooth"
    selection_metric = "neg_loss"
    model_kind = "diffusion"
    processor_kind = "none"  # the model carries its own tokenizer

    def __init__(self, instance_dir: Optional[str], instance_prompt: Optional[str], base_model: Mapping[str, Any],
                 resolution: int = 512, repeats: int = 1, val_images: int = 0, val_draws: int = 8,
                 draw_seed: int = 0, prior_preservation: bool = False, class_prompt: Optional[str] = None,
                 class_dir: Optional[str] = None, num_class_images: int = 100, prior_loss_weight: float = 1.0,
                 sample_prompts: Optional[Sequence[str]] = None, sample_seeds: Sequence[int] = (0, 1, 2, 3),
                 sample_steps: int = 25, guidance_scale: float = 7.5, sampler: str = "dpm_solver",
                 sample_batch_size: int = 4, clip_model: Optional[str] = None,
                 max_train_samples: Optional[int] = None, max_eval_samples: Optional[int] = None,
                 cache_dir: str = "~/.cache/c3a", name: str = "dreambooth"):
        self.name = name
        self.instance_dir = None if instance_dir is None else Path(instance_dir).expanduser()
        self.instance_prompt, self.base_model = instance_prompt, dict(base_model or {})
        self.resolution, self.repeats = resolution, repeats
        self.val_images, self.val_draws, self.draw_seed = val_images, val_draws, draw_seed
        self.prior_preservation, self.class_prompt = prior_preservation, class_prompt
        self.class_dir = None if class_dir is None else Path(class_dir).expanduser()
        self.num_class_images, self.prior_loss_weight = num_class_images, prior_loss_weight
        self.sample_prompts = list(sample_prompts) if sample_prompts else None
        self.sample_seeds = list(sample_seeds)
        self.sample_steps, self.guidance_scale, self.sampler = sample_steps, guidance_scale, sampler
        self.sample_batch_size, self.clip_model = sample_batch_size, clip_model
        self.max_train_samples, self.max_eval_samples = max_train_samples, max_eval_samples
        self.cache_dir = Path(cache_dir).expanduser()
        self._instances = None
        self._classes_given = []
        self._details: dict[str, Any] = {}
        self._clip_note: Optional[str] = None
        self.validate()

    # ----------------------------------------------------------------- checks
    def validate(self) -> None:
        if self.instance_dir is None:
            raise ValueError("task.instance_dir is required: a folder with the subject's images (PNG/JPEG)")
        if not self.instance_dir.is_dir():
            raise FileNotFoundError(f"task.instance_dir={str(self.instance_dir)!r} is not a folder")
        if not isinstance(self.instance_prompt, str) or not self.instance_prompt.strip():
            raise ValueError(f"task.instance_prompt={self.instance_prompt!r} must be a non-empty prompt, "
                             f"e.g. \"a photo of sks dog\"")
        for key in ("resolution", "repeats", "val_draws", "sample_steps", "sample_batch_size", "num_class_images"):
            _positive_int(key, getattr(self, key))
        _positive_int("val_images", self.val_images, minimum=0)
        for key in ("max_train_samples", "max_eval_samples"):  # smoke runs (debug=fast)
            if getattr(self, key) is not None:
                _positive_int(key, getattr(self, key))
        _positive_int("draw_seed", self.draw_seed, minimum=0)
        if not isinstance(self.prior_preservation, bool):
            raise ValueError(f"task.prior_preservation={self.prior_preservation!r} must be true or false")
        if self.prior_preservation:
            if not isinstance(self.class_prompt, str) or not self.class_prompt.strip():
                raise ValueError("task.prior_preservation=true needs task.class_prompt, e.g. \"a photo of a dog\"")
            if not float(self.prior_loss_weight) > 0:
                raise ValueError(f"task.prior_loss_weight={self.prior_loss_weight!r} must be > 0")
            if self.class_dir is not None and self.class_dir.exists() and not self.class_dir.is_dir():
                raise ValueError(f"task.class_dir={str(self.class_dir)!r} exists and is not a folder")
        if not self.sample_seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in self.sample_seeds):
            raise ValueError(f"task.sample_seeds={self.sample_seeds!r} must be a non-empty list of integers")
        if self.sample_prompts is not None and not all(isinstance(p, str) and p.strip() for p in self.sample_prompts):
            raise ValueError(f"task.sample_prompts={self.sample_prompts!r} must be null or a list of non-empty prompts")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"task.sampler={self.sampler!r} is not one of {list(SAMPLERS)}")
        if not float(self.guidance_scale) >= 0:
            raise ValueError(f"task.guidance_scale={self.guidance_scale!r} must be >= 0")
        self._clip_note = self._clip_availability()

    def _clip_availability(self) -> Optional[str]:
        """None when CLIP scores will be computed, else the note the result carries."""
        source = self.clip_model
        if source is None:
            return "CLIP scores skipped: task.clip_model=null (set a CLIP Hub id or folder to score samples)"
        if Path(str(source)).expanduser().exists():
            return None
        if str(source).startswith(("/", ".", "~")):
            raise FileNotFoundError(f"task.clip_model={source!r} is not a folder")
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(str(source), "config.json"), str):
            return None
        if hub.offline() or not hub.reachable():
            return (f"CLIP scores skipped: task.clip_model={source!r} is not cached and the Hugging Face Hub is "
                    f"{'switched off (offline mode)' if hub.offline() else 'not reachable'}")
        return None

    def data_files(self) -> list:
        # the subject's images only: class images may be generated into class_dir by the run itself
        return [self.instance_dir] if self.instance_dir is not None else []

    def check_model(self, model_config) -> None:
        if not isinstance(model_config, DiffusionSpec):
            raise ValueError(f"task dreambooth needs a diffusion model (e.g. model=sd15, model=tiny-sd), "
                             f"got config {type(model_config).__name__}")
        vae, unet = model_config.vae_scale_factor, model_config.unet_downsample_factor
        factor = math.lcm(vae * unet, SAMPLING_MULTIPLE)
        if self.resolution % factor:
            below, above = self.resolution // factor * factor, (self.resolution // factor + 1) * factor
            nearest = " or ".join(str(v) for v in (below, above) if v > 0)
            raise ValueError(
                f"task.resolution={self.resolution} is not a multiple of {factor}: the VAE downscales images by {vae} "
                f"and the UNet its latents by {unet} more ({vae * unet} pixels a side per bottleneck cell), and "
                f"diffusers' sampling pipeline takes sides divisible by {SAMPLING_MULTIPLE}; nearest valid: {nearest}")

    def check_data(self) -> None:
        """Decode every instance (and given class) image now: a bad file is bad input, not a failed run."""
        if self._instances is not None:
            return
        images = read_images(self.instance_dir, "task.instance_dir")
        if not images:
            raise ValueError(f"task.instance_dir={str(self.instance_dir)!r} holds no images "
                             f"(looked for {', '.join(('.png', '.jpg', '.jpeg', '.webp'))} ...)")
        if self.val_images >= len(images):
            raise ValueError(f"task.val_images={self.val_images} leaves no training image: "
                             f"task.instance_dir has {len(images)}")
        self._instances = images
        if self.prior_preservation and self.class_dir is not None and self.class_dir.is_dir():
            self._classes_given = read_images(self.class_dir, "task.class_dir")

    def head(self) -> Head:
        return Head(model_kwargs={}, trains=False)  # the VAE and text encoder stay frozen

    # ------------------------------------------------------------------- data
    def _class_folder(self) -> Path:
        if self.class_dir is not None:
            return self.class_dir
        key = {"model": self.base_model.get("pretrained") or self.base_model.get("architecture"),
               "prompt": self.class_prompt, "resolution": self.resolution, "steps": self.sample_steps,
               "guidance": self.guidance_scale, "sampler": self.sampler}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.cache_dir / "dreambooth_class" / f"{self.base_model.get('name', 'model')}-{digest}"

    def _class_images(self) -> list:
        """``num_class_images`` class images: those in the folder, the missing ones generated by the base model."""
        folder = self._class_folder()
        have = self._classes_given if self.class_dir is not None else (
            read_images(folder, "class image cache") if folder.is_dir() else [])
        missing = self.num_class_images - len(have)
        self._details["class_images"] = {"dir": str(folder), "found": len(have), "generated": max(missing, 0)}
        if missing > 0:
            self._generate_class_images(folder, start=len(image_files(folder)) if folder.is_dir() else 0,
                                        count=missing)
            have = read_images(folder, "class image cache")
        return have[: self.num_class_images]

    def _generate_class_images(self, folder: Path, start: int, count: int) -> None:
        """The base model (before any adapter) draws ``count`` images of the class prompt, saved as PNG."""
        torch.manual_seed(CLASS_SEEDS)  # a random-weight base model is the same one on every run
        base = models.build_model(self.base_model, self.model_kind, self.head(), "pretrained")
        base.to("cuda" if torch.cuda.is_available() else "cpu").eval()
        pipeline = base.sampling_pipeline(self.sampler)
        for first in range(start, start + count, self.sample_batch_size):
            seeds = list(range(first, min(first + self.sample_batch_size, start + count)))
            images = self._sample(pipeline, self.class_prompt, [CLASS_SEEDS + s for s in seeds])
            for seed, image in zip(seeds, images):
                atomic_write(folder / f"class_{seed:05d}.png", lambda tmp, im=image: im.save(tmp, format="PNG"))
        del base, pipeline

    def _sample(self, pipeline, prompt: str, seeds: Sequence[int]) -> list:
        generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
        return pipeline([prompt] * len(seeds), generator=generators, num_inference_steps=self.sample_steps,
                        guidance_scale=float(self.guidance_scale), height=self.resolution, width=self.resolution,
                        output_type="pil").images

    def splits(self, processor) -> dict[str, Any]:
        self.check_data()
        pixels = torch.stack([to_pixels(image, self.resolution) for image in self._instances])
        held = self.val_images
        train_pixels = pixels[: len(pixels) - held]
        pool = pixels[len(pixels) - held:] if held else train_pixels
        classes = None
        if self.prior_preservation:
            classes = torch.stack([to_pixels(image, self.resolution) for image in self._class_images()])
        base, draws = self.draw_seed * 100_000, min(self.val_draws, self.max_eval_samples or self.val_draws)
        splits = {
            "train": DreamBoothTrainSet(train_pixels, self.instance_prompt, self.repeats, classes, self.class_prompt,
                                        self.max_train_samples),
            "val": FixedDraws(pool, self.instance_prompt, [base + VAL_SEEDS + k for k in range(draws)]),
            "test": FixedDraws(pool, self.instance_prompt, [base + TEST_SEEDS + k for k in range(draws)]),
        }
        files = [p.name for p in image_files(self.instance_dir)]
        self._details.update(
            train_images=files[: len(files) - held], eval_images=files[len(files) - held:] if held else "the training images",
            sizes={name: len(data) for name, data in splits.items()})
        return splits

    def collate(self, processor, split: str):
        return collate_train if split == "train" else collate_draws

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _per_example_loss(out: Mapping[str, torch.Tensor]) -> torch.Tensor:
        error = F.mse_loss(out["prediction"].float(), out["target"].float(), reduction="none")
        return error.mean(dim=tuple(range(1, error.dim())))

    def training_loss(self, model: torch.nn.Module, batch: dict) -> torch.Tensor:
        losses = self._per_example_loss(model(pixel_values=batch["pixel_values"], prompts=batch["prompts"]))
        prior = batch["prior"].to(losses.device)
        loss = losses[~prior].mean()
        if prior.any():
            loss = loss + float(self.prior_loss_weight) * losses[prior].mean()
        return loss

    def eval_step(self, model: torch.nn.Module, batch: dict, processor) -> torch.Tensor:
        """The noise-prediction error of each fixed (image, noise, timestep) draw."""
        return self._per_example_loss(model(pixel_values=batch["pixel_values"], prompts=batch["prompts"],
                                            draw_seeds=batch["draw_seeds"]))

    def metrics(self, outputs: list) -> dict[str, float]:
        loss = float(torch.cat([losses.cpu() for losses in outputs]).mean())
        return {"neg_loss": -loss, "loss": loss}

    # -------------------------------------------------------------- artifacts
    def prompts_to_sample(self) -> list[str]:
        if self.sample_prompts:
            return self.sample_prompts
        return [self.instance_prompt] + ([self.class_prompt] if self.prior_preservation else [])

    def artifacts(self, model: torch.nn.Module, output_dir, tracker, test_outputs: list) -> dict[str, str]:
        """The sample grid (PNG, and to the tracker) and, when a CLIP model is available, CLIP scores."""
        diffusion = find_diffusion_model(model)
        pipeline = diffusion.sampling_pipeline(self.sampler)
        prompts = self.prompts_to_sample()
        samples = {prompt: self._sample(pipeline, prompt, self.sample_seeds) for prompt in prompts}
        name = self.base_model.get("name", "model")
        random_note = " (random weights: noise is expected)" if not self.base_model.get("pretrained") else ""
        caption = (f"{name}{random_note} | rows: {' / '.join(prompts)} | seeds {self.sample_seeds} | "
                   f"{self.sample_steps} {self.sampler} steps, guidance {self.guidance_scale}")
        output_dir = Path(output_dir)
        grid_path = output_dir / "samples.png"
        grid = image_grid([samples[p] for p in prompts], caption)
        atomic_write(grid_path, lambda tmp: grid.save(tmp, format="PNG"))
        record = {"grid": str(grid_path), "prompts": prompts, "seeds": self.sample_seeds, "steps": self.sample_steps,
                  "sampler": self.sampler, "guidance_scale": self.guidance_scale, "resolution": self.resolution,
                  "caption": caption}
        if self._clip_note is None:
            record["clip"] = clip_scores(str(self.clip_model), samples, self._instances)
        else:
            record["clip"] = {"skipped": self._clip_note}
        info_path = output_dir / "samples.json"
        atomic_write_text(info_path, json.dumps(record, indent=2))
        tracker.log_image("samples", str(grid_path), caption=caption,
                          values={f"clip/{key}": record["clip"][key] for key in ("clip_t", "clip_i") if key in record["clip"]})
        return {"samples": str(grid_path), "samples_info": str(info_path)}

    def describe(self) -> dict:
        return {
            "name": self.name,
            "instance_dir": str(self.instance_dir),
            "instance_prompt": self.instance_prompt,
            "resolution": self.resolution,
            "repeats": self.repeats,
            "eval_protocol": ("val and test: fixed (image, noise, timestep) draws, one seed each, different seeds "
                              "for val and test; loss = noise-prediction MSE"),
            "val_draws": self.val_draws,
            "max_train_samples": self.max_train_samples,
            "max_eval_samples": self.max_eval_samples,
            "draw_seed": self.draw_seed,
            "prior_preservation": self.prior_preservation,
            "class_prompt": self.class_prompt if self.prior_preservation else None,
            "prior_loss_weight": self.prior_loss_weight if self.prior_preservation else None,
            "sampling": {"prompts": self.prompts_to_sample(), "seeds": self.sample_seeds, "steps": self.sample_steps,
                         "sampler": self.sampler, "guidance_scale": self.guidance_scale},
            "clip_scores": self._clip_note or f"computed with {self.clip_model}",
            "selection_metric": self.selection_metric,
            **self._details,
        }
