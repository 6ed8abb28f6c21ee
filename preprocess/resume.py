"""Start a build, or resume one: a resume (and a rerun over a finished store) checks that nothing it was built from
has changed, and refuses with what changed and the two ways on.

What a resume compares with what the first run recorded in `.partial/plan.json`:
  - the settings that shape the store (inputs, dataset, metadata paths, size, normalize, fit, min-side);
  - the checksum of the metadata CSV and of the NIH split lists;
  - every input file's size and modification time (files found under the inputs: added, removed, changed).
A finished store records the same in store.json (the fingerprints as one checksum), so rerunning its command after
the inputs changed refuses too, instead of saying "nothing to do".
"""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

from preprocess import inputs
from preprocess.staging import Staging, write_atomic
from preprocess.store import REJECT_FIELDS, csv_text, text_checksum

GROUP_KEYS = ("inputs", "dataset", "metadata", "train_list", "test_list")
PLAN_KEYS = ("size", "normalize", "fit", "min_side")
DIGEST_KEYS = ("metadata_blake2b", "train_list_blake2b", "test_list_blake2b")
WAYS_ON = "restore the inputs as they were and rerun, or add --overwrite to start afresh from the inputs as they are"


class EmptyRun(ValueError):
    """Nothing could be stored: the message counts the rejects by reason."""


def reasons(rejects: list[dict]) -> Counter:
    """Rejects counted by the kind of reason (the text before its first ':')."""
    return Counter(r["reason"].split(":")[0].strip() for r in rejects)


def empty_message(out: Path, rejects: list[dict]) -> str:
    counts = ", ".join(f"{n} {reason}" for reason, n in reasons(rejects).most_common())
    return (f"no image could be used ({len(rejects)} rejected: {counts}); see {out / 'rejects.csv'}; "
            f"nothing was stored")


def settings_of(args, command: str) -> dict:
    """What shapes the store: each input group (inputs, dataset, metadata, split lists, their checksums) and the
    pixel recipe. `inputs` and `dataset` also summarize all groups, for store.json."""
    groups = [_group_settings(g) for g in args.groups]
    return {"groups": groups, "inputs": [i for g in groups for i in g["inputs"]],
            "dataset": "+".join(dict.fromkeys(g["dataset"] for g in groups)), "size": args.size,
            "normalize": args.normalize, "fit": args.fit, "min_side": args.min_side, "command": command}


def _group_settings(g) -> dict:
    def absolute(p):
        return str(p.resolve()) if p else None
    return {"inputs": [str(Path(i).resolve()) for i in g.inputs], "dataset": g.dataset,
            "metadata": absolute(g.metadata), "train_list": absolute(g.train_list),
            "test_list": absolute(g.test_list), **_digests(g)}


def _digests(g) -> dict:
    """Checksums of the metadata CSV and of the split lists in use (given, or found next to the CSV)."""
    from preprocess.metadata import NIH_SPLIT_FILES
    files = {"metadata": g.metadata, "train_list": g.train_list, "test_list": g.test_list}
    for split, name in NIH_SPLIT_FILES.items():
        if g.dataset == "nih" and files[f"{split}_list"] is None and g.metadata is not None:
            files[f"{split}_list"] = g.metadata.parent / name
    return {f"{k}_blake2b": inputs.file_checksum(p) if p is not None and Path(p).is_file() else None
            for k, p in files.items()}


def _all_inputs(args) -> list:
    return [i for g in args.groups for i in g.inputs]


def _prints(args) -> list[dict]:
    """The fingerprints of every file found under all the inputs (the store being written left out)."""
    return inputs.fingerprints(inputs.found_files(_all_inputs(args), args.out)[1])


def _fingerprint_digest(prints: list[dict]) -> str:
    return text_checksum(csv_text(["path", "size", "mtime_ns"], prints).encode("utf-8", "surrogateescape"))


def _changed_settings(old: dict, new: dict) -> list[str]:
    og, ng = old.get("groups") or [], new["groups"]
    if len(og) != len(ng):
        changed = ["inputs"]
    else:
        changed = [k for k in GROUP_KEYS if any(a.get(k) != b[k] for a, b in zip(og, ng))]
    return changed + [k for k in PLAN_KEYS if old.get(k) != new[k]]


