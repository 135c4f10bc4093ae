"""Any folder of videos: `<root>/<split>/<class>/<video>` or `<root>/<class>/<video>`.

Split folders are `train` and one of `test`/`val`/`validation` (any case; also `training`,
`testing`, `valid`); with both test/ and val/, val's videos join training. Without them, a fixed 20% of
each class (by a hash of the path, so it never changes between runs) becomes the test split.
Class order: sorted folder names (a folder without videos is no class). A video's id is its
path under the root without the extension (`a/clip`, or `train/a/clip` in the split layout).
"""
from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .common import VIDEO_EXTS, DatasetError, Listing, VideoItem, check_root, rel

# split folder names, matched case-blind (Kaggle copies say Train/ and Test/)
TRAIN_NAMES = ("train", "training")
TEST_NAMES = ("test", "testing", "val", "valid", "validation")
log = logging.getLogger(__name__)


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(Path(videos) if videos else root)
    if split != 1:
        raise DatasetError(f"--split {split} does not exist; a folder dataset has one split")
    subdirs = {d.name.lower(): d for d in sorted(root.iterdir()) if d.is_dir()}
    train_dir = next((subdirs[n] for n in TRAIN_NAMES if n in subdirs), None)
    held = [subdirs[n] for n in TEST_NAMES if n in subdirs]   # test before val
    if (train_dir is not None) != bool(held):   # half a split layout: its folder would pass for a class
        raise DatasetError(f"{root} has {train_dir.name + '/' if train_dir else held[0].name + '/'} but no "
                           f"{'/'.join(TEST_NAMES) if train_dir else 'train'} folder beside it; give both "
                           f"(<root>/train/<class>/..., <root>/test/<class>/...) or neither (<root>/<class>/...)")
    if train_dir is None:
        parts = {None: [root]}
    else:
        # test/ is the test split; a val/ beside it joins training (shard's --val-per-class draws val from there)
        parts = {"train": [train_dir, *held[1:]], "test": held[:1]}
        if held[1:]:
            log.warning("%s: %s/ is the test split; the videos of %s join the training split (use --val-per-class "
                        "for a val role)", root, held[0].name, ", ".join(d.name + "/" for d in held[1:]))
    # hidden entries (.ipynb_checkpoints/, macOS ._clip.avi) are never classes or videos
    folders = sorted({d.name for bases in parts.values() for p in bases for d in p.iterdir()
                      if d.is_dir() and not d.name.startswith(".")})
    if not folders:
        raise DatasetError(f"{root} has no class folders (<root>/<class>/<video> or <root>/<split>/<class>/<video>)")
    found = []   # (split, class folder name, file)
    for split_name, bases in parts.items():
        for base in bases:
            for cls in folders:
                if not (base / cls).is_dir():
                    continue
                for f in sorted((base / cls).rglob("*")):
                    if f.is_file() and f.name.lower().endswith(VIDEO_EXTS) and not f.name.startswith("."):
                        found.append((split_name, cls, f))
    if not found:
        raise DatasetError(f"no video files ({', '.join(VIDEO_EXTS)}) under {root}")
    # a folder without videos is no class (an empty download, or an output folder put under the root)
    classes = sorted({cls for _, cls, _ in found})
    empty = sorted(set(folders) - set(classes))
    if empty:
        log.info("%s: %d folder(s) without videos are not classes: %s", root, len(empty), ", ".join(empty[:10]))
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for split_name, cls, f in found:
        source = rel(f, root)
        s = split_name or ("test" if int(hashlib.sha1(source.encode()).hexdigest(), 16) % 5 == 0 else "train")
        items.append(VideoItem(str(Path(source).with_suffix("")), str(f), source, index[cls], s))
    # The id is the path without its extension (train/a/x and test/a/x, a/sub/x and a/x are
    # different videos); a.avi next to a.mp4 keep their extensions to stay apart.
    ids = Counter(it.video_id for it in items)
    items = [it if ids[it.video_id] == 1 else replace(it, video_id=it.source) for it in items]
    return Listing("folder", str(root), classes, items, "folders" if None not in parts else "hash 80/20", [])
