"""DALI backend: one pipeline per (dataset, role), a DALI graph from tar bytes to normalised clips.

    readers.webdataset (clip bytes + meta.i32 as INT32)      -- shard_id/num_shards = rank/world
      -> window start from meta `frames` (graph arithmetic)   -- random (train) / centred views (eval)
      -> decoders.video(start_frame, sequence_length=T, stride=s, pad_mode="edge")
      -> random_resized_crop (linear, or nearest neighbour: clip.interp) + coin-flip mirror (train)
         |  resize short side (linear) + centre crop (eval)
      -> crop_mirror_normalize(output_layout="CFHW", uint8): crop, mirror, transpose
      -> DALIGenericIterator -> Normalize: float32 (x / 255 - mean) / std, numpy on the CPU, torch on a GPU

With a StrongAug (training), a second branch cuts the strong view from the same decoded window:
random_resized_crop (its own box) -> sequence_rearrange (temporal jitter) -> color_twist
(brightness, contrast, saturation) -> erase (cutout) -> crop_mirror_normalize with the weak
view's mirror decision -> Normalize. Its random values are drawn per sample, so every frame gets
the same.

No Python runs per sample: labels, frame counts and sample ids come from the shard's binary
`meta.i32` component. The decoder runs on the GPU (`mixed`) when CUDA is visible and NVDEC
takes the clips' frame size (VP9 needs 128x128), on the CPU otherwise.
"""
from __future__ import annotations

import functools
import logging

from ..errors import InputError
from ..shards import META_EXT, META_FIELDS, ShardSet
from .clip import ERASE_RATIO, ClipSpec, StrongAug, crop_positions, flip_map, train_antialias

log = logging.getLogger(__name__)

READER = "reader"                     # the reader's name, which the iterator follows for epochs
OUTPUTS = ["x", "y", "id"]
SHUFFLE_BUFFER = 512                  # encoded clips held per training reader for shuffling
FORBIDDEN_OPS = ("PythonFunction", "ExternalSource")   # the hot path is graph-only


# Smallest frames (height, width) that NVDEC decodes, by the shards' container: VP9 in WebM,
# H.264 in MP4. Seen on an H200 (DALI 2.4): a 60x40 VP9 clip is refused ("supported: 128x128"),
# 72x40 H.264 decodes. Smaller clips decode on DALI's CPU decoder; the rest runs on the GPU.
NVDEC_MIN = {"webm": (128, 128), "mp4": (16, 48)}


@functools.lru_cache(maxsize=None)
def _gpu() -> int | None:
    import torch
    return torch.cuda.current_device() if torch.cuda.is_available() else None


@functools.lru_cache(maxsize=None)
def smallest_frame(root: str) -> tuple[int, int]:
    """(height, width) of the smallest frame in a shard folder: NVDEC refuses frames below its minimum."""
    from ..shards import open_shards
    t = open_shards(root).manifest(columns=["height", "width"]).to_pydict()
    return (min(t["height"], default=0), min(t["width"], default=0))


def decode_device(shards: ShardSet | None = None) -> tuple[str, int | None]:
    """(decoder device, GPU id or None) for a shard set, logged once per choice:
    ("mixed", gpu) when CUDA is visible and NVDEC takes the shards' frame sizes; ("cpu", gpu) when
    the frames are smaller than NVDEC's minimum (CPU decode, resize/crop/normalise on the GPU);
    ("cpu", None) without a GPU."""
    gpu = _gpu()
    if gpu is None:
        return say_decode_device("cpu", None, "no GPU visible, decoding on the CPU (device='cpu')")
    if shards is not None:
        need = NVDEC_MIN.get(shards.clip_ext, (0, 0))
        h, w = smallest_frame(str(shards.root))
        if h < need[0] or w < need[1]:
            return say_decode_device("cpu", gpu, f"{shards.root}: {w}x{h} frames are below NVDEC's {need[1]}x{need[0]} "
                                     f"minimum for .{shards.clip_ext}; decoding on the CPU, the rest on GPU {gpu}")
    return say_decode_device("mixed", gpu, f"decoding on GPU {gpu} (device='mixed')")


