"""The loader benchmark's outputs: the JSON document (and its schema), the Markdown table, the chart."""
from __future__ import annotations

from pathlib import Path

FIGURES = ("images_per_s", "images_per_s_per_core", "per_core_ratio_vs_torchvision", "step_ms_p50", "step_ms_p95",
           "cpu_cores_busy", "gpu_util_mean", "gpu_util_p10", "gpu_mem_used_max_mib", "workers_private_dirty_mib",
           "time_to_first_batch_s", "ratio_vs_torchvision")
TRAIN_FIGURES = ("data_wait_frac", "ratio_to_ceiling")
NULLABLE = {"gpu_util_mean", "gpu_util_p10", "gpu_mem_used_max_mib", "ratio_vs_torchvision",
            "per_core_ratio_vs_torchvision", "ratio_to_ceiling"}

_num = {"type": "number"}
_num_or_null = {"type": ["number", "null"]}
RESULT_SCHEMA = {
    "type": "object",
    "required": ["mode", "loader"],
    "properties": {"mode": {"enum": ["loader", "train"]}, "loader": {"type": "string"},
                   "skipped": {"type": "string", "minLength": 1},
                   **{f: (_num_or_null if f in NULLABLE else _num) for f in FIGURES + TRAIN_FIGURES}},
    "oneOf": [
        {"required": ["skipped"]},
        {"required": list(FIGURES), "not": {"required": ["skipped"]},
         "if": {"properties": {"mode": {"const": "train"}}}, "then": {"required": list(TRAIN_FIGURES)}},
    ],
}
SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["schema", "machine", "settings", "results", "sweep"],
    "properties": {
        "schema": {"const": "loader_throughput/1"},
        "machine": {"type": "object", "required": ["cpu_model", "cpu_cores", "gpu_name", "driver_version", "torch",
                                                   "cuda", "dali", "command"]},
        "settings": {"type": "object", "required": ["batch_size", "steps", "warmup", "workers", "crop_size",
                                                    "arch", "store"]},
        "results": {"type": "array", "minItems": 1, "items": RESULT_SCHEMA},
        "sweep": {"type": "array", "items": {"type": "object", "required": ["loader", "workers", "images_per_s"]}},
    },
}


def assemble(args, store, results: list[dict], sweep: list[dict], machine: dict) -> dict:
    """Add the ratios (to torchvision in the same mode, to the ceiling in train mode) and wrap it all up."""
    for mode in ("loader", "train"):
        rows = [r for r in results if r["mode"] == mode and "skipped" not in r]
        base = next((r["images_per_s"] for r in rows if r["loader"] == "torchvision"), None)
        top = next((r["images_per_s"] for r in rows if r["loader"] == "ceiling"), None)
        base_core = next((_per_core(r) for r in rows if r["loader"] == "torchvision"), None)
        for r in rows:
            r["images_per_s_per_core"] = _per_core(r)
            r["ratio_vs_torchvision"] = r["images_per_s"] / base if base else None
            r["per_core_ratio_vs_torchvision"] = r["images_per_s_per_core"] / base_core if base_core else None
            if mode == "train":
                r["ratio_to_ceiling"] = r["images_per_s"] / top if top else None
    settings = {k: getattr(args, k) for k in ("batch_size", "steps", "min_seconds", "warmup", "workers", "crop_size",
                                               "arch", "method", "mode")}
    settings["store"] = {"path": str(args.store), "images": len(store), "size": store.size,
                         "mib": round(store.images.nbytes / 2**20, 1)}
    return {"schema": "loader_throughput/1", "machine": machine, "settings": settings, "results": results,
            "sweep": sweep}


def _per_core(r: dict) -> float:
    """images/s per busy core: throughput divided by the CPU the whole process tree burnt to get it."""
    return r["images_per_s"] / max(r["cpu_cores_busy"], 1e-9)


def _fmt(v, spec=".1f") -> str:
    return "null" if v is None else format(v, spec)


def line(r: dict) -> str:
    if "skipped" in r:
        return f"{r['mode']:6s} {r['loader']:20s} skipped: {r['skipped']}"
    return (f"{r['mode']:6s} {r['loader']:20s} {r['images_per_s']:10.1f} images/s  p50 {r['step_ms_p50']:.1f} ms  "
            f"cpu {r['cpu_cores_busy']:.2f} cores  gpu {_fmt(r['gpu_util_mean'])}%")


def table(doc: dict) -> str:
    head = ("| mode | loader | images/s | x torchvision | per core | x torchvision per core | x ceiling "
            "| wait for data | step p50 / p95 ms | CPU cores busy | GPU util % | GPU mem MiB | workers' private MiB "
            "| first batch s |")
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in doc["results"]:
        if "skipped" in r:
            rows.append(f"| {r['mode']} | {r['loader']} | skipped: {r['skipped']} |" + " |" * 11)
            continue
        rows.append(
            f"| {r['mode']} | {r['loader']} | {r['images_per_s']:.1f} | {_fmt(r['ratio_vs_torchvision'], '.2f')} | "
            f"{r['images_per_s_per_core']:.1f} | {_fmt(r['per_core_ratio_vs_torchvision'], '.2f')} | "
            f"{_fmt(r.get('ratio_to_ceiling'), '.3f')} | {_fmt(r.get('data_wait_frac'), '.3f')} | "
            f"{r['step_ms_p50']:.1f} / {r['step_ms_p95']:.1f} | {r['cpu_cores_busy']:.2f} | "
            f"{_fmt(r['gpu_util_mean'])} | {_fmt(r['gpu_mem_used_max_mib'], '.0f')} | "
            f"{r['workers_private_dirty_mib']:.0f} | {r['time_to_first_batch_s']:.2f} |")
    if doc["sweep"]:
        rows += ["", "| loader | workers | images/s | CPU cores busy |", "|---|---|---|---|"]
        rows += [f"| {s['loader']} | {s['workers']} | {_fmt(s['images_per_s'])} "
                 f"| {_fmt(s.get('cpu_cores_busy'), '.2f')} |" for s in doc["sweep"]]
    return "\n".join(rows)


def chart(doc: dict, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = [m for m in ("loader", "train") if any(r["mode"] == m for r in doc["results"])]
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.2), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        rows = [r for r in doc["results"] if r["mode"] == mode and "skipped" not in r]
        names = [r["loader"] for r in rows]
        x = range(len(rows))
        rates = [r["images_per_s"] for r in rows]
        bars = ax.bar(x, rates, color="tab:blue")
        ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.1f}" for v in rates], fontsize=8)
        ax.set_xticks(list(x), names, rotation=20, ha="right")
        ax.set_ylabel("images/s (pairs of views)")
        if rates and max(rates) > 20 * min(rates):  # a log axis only where the range needs one
            ax.set_yscale("log")
        ax.set_title(f"{mode} mode, batch {doc['settings']['batch_size']}")
        util = [r["gpu_util_mean"] for r in rows]
        ax2 = ax.twinx()
        ax2.plot(list(x), [u if u is not None else float("nan") for u in util], "o", color="tab:red")
        ax2.set_ylim(0, 105)
        ax2.set_ylabel("GPU utilisation % (NVML; none without a GPU)", color="tab:red")
    m = doc["machine"]
    fig.suptitle(f"{m['cpu_cores']} x {m['cpu_model'][:40]}; GPU: {m.get('gpu_name') or 'none'}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
