"""The shard stage: adapter listing -> labeled selection -> plan -> parallel transcode -> tars.

Data flows one way: `datasets` lists the source videos, `transcode` turns each into clip
bytes in ffmpeg child processes (one per worker thread), and `shard_jobs.write_shard` writes
them with `shards.ShardWriter` in planned order, one `ShardJob` (tar) at a time, mapped over the
plan by an executor: `write_shards_local` here, or `ray_executor.write_shards_ray`.
The plan (which video goes to which role, shard and position) is fixed before any transcode,
so the output does not depend on the worker count, and a rerun after an interruption redoes
only the shards that are not complete.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__, flips, shard_jobs, shards
from .datasets import DatasetError, Listing, default_root, list_videos, source_group
from .shard_jobs import (JOB, PARTS, TMP, PlannedSample, ShardError, ShardJob, default_workers, write_json_atomic,
                         write_shard)
from .synth import INCOMPLETE as INCOMPLETE_SYNTH
from .transcode import DEFAULT_TIMEOUT_S, FILTER_CHAIN, EncodeSettings

LOCK = ".lock"            # flock'ed while a run writes the folder
EXECUTORS = ("local", "ray")   # where the shards are written: this machine's threads, or Ray tasks


@dataclass
class ShardSummary:
    out: str
    counts: dict = field(default_factory=dict)     # role -> samples written
    failures: int = 0                              # videos recorded in errors.jsonl
    missing: int = 0                               # videos a split file names that are not on disk (missing.jsonl)
    planned: int = 0                               # videos the listing named (incl. failures, not missing)
    bytes: int = 0
    seconds: float = 0.0
    transcoded: int = 0                            # clips encoded in this run (0 when resumed complete)
    already_complete: bool = False
    root: str = ""                                 # the dataset root that was read
    warnings: list = field(default_factory=list)   # what the folder lacks for training (role_gaps)

    @property
    def clips_per_s(self) -> float:
        return self.transcoded / self.seconds if self.seconds > 0 else 0.0


def _take(n: int, per_class: int | None, fraction: float | None) -> int:
    return min(n, per_class) if per_class is not None else round(fraction * n)


def select_roles(train: list[tuple[str, int, str]], seed: int, *, labeled_fraction: float | None = None,
                 labeled_per_class: int | None = None, labeled_list: set[str] | None = None,
                 val_per_class: int | None = None, val_fraction: float | None = None) -> dict[str, str]:
    """{video id: "labeled" | "unlabeled" | "val"} for the training videos `train` [(video id,
    label, group)] (group: datasets.source_group, the video's own id where a dataset has none).

    Per class, the ids are sorted and shuffled with a seed of their own, so the choice depends
    only on the ids and the seed, never on the order they came in or the worker count. Val is
    taken from the back, a whole group at a time (never the class's last group), labeled videos
    from the front (at least one per class; the fraction is of the class's training videos). A
    labeled and a val video of a class never share a group (a UCF101 group, an HMDB51 movie): val
    scores scenes no label was seen in, as the official test splits do; only the rest of the last
    val group, when val ends inside it, stays unlabeled. Without groups, adding
    a val role leaves the labeled choice as it was unless the two would overlap. With
    `labeled_list`, the labeled videos are exactly those and val is drawn from the groups they
    leave free.
    """
    by_class: dict[int, list[tuple[str, str]]] = {}
    for vid, label, group in train:
        by_class.setdefault(label, []).append((vid, group))
    roles = {}
    for label, pairs in sorted(by_class.items()):
        pairs = sorted(pairs)
        random.Random(f"{seed}:{label}").shuffle(pairs)
        ids, group_of, n = [v for v, _ in pairs], dict(pairs), len(pairs)
        if labeled_list is not None:
            labeled = [v for v in ids if v in labeled_list]
            taken = {group_of[v] for v in labeled}
            free = [v for v in ids if group_of[v] not in taken]
            val = free[len(free) - min(_take(n, val_per_class, val_fraction or 0.0), len(free)):]
        else:
            nval = min(_take(n, val_per_class, val_fraction or 0.0), n - 1)
            val, val_groups = [], set()
            for v in reversed(ids):   # whole groups, so that few videos are left out of both roles
                g = group_of[v]
                if len(val) == nval or g in val_groups:
                    continue
                # a new val group must leave the class a video outside val groups, to label
                if any(group_of[u] not in val_groups | {g} for u in ids):
                    val_groups.add(g)
                    val += [u for u in reversed(ids) if group_of[u] == g][:nval - len(val)]
            rest = [v for v in ids if group_of[v] not in val_groups]
            labeled = rest[:min(max(1, _take(n, labeled_per_class, labeled_fraction)), len(rest))]
        roles.update(dict.fromkeys(ids, "unlabeled"))
        roles.update(dict.fromkeys(labeled, "labeled"))
        roles.update(dict.fromkeys(val, "val"))
    return roles


def place_samples(by_role: dict[str, list], seed: int, per_tar: int, name: str, video_id) -> list[PlannedSample]:
    """A PlannedSample of every item of `by_role` {role: items}, in sample-id order: roles in
    shards.ROLES order, within a role the seeded order of `video_id(item)`, `per_tar` samples to a
    tar. The one numbering of samples and tars, for `shard` (items: VideoItem) and `split`
    (items: manifest rows)."""
    placed, sample_id = [], 0
    for role in shards.ROLES:
        ordered = sorted(by_role.get(role, ()), key=lambda it: shards.order_key(seed, video_id(it)))
        names = [shards.shard_name(role, i) for i in range((len(ordered) + per_tar - 1) // per_tar)]
        for pos, it in enumerate(ordered):   # one name string per shard, shared by its samples
            placed.append(PlannedSample(it, shards.make_key(name, sample_id), role, sample_id, names[pos // per_tar]))
            sample_id += 1
    return placed


def plan_samples(listing: Listing, roles_of: dict[str, str], seed: int, shard_max_count: int,
                 name: str | None = None) -> list[PlannedSample]:
    by_role = {r: [] for r in shards.ROLES}
    for it in listing.items:
        by_role["test" if it.split == "test" else roles_of[it.video_id]].append(it)
    plan = place_samples(by_role, seed, shard_max_count, name or listing.dataset, lambda it: it.video_id)
    ids = [p.item.video_id for p in plan]
    if len(set(ids)) != len(ids):
        raise ShardError(f"{listing.dataset}: two videos share the id {_first_dup(ids)!r}; ids must be unique")
    return plan


def _first_dup(values):
    seen = set()
    for v in values:
        if v in seen:
            return v
        seen.add(v)


def role_gaps(labels_roles, classes: list[str], all_labeled: bool = False) -> list[str]:
    """What a shard folder lacks for `jedi-pipe train`, one sentence each: no test role, classes
    with no labeled or no test clip, a single class, no unlabeled clip (unless `all_labeled`, the
    oracle's selection, asked for none). `labels_roles`: (class index, role) per clip."""
    have = {(label, role) for label, role in labels_roles}
    def missing(role):
        names = [c for i, c in enumerate(classes) if (i, role) not in have]
        return f"{len(names)} class(es) without a {role} clip: {', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
    gaps = []
    if len(classes) < 2:
        gaps.append(f"{len(classes)} class: nothing to tell apart")
    if not any(role == "test" for _, role in have):
        gaps.append("no test clips: `jedi-pipe pretrain`, `train` and `eval` score every dataset on test and refuse it")
    elif any((i, "test") not in have for i in range(len(classes))):
        gaps.append(missing("test"))
    if any((i, "labeled") not in have for i in range(len(classes))):
        gaps.append(missing("labeled"))
    if not all_labeled and not any(role == "unlabeled" for _, role in have):
        took = "val and the labeled selection" if any(role == "val" for _, role in have) else "the labeled selection"
        gaps.append(f"no unlabeled clips: nothing for semi-supervised training ({took} took every training video)")
    return gaps


# The options a recipe (preprocess/<dataset>.yaml) may set: make_shards' keywords of the same names.
RECIPE_KEYS = ("split", "labeled_fraction", "labeled_per_class", "val_per_class", "val_fraction", "seed",
               "codec", "fps", "short_side", "max_seconds", "shard_max_count", "max_failures",
               "max_missing", "workers", "min_frames", "timeout_s")


# Options of which a shard takes one: giving one drops a recipe's value for the other.
ALTERNATIVE = {"labeled_fraction": "labeled_per_class", "labeled_per_class": "labeled_fraction",
               "val_fraction": "val_per_class", "val_per_class": "val_fraction"}


def read_recipe(path, dataset: str, **given) -> dict:
    """A recipe's options as make_shards keywords, with the `given` ones winning over the recipe's
    value and over its alternative's (labeled_per_class given drops the recipe's labeled_fraction),
    as `jedi-pipe shard --recipe` does with flags: `make_shards(dataset, root, out, **read_recipe(path,
    dataset, fps=8))`. The recipe's `dataset:` line is checked against `dataset` and dropped, the
    flip map checked. Raises ShardError (one sentence)."""
    import yaml
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise ShardError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ShardError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    if not isinstance(data, dict):
        raise ShardError(f"recipe {path} must be a YAML mapping of option: value")
    meant_for = data.pop("dataset", dataset)
    if meant_for != dataset:   # e.g. ssv2's flip pairs and sizes applied to hmdb51 by a slip
        raise ShardError(f"recipe {path} is for --dataset {meant_for}, not {dataset}; remove its `dataset:` line "
                         f"to use it anyway")
    known = RECIPE_KEYS + flips.RECIPE_KEYS
    bad = sorted(set(data) - set(known))
    if bad:
        raise ShardError(f"recipe {path}: unknown key(s) {', '.join(bad)}; known: {', '.join(known)}")
    try:   # checked here too, so that the error names the file
        flips.read_rule(data, f"recipe {path}")
    except ValueError as e:
        raise ShardError(str(e)) from None
    kept = {k: v for k, v in data.items() if k not in given and ALTERNATIVE.get(k) not in given}
    return {**kept, **given}


def make_shards(dataset: str, root, out=None, *, split: int = 1,
                labeled_fraction: float | None = None, labeled_per_class: int | None = None,
                val_per_class: int | None = None, val_fraction: float | None = None,
                seed: int = 0, workers: int | None = None, codec: str = "vp9", fps: float = 12.0,
                short_side: int = 128, max_seconds: float = 10.0, shard_max_count: int = 1000,
                max_failures: float = 0.05, max_missing: float = 0.3, min_frames: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S,
                videos=None, annotations=None, name: str | None = None,
                overwrite: bool = False, progress: bool | None = None,
                executor: str = "local", ray_address: str | None = None,
                flip_pairs: list | None = None, direction_words: list | None = None) -> ShardSummary:
    """Write the shard folder of one dataset (shards/README.md); see `jedi-pipe shard --help`.

    executor: "local" (threads driving ffmpeg processes on this machine) or "ray" (one Ray task
    per shard, on the cluster at `ray_address`, or on a local Ray of `workers` CPUs without one);
    both write the same bytes, so either can resume what the other started.

    min_frames: clips with fewer frames at the output rate (a truncated source keeps what
    decodes) are skipped and recorded in errors.jsonl. timeout_s: wall-clock limit of one
    transcode. Raises ShardError (one sentence) when the input as a whole is unusable or more
    than `max_failures` of the videos failed; in the latter case the folder is still complete.

    flip_pairs / direction_words: the flip map (flips.py) in place of the packaged one of the
    dataset (ssv2's: jedi_pipe/ssv2.yaml); the card records it for the classes present. The map
    is no part of the clips: a rerun on a complete folder rewrites the card's map when it changed.
    """
    name = name or dataset
    out = Path(out) if out is not None else Path("shards") / name
    if labeled_fraction is not None and labeled_per_class is not None:
        raise ShardError("give --labeled-fraction or --labeled-per-class, not both")
    if labeled_fraction is None and labeled_per_class is None:
        labeled_fraction = 0.1
    _check_options(split=split, labeled_fraction=labeled_fraction, labeled_per_class=labeled_per_class,
                   val_fraction=val_fraction, val_per_class=val_per_class,
                   seed=seed, workers=workers, shard_max_count=shard_max_count, max_failures=max_failures,
                   max_missing=max_missing, min_frames=min_frames, timeout_s=timeout_s)
    if executor not in EXECUTORS:
        raise ShardError(f"--executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if ray_address is not None and executor != "ray":
        raise ShardError("--ray-address is only used with --executor ray")
    if executor == "ray":
        from .ray_executor import require_ray
        require_ray()   # before any work: a missing extra is one sentence, not a late traceback
    try:
        given = {k: v for k, v in (("flip_pairs", flip_pairs), ("direction_words", direction_words)) if v is not None}
        packaged = flips.packaged_rule(dataset)
        flip_rule = flips.read_rule(given, f"the {' and '.join(given)} given", base=packaged)
        settings = EncodeSettings(codec=codec, fps=fps, short_side=short_side, max_seconds=max_seconds)
        for flag, folder in (("--videos", videos), ("--annotations", annotations)):
            if folder is not None and not Path(folder).is_dir():
                raise ShardError(f"{flag} {folder}: no such folder")
        if root is None and videos is None:
            root = default_root(dataset)
        for folder in {root, videos} - {None}:
            if (Path(folder) / INCOMPLETE_SYNTH).exists():
                raise ShardError(f"{folder}: an interrupted `jedi-pipe synth` ({INCOMPLETE_SYNTH} is there): rerun "
                                 f"the synth command to finish it")
        listing = list_videos(dataset, root, split=split, videos=videos, annotations=annotations)
    except (DatasetError, ValueError) as e:
        raise ShardError(str(e)) from None
    if dataset == "folder" and out.resolve().is_relative_to(Path(listing.root).resolve()):
        # its clips (and a killed run's temporary ones) would be listed as videos of the next run
        raise ShardError(f"--out {out} is inside the folder dataset's root {listing.root}; write the shards elsewhere")
    # the pairs the label names hold, of the map in use; after listing, so that a malformed split file is one error line
    flips.log_report(listing.classes, flip_rule, f"{dataset} ({listing.root})")
    card_flips = flips.card_flips(listing.classes, flip_rule)
    if not listing.items:
        raise ShardError(f"{dataset}: no usable videos under {videos or root} ({len(listing.missing)} listed videos missing)")
    listed = len(listing.items) + len(listing.missing)
    if len(listing.missing) > max_missing * listed:   # before any transcode: likely the wrong folder
        raise ShardError(f"{len(listing.missing)} of the {listed} videos that the split files of {listing.root} name "
                         f"are not on disk ({len(listing.missing) / listed:.0%} > --max-missing {max_missing:.0%}); "
                         f"is --root (or --videos) the right folder? The first: {listing.missing[0]['path']}")
    train = [(it.video_id, it.label, source_group(dataset, it.video_id, listing.classes[it.label]))
             for it in listing.items if it.split == "train"]
    roles_of = select_roles(train, seed, labeled_fraction=labeled_fraction, labeled_per_class=labeled_per_class,
                            val_per_class=val_per_class, val_fraction=val_fraction)
    plan = plan_samples(listing, roles_of, seed, shard_max_count, name)

    plan_hash = hashlib.sha256()
    for p in plan:
        plan_hash.update(f"{p.key} {p.role} {p.shard} {p.item.label} {p.item.source}\n".encode())
    job = {"format_version": shards.FORMAT_VERSION, "dataset": dataset, "name": name,
           "encoding": {**settings.as_dict(), "min_frames": min_frames, "chain": FILTER_CHAIN},
           "selection": selection_record(seed, labeled_fraction, labeled_per_class, val_fraction, val_per_class),
           "shard_max_count": shard_max_count,
           "source_split": listing.source_split, "plan": plan_hash.hexdigest()}
    with locked_folder(out):   # held until this run ends, however it ends
        claim_folder(out, job, overwrite)
        summary = ShardSummary(out=str(out), planned=len(plan) + len(listing.errors),
                               missing=len(listing.missing), root=listing.root)
        parts, tmp = out / PARTS, out / TMP
        if (out / shards.CARD).is_file():
            card = json.loads((out / shards.CARD).read_text())
            for leftover in (parts, tmp):    # a kill right after the card leaves them behind
                shutil.rmtree(leftover, ignore_errors=True)
            summary.counts, summary.failures = card["counts"], card["failures"]
            summary.bytes, summary.already_complete = card["bytes"], True
            if "flips" not in card or card["flips"] != card_flips:   # a new map, or a card from before maps
                write_json_atomic(out / shards.CARD, {**card, "flips": card_flips}, indent=1)
            _check_failures(summary, max_failures)
            return summary

        by_shard: dict[str, list[PlannedSample]] = {}
        for p in plan:   # insertion order = plan order: roles labeled, unlabeled, val, test
            by_shard.setdefault(p.shard, []).append(p)
        t0 = time.time()
        try:
            parts.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)   # clips of ffmpeg runs a kill left behind
            tmp.mkdir()
            for leftover in out.glob("*.partial"):   # a tar or index cut short by a kill
                leftover.unlink()
            jobs = [ShardJob(out.absolute(), s, by_shard[s], settings, listing.dataset, listing.classes,
                             min_frames, timeout_s) for s in by_shard if not _shard_done(out, parts, s)]
            if executor == "ray":
                from .ray_executor import write_shards_ray
                summary.transcoded = write_shards_ray(jobs, workers=workers, progress=progress, address=ray_address)
            else:
                summary.transcoded = write_shards_local(jobs, workers=workers, progress=progress)
            card = _finalize(out, parts, by_shard, listing, job, settings, card_flips)
        except OSError as e:   # disk full, folder removed under us: the run cannot go on
            raise write_failed(out, e, "resume") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        summary.seconds = time.time() - t0
        summary.counts, summary.failures, summary.bytes = card["counts"], card["failures"], card["bytes"]
        _check_failures(summary, max_failures)
        return summary


def _flag(k: str) -> str:
    return "--timeout" if k == "timeout_s" else "--" + k.replace("_", "-")


def _is_number(k: str, v, integer=False, optional=False) -> bool:
    """False for an optional option left out; True for a number; a ShardError otherwise."""
    if v is None and optional:
        return False
    if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not math.isfinite(v):
        raise ShardError(f"{_flag(k)} must be {'an integer' if integer else 'a finite number'}, got {v!r}")
    return True


def check_selection(labeled_fraction=None, labeled_per_class=None, val_fraction=None, val_per_class=None) -> None:
    """Types and ranges of the role-selection options, shared by `shard` and `split`."""
    if val_fraction is not None and val_per_class is not None:
        raise ShardError("give --val-fraction or --val-per-class, not both")
    if _is_number("labeled_fraction", labeled_fraction, optional=True) and not 0 < labeled_fraction <= 1:
        raise ShardError(f"--labeled-fraction must be in (0, 1], got {labeled_fraction}")
    if _is_number("labeled_per_class", labeled_per_class, integer=True, optional=True) and labeled_per_class < 1:
        raise ShardError(f"--labeled-per-class must be >= 1, got {labeled_per_class}")
    if _is_number("val_fraction", val_fraction, optional=True) and not 0 <= val_fraction < 1:
        raise ShardError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if _is_number("val_per_class", val_per_class, integer=True, optional=True) and val_per_class < 0:
        raise ShardError(f"--val-per-class must be >= 0, got {val_per_class}")


def selection_record(seed: int, labeled_fraction=None, labeled_per_class=None, val_fraction=None, val_per_class=None,
                     labeled_list: dict | None = None) -> dict:
    """The selection as job.json and the card record it: the labeled rule (`labeled_list`: the
    list rule's record, which only `split` has), the seed, and the val rule (None: no val role)."""
    labeled = (labeled_list if labeled_list is not None else
               {"rule": "per_class", "value": labeled_per_class} if labeled_per_class is not None else
               {"rule": "fraction", "value": labeled_fraction})
    val = ({"rule": "per_class", "value": val_per_class} if val_per_class is not None else
           {"rule": "fraction", "value": val_fraction} if val_fraction is not None else None)
    return {**labeled, "seed": seed, "val": val}


def write_failed(out: Path, e: OSError, rerun: str) -> ShardError:
    """One sentence for an OSError while writing `out` (disk full, folder removed under us)."""
    return ShardError(f"writing {out} failed: {e.strerror or e}"
                      f"{f' ({e.filename})' if getattr(e, 'filename', None) else ''}; "
                      f"rerun the same command to {rerun}")


def _check_options(**opts) -> None:
    """Types and ranges of the options, so that a recipe's `fps: fast` is one sentence, not a traceback."""
    def number(k, integer=False, optional=False):
        return _is_number(k, opts[k], integer, optional)

    for k in ("split", "seed", "shard_max_count", "min_frames"):
        number(k, integer=True)
    for k in ("max_failures", "max_missing", "timeout_s"):
        number(k)
    check_selection(opts["labeled_fraction"], opts["labeled_per_class"], opts["val_fraction"], opts["val_per_class"])
    if number("workers", integer=True, optional=True) and opts["workers"] < 1:
        raise ShardError(f"--workers must be >= 1, got {opts['workers']}")
    if opts["shard_max_count"] < 1:
        raise ShardError(f"--shard-max-count must be >= 1, got {opts['shard_max_count']}")
    if opts["min_frames"] < 1:
        raise ShardError(f"--min-frames must be >= 1, got {opts['min_frames']}")
    for k in ("max_failures", "max_missing"):
        if not 0 <= opts[k] <= 1:
            raise ShardError(f"{_flag(k)} is a fraction in [0, 1], got {opts[k]}")
    if not opts["timeout_s"] > 0:
        raise ShardError(f"the transcode timeout must be > 0 s, got {opts['timeout_s']}")


def _check_failures(summary: ShardSummary, max_failures: float) -> None:
    """Fill summary.warnings from what was written (failed videos are no clips), then fail the
    run when no clip, or more than `max_failures` of the videos, failed."""
    ss = shards.open_shards(summary.out)
    t = ss.manifest(columns=["label", "role"]).to_pydict()
    sel = ss.card.get("selection") or {}
    summary.warnings = role_gaps(zip(t["label"], t["role"]), ss.classes,
                                 all_labeled=(sel.get("rule"), sel.get("value")) == ("fraction", 1.0))
    errors = Path(summary.out) / shards.ERRORS
    retry = "to retry them once the sources are mended, rerun with --overwrite (a rerun without it keeps this folder)"
    if not sum(summary.counts.values()):
        raise ShardError(f"none of the {summary.planned} videos became a clip; see {errors} for why; {retry}")
    if summary.failures > max_failures * summary.planned:
        raise ShardError(f"{summary.failures} of {summary.planned} videos failed "
                         f"({summary.failures / summary.planned:.1%} > --max-failures {max_failures:.1%}); "
                         f"the rest is written, see {errors}; {retry}")


_OURS = ("*.tar", "*.tar.idx", "*.partial", shards.MANIFEST, shards.WITHHELD, shards.CARD, shards.ERRORS,
         shards.MISSING, PARTS, TMP)


@contextmanager
def locked_folder(out: Path):
    """Create `out` and lock it: two runs writing one folder would ruin each other's tars.

    The lock is an flock on `out/.lock`, which the kernel drops when the process dies (kill -9
    included), so a stale lock never blocks a resume.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        handle = open(out / LOCK, "a")
    except OSError as e:
        raise ShardError(f"cannot write to --out {out}: {e.strerror or e}") from None
    with handle:
        try:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:      # no flock (Windows): go on unlocked
            pass
        except BlockingIOError:
            raise ShardError(f"another `jedi-pipe shard` is writing to {out}; wait for it to finish "
                             f"(or stop it) and rerun") from None
        except OSError:          # a file system without flock (some network mounts): go on unlocked
            pass
        yield


def claim_folder(out: Path, job: dict, overwrite: bool) -> None:
    """Refuse to mix settings in one folder; --overwrite clears what an earlier run wrote."""
    job_path = out / JOB
    old = None
    if job_path.is_file():
        try:
            old = json.loads(job_path.read_text())
        except ValueError:
            old = "unreadable"
    if old == job:
        return   # same settings: resume, or nothing to do when complete
    ours = [p for pat in _OURS for p in out.glob(pat)]
    if not overwrite:
        if isinstance(old, dict):
            changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise ShardError(f"{out} holds shards made with other settings ({', '.join(changed)} differ); "
                             f"pass --overwrite to replace them or choose another --out")
        if old is not None or ours:
            raise ShardError(f"{out} holds shard files of unknown settings (no readable {JOB}); "
                             f"pass --overwrite to replace them or choose another --out")
    for p in ours:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    write_json_atomic(job_path, job, indent=1, sort_keys=True)


def _shard_done(out: Path, parts: Path, shard: str) -> bool:
    """A shard is done when its part (written after the tar) is there, and its tar when it has rows."""
    part = parts / (shard + ".json")
    if not part.is_file():
        return False
    try:
        rows = json.loads(part.read_text())["rows"]
    except (ValueError, KeyError):
        return False
    return not rows or ((out / shard).is_file() and (out / shards.index_name(shard)).is_file())


def write_shards_local(jobs: list[ShardJob], *, workers: int | None = None, progress: bool | None = None) -> int:
    """The local executor: `write_shard` over the jobs in order, fed by encodes in worker
    threads (each drives one ffmpeg process); returns the videos done."""
    todo = [(job, p) for job in jobs for p in job.samples]
    workers = workers or default_workers()
    bar = shard_jobs.VideoBar(len(todo), f"shard {jobs[0].dataset if jobs else ''}", progress)
    pool = ThreadPoolExecutor(workers, thread_name_prefix="transcode")
    # A window of in-flight encodes keeps every worker busy across shard boundaries (and while a
    # tar is closed) and lets fast videos overtake a slow one, while bounding the clip bytes held
    # in memory, whatever the dataset size.
    window, inflight, it = max(16, 4 * workers), deque(), iter(todo)

    def submit():
        nxt = next(it, None)
        if nxt is not None:
            job, p = nxt   # shard_jobs.encode looked up here, so a benchmark can wrap it
            inflight.append(pool.submit(shard_jobs.encode, p.item.path, job.settings, str(job.out / TMP),
                                        job.timeout_s, job.min_frames))

    done = 0

    def results(job):   # the job's encodes in planned order, refilling the window as they are taken
        nonlocal done
        for _ in job.samples:
            result = inflight.popleft().result()
            submit()
            done += 1
            bar.update(1)
            yield result

    try:
        for _ in range(window):
            submit()
        for job in jobs:
            write_shard(job, results(job))
    finally:
        bar.close()
        for fut in inflight:
            fut.cancel()
        pool.shutdown(wait=True)   # running ffmpegs end within the timeout
    return done


def _finalize(out: Path, parts: Path, by_shard: dict, listing: Listing, job: dict, settings: EncodeSettings,
              card_flips: dict | None) -> dict:
    """Merge the per-shard parts into manifest.parquet, withheld.parquet, errors.jsonl,
    missing.jsonl and (last) dataset.json.

    Streamed part by part (shards in plan order hold consecutive sample ids), so memory stays
    bounded by a batch of rows whatever the dataset size.
    """
    counts = {r: 0 for r in shards.ROLES}
    written = {r: [] for r in shards.ROLES}
    failures, nbytes = len(listing.errors), 0
    errors_tmp = out / (shards.ERRORS + ".partial")
    with TableWriter(out) as tables, open(errors_tmp, "w") as errors:
        errors.writelines(json.dumps(e, sort_keys=True) + "\n" for e in listing.errors)
        for shard, planned in by_shard.items():
            part = json.loads((parts / (shard + ".json")).read_text())
            errors.writelines(json.dumps(e, sort_keys=True) + "\n" for e in part["errors"])
            failures += len(part["errors"])
            rows, role = part["rows"], planned[0].role
            if rows:
                written[role].append(shard)
            counts[role] += len(rows)
            nbytes += sum(r["bytes"] for r in rows)
            tables.add(rows)
    os.replace(errors_tmp, out / shards.ERRORS)
    write_jsonl_atomic(out / shards.MISSING, listing.missing)

    card = {"format_version": shards.FORMAT_VERSION, "name": job["name"], "dataset": job["dataset"],
            "classes": listing.classes, "num_classes": len(listing.classes), "flips": card_flips, "counts": counts,
            "shards": {r: sorted(written[r]) for r in shards.ROLES},
            "encoding": {**job["encoding"], "ext": settings.ext},
            "selection": job["selection"], "source_split": job["source_split"],
            "shard_max_count": job["shard_max_count"], "failures": failures, "missing": len(listing.missing), "bytes": nbytes, "tool": f"jedi-pipe {__version__}"}
    write_json_atomic(out / shards.CARD, card, indent=1)   # last: the card marks a complete folder
    shutil.rmtree(parts, ignore_errors=True)
    return card


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    os.replace(tmp, path)


class TableWriter:
    """Streams full sample rows into manifest.parquet and withheld.parquet (`shards.public_row`
    decides what goes where), in row groups of ~1k rows: memory bounded, files still compact.
    Both appear under their final names only when the block ends without an error."""

    def __init__(self, out: Path):
        self.out = Path(out)

    def __enter__(self):
        import pyarrow.parquet as pq
        self.files = [(self.out / shards.MANIFEST, shards.manifest_schema()),
                      (self.out / shards.WITHHELD, shards.withheld_schema())]
        self.writers = [pq.ParquetWriter(str(p) + ".partial", schema) for p, schema in self.files]
        self.batches = ([], [])
        return self

    def add(self, rows: list[dict]) -> None:
        for row in rows:
            public, withheld = shards.public_row(row)
            self.batches[0].append(public)
            if withheld is not None:
                self.batches[1].append(withheld)
        if len(self.batches[0]) >= 1024:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa
        for writer, (_, schema), batch in zip(self.writers, self.files, self.batches):
            if batch:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()

    def __exit__(self, exc_type, *exc):
        if exc_type is None:
            self._flush()
        for w in self.writers:
            w.close()
        for path, _ in self.files:
            tmp = Path(str(path) + ".partial")
            if exc_type is None:
                os.replace(tmp, path)
            else:
                tmp.unlink(missing_ok=True)
