"""Pre-train the small ViT of ``conf/model/vit-fmnist.yaml`` on Fashion-MNIST, once, for the offline ViT demo.

No package ships pretrained ViT weights for offline use, so the demo's "pretrained" model is made here:
the 60,000 Fashion-MNIST training images from the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), a few epochs of AdamW with warmup and cosine decay and random
horizontal flips. It writes a folder that ``transformers`` loads like any checkpoint:

- ``config.json`` + ``model.safetensors``: the ViT backbone only (no classifier, no pooler), so each task
  that loads it gets a fresh head, as with the ImageNet-21k checkpoints the paper uses;
- ``preprocessor_config.json``: the image processor (28x28, rescale 1/255, mean = std = 0.5) — the same
  pixels the pre-training saw;
- ``pretraining.json``: test accuracy on the 10,000 Fashion-MNIST test images (with the pre-training
  classifier, which is not saved), time, recipe, data checksums, versions.

Skips when the folder exists with the same recipe (``--force`` redoes it)::

    python scripts/pretrain_vit_fmnist.py                       # -> ${C3A_ROOT:-.}/cache/vit-fmnist
    python scripts/pretrain_vit_fmnist.py --out /path/vit-fmnist --epochs 5
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train_images": "train-images-idx3-ubyte.gz", "train_labels": "train-labels-idx1-ubyte.gz",
         "test_images": "t10k-images-idx3-ubyte.gz", "test_labels": "t10k-labels-idx1-ubyte.gz"}
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
MEAN = STD = 0.5  # the ViT processors' normalisation; the saved processor says the same
FORMAT_VERSION = 1


def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file (the MNIST format): big-endian magic, dimension sizes, then uint8 data."""
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise ValueError(f"{path}: not an IDX file of the expected kind (magic {found}, expected {magic})")
    ndim = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated ({data.size} values, header says {shape})")
    return data.reshape(shape)


