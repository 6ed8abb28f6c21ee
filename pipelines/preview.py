"""python -m pipelines.preview STORE --out grid.png: see that the loaders agree.

One row per image: the stored original, then view 1 and view 2 from each loader that can run here (dali-gpu needs
CUDA, the DALI kinds need DALI). Views are un-normalized with the config's mean/std and clipped to [0, 1] for
display. The loaders draw their own random parameters (torchvision from torch's RNG, the others from
pipelines.params), so the views differ in their crops: compare the look, not the framing.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipelines.config import AugmentConfig
from pipelines.factory import KINDS, build_loader
from preprocess.store import open_store

LABEL = 16


def _tile(x: np.ndarray, size: int) -> Image.Image:
    return Image.fromarray(np.uint8(np.clip(x, 0, 1) * 255)).resize((size, size), Image.Resampling.BILINEAR)


def views_by_kind(store, n: int, seed: int, config: AugmentConfig) -> dict[str, tuple]:
    """The first batch (n images) of each runnable loader: kind -> (view1, view2) as numpy in [0, 1], or a reason."""
    out = {}
    for kind in KINDS:
        try:
            loader = build_loader(store, kind, n, config=config, seed=seed, num_workers=0 if kind in
                                  ("torchvision", "opencv") else None, device="cpu")
        except ValueError as e:
            out[kind] = str(e)
            continue
        loader.set_epoch(0)
        v1, v2, *_ = next(iter(loader))  # the two large views (a config's small views are left out)
        out[kind] = tuple((v[:, 0].cpu().numpy() * config.std + config.mean) for v in (v1, v2))
        loader.close()
    return out


def grid(store, out: Path, n: int = 4, seed: int = 0, tile: int = 160) -> tuple[Path, list[str]]:
    config = AugmentConfig.for_store(store)
    views = views_by_kind(store, n, seed, config)
    kinds = [k for k, v in views.items() if isinstance(v, tuple)]
    skipped = [f"{k}: {v}" for k, v in views.items() if isinstance(v, str)]
    slots = np.sort(next(iter(_first_batch(store, n, seed))))
    cols = 1 + 2 * len(kinds)
    sheet = Image.new("L", (cols * tile, LABEL + n * tile), color=24)
    draw = ImageDraw.Draw(sheet)
    heads = ["stored"] + [f"{k} v{i}" for k in kinds for i in (1, 2)]
    for c, h in enumerate(heads):
        draw.text((c * tile + 3, 2), h, fill=230)
    for r, slot in enumerate(slots):
        y = LABEL + r * tile
        sheet.paste(_tile(np.asarray(store.images[slot]) / 255, tile), (0, y))
        for k, kind in enumerate(kinds):
            for i in (0, 1):
                sheet.paste(_tile(views[kind][i][r], tile), ((1 + 2 * k + i) * tile, y))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return out, skipped


def _first_batch(store, n, seed):
    from pipelines.sampler import EpochSampler
    return EpochSampler(len(store), n, seed=seed).batches(0)[:1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.preview", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, help="a store folder")
    p.add_argument("--out", type=Path, default=Path("loader_preview.png"), help="PNG to write "
                                                                                "(default: loader_preview.png)")
    p.add_argument("--n", type=int, default=4, help="images (rows) (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    args = p.parse_args(argv)
    try:
        store = open_store(args.store)
        path, skipped = grid(store, args.out, min(args.n, len(store)), args.seed)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in skipped:
        print(f"skipped {s}", file=sys.stderr)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
