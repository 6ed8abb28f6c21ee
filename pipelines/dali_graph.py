"""The DALI graph of one view: the whole augmentation chain as DALI operators, in the seed's order.

Per view, from the per-view parameters of `pipelines.params` (handed to DALI as per-sample argument inputs):

  1. crop + resize + flip: one `fn.resize` (its ROI is the crop; an ROI reversed in x is the flip), uint8 out, as
     the seed's PIL image after RandomResizedCrop and RandomHorizontalFlip.
  2. ColorJitter with torchvision's semantics and clamps: brightness (b * x) and contrast (a blend with the view's
     own mean, c * x + (1 - c) * mean(x), `fn.reductions.mean`) in the order torchvision draws for the view (it
     permutes its transforms), each followed by its clamp to [0, 255]. Both stages have the form
     clamp(s * x + a * mean(x)): brightness is (s, a) = (b, 0), contrast (c, 1 - c). The second stage's clamp is
     folded together with normalization (a scale and an offset after it): the views are in normalized units from
     here on.
  3. Gaussian blur (`fn.gaussian_blur`, the view's sigma and window; window 1 is the identity), in float. A blur is
     affine-equivariant (its weights sum to 1, borders are reflected), so blurring after the normalization's affine
     map is the seed's blur-then-normalize.
  4. Gaussian noise (`fn.noise.gaussian`), the view's std on [0, 1] intensities divided by the normalization's std.
     Not clamped, as the seed.
Output: float32 (crop, crop, 1) per sample, normalized; with C = 1 the loader reads it as (B, 1, crop, crop).

Exact resume: the noise is keyed per batch. DALI's random operators take their random state as an argument input,
`_random_state` (7 uint32 words: the backend's 25-byte generator state); DALI's dynamic mode passes an explicit
RNG object to an operator through it (`nvidia.dali.experimental.dynamic`, `rng=`), and its capture mode wires the
same input into a pipeline graph (`_wire_capture_graph` in `experimental/dynamic/_capture.py`). Here it comes from
the same external source as the other per-view parameters: words drawn from `key(seed, rank, epoch, batch, view)`,
so the noise of batch j is a function of (seed, rank, epoch, j) alone, exactly like the crops and factors, whatever
came before, and in step with the batch through DALI's prefetching (the state of the batch's first sample seeds the
batch: DALI derives the other samples' streams from it). Why not pipeline checkpointing (`enable_checkpointing`,
`pipe.checkpoint()`): it captures the generators' state after a run, so a resume would need that blob saved with
every training checkpoint and could not start at an arbitrary (epoch, batch); the loader contract resumes from
`set_epoch(epoch, start_batch)` alone, for every loader, which keyed state gives and a checkpoint does not.
The input is internal in pipeline mode (its schema says "internal argument for passing random state in Dynamic
Mode"; the documented, public form is dynamic mode's `rng=`), so `check_random_state()` refuses, with a clear
message, a DALI whose noise operator lacks it, and the determinism and resume tests pin the behaviour (also across
DALI thread counts: the streams are derived per sample, not per thread). Running the chain in dynamic mode instead
would use the public `rng=` but give up the pipeline's prefetching and graph execution.
"""
from __future__ import annotations

import numpy as np

from pipelines.config import AugmentConfig
from pipelines.params import ViewParams

STATE_WORDS = 7  # DALI's generator state, in whole uint32 words (nvidia.dali.experimental.dynamic.random)
ARGS = ("roi_start", "roi_end", "s1", "a1", "s2", "a2", "sigma", "window", "noise", "state")
UINT8_ARGS = ("roi_start", "roi_end", "sigma", "window")  # what `uint8_view` takes


def arg_types(names=ARGS):
    from nvidia.dali import types
    kinds = {"window": types.INT32, "state": types.UINT32}
    return [kinds.get(name, types.FLOAT) for name in names]


def check_random_state() -> None:
    """Raise if this DALI's noise operator cannot take a per-batch random state (see the module docstring)."""
    import nvidia.dali
    from nvidia.dali import backend
    schema = backend.GetSchema("noise__Gaussian")
    if not (hasattr(schema, "HasRandomStateArg") and schema.HasRandomStateArg()):
        raise ValueError(f"DALI {nvidia.dali.__version__} cannot key its noise per batch (no _random_state input, "
                         "DALI 2.4 has it): upgrade DALI, or use float_end='torch'")


def noise_state(seed: int) -> np.ndarray:
    """A DALI generator state (STATE_WORDS uint32 words) that is a function of `seed`: any words are a valid state
    (DALI's dynamic mode draws them from its own generator the same way)."""
    return np.random.default_rng(seed).integers(0, 2**32, STATE_WORDS, dtype=np.uint32)


def jitter_stages(p: ViewParams) -> tuple[np.ndarray, ...]:
    """(s1, a1, s2, a2) per view: stage k is clamp(s_k * x + a_k * mean(x), 0, 255); brightness is (b, 0), contrast
    (c, 1 - c), in the order drawn for the view."""
    b, c = p.brightness.astype(np.float32), p.contrast.astype(np.float32)
    first = p.brightness_first
    s1, s2 = np.where(first, b, c), np.where(first, c, b)
    a1 = np.where(first, 0, 1 - c).astype(np.float32)
    a2 = np.where(first, 1 - c, 0).astype(np.float32)
    return s1.astype(np.float32), a1, s2.astype(np.float32), a2


def view_arguments(p: ViewParams, views: slice, config: AugmentConfig, noise_seed: int, names=ARGS) -> tuple:
    """The per-sample arguments `names` of the views p[views] (one view of every image of the batch), in order."""
    start, end = p.roi()
    if names == UINT8_ARGS:
        return start[views], end[views], p.sigma[views], p.window[views]
    s1, a1, s2, a2 = jitter_stages(p)
    n = len(range(*views.indices(len(p.flip))))
    state = np.tile(noise_state(noise_seed), (n, 1))
    noise = (p.noise / config.std).astype(np.float32)
    return (start[views], end[views], s1[views], a1[views], s2[views], a2[views], p.sigma[views], p.window[views],
            noise[views], state)


def view(images, args, size: int, config: AugmentConfig):
    """The graph of one view: (B, S, S, 1) uint8 images and the view's argument inputs -> normalized float32."""
    from nvidia.dali import fn, math, types
    roi_start, roi_end, s1, a1, s2, a2, sigma, window, noise, state = args
    x = fn.resize(images, size=(size, size), roi_start=roi_start, roi_end=roi_end, antialias=True)
    x = math.clamp(s1 * x + a1 * fn.reductions.mean(x, dtype=types.FLOAT), 0.0, 255.0)
    scale, offset = 1 / (255 * config.std), -config.mean / config.std
    x = math.clamp(s2 * x + a2 * fn.reductions.mean(x), 0.0, 255.0) * scale + offset
    x = fn.gaussian_blur(x, window_size=window, sigma=sigma)
    return fn.noise.gaussian(x, stddev=noise, _random_state=state)


def uint8_view(images, args, size: int):
    """The graph of one view for the torch float end (`float_end="torch"`): crop, resize, flip and blur in uint8;
    jitter, noise and normalization are left to `pipelines.photometric`."""
    from nvidia.dali import fn
    roi_start, roi_end, sigma, window = args
    v = fn.resize(images, size=(size, size), roi_start=roi_start, roi_end=roi_end, antialias=True)
    return fn.gaussian_blur(v, window_size=window, sigma=sigma)
