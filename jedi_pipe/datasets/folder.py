"""Any folder of videos: `<root>/<split>/<class>/<video>` or `<root>/<class>/<video>`.

Split folders are `train` and one of `test`/`val`/`validation`. Without them, a fixed 20% of
each class (by a hash of the path, so it never changes between runs) becomes the test split.
Class order: sorted folder names. A video's id is its path under the root without the
extension (`a/clip`, or `train/a/clip` in the split layout).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import replace
from pathlib import Path

from .common import VIDEO_EXTS, DatasetError, Listing, VideoItem, check_root, rel

TEST_NAMES = ("test", "val", "validation")


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(Path(videos) if videos else root)
    if split != 1:
        raise DatasetError(f"--split {split} does not exist; a folder dataset has one split")
    test_dir = next((root / n for n in TEST_NAMES if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        parts = {"train": root / "train", "test": test_dir}
    else:
        parts = {None: root}
    # hidden entries (.ipynb_checkpoints/, macOS ._clip.avi) are never classes or videos
    classes = sorted({d.name for p in parts.values() for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")})
    if not classes:
        raise DatasetError(f"{root} has no class folders (<root>/<class>/<video> or <root>/<split>/<class>/<video>)")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for split_name, base in parts.items():
        for cls in classes:
            if not (base / cls).is_dir():
                continue
            for f in sorted((base / cls).rglob("*")):
                if not f.is_file() or not f.name.lower().endswith(VIDEO_EXTS) or f.name.startswith("."):
                    continue
                source = rel(f, root)
                s = split_name or ("test" if int(hashlib.sha1(source.encode()).hexdigest(), 16) % 5 == 0 else "train")
                items.append(VideoItem(str(Path(source).with_suffix("")), str(f), source, index[cls], s))
    if not items:
        raise DatasetError(f"no video files ({', '.join(VIDEO_EXTS)}) under {root}")
    # The id is the path without its extension (train/a/x and test/a/x, a/sub/x and a/x are
    # different videos); a.avi next to a.mp4 keep their extensions to stay apart.
    ids = Counter(it.video_id for it in items)
    items = [it if ids[it.video_id] == 1 else replace(it, video_id=it.source) for it in items]
    return Listing("folder", str(root), classes, items, "folders" if None not in parts else "hash 80/20", [])
