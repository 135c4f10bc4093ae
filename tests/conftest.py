"""Shared fixtures: synthetic datasets and their shards, built once per test session."""
from __future__ import annotations

import pytest
import torch

# Small but real: every adapter, codec and role is exercised; ~1 min on 2 cores.
SHARD_OPTS = dict(fps=8.0, short_side=32, max_seconds=3.0, labeled_fraction=0.25, shard_max_count=7, workers=2)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    from jedi_pipe import synth
    out = tmp_path_factory.mktemp("synth")
    synth.generate(out, videos_per_class=4, seed=0, workers=2)
    return out


@pytest.fixture(scope="session")
def shard_dirs(synth_root, tmp_path_factory):
    from jedi_pipe.make_shards import make_shards
    out = tmp_path_factory.mktemp("shards")
    dirs = {}
    for name in ("hmdb51", "ucf101", "kinetics400", "ssv2"):
        s = make_shards(name, synth_root / name, out / name, max_failures=0.5, **SHARD_OPTS)
        dirs[name] = out / name
        assert s.counts["test"] > 0 and s.counts["labeled"] > 0
    return dirs


def dali_decoded_clips(tars: list[str], total: int, frames: int):
    """(frames [T, H, W, C], sample_id) of every clip in `tars` as stock DALI reads and decodes them on
    the CPU (its own webdataset reader and video decoder, nothing of jedi-pipe's), each sample once."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from jedi_pipe import shards

    @pipeline_def(batch_size=4, num_threads=2, device_id=None)
    def pipe():
        clip, meta = fn.readers.webdataset(paths=tars, index_paths=[t + ".idx" for t in tars],
                                           ext=["webm", shards.META_EXT], dtypes=[types.UINT8, types.INT32],
                                           name="r", pad_last_batch=True)
        return fn.decoders.video(clip, device="cpu", sequence_length=frames, pad_mode="edge"), meta

    p = pipe()
    p.build()
    seen = set()
    while len(seen) < total:
        batch, meta = p.run()
        for i in range(len(batch)):
            sample_id = int(np.array(meta[i])[shards.META_FIELDS.index("sample_id")])
            if sample_id not in seen:
                seen.add(sample_id)
                yield np.array(batch[i]), sample_id


def perturb_(head, scale: float = 0.1, seed: int = 0):
    """Make a teacher head differ from its student (or the moving average): a seeded random change of
    its weights, in place. Adding one constant to every weight would not do: it shifts every class's
    logit by the same amount, which softmax ignores, so every distillation term stays zero to rounding."""
    g = torch.Generator().manual_seed(seed)
    head.weight.add_(scale * torch.randn(head.weight.shape, generator=g))
