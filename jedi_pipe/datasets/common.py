"""What every adapter returns, and the search helpers for real copies' odd folder names."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import JediPipeError

VIDEO_EXTS = (".avi", ".mp4", ".webm", ".mkv", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv", ".3gp")


class DatasetError(JediPipeError):
    """The input as a whole is unusable (missing root, missing or malformed split file, ...)."""


@dataclass(frozen=True, slots=True)   # slots: a Kinetics listing holds ~300k of these
class VideoItem:
    video_id: str      # the dataset's own id (file stem, youtube clip id, SSv2 id)
    path: str          # absolute path of the source video
    source: str        # path relative to the dataset root, as recorded in the manifest
    label: int         # class index into Listing.classes
    split: str         # "train" or "test"


@dataclass
class Listing:
    dataset: str
    root: str
    classes: list[str]
    items: list[VideoItem]
    source_split: str                                    # e.g. "split1", "train/val"
    errors: list[dict] = field(default_factory=list)     # videos that cannot be used (stray folders, unknown labels)
    missing: list[dict] = field(default_factory=list)    # videos a split file names that are not on disk


def check_root(root) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist or is not a folder")
    return root.resolve()


def check_split(split: int, allowed=(1, 2, 3)) -> int:
    if split not in allowed:
        raise DatasetError(f"--split {split} does not exist; this dataset has splits {', '.join(map(str, allowed))}")
    return split


def read_text(path: Path) -> str:
    """A split/annotation file's text; unreadable or non-text files are a DatasetError. A byte-order
    mark (files saved by Notepad or Excel) is dropped."""
    try:
        return Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not a UTF-8 text file (byte {e.start}); is it the right file?") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from None


def stray_class_errors(vroot: Path, root: Path, known: set[str], skip: tuple[Path, ...], why: str) -> list[dict]:
    """One error per video in a class folder that the split lists do not know: skipped, reported."""
    errors = []
    for d in sorted(p for p in vroot.iterdir() if p.is_dir() and p.name not in known and p not in skip):
        for f in sorted(d.iterdir()):
            if f.is_file() and f.name.lower().endswith(VIDEO_EXTS):
                errors.append({"video_id": f.stem, "path": rel(f, root),
                               "reason": f"class folder {d.name!r} is absent from {why}; its videos are skipped"})
    return errors


def find_file(root: Path, name: str, prefer_parent: str | None = None) -> Path | None:
    """A file called `name` under root; one inside a folder called `prefer_parent` wins."""
    return find_any_file(root, (name,), prefer_parent)


def find_any_file(root: Path, names: tuple[str, ...], prefer_parent: str | None = None) -> Path | None:
    """The first of `names` found anywhere under root (earlier names win, then `prefer_parent`,
    then the shallowest): annotation files go by their own names, whatever the folder is called.
    One walk of the tree, however many names."""
    rank = {name: i for i, name in enumerate(names)}
    best, best_key = None, None
    for walk_order, (d, _, files) in enumerate(_walk_sorted(root)):   # breadth-first: shallowest first
        for name in files:
            if name in rank:
                key = (rank[name], bool(prefer_parent) and Path(d).name != prefer_parent, walk_order)
                if best_key is None or key < best_key:
                    best, best_key = Path(d) / name, key
    return best


def find_files_matching(root: Path, pattern) -> list[Path]:
    """The files under root whose name matches the compiled regex `pattern`, all from the one
    folder that holds the most of them (the shallowest on a tie): split files found by name."""
    by_dir: dict[str, list[Path]] = {}
    for dirpath, _, files in _walk_sorted(root):
        hits = [Path(dirpath) / f for f in files if pattern.match(f)]
        if hits:
            by_dir.setdefault(dirpath, hits)
    if not by_dir:
        return []
    return max(by_dir.values(), key=len)   # max keeps the first (shallowest) of equal lengths


def find_class_root(root: Path, classes: list[str]) -> Path | None:
    """The shallowest folder holding class folders with videos in them (hmdb51_org/, UCF-101/, ...)."""
    for dirpath, dirnames, _ in _walk_sorted(root):
        present = [c for c in classes if c in dirnames]
        if present and any(f.lower().endswith(VIDEO_EXTS) for f in os.listdir(Path(dirpath) / present[0])):
            return Path(dirpath)
    return None


def index_videos(root: Path, exts=VIDEO_EXTS, prefer=None) -> dict[str, Path]:
    """Every video file under root by file name (for layouts that name videos by id): the
    shallowest of equal names, unless `prefer(folder path)` says a deeper one's folder wins."""
    found, preferred = {}, set()
    for dirpath, _, files in _walk_sorted(root):
        wins = prefer is not None and prefer(dirpath)
        for f in files:
            if f.lower().endswith(exts) and (f not in found or (wins and f not in preferred)):
                found[f] = Path(dirpath) / f
                if wins:
                    preferred.add(f)
    return found


def _walk_sorted(root: Path):
    # Breadth-first and sorted, so "shallowest" and the first hit are the same on every machine.
    level = [root]
    while level:
        nxt = []
        for d in level:
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except OSError:
                continue
            # hidden entries (macOS ._<name> copies, .git/) are never split files, videos or folders of them
            entries = [e for e in entries if not e.name.startswith(".")]
            dirs = [e.name for e in entries if e.is_dir(follow_symlinks=True)]
            files = [e.name for e in entries if not e.is_dir(follow_symlinks=True)]
            yield str(d), dirs, files
            nxt.extend(Path(d) / x for x in dirs)
        level = nxt


def rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root))
    except ValueError:
        return str(path)


def missing_error(video_id: str, path: str, what: str) -> dict:
    return {"video_id": video_id, "path": path, "reason": f"missing file (named by {what})"}
