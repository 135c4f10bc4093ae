"""Loaders: shard folders -> normalised clip batches for PyTorch (DESIGN.md section 4).

Two backends with the same output (format, clips, windows, crops, flips; the pixels differ by
the decoders' YUV -> RGB conversions, within 3 grey levels of luma on average: test_backends_agree): `dali` (a DALI graph end to end; GPU decode when CUDA is
visible, DALI's CPU path otherwise) and `torch` (stock webdataset + PyAV in DataLoader workers,
the fallback where DALI is missing). `backend="auto"` picks dali when it imports and can decode
the shards' codec on this machine.

Training, `make_loaders(...)` -> MultiDatasetLoader, an endless iterator of steps:

    step = {dataset name: {
        "x":    float32 [B, C, T, H, W]    labeled clips, normalised (mean/std on 0-1 values)
        "y":    int64   [B]                class indices
        "id":   int64   [B]                sample_id (manifest.parquet) of each clip
        "x_u":  float32 [B_u, C, T, H, W]  unlabeled clips, B_u = max(1, round(unlabeled_ratio * B))
        "id_u": int64   [B_u]              their sample_ids (labels are never loaded)
        "x_us": float32 [B_u, C, T, H, W]  with `strong`: the strong view of each x_u clip
    }, ...}

`x_u`/`id_u` are absent when unlabeled_ratio is 0, `x_us` when `strong` is None (the default).
Weak and strong views (`strong=StrongAug(...)` or a dict of its fields, clip.StrongAug): x_u is
the weak view (the crop and flip above); x_us[i] is cut from the same decoded window of the same
clip (id_u[i]: one decode, two augmentation branches) with its own crop box of StrongAug.area,
a temporal shift of up to temporal_jitter frames (edge-padded), brightness/contrast/saturation
factors and a cutout box, all drawn once per clip (every frame gets the same), mirrored exactly
when x_u[i] is. Labeled clips get no strong view. Epoch length: `loader.steps_per_epoch` =
max over datasets of ceil(labeled clips / (world_size * B)). Seeds and resume (mixing.py): batches
are a function of (seed, epoch, step); save `loader.state_dict()` ({"epoch", "step"}) with the
checkpoint and `load_state_dict` it into a new loader before iterating.
Training clips: random window of T frames at stride s, random resized crop (resampled
linearly, or with nearest neighbour with ClipSpec.interp="nearest": clip.TRAIN_INTERP says why), horizontal flip
unless the dataset says flip=False. Where the card has a flip map (ssv2: the pairs of
preprocess/ssv2.yaml, flips.py), a flipped clip takes its mirror class ("from left to right" <->
"from right to left"), classes with a direction and no mirror class are never flipped, and neither
are unlabeled clips (clip.flip_map: the one rule, applied by both role loaders whatever builds them).

Evaluation, `make_eval_loader(...)` -> an iterable; every `iter()` is one pass over this rank's
share of the test role, each clip exactly once (no padding), batches:

    {"x": float32 [B, V, C, T, H, W]  V = views x crops: `views` temporal windows (centres of
                                      `views` equal parts; 1 is the centred window), short side
                                      resized, `crops` crops across the long side (1: centre;
                                      3: left, centre, right, the standard 3-crop test); windows
                                      outer, crops inner
     "y": int64 [B], "id": int64 [B]}

The last batch of a rank may be smaller. Over world_size ranks the shares are disjoint and
cover every test clip once. Clips shorter than the window are padded by repeating their last
frame (never dropped). On a GPU machine with DALI, x lives on the GPU; y and id on the CPU.

Underneath, role loaders (`role_loader(backend)(shards, role, clip, B, train=..., ...)`, i.e.
DaliRoleLoader / TorchRoleLoader) give {"x", "y", "id"} batches of one role; training ones
are endless. Unlabeled samples carry y = -1 there (the shards hold no label for them). With
`strong=` (training only) their batches also hold "x_strong", float32 of x's shape.
"""
from __future__ import annotations

import logging

from ..errors import InputError
from ..shards import ShardSet, open_shards
from .clip import KINETICS_MEAN, KINETICS_STD, ClipSpec, StrongAug, as_clip, as_strong
from .mixing import MultiDatasetLoader

__all__ = ["ClipSpec", "KINETICS_MEAN", "KINETICS_STD", "MultiDatasetLoader", "StrongAug", "as_strong",
           "make_loaders", "make_eval_loader", "resolve_backend", "role_loader"]

