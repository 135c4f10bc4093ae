"""What a clip is, shared by both backends: window, crop size, normalisation, view placement.

The DALI graph (dali.py) and the PyTorch fallback (torch.py) compute the same windows with the
same integer formulas, written once here in plain Python and once as graph arithmetic there.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields

from ..flips import flips_of_card

# Resampling of the training crops (random resized crop, weak and strong views). Linear is the
# default: chosen on val (docs/method.md: nearest neighbour cost the demo's JEDI students 2 points
# of val top-1). Nearest is the fast option of the DALI CPU path: the linear resampler costs 2.7 ms
# a clip of 16 frames at 112 px against 0.4 ms (bench/README.md), the difference between 0.71 and
# 0.90 of the decode bound. Nearest repeats or drops whole pixel rows and columns (scales 0.9-1.8x
# on 128-px shards) where linear blends them; evaluation always resizes linearly.
TRAIN_INTERP = ("linear", "nearest")

# torchvision's Kinetics-400 video statistics, on 0-1 pixel values.
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)


@dataclass(frozen=True)
class ClipSpec:
    frames: int = 16                     # T: frames per clip
    stride: int = 2                      # s: take every s-th frame of the shard clip (12 fps by default)
    size: int = 112                      # output height = width, pixels
    area: tuple = (0.25, 1.0)            # training random-resized-crop: area fraction range
    ratio: tuple = (3 / 4, 4 / 3)        # and aspect ratio (width / height) range
    mean: tuple = KINETICS_MEAN          # per channel (RGB), 0-1 scale
    std: tuple = KINETICS_STD
    interp: str = "linear"               # training crops' resampling: "linear" or "nearest" (see TRAIN_INTERP)

    def __post_init__(self):
        if self.frames < 1 or self.stride < 1 or self.size < 8:
            raise ValueError(f"bad clip {self}: need frames >= 1, stride >= 1, size >= 8")
        if self.interp not in TRAIN_INTERP:
            raise ValueError(f"bad clip {self}: interp must be one of {', '.join(TRAIN_INTERP)}")

    @property
    def span(self) -> int:
        """Source frames one window covers: first to last sampled frame, inclusive."""
        return (self.frames - 1) * self.stride + 1


def as_clip(clip: ClipSpec | dict | None) -> ClipSpec:
    """A ClipSpec from a ClipSpec, a dict of its fields (unknown keys are an error), or None."""
    if clip is None or isinstance(clip, ClipSpec):
        return clip or ClipSpec()
    unknown = set(clip) - {f.name for f in fields(ClipSpec)}
    if unknown:
        raise ValueError(f"unknown clip settings {sorted(unknown)}; known: {[f.name for f in fields(ClipSpec)]}")
    return ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in clip.items()})


@dataclass(frozen=True)
class StrongAug:
    """The strong view of a training clip (FixMatch-style), drawn once per clip, never per frame.

    The strong view is cut from the same decoded window as the weak one (the crop and flip of
    ClipSpec) and shares its flip decision; 0 switches an augmentation off.
    """
    area: tuple = (0.08, 1.0)            # random-resized-crop area fraction range (aspect: ClipSpec.ratio)
    brightness: float = 0.4              # brightness factor uniform in [1 - b, 1 + b]: x * f
    contrast: float = 0.4                # contrast factor uniform in [1 - c, 1 + c]: (x - 128) * f + 128
    saturation: float = 0.4              # saturation factor uniform in [1 - s, 1 + s]: grey + (x - grey) * f
    temporal_jitter: int = 2             # the whole window shifted by d in -j..j sampled frames, edge-padded
    erase: float = 0.5                   # probability of one cutout box, filled with the mean colour
    erase_area: tuple = (0.02, 0.2)      # its area fraction range (aspect log-uniform in ERASE_RATIO)

    def __post_init__(self):
        # each message starts with the key, as config.py's checks do (strong.brightness: ...)
        for name in ("area", "erase_area"):
            value = list(getattr(self, name))
            if len(value) != 2 or not 0 < value[0] <= value[1] <= 1:
                raise ValueError(f"{name}: a range [low, high] with 0 < low <= high <= 1, got {value}")
        for name in ("brightness", "contrast", "saturation", "erase"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name}: in [0, 1] (0: off), got {getattr(self, name)}")
        if isinstance(self.temporal_jitter, bool) or not isinstance(self.temporal_jitter, int) \
                or self.temporal_jitter < 0:
            raise ValueError(f"temporal_jitter: a whole number of frames >= 0, got {self.temporal_jitter!r}")


ERASE_RATIO = (0.3, 3.3)                 # cutout box aspect range (width / height), torchvision's


def as_strong(strong: StrongAug | dict | None) -> StrongAug | None:
    """A StrongAug from a StrongAug, a dict of its fields (unknown keys are an error), or None (no strong view)."""
    if strong is None or isinstance(strong, StrongAug):
        return strong
    names = [f.name for f in fields(StrongAug)]
    unknown = set(strong) - set(names)
    if unknown:
        raise ValueError(f"unknown strong augmentation settings {sorted(unknown)}; known: {names}")
    return StrongAug(**{k: tuple(v) if isinstance(v, list) else v for k, v in strong.items()})


def jitter_order(frames: int, shift: int) -> list[int]:
    """Frame order of a window shifted by `shift` frames inside itself, edge-padded (temporal jitter)."""
    return [min(max(t + shift, 0), frames - 1) for t in range(frames)]


def max_start(frames: int, clip: ClipSpec) -> int:
    """Last window start that still fits; 0 for clips shorter than the span (edge-padded)."""
    return max(frames - clip.span, 0)


def train_start(frames: int, clip: ClipSpec, u: float) -> int:
    """Random window start from u in [0, 1): uniform over 0..max_start."""
    m = max_start(frames, clip)
    return min(int(u * (m + 1)), m)


def view_starts(frames: int, clip: ClipSpec, views: int) -> list[int]:
    """Evaluation window starts: the centres of `views` equal parts of 0..max_start.

    One view is the centred window; several spread evenly over the clip.
    """
    m = max_start(frames, clip)
    return [m * (2 * k + 1) // (2 * views) for k in range(views)]


def crop_positions(crops: int) -> list[float]:
    """Evaluation crop anchors along the long side, 0 = start, 1 = end: one crop is centred; three
    are the standard left / centre / right (the short side is covered whole, so it needs none)."""
    return [0.5] if crops == 1 else [k / (crops - 1) for k in range(crops)]


def crop_offset(length: int, size: int, pos: float) -> int:
    """First pixel of a `size` crop at anchor `pos` of `length` pixels, rounded half up as DALI does."""
    return int(pos * (length - size) + 0.5)


def flip_map(shards) -> tuple[int, ...] | None:
    """The one rule for horizontal flips in training, whatever builds the loader (trainer, make_loaders,
    a role loader), read from the card's flip map (flips.py): None when the dataset has none (flip
    freely); otherwise per class index the class of its mirror image (itself for a class without a
    direction), -1 for a class with a direction and no partner, whose clips are never flipped.
    Unlabeled clips of such a dataset are never flipped."""
    flips = flips_of_card(shards.card, str(shards.root))
    if flips is None:
        return None
    index = {c: i for i, c in enumerate(shards.classes)}
    fmap = list(range(len(index)))
    for a, b in flips["pairs"]:
        fmap[index[a]], fmap[index[b]] = index[b], index[a]
    for c in flips["never"]:
        fmap[index[c]] = -1
    return tuple(fmap)


def train_antialias(shards, clip: ClipSpec) -> bool:
    """Antialias the training crop only where it can shrink a lot (shard short side > 1.5 x size).

    Crops of 128-px shards to 112 px are mostly enlarged (shrunk 1.14x at most): antialiasing
    changes nothing visible there but costs ~0.5 ms a clip on DALI's CPU path (bench/README.md).
    """
    return shards.card["encoding"]["short_side"] > 1.5 * clip.size


def derive_seed(*parts) -> int:
    """A 31-bit seed from any parts (seed, epoch, dataset, role, rank, worker)."""
    return int(hashlib.sha1(":".join(map(str, parts)).encode()).hexdigest()[:8], 16) & 0x7FFFFFFF
