"""python -m preprocess.verify STORE: read every pixel of a store and check it against the checksums in store.json.

Opening a store (what training does) checks store.json, the images.npy header and size and the manifest's size in
O(1), and the manifest's checksum when it is read, but never reads the pixels. This reads them all: every chunk
of CHECKSUM_SLOTS slots is digested as the writer digested it, and a chunk that differs is named by its slots and
their source paths. Exit code 0: intact; 1: damage found (each damaged range on its own line); 2: the store does
not open (the one-line reason).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from preprocess.store import chunk_checksums, open_store, slot_digest


def damaged_chunks(store, *, progress: bool = False) -> list[tuple[int, int]]:
    """[(first slot, last slot + 1)] of every chunk whose checksum differs from store.json's."""
    c = store.meta["checksums"]
    per, expected = c["slots_per_chunk"], c["chunks"]
    bad = []
    for k in tqdm(range(len(expected)), desc="verify", unit="chunk", disable=not progress, dynamic_ncols=True):
        start, end = k * per, min((k + 1) * per, len(store))
        block = store.images[start:end]
        if chunk_checksums([slot_digest(img) for img in block], per)[0] != expected[k]:
            bad.append((start, end))
    return bad


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m preprocess.verify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("store", type=Path, metavar="STORE", help="store folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (default: shown)")
    args = p.parse_args(argv)
    try:
        store = open_store(args.store)
        manifest = store.manifest
        bad = damaged_chunks(store, progress=not args.no_progress)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not bad:
        print(f"{args.store}: intact ({len(store)} images in {len(store.meta['checksums']['chunks'])} chunks, "
              f"manifest and header match store.json)")
        return 0
    for start, end in bad:
        paths = [manifest[i]["path"] for i in range(start, min(end, start + 3))]
        print(f"damaged: slots {start}-{end - 1} (checksum differs): {', '.join(paths)}"
              f"{', ...' if end - start > 3 else ''}")
    print(f"error: {args.store}: {sum(e - s for s, e in bad)} slots in {len(bad)} damaged chunk(s): rebuild the "
          f"store (the same command with --overwrite; its command is in store.json)", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
