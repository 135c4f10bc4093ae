"""`jedi-pipe split`: a new labeled selection (and val role) from an existing shard folder.

Nothing is decoded or encoded: each training clip's bytes are read from the source tar at the
offset its DALI index gives, checked against the manifest's sha256, and written under a new
key into the new role's tars; the test tars and their indexes are copied as they are. The
result is a complete shard folder (shards/README.md) in about a millisecond per clip of the
benchmark's 16 kB clips (bench/README.md), instead of the tens of core-hours a second transcode costs.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, shards
from .datasets import source_group
from .make_shards import (ShardError, TableWriter, check_selection, claim_folder, locked_folder, place_samples,
                          role_gaps, select_roles, selection_record, write_failed, write_json_atomic)


@dataclass
class SplitSummary:
    out: str
    counts: dict = field(default_factory=dict)   # role -> samples
    bytes: int = 0
    seconds: float = 0.0
    already_complete: bool = False
    warnings: list = field(default_factory=list)   # what the folder lacks for training (make_shards.role_gaps)


def read_labeled_list(path, rows: list[dict]) -> set[str]:
    """The video ids a list file names (one video id or source path per line, as published
    few-label split lists come; a trailing label after whitespace is ignored).

    An entry may be the id, the source path relative to the dataset root, or any path ending in
    the video's file name. Unknown entries, duplicates and test videos are refused, naming the
    first few.
    """
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ShardError(f"cannot read the labeled list {path}: {getattr(e, 'strerror', None) or e}") from None
    by_name: dict[str, dict] = {}
    for r in rows:
        for name in (r["video_id"], r["source"], Path(r["source"]).name, Path(r["source"]).stem):
            by_name.setdefault(name, r)
    found, unknown, dups, test = {}, [], [], []
    for line in lines:
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        r = None
        for cand in (entry, entry.split()[0]):   # "path label" lines (UCF101 trainlist) keep the path
            r = by_name.get(cand) or by_name.get(Path(cand).name) or by_name.get(Path(cand).stem)
            if r is not None:
                break
        if r is None:
            unknown.append(entry)
        elif r["role"] == "test":
            test.append(entry)
        elif r["video_id"] in found:
            dups.append(entry)
        else:
            found[r["video_id"]] = entry
    def few(xs):
        return ", ".join(repr(x) for x in xs[:3]) + (f" and {len(xs) - 3} more" if len(xs) > 3 else "")
    if unknown:
        raise ShardError(f"{path}: {len(unknown)} entr{'y' if len(unknown) == 1 else 'ies'} name no training "
                         f"video of the shard folder: {few(unknown)}")
    if test:
        raise ShardError(f"{path}: {len(test)} entr{'y' if len(test) == 1 else 'ies'} name test videos, which "
                         f"never train: {few(test)}")
    if dups:
        raise ShardError(f"{path}: {len(dups)} entr{'y' if len(dups) == 1 else 'ies'} name a video listed "
                         f"before: {few(dups)}")
    if not found:
        raise ShardError(f"{path} names no video")
    return set(found)


def _fraction_or_per_class(rule: dict | None) -> tuple:
    """(fraction, per_class) of a card's selection rule {"rule", "value"}: one of them set, or neither
    (no rule, or a list rule)."""
    rule = rule or {}
    return (rule.get("value") if rule.get("rule") == "fraction" else None,
            rule.get("value") if rule.get("rule") == "per_class" else None)


def split_shards(src, out, *, labeled_fraction: float | None = None, labeled_per_class: int | None = None,
                 labeled_list=None, val_per_class: int | None = None, val_fraction: float | None = None,
                 seed: int | None = None, overwrite: bool = False) -> SplitSummary:
    """Write shard folder `out` from `src`'s clips with a new labeled selection and val role.

    Exactly one of labeled_fraction (of each class's training videos; 1.0: every one not in
    val, the fully supervised oracle), labeled_per_class and labeled_list (a file). Without
    val_per_class and val_fraction the source's val rule goes on (val_per_class=0: no val role), and
    without a labeled option the source's labeled rule (unless it was a list); without a seed the
    source's seed, so that a rule kept draws the same videos.
    Raises ShardError (one sentence) for unusable input.
    """
    src, out = Path(src), Path(out)
    try:
        ss = shards.open_shards(src)
    except (FileNotFoundError, ValueError) as e:
        raise ShardError(str(e)) from None
    if out.resolve() == src.resolve():
        raise ShardError(f"--out {out} is the source folder; write the new split to another folder")
    given = [k for k, v in (("--labeled-fraction", labeled_fraction), ("--labeled-per-class", labeled_per_class),
                            ("--labeled-list", labeled_list)) if v is not None]
    source = ss.card.get("selection") or {}
    if not given:   # the source's labeled rule goes on, as its val rule does (a list rule needs its file)
        labeled_fraction, labeled_per_class = _fraction_or_per_class(source)
        given = ["source"] if labeled_fraction is not None or labeled_per_class is not None else []
    if len(given) != 1:
        raise ShardError("give exactly one of --labeled-fraction, --labeled-per-class, --labeled-list"
                         + (f" (got {', '.join(given)})" if given else f" ({src}'s own is a list rule)"))
    check_selection(labeled_fraction, labeled_per_class, val_fraction, val_per_class)
    if val_per_class is None and val_fraction is None:   # held-out videos stay held out unless asked otherwise
        val_fraction, val_per_class = _fraction_or_per_class(source.get("val"))
    if seed is None:
        seed = source.get("seed", 0)

    try:
        rows = ss.full_rows()
    except (OSError, ValueError) as e:   # withheld.parquet or the manifest gone or cut
        raise ShardError(f"{src} is damaged: {getattr(e, 'strerror', None) or e}; `jedi-pipe inspect {src}` "
                         f"checks it") from None
    lost = [t.name for r in ss.card["counts"] for t in ss.tars(r) if not t.is_file()]
    if lost:   # checked before writing: a rerun could not mend the source
        raise ShardError(f"{src} is damaged: {len(lost)} tar(s) it lists are gone ({lost[0]}); "
                         f"`jedi-pipe inspect {src}` checks it")
    train = sorted((r for r in rows if r["role"] in shards.TRAIN_ROLES), key=lambda r: r["sample_id"])
    test = sorted((r for r in rows if r["role"] == "test"), key=lambda r: r["sample_id"])
    listed = read_labeled_list(labeled_list, rows) if labeled_list is not None else None
    dataset = ss.card.get("dataset", "")
    roles_of = select_roles([(r["video_id"], r["label"], source_group(dataset, r["video_id"], ss.classes[r["label"]]))
                             for r in train], seed, labeled_fraction=labeled_fraction,
                            labeled_per_class=labeled_per_class, labeled_list=listed,
                            val_per_class=val_per_class, val_fraction=val_fraction)
    plan = _plan(ss, train, roles_of, seed)
    if test and len(plan) > test[0]["sample_id"]:   # test keeps its ids, so train ids must fit below them
        raise ShardError(f"{src}: test sample ids start at {test[0]['sample_id']}, below the "
                         f"{len(plan)} training samples; the folder is not one `jedi-pipe shard` wrote")

    gaps = role_gaps([(r["label"], r["role"]) for r in plan + test], ss.classes, all_labeled=labeled_fraction == 1.0)
    plan_hash = hashlib.sha256("".join(f"{r['key']} {r['role']} {r['shard']}\n" for r in plan).encode())
    job = {"format_version": shards.FORMAT_VERSION, "split_from": str(src.resolve()),
           "source_card": hashlib.sha256((src / shards.CARD).read_bytes()).hexdigest(),
           "selection": selection_record(seed, labeled_fraction, labeled_per_class, val_fraction, val_per_class,
                                         None if listed is None else
                                         {"rule": "list", "value": str(labeled_list), "videos": len(listed)}),
           "plan": plan_hash.hexdigest()}

    with locked_folder(out):
        claim_folder(out, job, overwrite)
        if (out / shards.CARD).is_file():
            card = json.loads((out / shards.CARD).read_text())
            return SplitSummary(str(out), card["counts"], card["bytes"], 0.0, already_complete=True, warnings=gaps)
        t0 = time.time()
        try:
            for leftover in out.glob("*.partial"):
                leftover.unlink()
            _copy_train(ss, plan, out)
            for name in ss.card["shards"]["test"]:   # the evaluation split is the same: reuse its tars
                for f in (name, shards.index_name(name)):
                    _copy_whole(src / f, out / f)
            for f in (shards.ERRORS, shards.MISSING):
                if (src / f).is_file():
                    _copy_whole(src / f, out / f)
            with TableWriter(out) as tables:
                tables.add(plan)
                tables.add(test)
            counts = {r: sum(1 for p in plan if p["role"] == r) for r in shards.ROLES}
            counts["test"] = len(test)
            card = {**ss.card, "counts": counts,
                    "shards": {**{r: sorted({p["shard"] for p in plan if p["role"] == r}) for r in shards.TRAIN_ROLES},
                               "test": ss.card["shards"]["test"]},
                    "selection": {**job["selection"], "split_from": {"name": ss.name, "selection": ss.card["selection"]}},
                    "bytes": sum(r["bytes"] for r in plan) + sum(r["bytes"] for r in test),
                    "tool": f"jedi-pipe {__version__}"}
            write_json_atomic(out / shards.CARD, card, indent=1)   # last: the card marks a complete folder
        except OSError as e:
            raise write_failed(out, e, "redo it") from None
    return SplitSummary(str(out), counts, card["bytes"], time.time() - t0, warnings=gaps)


def _plan(ss: shards.ShardSet, train: list[dict], roles_of: dict[str, str], seed: int) -> list[dict]:
    """The new full rows of the training samples, numbered as `jedi-pipe shard` numbers them
    (make_shards.place_samples), each with the source's key and tar as `src_key`, `src_shard`."""
    by_role = {r: [] for r in shards.TRAIN_ROLES}
    for x in train:
        by_role[roles_of[x["video_id"]]].append(x)
    return [{**p.item, "src_key": p.item["key"], "src_shard": p.item["shard"], "role": p.role,
             "sample_id": p.sample_id, "key": p.key, "shard": p.shard}
            for p in place_samples(by_role, seed, ss.card.get("shard_max_count", 1000), ss.name,
                                   lambda r: r["video_id"])]


