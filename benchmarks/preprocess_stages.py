"""Per-step milliseconds of the preprocessing recipes (ours and the seed's), one worker: where the time goes."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from preprocess.decode import decode_image
from preprocess.pixels import resize, value_range


def stages(files: list[str], size: int) -> dict[str, dict[str, float]]:
    """Per-image milliseconds of each step, one worker, for ours (as `to_uint8` runs it) and the seed's recipe."""
    ours = {"decode to float": 0.0, "range": 0.0, "resize": 0.0, "normalize+round": 0.0}
    seed = {"decode": 0.0, "normalize+quantize": 0.0, "resize": 0.0, "png save": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            t = [time.perf_counter()]
            img = decode_image(f)
            t.append(time.perf_counter())
            lo, hi = value_range(img)
            t.append(time.perf_counter())
            y = resize(img, size)
            t.append(time.perf_counter())
            np.clip(np.rint((y - np.float32(lo)) * np.float32(255 / (hi - lo))), 0, 255).astype(np.uint8)
            t.append(time.perf_counter())
            with Image.open(f) as im:
                a = np.asarray(im).astype(np.float32)
            t.append(time.perf_counter())
            q = ((a - a.min()) / (a.max() - a.min()) * 255).astype(np.uint8)
            t.append(time.perf_counter())
            small = Image.fromarray(q).resize((size, size), Image.LANCZOS)
            t.append(time.perf_counter())
            small.save(Path(tmp) / "x.png")
            t.append(time.perf_counter())
            steps = np.diff(t)
            for d, part in ((ours, steps[:4]), (seed, steps[4:])):
                for key, dt in zip(d, part):
                    d[key] += dt
    n = len(files)
    return {name: {k: round(1000 * v / n, 2) for k, v in d.items()} for name, d in (("ours", ours), ("seed", seed))}
