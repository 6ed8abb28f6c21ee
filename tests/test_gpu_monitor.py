"""GpuMonitor against a scripted stand-in NVML: the summary equals what the stand-in reported."""
import itertools
import statistics
import time
from types import SimpleNamespace

import numpy as np
import pytest

from training import gpu_monitor
from training.gpu_monitor import GpuMonitor, gpu_info

MIB = 2**20


class FakeNvml:
    """Module-like NVML stand-in: utilisation cycles 10, 50, 90, 30, 70 %; memory used grows by 1 MiB per call."""

    def __init__(self, name=b"Fake H200", fail_init=False):
        self.name, self.fail_init = name, fail_init
        self._utils = itertools.cycle([10, 50, 90, 30, 70])
        self._used = itertools.count(100 * MIB, MIB)
        self.reported_util, self.reported_used = [], []
        self.init_calls = self.shutdown_calls = 0

    def nvmlInit(self):
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.init_calls += 1

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return ("handle", index)

    # two GPUs in NVML's (PCI) order: index 0 is GPU-aaaa on bus 0x17, index 1 is GPU-bbbb on bus 0x65
    GPUS = (("GPU-aaaa", "00000000:17:00.0"), ("GPU-bbbb", "00000000:65:00.0"))

    def nvmlDeviceGetHandleByUUID(self, uuid):
        return ("handle", [u for u, _ in self.GPUS].index(uuid))  # ValueError, as NVMLError, for an unknown one

    def nvmlDeviceGetHandleByPciBusId(self, bus):
        return ("handle", [b for _, b in self.GPUS].index(bus))

    def nvmlDeviceGetName(self, handle):
        return self.name if handle == ("handle", 0) else f"{_text(self.name)} #{handle[1]}"

    def nvmlDeviceGetUtilizationRates(self, handle):
        self.reported_util.append(next(self._utils))
        return SimpleNamespace(gpu=self.reported_util[-1], memory=0)

    def nvmlDeviceGetMemoryInfo(self, handle):
        self.reported_used.append(next(self._used))
        return SimpleNamespace(used=self.reported_used[-1], total=141 * 1024 * MIB)

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040


def _text(v):
    return v.decode() if isinstance(v, bytes) else v


def run_until(monitor, fake, n_samples, timeout=5.0):
    """Sample on the thread until the stand-in has reported at least ``n_samples`` utilisations in total."""
    monitor.start()
    deadline = time.monotonic() + timeout
    while len(fake.reported_util) < n_samples and time.monotonic() < deadline:
        time.sleep(0.005)
    return monitor.stop()


def expected(utils, used):
    return {"gpu_util_mean": statistics.fmean(utils), "gpu_util_p50": statistics.median(utils),
            "gpu_util_p10": float(np.percentile(utils, 10, method="inverted_cdf")),  # nearest rank
            "gpu_util_min": min(utils), "gpu_mem_used_max_mib": max(used) / MIB,
            "gpu_mem_total_mib": 141 * 1024.0, "samples": len(utils), "gpu_name": "Fake H200"}


def test_summary_is_what_nvml_reported():
    fake = FakeNvml()
    monitor = GpuMonitor(interval=0.001, nvml=fake)
    assert monitor.available
    skip = len(fake.reported_used)  # memory calls at construction (for the total) are not samples
    summary = run_until(monitor, fake, 7)
    assert summary["samples"] >= 7
    assert summary == expected(fake.reported_util, fake.reported_used[skip:])
    assert monitor.latest() == fake.reported_util[-1]


def test_reset_drops_earlier_samples():
    fake = FakeNvml(name="Fake H200")  # str name as well as bytes
    monitor = GpuMonitor(interval=0.001, nvml=fake)
    skip = len(fake.reported_used)
    run_until(monitor, fake, 5)
    monitor.reset()
    summary = monitor.summary()
    assert summary["samples"] == 0 and monitor.latest() is None
    assert summary["gpu_util_mean"] is summary["gpu_util_p50"] is summary["gpu_util_min"] is None
    assert summary["gpu_util_p10"] is None
    assert summary["gpu_mem_used_max_mib"] is None
    before = len(fake.reported_util)
    summary = run_until(monitor, fake, before + 5)
    assert summary == expected(fake.reported_util[before:], fake.reported_used[before + skip:])
    assert monitor.latest() == fake.reported_util[-1]


