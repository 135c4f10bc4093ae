"""UCF101: `UCF-101/<Class>/v_<Class>_gNN_cMM.avi` and `ucfTrainTestlist/` (CRLF text files).

classInd.txt is 1-based (`1 ApplyEyeMakeup`) and gives the class order; trainlist lines carry
the label, testlist lines do not. The real HandstandPushups folder holds `v_HandStandPushups_*`
files, and the lists name them so: paths are taken as written, with a case-blind fallback.
"""
from __future__ import annotations

from pathlib import Path

from .common import (DatasetError, Listing, VideoItem, check_root, check_split, find_class_root,
                     find_file, missing_error, read_text, rel, stray_class_errors)

LISTS_DIR = "ucfTrainTestlist"


def list_videos(root, split=1, videos=None, annotations=None) -> Listing:
    root = check_root(root)
    split = check_split(split)
    # classInd.txt and the lists are found by their own names (ucfTrainTestlist/ as unpacked,
    # MMAction2's annotations/, any folder); lists next to classInd.txt win.
    where = Path(annotations) if annotations else root
    class_ind = find_file(where, "classInd.txt", prefer_parent=LISTS_DIR)
    if class_ind is None:
        raise DatasetError(f"no classInd.txt (UCF101's {LISTS_DIR}/) under {where} (use --annotations)")
    ann = class_ind.parent
    classes = _read_class_ind(class_ind)
    index = {c: i for i, c in enumerate(classes)}
    vroot = Path(videos) if videos else find_class_root(root, classes)
    if vroot is None:
        raise DatasetError(f"no folder holding the UCF101 class folders (e.g. {classes[0]}/) under {root} (use --videos)")

    items, errors, missing = [], [], []
    for split_name, list_file in (("train", f"trainlist0{split}.txt"), ("test", f"testlist0{split}.txt")):
        path = ann / list_file if (ann / list_file).is_file() else find_file(where, list_file)
        if path is None:
            raise DatasetError(f"missing split file {list_file}: not next to {class_ind} nor anywhere under {where}")
        for lineno, line in enumerate(_lines(path), 1):
            relpath = line.split()[0]
            cls = relpath.split("/")[0]
            if cls not in index:
                raise DatasetError(f"{path}:{lineno}: class {cls!r} is not in classInd.txt")
            video = _resolve(vroot, relpath)
            vid = Path(relpath).stem
            if video is None:
                missing.append(missing_error(vid, rel(vroot / relpath, root), list_file))
                continue
            items.append(VideoItem(vid, str(video), rel(video, root), index[cls], split_name))
    errors += stray_class_errors(vroot, root, set(classes), (ann,), "classInd.txt")
    return Listing("ucf101", str(root), classes, items, f"split{split}", errors, missing)


def _lines(path: Path) -> list[str]:
    # The real lists end lines with CRLF; splitlines() takes both.
    return [ln.strip() for ln in read_text(path).splitlines() if ln.strip()]


def _read_class_ind(path: Path) -> list[str]:
    pairs = []
    for lineno, line in enumerate(_lines(path), 1):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise DatasetError(f"{path}:{lineno}: expected '<index> <ClassName>', got {line!r}")
        pairs.append((int(parts[0]), parts[1]))
    pairs.sort()
    if [i for i, _ in pairs] != list(range(1, len(pairs) + 1)):
        raise DatasetError(f"{path}: class indices are not 1..{len(pairs)}")
    return [c for _, c in pairs]


def _resolve(vroot: Path, relpath: str) -> Path | None:
    p = vroot / relpath
    if p.is_file():
        return p
    folder = p.parent
    if folder.is_dir():
        for f in folder.iterdir():
            if f.name.lower() == p.name.lower():
                return f
    return None
