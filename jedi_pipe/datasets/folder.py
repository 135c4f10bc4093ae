"""Any folder of videos: `<root>/<split>/<class>/<video>` or `<root>/<class>/<video>`.

Split folders are `train` and one of `test`/`val`/`validation`. Without them, a fixed 20% of
each class (by a hash of the path, so it never changes between runs) becomes the test split.
Class order: sorted folder names.
"""
from __future__ import annotations

import hashlib
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
    classes = sorted({d.name for p in parts.values() for d in p.iterdir() if d.is_dir()})
    if not classes:
        raise DatasetError(f"{root} has no class folders (<root>/<class>/<video> or <root>/<split>/<class>/<video>)")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for split_name, base in parts.items():
        for cls in classes:
            if not (base / cls).is_dir():
                continue
            for f in sorted((base / cls).rglob("*")):
                if not f.is_file() or not f.name.lower().endswith(VIDEO_EXTS):
                    continue
                source = rel(f, root)
                s = split_name or ("test" if int(hashlib.sha1(source.encode()).hexdigest(), 16) % 5 == 0 else "train")
                items.append(VideoItem(f"{cls}/{f.stem}", str(f), source, index[cls], s))
    if not items:
        raise DatasetError(f"no video files ({', '.join(VIDEO_EXTS)}) under {root}")
    return Listing("folder", str(root), classes, items, "folders" if None not in parts else "hash 80/20", [])