def load_fashion_mnist(data_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    missing = [name for name in FILES.values() if not (data_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files {missing} are not in {data_dir}: install the Debian package "
                                f"(apt-get install dataset-fashion-mnist) or pass --data-dir")
    arrays = {key: read_idx(data_dir / name, 2051 if key.endswith("images") else 2049) for key, name in FILES.items()}
    for split in ("train", "test"):
        if len(arrays[f"{split}_images"]) != len(arrays[f"{split}_labels"]):
            raise ValueError(f"Fashion-MNIST {split}: {len(arrays[f'{split}_images'])} images but "
                             f"{len(arrays[f'{split}_labels'])} labels")
    sums = {name: hashlib.sha256((data_dir / name).read_bytes()).hexdigest() for name in FILES.values()}
    return arrays, sums


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) → normalised float (N, 3, 28, 28): what the saved image processor produces."""
    x = (images.float() / 255.0 - MEAN) / STD
    return x.unsqueeze(1).expand(-1, 3, -1, -1)


def architecture(model_file: Path) -> dict:
    from omegaconf import OmegaConf

    entry = OmegaConf.load(model_file)
    base = OmegaConf.load(model_file.parent / f"{entry.defaults[0]}.yaml") if "defaults" in entry else {}
    arch = OmegaConf.to_container(OmegaConf.merge(base.get("architecture", {}), entry.architecture))
    return {k: v for k, v in arch.items() if v is not None}


@torch.no_grad()
def accuracy(model, images: torch.Tensor, labels: torch.Tensor, device, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch_size):
        logits = model(pixel_values=pixels(images[start:start + batch_size]).to(device)).logits
        correct += int((logits.argmax(-1).cpu() == labels[start:start + batch_size]).sum())
    return correct / len(images)


def train(args, arrays, arch: dict, device) -> tuple[torch.nn.Module, list[dict], float]:
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(args.seed)
    config = ViTConfig(**{k: v for k, v in arch.items() if k != "model_type"}, num_labels=len(CLASSES))
    model = ViTForImageClassification(config).to(device)
    x_train, y_train = torch.from_numpy(arrays["train_images"].copy()), torch.from_numpy(arrays["train_labels"].astype(np.int64))
    x_test, y_test = torch.from_numpy(arrays["test_images"].copy()), torch.from_numpy(arrays["test_labels"].astype(np.int64))
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total, warmup = steps_per_epoch * args.epochs, steps_per_epoch // 2
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: (s + 1) / warmup if s < warmup
                                                 else 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup))))
    generator = torch.Generator().manual_seed(args.seed)
    history, started = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        epoch_start, losses = time.perf_counter(), []
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), args.batch_size):
            rows = order[start:start + args.batch_size]
            batch = x_train[rows]
            flip = torch.rand(len(rows), generator=generator) < 0.5  # clothes look alike mirrored
            batch[flip] = batch[flip].flip(-1)
            loss = F.cross_entropy(model(pixel_values=pixels(batch).to(device)).logits, y_train[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        test = accuracy(model, x_test, y_test, device)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "test_accuracy": test,
                        "time_s": time.perf_counter() - epoch_start})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {history[-1]['train_loss']:.4f} test accuracy {test:.4f} "
              f"({history[-1]['time_s']:.0f} s)", flush=True)
    return model, history, time.perf_counter() - started


def save(model, arch: dict, folder: Path) -> None:
    """The backbone (``ViTModel`` without pooler) and the image processor, in transformers' format."""
    from transformers import ViTConfig, ViTModel
    from transformers.models.vit import ViTImageProcessorPil

    backbone = ViTModel(ViTConfig(**{k: v for k, v in arch.items() if k != "model_type"}), add_pooling_layer=False)
    missing, unexpected = backbone.load_state_dict(model.vit.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"backbone copy failed: missing {missing}, unexpected {unexpected}")
    backbone.save_pretrained(folder)
    size = int(arch["image_size"])
    ViTImageProcessorPil(size={"height": size, "width": size}, image_mean=[MEAN] * 3, image_std=[STD] * 3,
                         do_resize=True, do_rescale=True, do_normalize=True).save_pretrained(folder)


def check_saved(model, folder: Path, x_test: torch.Tensor, device) -> None:
    """Reload the folder as a classifier, give it the pre-training head: it must predict as the trained model."""
    from transformers import AutoModelForImageClassification

    reloaded = AutoModelForImageClassification.from_pretrained(folder, num_labels=len(CLASSES)).to(device)
    reloaded.classifier.load_state_dict(model.classifier.state_dict())
    with torch.no_grad():
        model.eval(), reloaded.eval()
        sample = pixels(x_test[:500]).to(device)
        same = torch.allclose(model(pixel_values=sample).logits, reloaded(pixel_values=sample).logits, atol=1e-4)
    if not same:
        raise RuntimeError(f"the saved model in {folder} does not reproduce the trained backbone")


def main(argv=None) -> int:
    default_out = Path(os.environ.get("C3A_ROOT", os.getcwd())) / "cache" / "vit-fmnist"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=default_out, help=f"output folder (default {default_out})")
    parser.add_argument("--data-dir", type=Path, default=DATA_DIR)
    parser.add_argument("--model-file", type=Path, default=ROOT / "conf" / "model" / "vit-fmnist.yaml",
                        help="model entry whose `architecture` is trained")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="pre-train again even if the folder exists")
    args = parser.parse_args(argv)
    arch = architecture(args.model_file)
    recipe = {"format": FORMAT_VERSION, "architecture": arch, "epochs": args.epochs, "batch_size": args.batch_size,
              "lr": args.lr, "weight_decay": args.weight_decay, "seed": args.seed, "schedule": "linear warmup "
              "(half an epoch) + cosine to 0", "augmentation": "random horizontal flip", "optimizer": "AdamW"}
    record_file = args.out / "pretraining.json"
    if record_file.is_file() and not args.force:
        record = json.loads(record_file.read_text())
        if record.get("recipe") == recipe:
            print(f"{args.out} exists (test accuracy {record['test_accuracy']:.4f}, "
                  f"{record['train_time_s']:.0f} s): nothing to do (--force redoes it)")
            return 0
        print(f"{args.out} was made with another recipe ({record_file}); rerun with --force to replace it",
              file=sys.stderr)
        return 2
    arrays, sums = load_fashion_mnist(args.data_dir)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"pre-training {arch} on {len(arrays['train_images'])} Fashion-MNIST images ({device}, "
          f"{torch.get_num_threads()} threads)", flush=True)
    started = time.perf_counter()
    model, history, train_time = train(args, arrays, arch, device)
    tmp = args.out.with_name(f".{args.out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save(model.cpu(), arch, tmp)
    check_saved(model, tmp, torch.from_numpy(arrays["test_images"].copy()), torch.device("cpu"))
    import transformers

    record = {"recipe": recipe, "test_accuracy": history[-1]["test_accuracy"], "train_time_s": train_time,
              "total_time_s": time.perf_counter() - started, "epochs": history,
              "parameters_backbone": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("classifier")),
              "data": {"source": str(args.data_dir), "package": "dataset-fashion-mnist (Debian)", "sha256": sums,
                       "train_images": len(arrays["train_images"]), "test_images": len(arrays["test_images"]),
                       "classes": CLASSES},
              "saved": "ViT backbone without classifier or pooler; the accuracy is the pre-training classifier's",
              "device": str(device), "threads": torch.get_num_threads(), "machine": platform.machine(),
              "torch": torch.__version__, "transformers": transformers.__version__}
    (tmp / "pretraining.json").write_text(json.dumps(record, indent=2))
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, args.out)
    print(f"wrote {args.out}: test accuracy {record['test_accuracy']:.4f}, {train_time:.0f} s of training")
    return 0


if __name__ == "__main__":
    sys.exit(main())
