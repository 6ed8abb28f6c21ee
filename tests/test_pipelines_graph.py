"""The DALI graph (pipelines.dali_graph) on DALI's CPU backend: its ColorJitter against torchvision's functional
ColorJitter (order and clamps), its noise (Gaussian, keyed per batch), and the DALI loader running no torch float end
(pipelines/photometric.py) unless float_end="torch" asks for it."""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import torch
from scipy import stats

from pipelines import photometric
from pipelines.config import AugmentConfig
from pipelines.params import draw
from tests.pipelines_fixtures import config_for, first_batch, loader, phantom_store  # noqa: F401 (fixture)

pytest.importorskip("nvidia.dali")

B, S = 16, 48
WHOLE = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0)  # every crop is the whole image: resize is the identity


def run_graph(images: np.ndarray, config: AugmentConfig, p, noise_seed: int) -> np.ndarray:
    """One view of each of the B images through `dali_graph.view` on DALI's CPU backend -> (B, c, c) float32."""
    from nvidia.dali import fn, pipeline_def, types

    from pipelines import dali_graph
    n_args = len(dali_graph.ARGS)

    @pipeline_def(batch_size=len(images), num_threads=1, device_id=None)
    def pipe():
        x = fn.external_source(source=lambda: images[..., None], batch=True, layout="HWC", dtype=types.UINT8)
        args = fn.external_source(source=lambda: dali_graph.view_arguments(p, slice(0, len(images)), config,
                                                                            noise_seed),
                                  batch=True, num_outputs=n_args, dtype=dali_graph.arg_types())
        return dali_graph.view(x, args, config.crop_size, config)

    pp = pipe()
    pp.build()
    (out,) = pp.run()
    return np.stack([np.array(t) for t in out])[..., 0]


def torchvision_jitter(u8: np.ndarray, p, config: AugmentConfig) -> np.ndarray:
    """torchvision.transforms.functional's adjust_brightness / adjust_contrast (each clamps to [0, 1]) in the order
    drawn per view, then Normalize."""
    from torchvision.transforms import functional as F
    out = []
    for v in range(len(u8)):
        x = torch.from_numpy(u8[v]).float().div(255)[None]
        steps = [lambda t: F.adjust_brightness(t, float(p.brightness[v])),
                 lambda t: F.adjust_contrast(t, float(p.contrast[v]))]
        for step in steps if p.brightness_first[v] else steps[::-1]:
            x = step(x)
        out.append(((x - config.mean) / config.std)[0].numpy())
    return np.stack(out)


@pytest.fixture(scope="module")
def images():
    """Bright and dark images, so that both clamps bite (brightness up to 1.8 saturates a bright one)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (B, S, S)).astype(np.float64)
    level = np.linspace(0.2, 1.6, B)[:, None, None]
    return np.clip(base * level, 0, 255).astype(np.uint8)


def test_jitter_follows_torchvision_order_and_clamps(images):
    config = AugmentConfig(crop_size=S, blur_p=0.0, noise_std=0.0, mean=0.45, std=0.27, **WHOLE)
    p = draw(config, 3, B, S, S)
    assert p.brightness_first.any() and not p.brightness_first.all()  # both orders occur
    got = run_graph(images, config, p, noise_seed=0)
    want = torchvision_jitter(images, p, config)
    np.testing.assert_allclose(got, want, atol=1e-4)  # float32 arithmetic on 0..255 values: ~1e-5 here
    # the clamps matter: the commuted, clamp-once form (the torch float end) is not this
    once = photometric.finish_torch(torch.from_numpy(images)[:, None], p, config, seed=0)[:, 0].numpy()
    assert np.abs(once - want).max() > 0.1  # 7 gray levels


def test_noise_is_gaussian_and_keyed_per_batch(images):
    config = AugmentConfig(crop_size=S, brightness=0.0, contrast=0.0, blur_p=0.0, noise_std=0.1, mean=0.45,
                           std=0.27, **WHOLE)
    p = draw(config, 3, B, S, S)
    p.noise[::4] = 0  # some views without noise, as with noise_p < 1
    clean = (images / 255 - config.mean) / config.std
    a = run_graph(images, config, p, noise_seed=7)
    noise = (a - clean) * config.std  # back on [0, 1] intensities
    np.testing.assert_allclose(noise[::4], 0, atol=1e-5)
    drawn = noise[p.noise > 0]
    assert abs(drawn.std() - 0.1) < 0.003 and abs(drawn.mean()) < 0.003
    assert stats.kstest(drawn.ravel()[::5] / 0.1, "norm").statistic < 0.02
    assert abs(np.corrcoef(drawn[0].ravel(), drawn[1].ravel())[0, 1]) < 0.05  # views do not share noise
    assert np.array_equal(run_graph(images, config, p, noise_seed=7), a), "the same key must give the same noise"
    assert not np.array_equal(run_graph(images, config, p, noise_seed=8), a)


class _Calls:
    """Records every call into pipelines/photometric.py, in any thread (DALI runs callbacks in the main thread, the
    float end would run there too: the threads are traced anyway)."""

    def __init__(self):
        self.names: list[str] = []

    def _trace(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename == photometric.__file__:
            self.names.append(frame.f_code.co_name)
        return None

    def __enter__(self):
        sys.settrace(self._trace)
        threading.settrace(self._trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(None)
        threading.settrace(None)


def test_dali_path_runs_no_torch_float_end(phantom_store):  # noqa: F811
    config = config_for(phantom_store, 48)
    with _Calls() as graph:
        x = first_batch(loader(phantom_store, "dali-cpu", 4, config, seed=1))
    assert graph.names == [], f"the graph path called pipelines/photometric.py: {sorted(set(graph.names))}"
    with _Calls() as torch_end:
        y = first_batch(loader(phantom_store, "dali-cpu", 4, config, seed=1, float_end="torch"))
    assert "finish" in torch_end.names  # the tracer does see the float end when the option asks for it
    assert x.shape == y.shape == (8, 1, 48, 48) and x.dtype == y.dtype == torch.float32


def test_unknown_float_end_is_refused(phantom_store):  # noqa: F811
    with pytest.raises(ValueError, match="graph, torch"):
        loader(phantom_store, "dali-cpu", 4, config_for(phantom_store, 48), float_end="numpy")
    with pytest.raises(ValueError, match="DALI loaders only"):
        loader(phantom_store, "opencv", 4, config_for(phantom_store, 48), float_end="torch")


def test_views_do_not_depend_on_the_thread_count(phantom_store):  # noqa: F811
    """A run resumed on another machine (other cores, so other DALI threads) redraws the same views, noise included:
    DALI derives each sample's stream from the batch's state, not from the thread that runs it."""
    from pipelines import build_loader
    config = config_for(phantom_store, 48)
    one, three = (first_batch(build_loader(phantom_store, "dali-cpu", 8, config=config, seed=3, num_workers=n,
                                           device="cpu")) for n in (1, 3))
    assert torch.equal(one, three)
