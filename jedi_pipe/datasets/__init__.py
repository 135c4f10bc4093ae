"""Dataset adapters: one per source layout, each turning a downloaded copy into a Listing.

Every adapter has the same signature, `list_videos(root, split=1, videos=None,
annotations=None) -> Listing`: `root` is where the copy was unpacked (the canonical folders and
split files are searched for anywhere under it, since real copies are unpacked under many
names), `videos` / `annotations` point at the two halves when they live elsewhere.
"""
from __future__ import annotations

from . import folder, hmdb51, kinetics400, ssv2, ucf101
from .common import DatasetError, Listing, VideoItem

ADAPTERS = {
    "hmdb51": hmdb51.list_videos,
    "ucf101": ucf101.list_videos,
    "kinetics400": kinetics400.list_videos,
    "ssv2": ssv2.list_videos,
    "folder": folder.list_videos,
}


def list_videos(dataset: str, root, split: int = 1, videos=None, annotations=None) -> Listing:
    if not isinstance(dataset, str) or dataset not in ADAPTERS:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {', '.join(ADAPTERS)}")
    try:
        return ADAPTERS[dataset](root, split=split, videos=videos, annotations=annotations)
    except OSError as e:   # an unreadable folder or file met while searching: the input is unusable
        raise DatasetError(f"cannot read {e.filename or root}: {e.strerror or e}") from None


__all__ = ["ADAPTERS", "DatasetError", "Listing", "VideoItem", "list_videos"]
