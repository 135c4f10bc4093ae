"""PyTorch fallback: stock `webdataset` reading + PyAV decoding in DataLoader workers.

Same batches as the DALI backend (shapes, dtypes, normalisation, window and crop rules from
clip.py); used where DALI is missing (macOS, Windows) or when asked for with `loader: torch`.

Splitting across processes: when a role has at least one tar per reader (world_size x
workers), tars are dealt out with a node splitter (rank/world_size given explicitly) and
webdataset's `split_by_worker`; otherwise every reader streams all tars of the role and keeps
every N-th sample (only small roles have so few tars, so the extra reading is cheap). Either
way ranks see disjoint samples and together see every sample once.
"""
from __future__ import annotations

import io
import itertools
import math
import random
from itertools import islice

import numpy as np
import torch
import torch.nn.functional as F

from ..shards import META_EXT, ShardSet, decode_meta
from .clip import (ERASE_RATIO, ClipSpec, StrongAug, crop_offset, crop_positions, derive_seed, flip_map,
                   jitter_order, train_antialias, train_start, view_starts)


# ---------------------------------------------------------------------------- per-clip stages

def read_frames(src, indices: list[int]) -> np.ndarray:
    """Decode the frames `indices` (ascending or not) of a video given as bytes or a path.

    Decodes sequentially up to the last index needed; indices past the end get the last frame
    (DALI's pad_mode="edge"). Returns uint8 [len(indices), H, W, 3] RGB.
    """
    import av
    wanted, last, got, frame = set(indices), max(indices), {}, None
    with av.open(io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i in wanted:
                got[i] = frame.to_ndarray(format="rgb24")
            if i >= last:
                break
        if frame is None:
            raise ValueError("no decodable video frames")
        tail = got[last] if last in got else frame.to_ndarray(format="rgb24")   # the clip's last frame
    return np.stack([got.get(i, tail) for i in indices])


def window(start: int, clip: ClipSpec) -> list[int]:
    return [start + i * clip.stride for i in range(clip.frames)]


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> float [T, 3, H, W] (0-255 values)."""
    return torch.from_numpy(frames).permute(0, 3, 1, 2).float()


def _normalize(x: torch.Tensor, clip: ClipSpec) -> torch.Tensor:
    """[T, 3, H, W] on 0-255 -> normalised [3, T, H, W] (DALI's CFHW)."""
    mean = torch.tensor(clip.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(clip.std).view(1, 3, 1, 1) * 255
    return ((x - mean) / std).permute(1, 0, 2, 3).contiguous()


def _resize(x: torch.Tensor, h: int, w: int, antialias: bool = True) -> torch.Tensor:
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=antialias)


def crop_resize(x: torch.Tensor, box: tuple, clip: ClipSpec, antialias: bool = True) -> torch.Tensor:
    """The crop `box` (top, left, height, width) of [T, 3, H, W] resized to S x S the training way
    (clip.interp: nearest neighbour at pixel centres, as DALI's INTERP_NN, or linear)."""
    top, left, ch, cw = box
    x = x[:, :, top:top + ch, left:left + cw]
    if clip.interp == "nearest":
        return F.interpolate(x, size=(clip.size, clip.size), mode="nearest-exact")
    return _resize(x, clip.size, clip.size, antialias)


def resize_short(x: torch.Tensor, side: int) -> torch.Tensor:
    """Short side to `side` pixels, aspect kept (DALI's resize_shorter)."""
    h, w = x.shape[2:]
    scale = side / min(h, w)
    return _resize(x, max(side, round(h * scale)), max(side, round(w * scale)))


def crop_box(h: int, w: int, area: tuple, ratio: tuple, rng: random.Random) -> tuple:
    """Random resized crop box (top, left, height, width), torchvision's rule with its fallback."""
    for _ in range(10):
        a = h * w * rng.uniform(*area)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = round(math.sqrt(a * r)), round(math.sqrt(a / r))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    ch, cw = (h, min(w, round(h * ratio[1]))) if w / h > ratio[1] else (min(h, round(w / ratio[0])), w)
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def train_transform(x: torch.Tensor, clip: ClipSpec, rng: random.Random, flip: bool,
                    antialias: bool = True) -> torch.Tensor:
    """[T, 3, H, W] -> [3, T, S, S]: one crop box and one flip for all frames."""
    return train_transform_flipped(x, clip, rng, flip, antialias)[0]


def train_transform_flipped(x: torch.Tensor, clip: ClipSpec, rng: random.Random, flip: bool,
                            antialias: bool = True) -> tuple[torch.Tensor, bool]:
    """train_transform, and whether the clip was mirrored (its label may follow: clip.flip_map)."""
    x = crop_resize(x, crop_box(x.shape[2], x.shape[3], clip.area, clip.ratio, rng), clip, antialias)
    flipped = bool(flip and rng.random() < 0.5)
    if flipped:
        x = x.flip(-1)
    return _normalize(x, clip), flipped


# Luma weights of the grey level that saturation blends towards (DALI's color_twist works in YIQ,
# whose Y is this; its saturation scales I and Q, which the blend below matches within a grey level).
LUMA = (0.299, 0.587, 0.114)


def strong_transform(x: torch.Tensor, clip: ClipSpec, strong: StrongAug, rng: random.Random, flipped: bool,
                     antialias: bool = True) -> torch.Tensor:
    """The strong view of decoded frames [T, 3, H, W] (0-255) -> [3, T, S, S]: its own crop box,
    temporal jitter, colour factors and cutout, one draw per clip (clip.StrongAug), mirrored when the
    weak view was. DALI's graph (dali.strong_view) draws the same distributions."""
    x = crop_resize(x, crop_box(x.shape[2], x.shape[3], strong.area, clip.ratio, rng), clip, antialias)
    j = strong.temporal_jitter
    if j and clip.frames > 1:
        x = x[jitter_order(clip.frames, rng.randint(-j, j))]
    if strong.brightness or strong.contrast or strong.saturation:   # DALI's color_twist, clamped to uint8 range
        b, c, s = (rng.uniform(1 - v, 1 + v) for v in (strong.brightness, strong.contrast, strong.saturation))
        x = b * ((x - 128) * c + 128)
        grey = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        x = (grey + (x - grey) * s).clamp(0, 255).round()
    if strong.erase and rng.random() < strong.erase:
        area = rng.uniform(*strong.erase_area)
        ratio = math.exp(rng.uniform(math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1])))
        h, w = min(math.sqrt(area / ratio), 1.0), min(math.sqrt(area * ratio), 1.0)
        top, left = round(rng.random() * (1 - h) * clip.size), round(rng.random() * (1 - w) * clip.size)
        x = x.clone()
        x[:, :, top:top + round(h * clip.size), left:left + round(w * clip.size)] = \
            torch.tensor(clip.mean).view(1, 3, 1, 1) * 255
    if flipped:
        x = x.flip(-1)
    return _normalize(x, clip)


