"""The shard stage: adapter listing -> labeled selection -> plan -> parallel transcode -> tars.

Data flows one way: `datasets` lists the source videos, `transcode` turns each into clip
bytes in worker processes, this module writes them with `shards.ShardWriter` in planned order.
The plan (which video goes to which role, shard and position) is fixed before any transcode,
so the output does not depend on the worker count, and a rerun after an interruption redoes
only the shards that are not complete.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, shards
from .datasets import DatasetError, Listing, VideoItem, list_videos
from .transcode import EncodeSettings, TranscodeError, probe_clip, transcode

PARTS = ".parts"          # per-shard manifest rows and errors, merged at the end
JOB = ".job.json"         # the settings fingerprint the folder was started with


class ShardError(Exception):
    """The shard stage cannot go on; the message is one sentence for the user."""


@dataclass
class PlannedSample:
    item: VideoItem
    key: str
    role: str
    sample_id: int
    shard: str


@dataclass
class ShardSummary:
    out: str
    counts: dict = field(default_factory=dict)     # role -> samples written
    failures: int = 0                              # videos recorded in errors.jsonl
    planned: int = 0                               # videos the listing named (incl. failures)
    bytes: int = 0
    seconds: float = 0.0
    transcoded: int = 0                            # clips encoded in this run (0 when resumed complete)
    already_complete: bool = False

    @property
    def clips_per_s(self) -> float:
        return self.transcoded / self.seconds if self.seconds > 0 else 0.0


def select_labeled(listing: Listing, fraction: float | None, per_class: int | None, seed: int) -> set[str]:
    """Video ids of the labeled subset: stratified per class, at least one per class, seeded.

    Sorting before shuffling makes the choice depend only on the listing and the seed.
    """
    by_class: dict[int, list[str]] = {}
    for it in listing.items:
        if it.split == "train":
            by_class.setdefault(it.label, []).append(it.video_id)
    chosen = set()
    for label, ids in sorted(by_class.items()):
        ids = sorted(ids)
        random.Random(f"{seed}:{label}").shuffle(ids)
        k = min(len(ids), per_class) if per_class is not None else max(1, round(fraction * len(ids)))
        chosen.update(ids[:k])
    return chosen


def plan_samples(listing: Listing, labeled: set[str], seed: int, shard_max_count: int) -> list[PlannedSample]:
    roles = {r: [] for r in shards.ROLES}
    for it in listing.items:
        role = "test" if it.split == "test" else ("labeled" if it.video_id in labeled else "unlabeled")
        roles[role].append(it)
    plan, sample_id = [], 0
    for role in shards.ROLES:
        keyed = sorted(((shards.make_key(it.video_id), it) for it in roles[role]),
                       key=lambda kv: shards.order_key(seed, kv[0]))
        for pos, (key, it) in enumerate(keyed):
            plan.append(PlannedSample(it, key, role, sample_id, shards.shard_name(role, pos // shard_max_count)))
            sample_id += 1
    keys = [p.key for p in plan]
    if len(set(keys)) != len(keys):
        raise ShardError(f"{listing.dataset}: two videos share an id; keys must be unique")
    return plan


def _encode(path: str, settings: EncodeSettings):
    """Worker: one source video -> (clip bytes, ClipInfo) or (None, reason)."""
    try:
        data = transcode(path, settings)
        info = probe_clip(data)
        if info.frames < 1:
            return None, "no decodable video frames"
        return data, info
    except TranscodeError as e:
        return None, str(e)
    except Exception as e:  # a broken container can make PyAV raise anything; record, go on
        return None, f"{type(e).__name__}: {e}"


def _worker_init():
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent handles Ctrl-C and stops the pool


def make_shards(dataset: str, root, out=None, *, split: int = 1,
                labeled_fraction: float | None = None, labeled_per_class: int | None = None,
                seed: int = 0, workers: int | None = None, codec: str = "vp9", fps: float = 12.0,
                short_side: int = 128, max_seconds: float = 10.0, shard_max_count: int = 1000,
                max_failures: float = 0.05, videos=None, annotations=None, name: str | None = None,
                overwrite: bool = False, progress: bool | None = None) -> ShardSummary:
    """Write the shard folder of one dataset (shards/README.md); see `jedi-pipe shard --help`."""
    name = name or dataset
    out = Path(out) if out is not None else Path("shards") / name
    if labeled_fraction is not None and labeled_per_class is not None:
        raise ShardError("give --labeled-fraction or --labeled-per-class, not both")
    if labeled_fraction is None and labeled_per_class is None:
        labeled_fraction = 0.1
    if labeled_fraction is not None and not 0 < labeled_fraction <= 1:
        raise ShardError(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}")
    if labeled_per_class is not None and labeled_per_class < 1:
        raise ShardError(f"--labeled-per-class must be >= 1, got {labeled_per_class}")
    if shard_max_count < 1:
        raise ShardError(f"--shard-max-count must be >= 1, got {shard_max_count}")
    if not 0 <= max_failures <= 1:
        raise ShardError(f"--max-failures is a fraction in [0, 1], got {max_failures}")
    try:
        settings = EncodeSettings(codec=codec, fps=fps, short_side=short_side, max_seconds=max_seconds)
        listing = list_videos(dataset, root, split=split, videos=videos, annotations=annotations)
    except (DatasetError, ValueError) as e:
        raise ShardError(str(e)) from None
    if not listing.items:
        raise ShardError(f"{dataset}: no usable videos under {root} ({len(listing.errors)} listed videos missing)")
    labeled = select_labeled(listing, labeled_fraction, labeled_per_class, seed)
    plan = plan_samples(listing, labeled, seed, shard_max_count)

    selection = ({"rule": "fraction", "value": labeled_fraction} if labeled_per_class is None
                 else {"rule": "per_class", "value": labeled_per_class})
    job = {"format_version": shards.FORMAT_VERSION, "dataset": dataset, "name": name,
           "encoding": settings.as_dict(), "selection": {**selection, "seed": seed},
           "shard_max_count": shard_max_count, "source_split": listing.source_split,
           "plan": hashlib.sha256("\n".join(f"{p.key} {p.role} {p.shard} {p.item.label} {p.item.source}"
                                             for p in plan).encode()).hexdigest()}
    _claim_folder(out, job, overwrite)
    summary = ShardSummary(out=str(out), planned=len(plan) + len(listing.errors))
    if (out / shards.CARD).is_file():
        card = json.loads((out / shards.CARD).read_text())
        summary.counts, summary.failures = card["counts"], card["failures"]
        summary.bytes, summary.already_complete = card["bytes"], True
        return summary

    parts = out / PARTS
    parts.mkdir(exist_ok=True)
    by_shard: dict[str, list[PlannedSample]] = {}
    for p in plan:
        by_shard.setdefault(p.shard, []).append(p)
    pending = [s for s in by_shard if not ((out / s).is_file() and (parts / (s + ".json")).is_file())]
    for leftover in out.glob("*.partial"):
        leftover.unlink()

    t0 = time.time()
    todo = [p for s in pending for p in by_shard[s]]
    summary.transcoded = _write_shards(out, parts, by_shard, pending, todo, settings, listing, workers, progress)
    summary.seconds = time.time() - t0

    card = _finalize(out, parts, plan, listing, job, settings)
    summary.counts, summary.failures, summary.bytes = card["counts"], card["failures"], card["bytes"]
    if summary.failures > max_failures * summary.planned:
        raise ShardError(f"{summary.failures} of {summary.planned} videos failed "
                         f"({summary.failures / summary.planned:.1%} > --max-failures {max_failures:.1%}); "
                         f"see {out / shards.ERRORS}")
    return summary


def _claim_folder(out: Path, job: dict, overwrite: bool) -> None:
    """Refuse to mix settings in one folder; --overwrite clears what an earlier run wrote."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise ShardError(f"cannot write to --out {out}: {e.strerror or e}") from None
    job_path = out / JOB
    if job_path.is_file():
        old = json.loads(job_path.read_text())
        if old == job:
            return
        if not overwrite:
            changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise ShardError(f"{out} holds shards made with other settings ({', '.join(changed)} differ); "
                             f"pass --overwrite to replace them or choose another --out")
    if overwrite or job_path.is_file():
        for p in list(out.glob("*.tar")) + list(out.glob("*.tar.idx")) + list(out.glob("*.partial")):
            p.unlink()
        for f in (shards.MANIFEST, shards.CARD, shards.ERRORS):
            (out / f).unlink(missing_ok=True)
        shutil.rmtree(out / PARTS, ignore_errors=True)
    tmp = job_path.with_suffix(".partial")
    tmp.write_text(json.dumps(job, indent=1, sort_keys=True))
    os.replace(tmp, job_path)


