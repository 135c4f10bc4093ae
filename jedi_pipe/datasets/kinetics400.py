"""Kinetics-400: `annotations/{train,val}.csv` and `<youtube_id>_<start:06d>_<end:06d>.mp4`.

Videos may be flat (`train/`, `val/`, as in the CVDF copy, whose `replacement/` files win over
the corrupted originals they replace) or in per-class folders (as
MMAction2 lays them out): they are found by file name anywhere under the videos root. CSV rows
whose video is missing (every real download misses some) go to missing.jsonl, apart from failures.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

from .common import (DatasetError, Listing, VideoItem, check_root, find_any_file, index_videos,
                     missing_error, read_text, rel)

HEADER = ("label", "youtube_id", "time_start", "time_end", "split")
CSV_NAMES = {"train": ("train.csv", "kinetics_train.csv", "kinetics400_train.csv", "kinetics-400_train.csv"),
             "val": ("val.csv", "validate.csv", "kinetics_val.csv", "kinetics400_val.csv", "kinetics-400_val.csv")}


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(root)
    if split != 1:
        raise DatasetError(f"--split {split} does not exist; Kinetics-400 has one split (train/val)")
    ann = Path(annotations) if annotations else None
    csvs = {}
    for name in ("train", "val"):
        # by name, anywhere: train.csv (CVDF, ActivityNet) or kinetics_train.csv (MMAction2)
        names = CSV_NAMES[name]
        p = find_any_file(ann or root, names, prefer_parent="annotations")
        if p is None:
            raise DatasetError(f"no {' or '.join(names)} with the Kinetics-400 annotations under {ann or root} "
                               f"(use --annotations)")
        csvs[name] = _read_csv(p)
    classes = sorted({row["label"] for row in csvs["train"]})
    index = {c: i for i, c in enumerate(classes)}
    vroot = Path(videos) if videos else root
    # CVDF's copy keeps fixed versions of ~1400 corrupted train videos under replacement/
    # (replacement_for_corrupted_k400/), beside the broken originals: the replacements win
    files = index_videos(vroot, prefer=lambda d: any(p.startswith("replacement") for p in Path(d).relative_to(vroot).parts))

    items, errors, missing = [], [], []
    for name, split_name in (("train", "train"), ("val", "test")):
        for row in csvs[name]:
            vid = f"{row['youtube_id']}_{int(row['time_start']):06d}_{int(row['time_end']):06d}"
            if row["label"] not in index:
                errors.append({"video_id": vid, "path": "", "reason": f"label {row['label']!r} absent from train.csv"})
                continue
            path = next((files[vid + ext] for ext in (".mp4", ".mkv", ".webm") if vid + ext in files), None)
            if path is None:
                missing.append(missing_error(vid, vid + ".mp4", f"{name}.csv"))
                continue
            items.append(VideoItem(vid, str(path), rel(path, root), index[row["label"]], split_name))
    return Listing("kinetics400", str(root), classes, items, "train/val", errors, missing)


def _read_csv(path: Path) -> list[dict]:
    try:
        reader = csv.DictReader(io.StringIO(read_text(path), newline=""))
        missing = [h for h in HEADER[:4] if h not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{path}: header lacks {', '.join(missing)} (expected {','.join(HEADER)})")
        rows = list(reader)
    except csv.Error as e:
        raise DatasetError(f"{path} is not a readable CSV file: {e}") from None
    for i, row in enumerate(rows, 2):
        if not row.get("label") or not row.get("youtube_id"):
            raise DatasetError(f"{path}:{i}: row lacks a label or youtube_id: {row}")
        try:
            row["time_start"], row["time_end"] = int(float(row["time_start"])), int(float(row["time_end"]))
        except (TypeError, ValueError):
            raise DatasetError(f"{path}:{i}: time_start/time_end are not numbers: {row}") from None
    return rows