def eval_transform(x: torch.Tensor, clip: ClipSpec, crops=(0.5,)) -> torch.Tensor:
    """[T, 3, H, W] -> [len(crops), 3, T, S, S]: short side to S, then the S x S crops at anchors
    `crops` across the long side (clip.crop_positions; the default is the one centre crop)."""
    x = resize_short(x, clip.size)
    out = []
    for pos in crops:
        top, left = crop_offset(x.shape[2], clip.size, pos), crop_offset(x.shape[3], clip.size, pos)
        out.append(_normalize(x[:, :, top:top + clip.size, left:left + clip.size], clip))
    return torch.stack(out)


def eval_views(src, frames: int, clip: ClipSpec, views: int, crops: int = 1) -> torch.Tensor:
    """The evaluation views of one encoded clip (bytes or a path) of `frames` frames:
    [views x crops, 3, T, S, S], temporal windows outer, spatial crops inner.

    The one definition of a test clip, shared by this loader and `jedi-pipe predict`.
    """
    starts = view_starts(frames, clip, views)
    decoded = to_tensor(read_frames(src, [i for s in starts for i in window(s, clip)]))
    T = clip.frames
    return torch.cat([eval_transform(decoded[k * T:(k + 1) * T], clip, crop_positions(crops)) for k in range(views)])


# ---------------------------------------------------------------------------- stream of one role

