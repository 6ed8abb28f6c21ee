"""A contact sheet of random stored images with their labels: look at a store before training on it."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from preprocess.store import Store

CAPTION = 14  # pixels of caption under each tile


def contact_sheet(store: Store, out: str | Path, n: int = 16, *, tile: int = 192, seed: int = 0) -> Path:
    """Write a grid of `n` random images (tile px each) captioned with slot, labels and view; returns the path."""
    n = min(n, len(store))
    if n == 0:
        raise ValueError(f"the store at {store.root} is empty: nothing to preview")
    idx = np.sort(np.random.default_rng(seed).choice(len(store), n, replace=False))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = Image.new("L", (cols * tile, rows * (tile + CAPTION)), color=32)
    draw = ImageDraw.Draw(sheet)
    manifest = store.manifest
    for k, i in enumerate(idx):
        r, c = divmod(k, cols)
        img = Image.fromarray(np.asarray(store.images[i])).resize((tile, tile), Image.Resampling.BILINEAR)
        x, y = c * tile, r * (tile + CAPTION)
        sheet.paste(img, (x, y))
        row = manifest[i]
        text = f"#{i} {row['labels'] or 'no label'} {row['view']}".strip()
        draw.text((x + 2, y + tile + 1), text[: tile // 6], fill=230)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out
