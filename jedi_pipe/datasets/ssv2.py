"""Something-Something-v2: `labels/{labels,train,validation}.json` and `<id>.webm`.

labels.json maps the template without brackets to an index string; it gives the class order.
Entries of train/validation.json carry `id` and `template` (`Pushing [something] from left
to right`); the label is the template with the brackets removed.

The shard stage logs which left/right pairs of the flip map in use (jedi_pipe/ssv2.yaml unless a
recipe gives its own; flips.py) these names hold, and which directional classes never flip.
"""
from __future__ import annotations

import json
from pathlib import Path

from .common import (DatasetError, Listing, VideoItem, check_root, find_any_file, index_videos,
                     missing_error, read_text, rel)


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(root)
    if split != 1:
        raise DatasetError(f"--split {split} does not exist; Something-Something-v2 has one split (train/validation)")
    ann = Path(annotations) if annotations else None
    paths = {}
    for name in ("labels", "train", "validation"):
        # by name, anywhere: labels/train.json as unpacked, or MMAction2's something-something-v2-train.json
        names = (f"{name}.json", f"something-something-v2-{name}.json")
        p = find_any_file(ann or root, names, prefer_parent="labels")
        if p is None:
            raise DatasetError(f"no {' or '.join(names)} of Something-Something-v2 under {ann or root} "
                               f"(use --annotations)")
        paths[name] = p
    labels = _load(paths["labels"], dict)
    try:
        order = sorted(labels.items(), key=lambda kv: int(kv[1]))
    except ValueError:
        raise DatasetError(f"{paths['labels']}: values must be index strings like \"0\"") from None
    classes = [k for k, _ in order]
    index = {c: i for i, c in enumerate(classes)}
    files = index_videos(Path(videos) if videos else root, exts=(".webm", ".mp4"))

    items, errors, missing = [], [], []
    for name, split_name in (("train", "train"), ("validation", "test")):
        for entry in _load(paths[name], list):
            if not isinstance(entry, dict) or "id" not in entry or not isinstance(entry.get("template"), str):
                raise DatasetError(f"{paths[name]}: entries need 'id' and 'template', got {entry!r:.120}")
            vid = str(entry["id"])
            cls = entry["template"].replace("[", "").replace("]", "")
            if cls not in index:
                errors.append({"video_id": vid, "path": "", "reason": f"template {cls!r} absent from labels.json"})
                continue
            path = files.get(vid + ".webm") or files.get(vid + ".mp4")
            if path is None:
                missing.append(missing_error(vid, vid + ".webm", f"{name}.json"))
                continue
            items.append(VideoItem(vid, str(path), rel(path, root), index[cls], split_name))
    return Listing("ssv2", str(root), classes, items, "train/validation", errors, missing)


def _load(path: Path, kind):
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, kind):
        raise DatasetError(f"{path}: expected a JSON {kind.__name__}")
    return data