log = logging.getLogger(__name__)
BACKENDS = ("auto", "dali", "torch")


def resolve_backend(backend: str, shard_sets: list[ShardSet] = ()) -> str:
    """"dali" or "torch" for `backend` in auto|dali|torch; an error says why dali is unusable."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown loader backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    try:
        import nvidia.dali  # noqa: F401
        from .dali import check_decodable, decode_device
        for s in shard_sets:
            check_decodable(s, decode_device(s)[0])
    except (ImportError, ValueError) as e:
        if backend == "dali":
            raise InputError(f"the DALI loader cannot run here: {e}") from None
        log.info("DALI loader unusable (%s); using the torch loader", e)
        return "torch"
    return "dali"


def role_loader(backend: str):
    """The role-loader class of a resolved backend (DaliRoleLoader or TorchRoleLoader)."""
    if backend == "dali":
        from .dali import DaliRoleLoader
        return DaliRoleLoader
    from .torch import TorchRoleLoader
    return TorchRoleLoader


def make_loaders(datasets: list[dict], clip: ClipSpec | dict | None = None, batch_size: int = 8,
                 unlabeled_ratio: float = 1.0, backend: str = "auto", seed: int = 0, rank: int = 0,
                 world_size: int = 1, threads: int = 2,
                 strong: StrongAug | dict | None = None) -> MultiDatasetLoader:
    """Training loader over several datasets.

    datasets: [{"shards": folder, "name": optional (default: the card's name),
                "flip": optional bool (default True; direction classes follow clip.flip_map)}, ...]
    clip: ClipSpec or dict of its fields (frames, stride, size, area, ratio, mean, std, interp).
    threads: per role loader, DALI worker threads or DataLoader workers.
    strong: StrongAug or dict of its fields: unlabeled clips also get a strong view, "x_us"; None: none.
    """
    if not isinstance(datasets, (list, tuple)) or not datasets \
            or not all(isinstance(d, dict) and "shards" in d for d in datasets):
        raise InputError(f'datasets must be a non-empty list of {{"shards": folder, ...}} dicts, got {datasets!r}')
    for name, value, least in (("batch_size", batch_size, 1), ("threads", threads, 0), ("world_size", world_size, 1),
                               ("rank", rank, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"{name} must be an integer >= {least}, got {value!r}")
    if rank >= world_size:
        raise InputError(f"rank must be below world_size, got rank {rank} of world_size {world_size}")
    if not unlabeled_ratio >= 0:
        raise InputError(f"unlabeled_ratio must be at least 0, got {unlabeled_ratio}")
    clip = as_clip(clip)
    entries = []
    for d in datasets:
        shards = open_shards(d["shards"])
        name = d.get("name") or shards.name
        entries.append((name, shards, d.get("flip", True)))
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be unique, got {names}; set 'name' per dataset")
    loader = role_loader(resolve_backend(backend, [e[1] for e in entries]))
    return MultiDatasetLoader(entries, clip, batch_size, unlabeled_ratio, loader, seed=seed, rank=rank,
                              world_size=world_size, threads=threads, strong=strong)


def make_eval_loader(shards_dir: str | ShardSet, clip: ClipSpec | dict | None = None, batch_size: int = 8,
                     views: int = 1, crops: int = 1, backend: str = "auto", rank: int = 0, world_size: int = 1,
                     threads: int = 2, role: str = "test"):
    """Evaluation iterable over one dataset's `role` (default test); see the module docstring.

    The one constructor of evaluation loaders: the trainer, predict and the benchmarks use it.
    """
    shards = shards_dir if isinstance(shards_dir, ShardSet) else open_shards(shards_dir)
    if views < 1 or crops < 1:
        raise ValueError(f"views and crops must be >= 1, got views={views}, crops={crops}")
    if not shards.count(role):   # both backends would fail deep inside on no tars
        raise InputError(f"{shards.root} has no {role} clips (its roles: "
                         f"{', '.join(f'{r} {n}' for r, n in shards.card['counts'].items())})")
    loader = role_loader(resolve_backend(backend, [shards]))
    # DALI's reader needs a clip per reader: with more ranks than clips, the ranks beyond read nothing
    readers = min(world_size, shards.count(role))
    if rank >= readers:
        return []
    return loader(shards, role, as_clip(clip), batch_size, train=False, views=views, crops=crops, rank=rank,
                  world_size=readers, threads=threads)