def _changed_digests(old: dict, new: dict) -> list[str]:
    pairs = list(zip(old.get("groups") or [], new["groups"]))
    return [k.removesuffix("_blake2b").replace("_", "-") for k in DIGEST_KEYS if any(a.get(k) != b[k]
                                                                                      for a, b in pairs)]


def check_finished(args, meta: dict, command: str) -> None:
    """Refuse a rerun over a finished store built with other settings or from inputs that changed since."""
    old, new = meta.get("settings", {}), settings_of(args, command)
    changed = _changed_settings(old, new)
    if changed:
        raise ValueError(f"{args.out} already holds a store built with other settings ({', '.join(changed)}): "
                         f"add --overwrite to rebuild it with these, or choose another --out")
    digests = _changed_digests(old, new)
    if digests or old.get("inputs_blake2b") != _fingerprint_digest(_prints(args)):
        what = f"the {', '.join(digests)} file changed" if digests else "input files were added, removed or changed"
        raise ValueError(f"{args.out} holds a store built from other inputs ({what} since it was built): add "
                         f"--overwrite to rebuild it from the inputs as they are now, or choose another --out")


def _check_resume(args, staging: Staging, new: dict) -> None:
    old = staging.settings()
    changed = _changed_settings(old, new)
    if changed:
        raise ValueError(f"{args.out} holds a partial store started with other settings ({', '.join(changed)}):"
                         f" rerun the original command to resume it, or add --overwrite to start afresh:\n"
                         f"  {old['command']}")
    digests = _changed_digests(old, new)
    if digests:
        raise ValueError(f"the {', '.join(digests)} file changed since this partial store was started: {WAYS_ON}")
    added, removed, changed = inputs.changes(staging.fingerprints(), _prints(args))
    if added or removed or changed:
        example = next(f"{what} {inputs.shown(p)}" for what, ps in (("added", added), ("removed", removed),
                                                                     ("changed", changed)) for p in ps[:1])
        raise ValueError(f"the inputs changed since this partial store was started: {len(added)} added, "
                         f"{len(removed)} removed, {len(changed)} changed (e.g. {example}): {WAYS_ON}")


def start_or_resume(args, staging: Staging, command: str) -> None:
    """Resume the partial store at --out if its settings and inputs are unchanged, else plan and start a new one.

    Raises ValueError (refused resume, no input files), EmptyRun (files, but none usable)."""
    new = settings_of(args, command)
    if staging.exists():
        _check_resume(args, staging, new)
        print(f"resuming the partial store in {args.out}", file=sys.stderr)
        return
    root = inputs.common_root(_all_inputs(args))
    rows, rejects, counts = [], [], {}
    for g in args.groups:
        _, r, rj, c, _ = inputs.plan(g.inputs, g.dataset, g.metadata, train_list=g.train_list,
                                      test_list=g.test_list, exclude=args.out, workers=args.workers, root=root)
        rows, rejects = rows + r, rejects + rj
        for k, v in c.items():
            counts[k] = counts.get(k, 0) + v
        if c:
            dup = c["duplicate_basenames"]
            print(f"metadata ({g.dataset}): {c['metadata_rows']} rows; {c['matched']} images matched, "
                  f"{c['listed_missing']} listed but absent, {c['unlisted']} present but not listed"
                  + (f", {dup} rejected for sharing a basename" if dup else ""), file=sys.stderr)
    prints = _prints(args)
    if not rows:
        if not rejects:
            raise ValueError(f"no usable input files under {', '.join(map(str, _all_inputs(args)))}: nothing found")
        write_atomic(args.out / "rejects.csv", csv_text(REJECT_FIELDS, rejects))
        raise EmptyRun(empty_message(args.out, rejects))
    new.update(root=str(root), plan_rejects=rejects, metadata_counts=counts,
               inputs_blake2b=_fingerprint_digest(prints))
    staging.create(new, rows, prints)