@functools.lru_cache(maxsize=None)
def say_decode_device(device: str, gpu: int | None, why: str) -> tuple[str, int | None]:
    log.info("DALI loader: %s", why)
    return device, gpu


def check_decodable(shards: ShardSet, device: str) -> None:
    if shards.clip_ext == "mp4" and device == "cpu":
        raise InputError(f"{shards.root}: H.264 (mp4) clips decode only on a GPU with DALI (NVDEC, frames of at "
                         f"least {NVDEC_MIN['mp4'][1]}x{NVDEC_MIN['mp4'][0]}); use the torch loader or re-shard "
                         f"with --codec vp9")


def train_interp(clip: ClipSpec):
    """DALI's interpolation type of the training crops (clip.interp)."""
    from nvidia.dali import types
    return types.INTERP_NN if clip.interp == "nearest" else types.INTERP_LINEAR


def strong_view(video, clip: ClipSpec, strong: StrongAug, antialias: bool):
    """Graph of the strong view (before normalisation) of decoded frames [F, H, W, C] uint8."""
    import numpy as np
    from nvidia.dali import fn, types
    import nvidia.dali.math as dmath

    def factor(strength):   # uniform in [1 - strength, 1 + strength], one per clip
        return fn.random.uniform(range=[1.0 - strength, 1.0 + strength]) if strength else 1.0

    video = fn.random_resized_crop(video, size=[clip.size, clip.size], random_area=list(strong.area),
                                   random_aspect_ratio=list(clip.ratio), antialias=antialias,
                                   interp_type=train_interp(clip))
    j = strong.temporal_jitter
    if j and clip.frames > 1:   # clip.jitter_order as graph arithmetic
        shift = fn.cast(fn.random.uniform(values=[float(d) for d in range(-j, j + 1)]), dtype=types.INT32)
        order = dmath.clamp(types.Constant(np.arange(clip.frames, dtype=np.int32)) + shift, 0, clip.frames - 1)
        video = fn.sequence_rearrange(video, new_order=order)
    if strong.brightness or strong.contrast or strong.saturation:
        video = fn.color_twist(video, brightness=factor(strong.brightness), contrast=factor(strong.contrast),
                               saturation=factor(strong.saturation))
    if strong.erase:   # one box of normalised size (h, w), a zero-size box when the coin says no
        on = fn.cast(fn.random.coin_flip(probability=strong.erase), dtype=types.FLOAT)
        area = fn.random.uniform(range=list(strong.erase_area))
        ratio = dmath.exp(fn.random.uniform(range=[float(np.log(r)) for r in ERASE_RATIO]))
        h, w = dmath.min(dmath.sqrt(area / ratio), 1.0), dmath.min(dmath.sqrt(area * ratio), 1.0)
        u = fn.random.uniform(range=[0.0, 1.0], shape=[2])
        video = fn.erase(video, anchor=fn.stack(u[0] * (1.0 - h), u[1] * (1.0 - w)), shape=fn.stack(on * h, on * w),
                         normalized=True, axis_names="HW", fill_value=[255 * m for m in clip.mean])
    return video


