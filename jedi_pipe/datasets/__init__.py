"""Dataset adapters: one per source layout, each turning a downloaded copy into a Listing.

Every adapter has the same signature, `list_videos(root, split=1, videos=None,
annotations=None) -> Listing`: `root` is where the copy was unpacked (the canonical folders and
split files are searched for anywhere under it, since real copies are unpacked under many
names), `videos` / `annotations` point at the two halves when they live elsewhere.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import folder, hmdb51, kinetics400, ssv2, ucf101
from .common import DatasetError, Listing, VideoItem

ADAPTERS = {
    "hmdb51": hmdb51.list_videos,
    "ucf101": ucf101.list_videos,
    "kinetics400": kinetics400.list_videos,
    "ssv2": ssv2.list_videos,
    "folder": folder.list_videos,
}


# Where a dataset is looked for without --root: the folder names under data/ that MMAction2's
# download scripts use (relative to the working directory), then $JEDI_PIPE_DATA/<dataset>.
DATA_DIRS = {"hmdb51": ("hmdb51",), "ucf101": ("ucf101",), "kinetics400": ("kinetics400",),
             "ssv2": ("sthv2", "ssv2")}
DATA_ENV = "JEDI_PIPE_DATA"


def default_root(dataset: str) -> Path:
    """The first existing folder of the default places, or a DatasetError naming them all."""
    if dataset not in ADAPTERS:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {', '.join(ADAPTERS)}")
    places = [Path("data") / d for d in DATA_DIRS.get(dataset, ())]
    env = os.environ.get(DATA_ENV)
    if env:
        places.append(Path(env) / dataset)
    for p in places:
        if p.is_dir():
            return p
    looked = ", ".join(str(p) for p in places) or "nowhere"
    hint = "" if env else f" (${DATA_ENV} is not set)"
    raise DatasetError(f"no --root given and no {dataset} folder in the default places ({looked}{hint}); "
                       f"pass --root DIR, the folder the dataset was unpacked into")


def list_videos(dataset: str, root, split: int = 1, videos=None, annotations=None) -> Listing:
    if not isinstance(dataset, str) or dataset not in ADAPTERS:
        raise DatasetError(f"unknown dataset {dataset!r}; known: {', '.join(ADAPTERS)}")
    if root is None:   # the two halves given apart: paths in the manifest are relative to what they share
        halves = [str(Path(p).resolve()) for p in (videos, annotations) if p is not None]
        if not halves:
            raise DatasetError(f"{dataset}: give the dataset's root (--root), or --videos and --annotations")
        root = os.path.commonpath(halves)
    try:
        return ADAPTERS[dataset](root, split=split, videos=videos, annotations=annotations)
    except OSError as e:   # an unreadable folder or file met while searching: the input is unusable
        raise DatasetError(f"cannot read {e.filename or root}: {e.strerror or e}") from None


_UCF_GROUP = re.compile(r"^(v_.+_g\d+)_c\d+$")


def source_group(dataset: str, video_id: str, class_name: str) -> str:
    """The clips that share a scene with this one (a UCF101 group: one actor and place; an HMDB51
    source movie; a Kinetics-400 YouTube video), named by what they share; the clip's own id
    where the dataset has no groups. Val is drawn apart from the labeled clips' groups, as the
    official test splits are: a val clip of a labeled clip's scene would score memory, not skill."""
    if dataset == "ucf101":   # v_ApplyEyeMakeup_g08_c01 -> v_ApplyEyeMakeup_g08
        m = _UCF_GROUP.match(video_id)
        return m[1] if m else video_id
    if dataset == "hmdb51":   # <movie>_<class>_<body>_<camera>_<people>_<view>_<quality>_<n> -> <movie>
        i = video_id.rfind(f"_{class_name}_")
        return video_id[:i] if i > 0 else video_id
    if dataset == "kinetics400":   # <youtube id>_<start>_<end> -> <youtube id>
        return video_id.rsplit("_", 2)[0] if video_id.count("_") >= 2 else video_id
    return video_id


__all__ = ["ADAPTERS", "DATA_DIRS", "DatasetError", "Listing", "VideoItem", "default_root", "list_videos",
           "source_group"]