def _write_shards(out, parts, by_shard, pending, todo, settings, listing, workers, progress) -> int:
    """Transcode `todo` in worker processes and write the pending shards in planned order."""
    from tqdm import tqdm
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), unit="video", desc=f"shard {listing.dataset}",
               disable=(None if progress is None else not progress), leave=False)
    pool = mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers, _worker_init) if workers > 1 else None
    # A window of in-flight encodes keeps every worker busy while bounding the clip bytes
    # held in memory, whatever the dataset size.
    window, inflight, it = 4 * workers, deque(), iter(todo)

    def submit():
        p = next(it, None)
        if p is not None:
            args = (p.item.path, settings)
            inflight.append((p, pool.apply_async(_encode, args) if pool else _encode(*args)))

    done = 0
    try:
        for _ in range(window):
            submit()
        for shard in pending:
            writer = shards.ShardWriter(out / shard)
            rows, errors = [], []
            for _ in by_shard[shard]:
                p, res = inflight.popleft()
                data, info = res.get() if pool else res
                submit()
                if data is None:
                    errors.append({"video_id": p.item.video_id, "path": p.item.source, "reason": info})
                else:
                    writer.write(_members(p, data, info, listing, settings))
                    rows.append(_manifest_row(p, data, info, listing))
                done += 1
                bar.update(1)
            _write_json_atomic(parts / (shard + ".json"), {"rows": rows, "errors": errors})
            writer.close()
    finally:
        bar.close()
        if pool:
            pool.terminate()
            pool.join()
    return done