def build_pipeline(shards: ShardSet, role: str, clip: ClipSpec, batch_size: int, *, train: bool,
                   flip: bool = True, views: int = 1, crops: int = 1, seed: int = 0, rank: int = 0,
                   world_size: int = 1, threads: int = 2, strong: StrongAug | None = None):
    """The (built) DALI pipeline of one role. Outputs x, y (meta label), id (meta sample_id), and
    with `strong` (training only) x_strong, the strong view of the same decoded window."""
    from nvidia.dali import fn, pipeline_def, types
    import nvidia.dali.math as dmath

    device, device_id = decode_device(shards)
    check_decodable(shards, device)
    antialias = train_antialias(shards, clip)

    fmap = flip_map(shards) if train and flip else None

    def crop_mirror(video, mirror, pos=0.5):   # uint8 CFHW: Normalize (after the iterator) makes it float
        return fn.crop_mirror_normalize(video, crop=[clip.size, clip.size], crop_pos_x=pos, crop_pos_y=pos,
                                        mirror=mirror, dtype=types.UINT8, output_layout="CFHW")

    def lookup(key, values, default):   # per class index (the label), -1 (unlabeled) gets `default`
        return fn.lookup_table(key, keys=list(range(len(values))), values=values, default_value=default,
                               dtype=types.INT32)

    @pipeline_def(batch_size=batch_size, num_threads=max(1, threads), device_id=device_id, seed=seed)   # 0: the torch loader's in-process reading
    def pipeline():
        encoded, meta = fn.readers.webdataset(
            paths=[str(p) for p in shards.tars(role)], index_paths=[str(p) for p in shards.indexes(role)],
            ext=[shards.clip_ext, META_EXT], dtypes=[types.UINT8, types.INT32],
            missing_component_behavior="error", shard_id=rank, num_shards=world_size,
            random_shuffle=train, initial_fill=SHUFFLE_BUFFER, pad_last_batch=not train, name=READER,
            # without it a training reader moves on to the next rank's shard at every wrap, and
            # ranks overlap from the second pass on (MultiDatasetLoader rotates shards per block)
            stick_to_shard=train)
        label = meta[META_FIELDS.index("label")]
        last = dmath.max(meta[META_FIELDS.index("frames")] - clip.span, 0)   # clip.max_start
        if train:   # clip.train_start
            u = fn.random.uniform(range=[0.0, 1.0])
            starts = [fn.cast(dmath.min(dmath.floor(u * (last + 1)), last), dtype=types.INT32)]
        else:       # clip.view_starts
            starts = [last * (2 * k + 1) // (2 * views) for k in range(views)]
        out, extra = [], []
        for start in starts:
            video = fn.decoders.video(encoded, device=device, start_frame=start, sequence_length=clip.frames,
                                      stride=clip.stride, pad_mode="edge")
            if device == "cpu" and device_id is not None:   # small frames: CPU decode, GPU for the rest
                video = video.gpu()
            if train:   # one crop box and one flip per sample, applied to every frame
                decoded = video
                video = fn.random_resized_crop(video, size=[clip.size, clip.size], random_area=list(clip.area),
                                               random_aspect_ratio=list(clip.ratio), antialias=antialias,
                                               interp_type=train_interp(clip))
                mirror = fn.random.coin_flip(probability=0.5) if flip else 0
                if fmap is not None:   # classes without a mirror class (and unlabeled clips) never flip
                    mirror = mirror * lookup(label, [int(m >= 0) for m in fmap], 0)
                    label = mirror * lookup(label, [max(m, 0) for m in fmap], 0) + (1 - mirror) * label
                if strong is not None:   # same window, same flip decision, its own crop and the rest
                    extra.append(crop_mirror(strong_view(decoded, clip, strong, antialias), mirror))
            else:
                video = fn.resize(video, resize_shorter=clip.size)
                mirror = 0
            # eval: `crops` crops across the long side (the short side is the crop size, it cannot move)
            for pos in [0.5] if train else crop_positions(crops):
                out.append(crop_mirror(video, mirror, pos))
        x = out[0] if train else fn.stack(*out)     # eval: [views x crops, C, T, H, W] per clip
        return (x, label, meta[META_FIELDS.index("sample_id")], *extra)

    pipe = pipeline()
    pipe.build()
    return pipe


class Normalize:
    """uint8 [..., C, T, H, W] batches from the graph -> float32 (x / 255 - mean) / std.

    Why after the iterator and not in crop_mirror_normalize: on DALI's CPU path the float output
    cost ~1 ms a clip (16 x 112 x 112) in the loader benchmark, numpy's here ~0.2 ms, single-
    threaded; torch's CPU kernels would spread it over its intra-op threads, whose waiting cost
    10x that much CPU time on a loaded 2-core machine. GPU batches (the mixed path) are
    normalised by torch on their device.
    """

    def __init__(self, clip: ClipSpec):
        import numpy as np
        self.scale = (1 / (255 * np.array(clip.std, np.float32))).reshape(3, 1, 1, 1)
        self.bias = (-np.array(clip.mean, np.float32) / np.array(clip.std, np.float32)).reshape(3, 1, 1, 1)
        self.on_device = {}

    def __call__(self, x):
        import numpy as np
        import torch
        if x.device.type != "cpu":
            if x.device not in self.on_device:
                self.on_device[x.device] = (torch.from_numpy(self.scale).to(x.device),
                                            torch.from_numpy(self.bias).to(x.device))
            scale, bias = self.on_device[x.device]
            return x.float().mul_(scale).add_(bias)
        out = x.numpy().astype(np.float32)    # a plain cast, then float-only ops: 0.17 ms a clip, mixed 0.28
        out *= self.scale
        out += self.bias
        return torch.from_numpy(out)


class DaliRoleLoader:
    """Batches {"x", "y", "id"} of one role (see jedi_pipe.loaders), and "x_strong" with `strong`
    (training only). Training: endless, reshuffled as the reader wraps. Evaluation: one pass per
    `iter()`, this rank's share exactly once."""

    def __init__(self, shards: ShardSet, role: str, clip: ClipSpec, batch_size: int, *, train: bool,
                 flip: bool = True, views: int = 1, crops: int = 1, seed: int = 0, rank: int = 0,
                 world_size: int = 1, threads: int = 2, strong: StrongAug | None = None):
        if strong is not None and not train:
            raise ValueError("strong views are for training loaders only")
        self.args = (shards, role, clip, batch_size)
        self.kw = dict(train=train, flip=flip, views=views, crops=crops, seed=seed, rank=rank,
                       world_size=world_size, threads=threads, strong=strong)

    def __iter__(self):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy
        train = self.kw["train"]
        pipe = build_pipeline(*self.args, **self.kw)     # built per pass: cheap next to a pass
        # Training fills a batch across the epoch end (no sample lost, none padded); evaluation
        # pads the reader's last batch and the iterator trims the padding (PARTIAL).
        outputs = OUTPUTS + (["x_strong"] if self.kw["strong"] is not None else [])
        to_float = Normalize(self.args[2])
        it = DALIGenericIterator([pipe], outputs, reader_name=READER,
                                 last_batch_policy=LastBatchPolicy.FILL if train else LastBatchPolicy.PARTIAL)
        try:
            while True:
                try:
                    (b,) = next(it)
                except StopIteration:
                    if not train:
                        return
                    it.reset()      # training: the next epoch of the reader, endlessly
                    continue
                out = {"x": to_float(b["x"]), "y": b["y"].long(), "id": b["id"].long()}
                if "x_strong" in b:
                    out["x_strong"] = to_float(b["x_strong"])
                yield out
        finally:
            del it, pipe


def graph_operators(pipe) -> list[str]:
    """Operator names of a built pipeline, read from its serialized graph (DALI's protobuf).

    PipelineDef field 5 holds the OpDefs, whose field 1 is the operator name; a dozen lines of
    wire-format reading saves depending on DALI's private Python objects.
    """
    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            kind = key & 7
            if kind == 0:
                val, i = _varint(buf, i)
            elif kind == 2:
                n, i = _varint(buf, i)
                val, i = buf[i:i + n], i + n
            else:   # fixed 64 / 32 bit
                n = 8 if kind == 1 else 4
                val, i = buf[i:i + n], i + n
            yield key >> 3, val
    return [dict(fields(op))[1].decode() for f, op in fields(pipe.serialize()) if f == 5]


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    val = shift = 0
    while True:
        b = buf[i]
        val |= (b & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if b < 0x80:
            return val, i


def check_graph(pipe) -> list[str]:
    """Raise if a Python callback or an external source sits in the graph; return the operators."""
    ops = graph_operators(pipe)
    bad = [op for op in ops if any(f in op for f in FORBIDDEN_OPS)]
    if bad:
        raise AssertionError(f"DALI graph has per-sample Python/host input on its path: {bad}")
    return ops
