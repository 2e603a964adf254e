"""Writes the tiny test images (run once; the PNGs are committed): python tests/data/images/make_images.py

Three classes, each a colour pattern plus noise, 10-14 px, so resizing is exercised; one grayscale
image per split checks the conversion to RGB. Two layouts of the same images:
folder/{train,test}/<class>/<n>.png and csv/{train,test}.csv (path,label) pointing into folder/.
"""
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
CLASSES = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
COUNTS = {"train": 5, "test": 2}


def main() -> None:
    rng = np.random.default_rng(0)
    for split, count in COUNTS.items():
        rows = ["path,label"]
        for name, colour in CLASSES.items():
            folder = HERE / "folder" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for n in range(count):
                h, w = int(rng.integers(10, 15)), int(rng.integers(10, 15))
                pixels = np.clip(np.array(colour) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                if n == 0 and name == "green":
                    image = image.convert("L")  # one grayscale image per split
                image.save(folder / f"{n}.png", optimize=True)
                rows.append(f"../folder/{split}/{name}/{n}.png,{name}")
        (HERE / "csv").mkdir(exist_ok=True)
        (HERE / "csv" / f"{split}.csv").write_text("\n".join(rows) + "\n")


if __name__ == "__main__":
    main()
