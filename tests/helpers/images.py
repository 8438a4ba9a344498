"""Small generated image sets (PNG) for image-dataset tests."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_images(folder: Path, n: int = 6, size: tuple[int, int] = (40, 48), seed: int = 0) -> Path:
    """`n` smooth RGB PNGs (height, width = `size`) in `folder`; returns the folder (an image dataset)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(n):
        f = rng.uniform(0.05, 0.3, 3)
        img = np.stack([127 + 120 * np.sin(f[c] * (xx + yy * (c + 1)) + i) for c in range(3)], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"img_{i:03d}.png")
    return folder
