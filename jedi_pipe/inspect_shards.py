"""Check a shard folder against its manifest, and draw a contact sheet of a few clips."""
from __future__ import annotations

import hashlib
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa

from . import shards
from .errors import InputError, UnavailableError


def verify_shards(root) -> dict:
    """Re-read every tar: counts, keys and sha256 of each clip against manifest.parquet; unlabeled
    samples carry no label, video id or source, and withheld.parquet covers exactly them.

    Returns {"ok": bool, "problems": [str], "counts": {role: n}, "samples_checked": n}.
    """
    ss = shards.open_shards(root)
    try:
        manifest = ss.manifest().to_pylist()
    except (OSError, pa.ArrowException) as e:    # missing or damaged: nothing to check the tars against
        reason = getattr(e, "strerror", None) or str(e)
        return {"ok": False, "problems": [f"{shards.MANIFEST}: unreadable ({reason})"], "counts": {}, "samples_checked": 0}
    by_key = {r["key"]: r for r in manifest}
    problems, seen = [], Counter()
    for role in shards.ROLES:
        for tar in ss.tars(role):
            if not tar.is_file():
                problems.append(f"{tar.name}: missing")
                continue
            problems += _index_problems(tar)
            for sample in _readable_samples(tar, problems):
                key = sample["__key__"]
                row = by_key.get(key)
                seen[key] += 1
                if row is None:
                    problems.append(f"{tar.name}: sample {key} is not in the manifest")
                    continue
                clip = sample.get(ss.clip_ext)
                if row["shard"] != tar.name or row["role"] != role:
                    problems.append(f"{tar.name}: {key} belongs to {row['shard']} ({row['role']})")
                if clip is None or hashlib.sha256(clip).hexdigest() != row["sha256"]:
                    problems.append(f"{tar.name}: {key} clip bytes differ from the manifest's sha256")
                label = _int_or_none(sample.get("cls"))
                if label != row["label"]:
                    problems.append(f"{tar.name}: {key} cls {sample.get('cls')!r} != manifest label {row['label']}")
                # .meta.i32 is what both loaders read the label (and frames, id) from
                meta = shards.decode_meta(sample[shards.META_EXT]) if shards.META_EXT in sample else None
                if meta is None or any(meta[f] != row[f] for f in shards.META_FIELDS):
                    problems.append(f"{tar.name}: {key} {shards.META_EXT} {meta} differs from its manifest row")
                if "json" not in sample:
                    problems.append(f"{tar.name}: {key} has no .json member")
                elif role == "unlabeled":
                    extra = set(json.loads(sample["json"])) - UNLABELED_JSON
                    if extra or set(sample) - {"__key__", "cls", "json", ss.clip_ext, shards.META_EXT}:
                        problems.append(f"{tar.name}: unlabeled {key} carries more than the spec allows "
                                        f"({', '.join(sorted(extra)) or 'an extra member'})")
    for key in by_key.keys() - seen.keys():
        problems.append(f"manifest row {key} is in no tar")
    problems += [f"{k} appears {n} times" for k, n in seen.items() if n > 1]
    unlabeled = {r["key"] for r in manifest if r["role"] == "unlabeled"}
    if any(r["video_id"] or r["source"] or r["label"] != shards.UNLABELED for r in manifest if r["role"] == "unlabeled"):
        problems.append(f"{shards.MANIFEST}: an unlabeled row names its video or label")
    withheld = set(ss.withheld(columns=["key"]).column("key").to_pylist()) if (ss.root / shards.WITHHELD).is_file() else None
    if withheld is None:
        problems.append(f"{shards.WITHHELD} is missing")
    elif withheld != unlabeled:
        problems.append(f"{shards.WITHHELD} covers {len(withheld)} samples, the unlabeled role has {len(unlabeled)}")
    counts = Counter(r["role"] for r in manifest)
    for role in shards.ROLES:
        if counts[role] != ss.count(role):
            problems.append(f"{role}: manifest has {counts[role]} rows, dataset.json says {ss.count(role)}")
    return {"ok": not problems, "problems": problems, "counts": dict(counts), "samples_checked": sum(seen.values())}


def _int_or_none(data: bytes | None) -> int | None:
    try:
        return int(data)
    except (TypeError, ValueError):
        return None


def _index_problems(tar: Path) -> list[str]:
    """The DALI index against the tar it names: a stale or swapped one sends both DALI and `split`
    to the wrong bytes."""
    idx = Path(shards.index_name(str(tar)))
    if not idx.is_file():
        return [f"{tar.name}: its DALI index {idx.name} is missing"]
    try:
        indexed = shards.read_index(idx)
    except (InputError, ValueError, OSError) as e:
        return [f"{idx.name}: unreadable ({e})"]
    actual: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(tar) as t:
            for m in t:
                if m.isfile():
                    key, ext = shards.member_key_ext(m.name)
                    actual.setdefault(key, {})[ext] = (m.offset_data, m.size)
    except (tarfile.TarError, OSError, EOFError):
        return []   # the damaged tar is reported as such by the sample pass
    wrong = sum(indexed.get(k) != v for k, v in actual.items()) + len(indexed.keys() - actual.keys())
    return [f"{idx.name}: {wrong} sample(s) at other offsets, sizes or keys than in {tar.name} "
            f"(a stale index or another tar's); DALI and `jedi-pipe split` would read the wrong bytes"] if wrong else []


def _readable_samples(tar: Path, problems: list):
    """The samples of `tar` up to any damage (a cut or overwritten file); the damage goes into
    `problems`, and the samples past it count as rows in no tar."""
    try:
        yield from shards.iter_tar_samples(tar)
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"{tar.name}: truncated or damaged ({e}); the samples past the damage are lost")


UNLABELED_JSON = set(shards.sample_json("k", "unlabeled", "d", 1, 1.0, 1, 1, "v", "train", 0, "c"))


def contact_sheet(root, out_png, clips: int = 6, frames: int = 8, role: str = "test") -> Path:
    """A PNG with a row of frames per clip and its label under it (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnavailableError('the preview needs matplotlib: pip install "jedi-pipe[plots]"') from None
    import numpy as np
    from .loaders.torch import read_frames
    ss = shards.open_shards(root)
    role = role if ss.count(role) else next((r for r in shards.ROLES if ss.count(r)), None)
    if role is None:
        raise InputError(f"{root} holds no clips to preview")
    samples = []
    for tar in ss.tars(role):
        for s in shards.iter_tar_samples(tar):
            samples.append(s)
            if len(samples) == clips:
                break
        if len(samples) == clips:
            break
    fig, axes = plt.subplots(len(samples), frames, figsize=(frames * 1.2, len(samples) * 1.45), squeeze=False)
    for row, s in enumerate(samples):
        label = int(s["cls"])
        name = ss.classes[label] if label >= 0 else "(unlabeled)"
        # n frames evenly spaced over the clip, decoded only up to the last one needed
        picks = np.linspace(0, shards.decode_meta(s[shards.META_EXT])["frames"] - 1, frames).round().astype(int)
        for col, img in enumerate(read_frames(s[ss.clip_ext], picks.tolist())):
            ax = axes[row, col]
            ax.imshow(img)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(s["__key__"][:14], fontsize=6)
        axes[row, frames // 2].set_xlabel(f"{name}  [{label}]", fontsize=8)
    fig.suptitle(f"{ss.name} · {role} · {frames} frames per clip, time left to right", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
