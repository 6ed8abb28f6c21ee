"""Background sampler of GPU utilisation and memory through NVML, for the benchmark and the training logs.

NVML's utilisation counter is itself an average over the driver's sample period (between about 1/6 s and 1 s
depending on the GPU), so sampling every 0.05 s reads the same window several times; the figures here are exactly
what NVML reported, with no smoothing of our own. Without NVML or a GPU, ``available`` is False and every figure is
None (never a made-up zero).

The GPU is the one torch calls `device` (default: torch's current device), found in NVML by its UUID, else its PCI
bus id: NVML numbers GPUs in PCI order and ignores CUDA_VISIBLE_DEVICES, so NVML's index N is often another GPU than
torch's cuda:N. Only where torch cannot say which GPU it is (no CUDA) is the index used.
"""
import logging
import math
import statistics
import threading

log = logging.getLogger(__name__)
_MIB = 2**20


def _load_nvml(nvml):
    """Return an initialised NVML module (``nvml`` or ``pynvml``), or None where it is absent or fails to start."""
    try:
        if nvml is None:
            import pynvml as nvml
        nvml.nvmlInit()
        return nvml
    except Exception as exc:  # ImportError, NVMLError (no driver / no GPU), ...
        log.debug("NVML unavailable: %r", exc)
        return None


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def cuda_identity(device=None) -> dict | None:
    """{"uuid", "pci_bus_id"} of torch's CUDA `device` (torch.device, index, or None: the current one) in NVML's
    spelling, or None where torch sees no CUDA GPU."""
    try:
        import torch
        if not torch.cuda.is_available() or getattr(device, "type", "cuda") != "cuda":
            return None
        index = getattr(device, "index", device)
        props = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index)
    except Exception as exc:
        log.debug("torch cannot describe CUDA device %r: %r", device, exc)
        return None
    uuid = getattr(props, "uuid", None)
    uuid = None if uuid is None else str(uuid)
    if uuid and not uuid.startswith(("GPU-", "MIG-")):
        uuid = "GPU-" + uuid
    bus = None
    if hasattr(props, "pci_bus_id"):
        bus = f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    return {"uuid": uuid, "pci_bus_id": bus}


def nvml_handle(nvml, device=None):
    """NVML's handle for torch's CUDA `device`: by UUID, else by PCI bus id, else (no CUDA in torch) by index."""
    ident = cuda_identity(device) or {}
    for key, lookup in (("uuid", "nvmlDeviceGetHandleByUUID"), ("pci_bus_id", "nvmlDeviceGetHandleByPciBusId")):
        if ident.get(key):
            try:
                return getattr(nvml, lookup)(ident[key])
            except Exception as exc:
                log.debug("NVML has no GPU with %s %s: %r", key, ident[key], exc)
    if ident:
        raise LookupError(f"NVML knows no GPU with torch's UUID or PCI bus id {ident}")
    index = getattr(device, "index", device)
    return nvml.nvmlDeviceGetHandleByIndex(index or 0)


def gpu_info(device=None, nvml=None) -> dict:
    """Describe torch's GPU `device` for benchmark records; every value is None where NVML cannot tell."""
    info = {"gpu_name": None, "driver_version": None, "cuda_driver_version": None, "cuda_devices": None}
    nvml = _load_nvml(nvml)
    if nvml is None:
        return info
    queries = {
        "cuda_devices": lambda: nvml.nvmlDeviceGetCount(),
        "gpu_name": lambda: _text(nvml.nvmlDeviceGetName(nvml_handle(nvml, device))),
        "driver_version": lambda: _text(nvml.nvmlSystemGetDriverVersion()),
        # NVML encodes CUDA 12.4 as 12040
        "cuda_driver_version": lambda: "%d.%d" % divmod(nvml.nvmlSystemGetCudaDriverVersion() // 10, 100),
    }
    for key, query in queries.items():
        try:
            info[key] = query()
        except Exception as exc:
            log.debug("NVML could not report %s: %r", key, exc)
    nvml.nvmlShutdown()
    return info


class GpuMonitor:
    """Sample one GPU's utilisation (%) and used memory every ``interval`` seconds on a daemon thread.

    ``with GpuMonitor() as mon: ...`` starts and stops it (and releases NVML); ``mon.summary()`` then holds the
    figures. ``device``: torch's CUDA device (torch.device or index; default the current one). ``nvml`` is a
    module-like stand-in for ``pynvml`` (the default, imported lazily).
    """

    def __init__(self, device=None, interval: float = 0.05, nvml=None):
        if interval <= 0:
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        self.interval = interval
        self._samples = []  # (utilisation %, memory used in bytes), guarded by _lock
        self._lock = threading.Lock()
        self._stop_event = threading.Event()
        self._thread = None
        self._nvml = _load_nvml(nvml)
        self.gpu_name = self._mem_total = self._handle = None
        if self._nvml is not None:
            try:
                self._handle = nvml_handle(self._nvml, device)
                self.gpu_name = _text(self._nvml.nvmlDeviceGetName(self._handle))
                self._mem_total = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).total
            except Exception as exc:
                log.debug("NVML has no usable GPU for %r: %r", device, exc)
                self.gpu_name = self._mem_total = None
                self.close()
        self.available = self._nvml is not None

    def sample_once(self) -> None:
        """Take one sample now (the thread calls this; tests and callers may too)."""
        if not self.available:
            return
        try:
            util = self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu
            used = self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used
        except Exception as exc:
            log.debug("NVML sample failed: %r", exc)
            return
        with self._lock:
            self._samples.append((util, used))

    def _run(self):
        while not self._stop_event.is_set():
            self.sample_once()
            self._stop_event.wait(self.interval)

    def start(self) -> "GpuMonitor":
        if self.available and self._thread is None:
            self._stop_event.clear()
            self._thread = threading.Thread(target=self._run, name="GpuMonitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict:
        """Stop sampling (joining the thread) and return ``summary()``; ``start()`` may resume later."""
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
            self._thread = None
        return self.summary()

    def close(self) -> None:
        """Stop and release NVML; the monitor is unavailable afterwards."""
        self.stop()
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %r", exc)
            self._nvml, self.available = None, False

    def __enter__(self) -> "GpuMonitor":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def reset(self) -> None:
        """Drop the samples taken so far (e.g. after a warm-up stage)."""
        with self._lock:
            self._samples.clear()

    def latest(self) -> float | None:
        """The last utilisation sample (%), or None before the first one."""
        with self._lock:
            return self._samples[-1][0] if self._samples else None

    def summary(self) -> dict:
        """Utilisation mean/median/p10/min (%) and peak used memory (MiB) over the samples so far; None where none.
        p10 is the nearest-rank 10th percentile: the lowest value that at least 10% of the samples are at or below."""
        with self._lock:
            utils = [u for u, _ in self._samples]
            peak = max((m for _, m in self._samples), default=None)
        return {"gpu_util_mean": statistics.fmean(utils) if utils else None,
                "gpu_util_p50": statistics.median(utils) if utils else None,
                "gpu_util_p10": sorted(utils)[math.ceil(0.1 * len(utils)) - 1] if utils else None,
                "gpu_util_min": min(utils) if utils else None,
                "gpu_mem_used_max_mib": peak / _MIB if peak is not None else None,
                "gpu_mem_total_mib": self._mem_total / _MIB if self._mem_total is not None else None,
                "samples": len(utils), "gpu_name": self.gpu_name}