class ClipStream(torch.utils.data.IterableDataset):
    """Samples {"x", "y", "id"} of one role for this rank and DataLoader worker."""

    def __init__(self, shards: ShardSet, role: str, clip: ClipSpec, *, train: bool, flip: bool = True,
                 views: int = 1, crops: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1, workers: int = 0,
                 strong: StrongAug | None = None):
        if strong is not None and not train:
            raise ValueError("strong views are for training loaders only")
        self.strong = strong
        self.urls = [str(p) for p in shards.tars(role)]
        self.ext, self.clip, self.train, self.flip, self.views = shards.clip_ext, clip, train, flip, views
        self.crops = crops
        self.flip_map = flip_map(shards) if train and flip else None
        self.antialias = train_antialias(shards, clip)
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, workers

    def _samples(self, worker: int, rng: random.Random):
        # With at least a tar per reader (rank x worker), whole tars are dealt out: fast, but shares
        # follow the tars' sizes (a rank may hold a few clips more), and with workers each worker's
        # last batch may be short. The batches depend on the worker count (MultiDatasetLoader keeps it).
        import webdataset as wds
        readers = self.world_size * max(self.workers, 1)
        by_tar = len(self.urls) >= readers
        rank, world = self.rank, self.world_size
        ds = wds.WebDataset(
            self.urls, shardshuffle=False, empty_check=False,
            nodesplitter=(lambda src: islice(src, rank, None, world)) if by_tar else None,
            workersplitter=wds.split_by_worker if by_tar else None,
            select_files=lambda name: name.endswith((f".{self.ext}", f".{META_EXT}")))
        samples = iter(ds) if by_tar else islice(ds, rank * max(self.workers, 1) + worker, None, readers)
        if self.train:   # a shuffle buffer, like DALI's reader
            samples = wds.shuffle(256, 64, rng=rng)(samples)
        return samples

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info else 0
        if info:
            torch.set_num_threads(1)      # parallelism comes from the workers
        rng = random.Random(derive_seed(self.seed, self.rank, worker))
        # the strong views draw from their own generator: turning them on leaves the weak views as they were
        strong_rng = random.Random(derive_seed(self.seed, self.rank, worker, "strong"))
        for _ in itertools.count() if self.train else range(1):
            n = 0
            for sample in self._samples(worker, rng):
                yield self._clip(sample, rng, strong_rng)
                n += 1
            if n == 0:      # nothing for this reader: stop instead of spinning forever
                return

    def _clip(self, sample: dict, rng: random.Random, strong_rng: random.Random) -> dict:
        meta = decode_meta(sample[META_EXT])
        data, frames, y = sample[self.ext], meta["frames"], meta["label"]
        if self.train:
            decoded = read_frames(data, window(train_start(frames, self.clip, rng.random()), self.clip))
            fmap = self.flip_map
            can_flip = self.flip and (fmap is None or (y >= 0 and fmap[y] >= 0))
            decoded = to_tensor(decoded)
            x, flipped = train_transform_flipped(decoded, self.clip, rng, can_flip, self.antialias)
            y = fmap[y] if flipped and fmap is not None else y     # the label follows the mirror image
            if self.strong is not None:   # the same decoded window, the same flip
                strong = strong_transform(decoded, self.clip, self.strong, strong_rng, flipped, self.antialias)
                return {"x": x, "y": y, "id": meta["sample_id"], "x_strong": strong}
        else:
            x = eval_views(data, frames, self.clip, self.views, self.crops)
        return {"x": x, "y": y, "id": meta["sample_id"]}


class TorchRoleLoader:
    """Batches {"x", "y", "id"} (and "x_strong" with `strong`) of one role, as DaliRoleLoader;
    `threads` DataLoader workers."""

    def __init__(self, shards: ShardSet, role: str, clip: ClipSpec, batch_size: int, *, train: bool,
                 flip: bool = True, views: int = 1, crops: int = 1, seed: int = 0, rank: int = 0,
                 world_size: int = 1, threads: int = 2, strong: StrongAug | None = None):
        self.stream = ClipStream(shards, role, clip, train=train, flip=flip, views=views, crops=crops, seed=seed,
                                 rank=rank, world_size=world_size, workers=threads, strong=strong)
        self.batch_size, self.threads = batch_size, threads

    def __iter__(self):
        # a generator of its own: a DataLoader draws its workers' base seed from the generator it is
        # given, else from torch's global one, which the model's dropout shares (a resumed run rebuilds
        # loaders at other points than an unbroken one, so its dropout would differ)
        loader = torch.utils.data.DataLoader(self.stream, batch_size=self.batch_size, num_workers=self.threads,
                                             prefetch_factor=2 if self.threads else None,
                                             generator=torch.Generator())
        for b in loader:
            out = {"x": b["x"], "y": b["y"].long(), "id": b["id"].long()}
            if "x_strong" in b:
                out["x_strong"] = b["x_strong"]
            yield out
