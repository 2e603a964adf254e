"""Latent text-to-image diffusion (the Stable Diffusion layout) as one ``nn.Module`` for the framework.

A Stable Diffusion checkpoint is several models: a UNet that predicts noise in latent space, a VAE
that maps pixels to latents and back, a CLIP text encoder (with its tokenizer) for the prompt, and a
noise scheduler. :class:`DiffusionModel` holds them so that methods, the trainer and checkpoints see
one module. Only the UNet is meant to be adapted: the model entries (``conf/model/sd15.yaml`` ...)
name ``vae`` and ``text_encoder`` as the frozen head (``head_modules: {diffusion: [vae, text_encoder]}``,
``Head(trains=False)``), so every method leaves them alone (C3A excludes head modules, PEFT
methods refuse targets inside the head, BitFit/Full skip or freeze head parameters).

``forward`` is one DreamBooth training step up to the loss: encode the images and prompts (no
gradients: the codec is frozen), noise the latents at random timesteps, predict with the UNet, and
return the prediction with its target (the noise, or the velocity for v-prediction schedulers).
Random draws come from the CPU generator, or from one seeded generator per example (fixed
validation draws), so runs and resumed runs repeat on any device.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from framework.models.heads import Head
from framework.models.sources import DTYPES, offline_error, resolve_source

#: the sub-folders of a diffusers Stable Diffusion checkpoint this module reads
SUBFOLDERS = {"unet": "unet", "vae": "vae", "text_encoder": "text_encoder", "tokenizer": "tokenizer",
              "scheduler": "scheduler"}
PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass(frozen=True)
class DiffusionSpec:
    """What a task checks against (``model.config``): sizes that constrain images and prompts."""

    model_type: str
    #: pixels per latent along a side (the VAE's down-sampling)
    vae_scale_factor: int
    #: latents per UNet bottleneck cell along a side (each down block but the last halves the latents)
    unet_downsample_factor: int
    latent_channels: int
    max_prompt_tokens: int
    prediction_type: str
    num_train_timesteps: int


class DiffusionModel(nn.Module):
    """UNet (adapted), VAE and text encoder (frozen), with the tokenizer and noise scheduler alongside."""

    #: transformers' name for a wrapped base model; PEFT reads it when it walks the text encoder (none here)
    base_model_prefix = ""

    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer, noise_scheduler):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        # plain attributes, not modules: they have no parameters
        self.tokenizer, self.noise_scheduler = tokenizer, noise_scheduler
        prediction = noise_scheduler.config.prediction_type
        if prediction not in PREDICTION_TYPES:
            raise ValueError(f"noise scheduler prediction_type={prediction!r} is not supported; "
                             f"valid: {list(PREDICTION_TYPES)}")
        self.config = DiffusionSpec(
            model_type="stable-diffusion", vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1),
            unet_downsample_factor=2 ** (len(unet.config.down_block_types) - 1),
            latent_channels=int(vae.config.latent_channels),
            max_prompt_tokens=int(text_encoder.config.max_position_embeddings),
            prediction_type=prediction, num_train_timesteps=int(noise_scheduler.config.num_train_timesteps))
        for frozen in (vae, text_encoder):
            frozen.requires_grad_(False)

    # -- encoders (frozen) ------------------------------------------------------------------------
    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(prompts), padding="max_length", max_length=self.config.max_prompt_tokens,
                              truncation=True, return_tensors="pt").input_ids

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids)[0]

    @torch.no_grad()
    def encode_images(self, pixel_values: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Scaled latents of images in [-1, 1]: the posterior mean, plus ``std · eps`` when ``eps`` is given."""
        posterior = self.vae.encode(pixel_values.to(self.vae.device, self.vae.dtype)).latent_dist
        latents = posterior.mean if eps is None else posterior.mean + posterior.std * eps.to(posterior.mean)
        return latents * self.vae.config.scaling_factor

    # -- one training step up to the loss ---------------------------------------------------------
    def latent_shape(self, pixel_values: torch.Tensor) -> tuple[int, ...]:
        factor = self.config.vae_scale_factor
        return (self.config.latent_channels, pixel_values.shape[-2] // factor, pixel_values.shape[-1] // factor)

    def draws(self, batch: int, shape: tuple[int, ...], seeds: Optional[torch.Tensor] = None):
        """(posterior eps, noise, timesteps) on CPU: from the global CPU generator, or one per seed."""
        steps = self.config.num_train_timesteps
        if seeds is None:
            return (torch.randn(batch, *shape), torch.randn(batch, *shape),
                    torch.randint(0, steps, (batch,), dtype=torch.long))
        eps, noise, timesteps = [], [], []
        for seed in seeds.tolist():
            generator = torch.Generator().manual_seed(int(seed))
            eps.append(torch.randn(shape, generator=generator))
            noise.append(torch.randn(shape, generator=generator))
            timesteps.append(torch.randint(0, steps, (1,), generator=generator, dtype=torch.long))
        return torch.stack(eps), torch.stack(noise), torch.cat(timesteps)

    def forward(self, pixel_values: torch.Tensor, prompts: Sequence[str],
                draw_seeds: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """UNet prediction and its target for noised latents of ``pixel_values`` under ``prompts``."""
        eps, noise, timesteps = self.draws(pixel_values.shape[0], self.latent_shape(pixel_values), draw_seeds)
        device = self.unet.device
        latents = self.encode_images(pixel_values, eps).to(device)
        noise, timesteps = noise.to(device, latents.dtype), timesteps.to(device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)
        condition = self.encode_prompts(prompts).to(device)
        prediction = self.unet(noisy.to(self.unet.dtype), timesteps, condition.to(self.unet.dtype)).sample
        if self.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(latents, noise, timesteps)
        return {"prediction": prediction, "target": target, "timesteps": timesteps}

    # -- sampling -----------------------------------------------------------------------------------
    def sampling_pipeline(self, sampler: str = "dpm_solver"):
        """A diffusers ``StableDiffusionPipeline`` over these very modules (adapters included)."""
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, StableDiffusionPipeline

        samplers = {"dpm_solver": DPMSolverMultistepScheduler, "ddim": DDIMScheduler}
        if sampler not in samplers:
            raise ValueError(f"sampler={sampler!r} is not one of {list(samplers)}")
        pipeline = StableDiffusionPipeline(
            vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
            scheduler=samplers[sampler].from_config(self.noise_scheduler.config), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline


def find_diffusion_model(model: nn.Module) -> DiffusionModel:
    """The ``DiffusionModel`` inside whatever wraps it (a PEFT model, DDP)."""
    for module in model.modules():
        if isinstance(module, DiffusionModel):
            return module
    raise TypeError(f"{type(model).__name__} holds no DiffusionModel: the task needs a model of kind 'diffusion'")


# -- building ---------------------------------------------------------------------------------------
#: what to do when a diffusers pipeline cannot be loaded
DIFFUSERS_FOLDER = ("Point model.pretrained at a local diffusers folder (model_index.json, unet/, vae/, "
                    "text_encoder/, tokenizer/, scheduler/), or use model=tiny-sd (a config-built pipeline with "
                    "random weights).")


def _tokenizer(model_cfg: Mapping[str, Any], source: Optional[str]):
    from transformers import AutoTokenizer

    own = resolve_source(model_cfg.get("tokenizer"))
    if own is None and source is None:
        raise ValueError(f"model {model_cfg.get('name')!r}: set model.tokenizer (a Hub id or folder) to build "
                         f"the pipeline without model.pretrained")
    try:
        if own is not None:
            return AutoTokenizer.from_pretrained(own)
        return AutoTokenizer.from_pretrained(source, subfolder=SUBFOLDERS["tokenizer"])
    except OSError as err:
        if Path(own or source).exists():
            raise
        raise offline_error("the tokenizer", own or source, err, remedy=DIFFUSERS_FOLDER) from err


def _from_architecture(arch: Mapping[str, Any], device: Optional[str]):
    """UNet, VAE, text encoder (random init) and scheduler from the entry's ``architecture`` block."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    missing = [key for key in ("unet", "vae", "text_encoder", "scheduler") if key not in arch]
    if missing:
        raise ValueError(f"model.architecture lacks {missing}: a diffusion entry needs unet, vae, text_encoder "
                         f"and scheduler blocks")
    scheduler = DDPMScheduler.from_config(dict(arch["scheduler"]))
    with torch.device(device or "cpu"):
        unet = UNet2DConditionModel.from_config(dict(arch["unet"]))
        vae = AutoencoderKL.from_config(dict(arch["vae"]))
        text_encoder = CLIPTextModel(CLIPTextConfig(**dict(arch["text_encoder"])))
    return unet, vae, text_encoder, scheduler


def _from_source(source: str, device: Optional[str]):
    """The components of a diffusers folder or Hub id: weights, or (``device="meta"``) configs only."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    try:
        # DreamBooth trains against DDPM's forward process with the checkpoint's own noise schedule
        scheduler = DDPMScheduler.from_pretrained(source, subfolder=SUBFOLDERS["scheduler"])
        if device == "meta":
            with torch.device("meta"):
                unet = UNet2DConditionModel.from_config(
                    UNet2DConditionModel.load_config(source, subfolder=SUBFOLDERS["unet"]))
                vae = AutoencoderKL.from_config(AutoencoderKL.load_config(source, subfolder=SUBFOLDERS["vae"]))
                text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(source, subfolder=SUBFOLDERS["text_encoder"]))
            return unet, vae, text_encoder, scheduler
        unet = UNet2DConditionModel.from_pretrained(source, subfolder=SUBFOLDERS["unet"])
        vae = AutoencoderKL.from_pretrained(source, subfolder=SUBFOLDERS["vae"])
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder=SUBFOLDERS["text_encoder"])
    except OSError as err:
        if Path(source).exists():
            raise
        raise offline_error("the diffusion pipeline", source, err, remedy=DIFFUSERS_FOLDER) from err
    return unet, vae, text_encoder, scheduler


def build_diffusion_model(model_cfg: Mapping[str, Any], head: Head, weights: str = "pretrained") -> DiffusionModel:
    """The entry's pipeline: ``pretrained`` (its source; the architecture at random init when it has
    none), ``random`` (the architecture at random init, never a download) or ``meta`` (shapes only)."""
    if head.model_kwargs:
        raise ValueError(f"a diffusion model takes no head arguments, got {dict(head.model_kwargs)}")
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    source = resolve_source(model_cfg.get("pretrained"))
    device = "meta" if weights == "meta" else None
    if source is None or weights == "random":
        if not model_cfg.get("architecture"):
            raise ValueError(f"model {model_cfg.get('name')!r} has no architecture block to build random weights from")
        unet, vae, text_encoder, scheduler = _from_architecture(model_cfg["architecture"], device)
    else:
        unet, vae, text_encoder, scheduler = _from_source(source, device)
    tokenizer = None if weights == "meta" else _tokenizer(model_cfg, source)
    if tokenizer is not None and len(tokenizer) > text_encoder.config.vocab_size:
        raise ValueError(f"model {model_cfg.get('name')!r}: the tokenizer has {len(tokenizer)} tokens but the text "
                         f"encoder's vocab_size is {text_encoder.config.vocab_size}")
    if tokenizer is not None:  # the sampling pipeline pads prompts to this length
        tokenizer.model_max_length = int(text_encoder.config.max_position_embeddings)
    model = DiffusionModel(unet, vae, text_encoder, tokenizer, scheduler)
    return model if weights == "meta" else model.to(dtype)
