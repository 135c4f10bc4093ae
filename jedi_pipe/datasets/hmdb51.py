"""HMDB51: `<class>/<name>.avi` and `<class>_test_split<N>.txt` (in `testTrainMulti_7030_splits/` as
unpacked, in `annotations/` as MMAction2 keeps them, or any folder: found by name).

Split lines are `<name>.avi <0|1|2> ` (1 train, 2 test, 0 unused). Class order: sorted names.
"""
from __future__ import annotations

import re
from pathlib import Path

from .common import (DatasetError, Listing, VideoItem, check_root, check_split, find_class_root,
                     find_files_matching, missing_error, read_text, rel, stray_class_errors)

_SPLIT_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<n>[123])\.txt$")


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(root)
    split = check_split(split)
    # The split files are found by their own names: in testTrainMulti_7030_splits/ as unpacked,
    # in MMAction2's annotations/, or in any other folder under --annotations or --root.
    pattern = re.compile(rf"^.+_test_split{split}\.txt$")
    found = find_files_matching(Path(annotations) if annotations else root, pattern)
    if not found:
        raise DatasetError(f"no HMDB51 split files (<class>_test_split{split}.txt) under {annotations or root} "
                           f"(use --annotations)")
    ann = found[0].parent
    split_files = {m["cls"]: f for f in found if (m := _SPLIT_FILE.match(f.name))}
    classes = sorted(split_files)

    vroot = Path(videos) if videos else find_class_root(root, classes)
    if vroot is None:
        raise DatasetError(f"no folder holding the HMDB51 class folders (e.g. {classes[0]}/) under {root} (use --videos)")

    items, errors, missing = [], [], []
    for label, cls in enumerate(classes):
        for lineno, line in enumerate(read_text(split_files[cls]).splitlines(), 1):
            if not line.strip():
                continue
            parts = line.rsplit(None, 1)   # the flag is the last field; be lenient about the name
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise DatasetError(f"{split_files[cls]}:{lineno}: expected '<name>.avi <0|1|2>', got {line!r}")
            name, flag = parts[0].strip(), parts[1]
            if flag == "0":
                continue
            path = vroot / cls / name
            vid = Path(name).stem
            if not path.is_file():
                missing.append(missing_error(vid, rel(path, root), split_files[cls].name))
                continue
            items.append(VideoItem(vid, str(path), rel(path, root), label, "train" if flag == "1" else "test"))

    errors += stray_class_errors(vroot, root, set(split_files), (ann,), f"the split {split} lists")
    return Listing("hmdb51", str(root), classes, items, f"split{split}", errors, missing)