def _copy_train(ss: shards.ShardSet, plan: list[dict], out: Path) -> None:
    """Write the training tars of `plan`, reading each clip's bytes at its index offset in the
    source tar (no tar is read whole, nothing is decoded)."""
    where = {}
    for role in shards.TRAIN_ROLES:
        for tar, idx in zip(ss.tars(role), ss.indexes(role), strict=True):
            for key, members in shards.read_index(idx).items():
                where[key] = (tar, *members[ss.clip_ext])
    lost = next((r["src_key"] for r in plan if r["src_key"] not in where), None)
    if lost is not None:   # a stale or swapped .idx; before any tar is written
        raise ShardError(f"{ss.root}: {lost} is in no tar's DALI index of its role; "
                         f"check the source folder with `jedi-pipe inspect`")
    handles, writer = {}, None
    try:
        for r in plan:
            if writer is None or writer.path.name != r["shard"]:
                if writer is not None:
                    writer.close()
                writer = shards.ShardWriter(out / r["shard"])
            tar, offset, size = where[r["src_key"]]
            f = handles.get(tar) or handles.setdefault(tar, open(tar, "rb"))
            f.seek(offset)
            clip = f.read(size)
            if hashlib.sha256(clip).hexdigest() != r["sha256"]:
                raise ShardError(f"{tar}: the clip of {r['src_key']} differs from the manifest's sha256; "
                                 f"check the source folder with `jedi-pipe inspect`")
            label = shards.UNLABELED if r["role"] == "unlabeled" else r["label"]
            meta = shards.sample_json(r["key"], r["role"], ss.name, r["frames"], r["fps"], r["width"], r["height"],
                                      r["video_id"], r["split"], r["label"], r["label_name"])
            writer.write(shards.sample_members(r["key"], ss.clip_ext, clip, meta, label, r["frames"],
                                               r["height"], r["width"], r["sample_id"]))
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.abort()
        for f in handles.values():
            f.close()


def _copy_whole(src: Path, dst: Path) -> None:
    """A copy that is under its final name only when complete (a kill leaves a .partial, removed on rerun)."""
    tmp = dst.with_name(dst.name + ".partial")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