def _members(p: PlannedSample, data: bytes, info, listing: Listing, settings: EncodeSettings):
    label = shards.UNLABELED if p.role == "unlabeled" else p.item.label
    meta = {"key": p.key, "dataset": listing.dataset, "video_id": p.item.video_id, "role": p.role,
            "split": p.item.split, "frames": info.frames, "fps": info.fps,
            "width": info.width, "height": info.height}
    if p.role != "unlabeled":     # an unlabeled sample never carries its label in the tar
        meta.update(label=p.item.label, label_name=listing.classes[p.item.label])
    return shards.sample_members(p.key, settings.ext, data, meta, label, info.frames,
                                 info.height, info.width, p.sample_id)


def _manifest_row(p: PlannedSample, data: bytes, info, listing: Listing) -> dict:
    unlabeled = p.role == "unlabeled"
    return {"sample_id": p.sample_id, "key": p.key, "shard": p.shard, "role": p.role, "split": p.item.split,
            "label": shards.UNLABELED if unlabeled else p.item.label,
            "label_name": "" if unlabeled else listing.classes[p.item.label],
            "label_true": p.item.label, "video_id": p.item.video_id, "source": p.item.source,
            "frames": info.frames, "fps": info.fps, "width": info.width, "height": info.height,
            "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _write_json_atomic(path: Path, obj, indent=None) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=indent))
    os.replace(tmp, path)


def _finalize(out: Path, parts: Path, plan, listing: Listing, job: dict, settings: EncodeSettings) -> dict:
    """Merge the per-shard parts into manifest.parquet, errors.jsonl and (last) dataset.json."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows, errors = [], list(listing.errors)
    for shard in sorted({p.shard for p in plan}):
        part = json.loads((parts / (shard + ".json")).read_text())
        rows += part["rows"]
        errors += part["errors"]
    rows.sort(key=lambda r: r["sample_id"])
    per_shard = {}
    for r in rows:
        per_shard[r["shard"]] = per_shard.get(r["shard"], 0) + 1
    for shard in sorted({p.shard for p in plan} - set(per_shard)):   # every video of it failed
        (out / shard).unlink(missing_ok=True)
        (out / shards.index_name(shard)).unlink(missing_ok=True)

    table = pa.Table.from_pylist(rows, schema=shards.manifest_schema())
    pq.write_table(table, out / (shards.MANIFEST + ".partial"))
    os.replace(out / (shards.MANIFEST + ".partial"), out / shards.MANIFEST)
    tmp = out / (shards.ERRORS + ".partial")
    tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in errors))
    os.replace(tmp, out / shards.ERRORS)

    counts = {r: sum(1 for x in rows if x["role"] == r) for r in shards.ROLES}
    card = {"format_version": shards.FORMAT_VERSION, "name": job["name"], "dataset": job["dataset"],
            "classes": listing.classes, "num_classes": len(listing.classes), "counts": counts,
            "shards": {r: sorted(s for s in per_shard if s.startswith(shards.ROLE_PREFIX[r] + "-"))
                       for r in shards.ROLES},
            "encoding": {**settings.as_dict(), "ext": settings.ext},
            "selection": job["selection"], "source_split": job["source_split"],
            "failures": len(errors), "bytes": sum(r["bytes"] for r in rows),
            "tool": f"jedi-pipe {__version__}"}
    _write_json_atomic(out / shards.CARD, card, indent=1)   # last: the card marks a complete folder
    shutil.rmtree(parts, ignore_errors=True)
    return card

