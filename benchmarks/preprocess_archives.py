"""Preprocessing at NIH's scale from its archives: images/s from .tar.gz against the same files extracted, memory,
and a kill -9 half way then resume, compared byte for byte. Each build is a real `python -m preprocess` process.

    python -m benchmarks.preprocess_archives                       # 112,120 PNGs in 12 .tar.gz (NIH's layout)
    python -m benchmarks.preprocess_archives --n 12000 --out results/archives.json

Inputs (made once, cached under --work): N synthetic NIH phantoms of --png-size px with an NIH Data_Entry CSV,
packed in order into --archives `images_NNN.tar.gz` of `images/NAME.png` members, as NIH ships them; the
extracted folder is the same files. Builds, one after another on the same machine (ratios survive a busy one):
  archives     the .tar.gz files (--archive-reading auto: per-archive here, while archives >= workers)
  extracted    the folder of PNGs                        -> its images.npy must equal archives' byte for byte
  fan-out      the .tar.gz, read by the parent, members handed to the workers -> equal to archives'
  kill+resume  archives again, kill -9 once half the chunks are recorded, then the same command -> equal
  one archive  the first archive alone (about N / archives images), for memory against N
Memory: the peak RSS and USS (private) of the parent and of the largest worker, sampled every 0.25 s. CPU seconds
per image (the build and its workers) is reported beside the wall time: it does not grow when other programs
keep the cores busy.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

import psutil

from benchmarks.preprocess_throughput import cores, machine_busy_seconds

FILES = ("images.npy", "manifest.csv", "rejects.csv")
MIB = 1 << 20


def make_inputs(work: Path, n: int, archives: int, px: int, workers: int) -> tuple[list[Path], Path, Path, dict]:
    """(archives, extracted folder, CSV, seconds spent) for n phantoms; cached in work/."""
    from preprocess.synthetic import generate
    base = work / f"nih-n{n}-{px}px"
    csv, spent = base / "Data_Entry_2017.csv", {}
    if not csv.exists():  # generate() writes its CSV last: present = complete
        t0 = time.perf_counter()
        generate(base, n, "nih", size=px, workers=workers)
        spent["generate_s"] = time.perf_counter() - t0
    names = sorted(os.listdir(base / "images"))
    per = -(-len(names) // archives)
    groups = [(base / f"images_{k + 1:03d}.tar.gz", base, names[k * per:(k + 1) * per]) for k in range(archives)]
    if not all(g[0].exists() for g in groups):
        t0 = time.perf_counter()
        with Pool(min(workers, archives)) as pool:
            pool.map(_pack, groups)
        spent["pack_s"] = time.perf_counter() - t0
    return [g[0] for g in groups], base / "images", csv, spent


def _pack(group: tuple[Path, Path, list[str]]) -> None:
    path, base, names = group
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, "w:gz", compresslevel=6) as tf:
        for name in names:
            tf.add(base / "images" / name, arcname=f"images/{name}")
    os.replace(tmp, path)


def _memory(proc: psutil.Process) -> tuple[int, int]:
    m = proc.memory_full_info()
    return m.rss, m.uss


def run_build(inputs: list[Path], csv: Path, out: Path, *, workers: int, size: int, mode: str = "auto",
              kill_at: float | None = None) -> dict:
    """One `python -m preprocess` over inputs into out: wall s, CPU s, peak memory; kill -9 at kill_at of the
    chunks when given (then: the chunks recorded and the seconds until the kill)."""
    argv = [sys.executable, "-m", "preprocess", *map(str, inputs), "--out", str(out), "--dataset", "nih",
            "--metadata", str(csv), "--size", str(size), "--workers", str(workers), "--archive-reading", mode,
            "--no-progress"]
    peak = {"parent_rss": 0, "parent_uss": 0, "worker_rss": 0, "worker_uss": 0}
    kids0, busy0, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), machine_busy_seconds(), time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, text=True)
        parent, killed, total = psutil.Process(proc.pid), None, None
        while proc.poll() is None:
            try:
                rss, uss = _memory(parent)
                peak["parent_rss"], peak["parent_uss"] = max(peak["parent_rss"], rss), max(peak["parent_uss"], uss)
                for child in parent.children():
                    rss, uss = _memory(child)
                    peak["worker_rss"] = max(peak["worker_rss"], rss)
                    peak["worker_uss"] = max(peak["worker_uss"], uss)
            except psutil.Error:
                pass
            if kill_at is not None and (out / ".partial" / "plan.json").exists():
                if total is None:
                    from preprocess.build import chunks
                    from preprocess.staging import Staging
                    total = len(chunks(Staging(out).rows()))
                done = sum(1 for _ in os.scandir(out / ".partial" / "done"))
                if done >= kill_at * total:
                    proc.kill()
                    killed = {"chunks_recorded": done, "chunks": total, "killed_after_s": time.perf_counter() - t0}
            time.sleep(0.25)
        proc.wait()
        wall = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = kids.ru_utime + kids.ru_stime - kids0.ru_utime - kids0.ru_stime
    if killed:
        return {**killed, "returncode": proc.returncode, "log": text.strip()[-300:]}
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{text}")
    n = json.loads((out / "store.json").read_text())["n"]
    before = re.search(r"; (\d+) were done before resuming", text)
    decoded = re.search(r" s for (\d+) images", text)
    return {"wall_s": wall, "images": n, "images_per_s": n / wall, "cpu_s": cpu, "cpu_ms_per_image": 1e3 * cpu / n,
            "other_cores": max(0.0, machine_busy_seconds() - busy0 - cpu) / wall,
            "done_before": int(before.group(1)) if before else 0, "decoded": int(decoded.group(1)) if decoded else None,
            **{k: v / MIB for k, v in peak.items()}, "summary": text.strip().splitlines()[-1]}


def file_hash(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(16 * MIB):
            h.update(block)
    return h.hexdigest()


def same_store(a: Path, b: Path, files=FILES) -> dict[str, bool]:
    out = {name: file_hash(a / name) == file_hash(b / name) for name in files}
    ma, mb = (json.loads((p / "store.json").read_text()) for p in (a, b))
    out["store.json (less command)"] = {**ma, "command": ""} == {**mb, "command": ""}
    return out


def same_per_source(a: Path, b: Path) -> dict[str, bool]:
    """Archive store vs folder store: the same images in the same slots, and manifests equal but for the path."""
    import csv
    rows = []
    for p in (a, b):
        with open(p / "manifest.csv", newline="") as f:
            rows.append([{**r, "path": r["path"].rsplit("/", 1)[-1]} for r in csv.DictReader(f)])
    return {"images.npy": file_hash(a / "images.npy") == file_hash(b / "images.npy"),
            "manifest rows per source": rows[0] == rows[1]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.preprocess_archives", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=112_120, help="images (default: 112120, NIH's count)")
    p.add_argument("--archives", type=int, default=12, help=".tar.gz archives (default: 12, as NIH)")
    p.add_argument("--png-size", type=int, default=128, help="side of the synthetic PNGs (default: 128)")
    p.add_argument("--size", type=int, default=256, help="stored side (default: 256)")
    p.add_argument("--workers", type=int, default=cores(), help=f"workers per build (default: all cores, {cores()})")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "preprocess_archives",
                   help="where inputs (kept for the next run) and stores (deleted) go (default: %(default)s)")
    p.add_argument("--skip", default="", help="comma-separated builds to leave out: extracted,fan-out,kill,one")
    p.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = p.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    args.work.mkdir(parents=True, exist_ok=True)
    result = {"n": args.n, "archives": args.archives, "png_size": args.png_size, "size": args.size,
              "workers": args.workers, "cores": cores(), "load_before": os.getloadavg(), "runs": {}, "same": {}}
    archives, folder, csv, result["inputs_s"] = make_inputs(args.work, args.n, args.archives, args.png_size,
                                                            args.workers)
    stores = args.work / "stores"
    shutil.rmtree(stores, ignore_errors=True)
    kw = {"workers": args.workers, "size": args.size}

    def build(name, inputs, folder=None, **extra):
        print(f"build: {name} ...", flush=True)
        out = stores / (folder or name)
        r = result["runs"][name] = run_build(inputs, csv, out, **kw, **extra)
        print(f"  {json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()})}", flush=True)
        return out

    ref = build("archives", archives)
    if "extracted" not in skip:
        result["same"]["extracted vs archives"] = same_per_source(build("extracted", [folder]), ref)
        shutil.rmtree(stores / "extracted")
    if "fan-out" not in skip:
        result["same"]["fan-out vs archives"] = same_store(build("fan-out", archives, mode="fan-out"), ref)
        shutil.rmtree(stores / "fan-out")
    if "kill" not in skip:
        build("killed", archives, kill_at=0.5)
        result["same"]["resumed vs archives"] = same_store(build("resumed", archives, folder="killed"), ref)
        shutil.rmtree(stores / "killed")
    shutil.rmtree(ref)
    if "one" not in skip:
        build("one archive", archives[:1])
        shutil.rmtree(stores / "one archive")
    result["load_after"] = os.getloadavg()
    print(report(result))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    return 0 if all(all(v.values()) for v in result["same"].values()) else 1


def report(r: dict) -> str:
    runs = r["runs"]
    lines = [f"N = {r['n']} PNGs of {r['png_size']} px in {r['archives']} .tar.gz -> {r['size']} px store, "
             f"{r['workers']} workers on {r['cores']} cores; load average before/after "
             f"{r['load_before'][0]:.1f} / {r['load_after'][0]:.1f}", "",
             "| build | images | wall s | images/s | CPU ms/image | other cores busy | parent peak RSS / USS MiB "
             "| worker peak RSS / USS MiB |", "|---|---|---|---|---|---|---|---|"]
    for name, x in runs.items():
        if name == "resumed":
            lines.append(f"| resumed (same command) | {x['images']} ({x['done_before']} done before, {x['decoded']} "
                         f"decoded) | {x['wall_s']:.1f} | | | {x['other_cores']:.2f} | {x['parent_rss']:.0f} / "
                         f"{x['parent_uss']:.0f} | {x['worker_rss']:.0f} / {x['worker_uss']:.0f} |")
            continue
        if "chunks_recorded" in x:
            lines.append(f"| {name} | kill -9 after {x['killed_after_s']:.1f} s, {x['chunks_recorded']} of "
                         f"{x['chunks']} chunks recorded | | | | | | |")
            continue
        lines.append(f"| {name} | {x['images']} | {x['wall_s']:.1f} | {x['images_per_s']:.0f} | "
                     f"{x['cpu_ms_per_image']:.2f} | {x['other_cores']:.2f} | {x['parent_rss']:.0f} / "
                     f"{x['parent_uss']:.0f} | {x['worker_rss']:.0f} / {x['worker_uss']:.0f} |")
    if "extracted" in runs:
        a, e = runs["archives"], runs["extracted"]
        lines += ["", f"archives / extracted: {a['images_per_s'] / e['images_per_s']:.2f}x images/s, "
                      f"{a['cpu_ms_per_image'] / e['cpu_ms_per_image']:.2f}x CPU per image"]
    if "fan-out" in runs:
        f, a = runs["fan-out"], runs["archives"]
        lines.append(f"fan-out / per-archive: {f['images_per_s'] / a['images_per_s']:.2f}x images/s, "
                     f"{f['cpu_ms_per_image'] / a['cpu_ms_per_image']:.2f}x CPU per image")
    lines += ["", "identical: " + "; ".join(f"{k}: " + ", ".join(f"{n} {'yes' if ok else 'NO'}" for n, ok in v.items())
                                          for k, v in r["same"].items())]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