def test_context_manager_releases_nvml_and_keeps_summary():
    fake = FakeNvml()
    with GpuMonitor(interval=0.001, nvml=fake) as monitor:
        monitor.sample_once()
    assert fake.shutdown_calls == fake.init_calls == 1
    assert not monitor.available
    assert monitor.summary()["samples"] >= 1


def assert_all_none(monitor):
    assert not monitor.available
    assert monitor.start() is monitor
    summary = monitor.stop()
    assert summary.pop("samples") == 0
    assert all(value is None for value in summary.values()), summary
    assert monitor.latest() is None


def test_failing_nvml_init_means_unavailable():
    assert_all_none(GpuMonitor(nvml=FakeNvml(fail_init=True)))


def test_missing_device_means_unavailable_and_nvml_released():
    def no_such_device(index):
        raise RuntimeError("NVML: Invalid Argument")

    fake = FakeNvml()
    fake.nvmlDeviceGetHandleByIndex = no_such_device
    assert_all_none(GpuMonitor(nvml=fake))
    assert fake.shutdown_calls == 1


def test_without_gpu_every_figure_is_none():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except Exception:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("NVML initialised: this machine has a GPU")
    assert_all_none(GpuMonitor())
    assert set(gpu_info().values()) == {None}


def test_gpu_info():
    assert gpu_info(nvml=FakeNvml()) == {"gpu_name": "Fake H200", "driver_version": "550.54.15",
                                         "cuda_driver_version": "12.4", "cuda_devices": 1}
    assert set(gpu_info(nvml=FakeNvml(fail_init=True)).values()) == {None}


def test_bad_interval_is_rejected():
    with pytest.raises(ValueError, match="interval"):
        GpuMonitor(interval=0, nvml=FakeNvml())


def test_p10_is_the_nearest_rank_tenth_percentile():
    monitor = GpuMonitor(nvml=FakeNvml())
    monitor._samples = [(u, 0) for u in (90, 10, 50, 70, 30, 100, 80, 60, 40, 20, 95)]  # 11 samples
    assert monitor.summary()["gpu_util_p10"] == 20  # ceil(1.1) = 2nd lowest: 10% of 11 is more than one sample


@pytest.mark.parametrize("ident, want", [
    ({"uuid": "GPU-bbbb", "pci_bus_id": None}, 1),
    ({"uuid": "GPU-gone", "pci_bus_id": "00000000:65:00.0"}, 1),  # UUID unknown to NVML: the PCI bus id decides
    (None, 0),  # torch sees no CUDA GPU: NVML's index 0
])
def test_nvml_picks_the_gpu_torch_uses(monkeypatch, ident, want):
    """CUDA_VISIBLE_DEVICES=1 makes NVML's GPU 1 torch's cuda:0: the monitor must sample that GPU, not NVML's 0."""
    asked = []
    monkeypatch.setattr(gpu_monitor, "cuda_identity", lambda device=None: asked.append(device) or ident)
    fake = FakeNvml()
    monitor = GpuMonitor(device=0, interval=0.001, nvml=fake)
    assert monitor._handle == ("handle", want) and asked == [0]
    assert monitor.gpu_name == ("Fake H200" if want == 0 else "Fake H200 #1")
    assert gpu_info(device=0, nvml=FakeNvml())["gpu_name"] == monitor.gpu_name


def test_a_gpu_nvml_does_not_know_is_unavailable_not_another_one(monkeypatch):
    monkeypatch.setattr(gpu_monitor, "cuda_identity", lambda device=None: {"uuid": "GPU-gone", "pci_bus_id": None})
    assert_all_none(GpuMonitor(nvml=FakeNvml()))
