"""Images, datasets, sample grids and CLIP scores for the DreamBooth task (framework/tasks/dreambooth.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps

from framework.tasks.image_data import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def image_files(folder: Path) -> list[Path]:
    """The image files of a folder (by suffix, sorted by name; hidden files are not images)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


def read_images(folder: Path, what: str) -> list[Image.Image]:
    """Every image of ``folder`` decoded to RGB; ``ValueError`` naming the first file that is not an image."""
    images = []
    for path in image_files(folder):
        try:
            images.append(read_image(path).convert("RGB"))
        except ValueError as err:
            raise ValueError(f"{what}: {err}") from None
    return images


def to_pixels(image: Image.Image, resolution: int) -> torch.Tensor:
    """Resize the shorter side to ``resolution``, centre-crop to a square; (3, R, R) floats in [-1, 1]."""
    fitted = ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)
    data = torch.frombuffer(bytearray(fitted.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return data.permute(2, 0, 1).float().div(127.5).sub(1.0)


class DreamBoothTrainSet(torch.utils.data.Dataset):
    """Row i: instance image i mod n with the instance prompt, and (prior preservation) class image
    i mod m with the class prompt. ``repeats`` lengthens an epoch over a handful of instance images;
    ``limit`` (smoke runs) shortens it."""

    def __init__(self, instance: torch.Tensor, instance_prompt: str, repeats: int,
                 classes: torch.Tensor | None = None, class_prompt: str | None = None, limit: int | None = None):
        self.instance, self.instance_prompt = instance, instance_prompt
        self.classes, self.class_prompt = classes, class_prompt
        self.length = max(len(instance) * repeats, 0 if classes is None else len(classes))
        self.length = min(self.length, limit or self.length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        item = {"pixel_values": self.instance[index % len(self.instance)], "prompt": self.instance_prompt}
        if self.classes is not None:
            item["class_pixel_values"] = self.classes[index % len(self.classes)]
            item["class_prompt"] = self.class_prompt
        return item


def collate_train(rows: list[dict]) -> dict:
    """Instance rows first, then their class rows; ``prior`` marks the class rows."""
    pixels = [row["pixel_values"] for row in rows]
    prompts = [row["prompt"] for row in rows]
    prior = [False] * len(rows)
    if "class_pixel_values" in rows[0]:
        pixels += [row["class_pixel_values"] for row in rows]
        prompts += [row["class_prompt"] for row in rows]
        prior += [True] * len(rows)
    return {"pixel_values": torch.stack(pixels), "prompts": prompts, "prior": torch.tensor(prior)}


class FixedDraws(torch.utils.data.Dataset):
    """Draw k: image k mod n with the prompt and seed ``seeds[k]``, which fixes its noise and timestep."""

    def __init__(self, images: torch.Tensor, prompt: str, seeds: Sequence[int]):
        self.images, self.prompt, self.seeds = images, prompt, list(seeds)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> dict:
        return {"pixel_values": self.images[index % len(self.images)], "prompt": self.prompt,
                "draw_seed": self.seeds[index]}


def collate_draws(rows: list[dict]) -> dict:
    return {"pixel_values": torch.stack([row["pixel_values"] for row in rows]),
            "prompts": [row["prompt"] for row in rows],
            "draw_seeds": torch.tensor([row["draw_seed"] for row in rows], dtype=torch.long)}


def image_grid(rows: Sequence[Sequence[Image.Image]], caption: str, min_tile: int = 128, gap: int = 2) -> Image.Image:
    """Rows of equal-size tiles (``gap`` white pixels apart) under a word-wrapped caption; small tiles
    are enlarged (nearest neighbour, whole factors) to at least ``min_tile`` pixels to stay viewable."""
    import textwrap

    tile_w, tile_h = rows[0][0].size
    factor = max(1, -(-min_tile // min(tile_w, tile_h)))
    tile_w, tile_h = tile_w * factor, tile_h * factor
    columns = max(len(row) for row in rows)
    width = columns * tile_w + (columns - 1) * gap
    font, line = ImageFont.load_default(size=12), 15
    lines = textwrap.wrap(caption, width=max(16, width // 7)) or [""]
    header = line * len(lines) + 4
    grid = Image.new("RGB", (width, header + len(rows) * (tile_h + gap) - gap), "white")
    draw = ImageDraw.Draw(grid)
    for number, text in enumerate(lines):
        draw.text((2, 2 + line * number), text, fill="black", font=font)
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            tile = tile.convert("RGB").resize((tile_w, tile_h), Image.Resampling.NEAREST)
            grid.paste(tile, (c * (tile_w + gap), header + r * (tile_h + gap)))
    return grid


def clip_scores(source: str, samples: dict[str, list[Image.Image]], references: list[Image.Image]) -> dict:
    """CLIP-T (sample vs its prompt) and CLIP-I (sample vs each instance image): mean cosine similarities."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(source).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(source), AutoTokenizer.from_pretrained(source)

    def embed_images(images: list[Image.Image]) -> torch.Tensor:
        pixels = processor(images=images, return_tensors="pt")["pixel_values"]
        return torch.nn.functional.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)

    prompts = list(samples)
    limit = int(model.config.text_config.max_position_embeddings)
    tokens = tokenizer(prompts, padding=True, truncation=True, max_length=limit, return_tensors="pt")
    with torch.no_grad():
        text = torch.nn.functional.normalize(
            model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output,
            dim=-1)
        reference = embed_images(references)
        per_prompt = {}
        for index, prompt in enumerate(prompts):
            images = embed_images(samples[prompt])
            per_prompt[prompt] = {"clip_t": float((images @ text[index]).mean()),
                                  "clip_i": float((images @ reference.T).mean())}
    mean = {key: float(sum(v[key] for v in per_prompt.values()) / len(per_prompt)) for key in ("clip_t", "clip_i")}
    return {"model": source, **mean, "per_prompt": per_prompt}
