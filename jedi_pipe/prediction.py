"""`jedi-pipe predict`: top-k classes of raw videos (or of a shard folder's clips) with an exported model.

A raw video goes through the shard stage's own transcode (same codec, fps, short side and seconds
kept, from the model file) and the test loader's own view sampling (`loaders.torch.eval_views`),
so it is seen exactly as the torch loader sees the test clips; a model scored through DALI saw
slightly other pixels (the decoders' colour conversions: within 3 grey levels of luma on average,
tests/test_loaders.py), and its top-1 on raw videos is `eval`'s to within two clips
(tests/test_export.py).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .errors import InputError
from .export import Model, load_model, settings_of


def video_views(model: Model, path) -> torch.Tensor:
    """The model's evaluation views of one source video, [views x crops, 3, T, S, S]; TranscodeError if unusable."""
    from .loaders.torch import eval_views
    from .transcode import encode_clip
    data, info = encode_clip(str(path), settings_of(model.card["encoding"]))
    return eval_views(data, info.frames, model.clip, model.views, model.crops)


def top(model: Model, probs: torch.Tensor, k: int) -> list[dict]:
    p, i = probs.topk(min(k, len(model.classes)))
    return [{"class": model.classes[j], "index": j, "prob": round(q, 4)} for q, j in zip(p.tolist(), i.tolist())]


def predict_videos(model: Model | str | Path, videos, k: int = 5):
    """Per video, in order: {"video", "top": [{"class", "index", "prob"}, ...]} or {"video", "error"}.

    A file that cannot be decoded gets its reason and the others are still predicted. `videos`: a
    list of paths (one path alone is taken as a list of one).
    """
    import av

    from .transcode import TranscodeError
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    model = model if isinstance(model, Model) else load_model(model)
    for v in [videos] if isinstance(videos, (str, Path)) else videos:
        try:
            x = video_views(model, v)
        except (TranscodeError, ValueError, av.error.FFmpegError) as e:
            yield {"video": str(v), "error": str(e)}
            continue
        yield {"video": str(v), "top": top(model, model.probs(x[None])[0], k)}


def predict_shards(model: Model | str | Path, shard_dir, role: str = "test", k: int = 5, backend: str = "auto",
                   batch_size: int = 16):
    """Per clip of a shard folder's role: {"key", "label" (name, or None when unlabeled), "top": [...]}."""
    from .loaders import make_eval_loader
    from .shards import open_shards
    if k < 1:
        raise InputError(f"k must be at least 1, got {k}")
    model = model if isinstance(model, Model) else load_model(model)
    ss = open_shards(shard_dir)
    if role not in ss.card["counts"]:
        raise InputError(f"{shard_dir} has no role {role!r}; it has {', '.join(ss.card['counts'])}")
    if ss.classes != model.classes:
        raise InputError(f"{shard_dir}: its classes are not the model's ({ss.name}, {len(ss.classes)} classes; "
                         f"the model: {model.card['dataset']}, {len(model.classes)})")
    # the settings that make other pixels of any source (the filter chains differ only for some sources:
    # interlaced, non-square-pixelled, several video streams; transcode.FILTER_CHAINS)
    mine = {k: v for k, v in model.card["encoding"].items() if k != "chain"}
    theirs = {k: ss.card["encoding"].get(k) for k in mine}
    if theirs != mine:   # other pixels than the model was trained and scored on
        differ = ", ".join(f"{k} {theirs[k]} (model: {v})" for k, v in mine.items() if theirs[k] != v)
        raise InputError(f"{shard_dir}: its clips are encoded otherwise than the model's shards ({differ}); "
                         f"predict from the source videos instead, which are encoded as the model's were")
    t = ss.manifest(columns=["sample_id", "key", "label_name"]).to_pydict()
    by_id = {i: (key, name) for i, key, name in zip(t["sample_id"], t["key"], t["label_name"])}
    loader = make_eval_loader(ss, model.clip, batch_size=batch_size, views=model.views, crops=model.crops,
                              backend=backend, role=role)
    for b in loader:
        probs = model.probs(b["x"].cpu())
        for i, p in zip(b["id"].tolist(), probs):
            key, name = by_id[i]
            yield {"key": key, "label": name or None, "top": top(model, p, k)}
