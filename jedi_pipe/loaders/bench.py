"""`jedi-pipe bench loader`: clips/s of a loader, against a per-video reader and the bare decode.

All three run in one process tree, one after the other, with the same number of workers
(`threads`), on the same clips (the sample_ids our loader produced):

- ours: the training role loader (random window, random resized crop, flip, normalise).
- raw (MMAction2-style baseline): per clip, open the *source* video with PyAV, decode up to the
  window, take T frames (the stride scaled by source fps / shard fps, so the window covers the
  same seconds), resize the short side to the shards' short side, random resized crop, flip,
  normalise; `threads` worker processes.
- decode (the bound): the same clip bytes, already in memory, only decoded (same windows, no
  reader, no augmentation): DALI's decoder fed by an external source (the decoder our DALI
  loader uses) and PyAV in `threads` processes; the faster of the two is the bound.

Startup (pipeline build, worker start) and the first batch are left out of every timing, and an
untimed pass of our loader warms the process before any measurement. CPU
milliseconds per clip are reported too: on a busy machine they are steadier than clips/s.
"""
from __future__ import annotations

import gc
import importlib.util
import json
import math
import multiprocessing as mp
import random
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import click

from ..shards import META_EXT, decode_meta, iter_tar_samples, open_shards
from .clip import TRAIN_INTERP, ClipSpec, derive_seed, train_start


def _timed(batches, n_batches: int, keep=lambda batch: batch) -> tuple[float, float, list]:
    """Consume one warm-up batch, then time n_batches -> (wall s, CPU s of this process, [keep(batch)]).

    Only keep(batch) is held, as a training loop drops each batch after its step: holding them
    all made every batch land in fresh memory, whose first touches cost CPU time too.
    """
    it = iter(batches)
    next(it)
    t0, c0, out = time.perf_counter(), time.process_time(), []
    for _ in range(n_batches):
        out.append(keep(next(it)))
    secs, cpu = time.perf_counter() - t0, time.process_time() - c0
    it.close()      # stop the loader (its threads / workers) before the next measurement
    gc.collect()    # and free what it left in reference cycles now, not inside the next timing
    return secs, cpu, out


def _one_thread():
    import torch
    torch.set_num_threads(1)      # parallelism comes from the processes


# ---------------------------------------------------------------------------- per-video baseline

def _raw_clip(job) -> float:
    """One clip the MMAction2 way (PyAVInit/Decode, Resize(-1, short side), RandomResizedCrop,
    Flip, Normalize); returns the CPU seconds it took."""
    path, clip, shard_fps, short_side, seed = job
    c0 = time.process_time()
    import av
    from .torch import read_frames, resize_short, to_tensor, train_transform
    rng = random.Random(seed)
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        fps, n = float(st.average_rate or shard_fps), st.frames
    stride = max(1, round(clip.stride * fps / shard_fps))     # the same seconds as our window
    src_clip = ClipSpec(frames=clip.frames, stride=stride, size=clip.size)
    clip = replace(clip, interp="linear")        # MMAction2 resizes bilinearly, whatever ours does
    start = train_start(n, src_clip, rng.random()) if n else 0
    frames = read_frames(path, [start + i * stride for i in range(clip.frames)])
    train_transform(resize_short(to_tensor(frames), short_side), clip, rng, flip=True)
    return time.process_time() - c0


def _pool_batches(pool, fn, jobs: list, batch_size: int):
    """Batches of `fn` over jobs in a process pool; each yield: the batch's CPU seconds."""
    for i in range(0, len(jobs), batch_size):
        yield sum(pool.map(fn, jobs[i:i + batch_size], chunksize=1))


# ---------------------------------------------------------------------------- bare decode bounds

def _pyav_decode(job) -> float:
    data, clip, frames, seed = job
    c0 = time.process_time()
    from .torch import read_frames, window
    read_frames(data, window(train_start(frames, clip, random.Random(seed).random()), clip))
    return time.process_time() - c0


def _dali_decode(clips: list[tuple[bytes, int]], clip: ClipSpec, batch_size: int, threads: int, ss):
    """Batches of DALI's decoder on in-memory clip bytes (same window rule as our graph)."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    import nvidia.dali.math as dmath
    from .dali import decode_device
    device, device_id = decode_device(ss)
    data = [np.frombuffer(b, np.uint8) for b, _ in clips]
    nframes = [np.int32(n) for _, n in clips]

    def source(info):   # cycles through the clips, one batch per call
        i = [(info.iteration * batch_size + k) % len(data) for k in range(batch_size)]
        return [data[j] for j in i], [nframes[j] for j in i]

    @pipeline_def(batch_size=batch_size, num_threads=threads, device_id=device_id, seed=0)
    def pipe():
        encoded, n = fn.external_source(source=source, num_outputs=2, batch=True, batch_info=True,
                                        dtype=[types.UINT8, types.INT32])
        last = dmath.max(n - clip.span, 0)
        u = fn.random.uniform(range=[0.0, 1.0])
        start = fn.cast(dmath.min(dmath.floor(u * (last + 1)), last), dtype=types.INT32)
        return fn.decoders.video(encoded, device=device, start_frame=start, sequence_length=clip.frames,
                                 stride=clip.stride, pad_mode="edge")
    p = pipe()
    p.build()
    while True:
        yield p.run()


# ---------------------------------------------------------------------------- the benchmark

def bench_loader(shards, loader: str = "dali", batch_size: int = 8, frames: int = 16, stride: int = 2,
                 size: int = 112, threads: int = 2, clips: int = 256, vs_raw=None, rounds: int = 1,
                 interp: str = ClipSpec.interp) -> dict:
    """Clips/s of our loader (training role), and with `vs_raw` (the dataset root that the
    manifest's `source` paths are relative to) of the per-video baseline and the bare decode.

    Each measurement runs `rounds` times, the order rotating between rounds so that drifting
    machine load hits all of them; figures are medians over rounds. `clips` may exceed the role's
    count: our loader wraps into the next epoch as in training (a pass of only a few batches
    measured the pipeline's start-up, which training spreads over thousands), and the baselines
    cycle through the same clips.
    """
    from . import resolve_backend, role_loader
    ss = open_shards(shards)
    clip = ClipSpec(frames=frames, stride=stride, size=size, interp=interp)
    role = max(("labeled", "unlabeled"), key=ss.count)
    backend = resolve_backend(loader, [ss])
    n_batches = max(1, math.ceil(clips / batch_size))

    def ours():      # -> (wall s, CPU s or None, ids); DataLoader workers' CPU is not counted
        secs, cpu, out = _timed(role_loader(backend)(ss, role, clip, batch_size, train=True, seed=0,
                                                     threads=threads), n_batches, lambda b: b["id"].tolist())
        return secs, cpu if backend == "dali" else None, [i for ids in out for i in ids]

    # An untimed first pass picks the clips, and takes the process's one-off costs (first
    # allocations, thread and decoder start-up: a fresh process's first loader pass cost up to 1.45x the
    # next ones) that whichever measurement ran first used to pay alone.
    ids = ours()[2]
    n = len(ids)
    runs = {}
    measures = {"ours": lambda: ours()[:2]}
    pool = None
    if vs_raw is not None:
        # The same clips for the baselines, in the same order (repeats included).
        # full rows: an unlabeled clip's source is in the withheld sidecar (a baseline, not training)
        by_id = {r["sample_id"]: r for r in ss.full_rows()}
        short_side = ss.card["encoding"]["short_side"]
        jobs = [(Path(vs_raw) / by_id[i]["source"], clip, by_id[i]["fps"], short_side, derive_seed(0, k))
                for k, i in enumerate(ids)]
        missing = [str(j[0]) for j in jobs if not j[0].is_file()]
        if missing:
            raise FileNotFoundError(f"--vs-raw {vs_raw}: {len(missing)} source videos missing, e.g. {missing[0]}")
        blobs = {}
        for tar in ss.tars(role):
            for sample in iter_tar_samples(tar):
                meta = decode_meta(sample[META_EXT])
                blobs[meta["sample_id"]] = (sample[ss.clip_ext], meta["frames"])
        mem = [blobs[i] for i in ids]
        dec = [(b, clip, f, derive_seed(1, k)) for k, (b, f) in enumerate(mem)]
        pool = mp.get_context("spawn").Pool(threads, _one_thread)
        pool.map(_raw_clip, jobs[:threads], chunksize=1)                 # start and warm the workers

        def in_pool(fn, work):   # CPU: the workers' own process time, summed
            secs, _, out = _timed(_pool_batches(pool, fn, work[:batch_size] + work, batch_size), n_batches)
            return secs, sum(out)
        measures["raw"] = lambda: in_pool(_raw_clip, jobs)
        measures["decode_pyav"] = lambda: in_pool(_pyav_decode, dec)
        if importlib.util.find_spec("nvidia.dali"):
            measures["decode_dali"] = lambda: _timed(_dali_decode(mem, clip, batch_size, threads, ss), n_batches,
                                                     lambda b: None)[:2]
    try:
        names = list(measures)
        for r in range(rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                runs.setdefault(name, []).append(measures[name]())
    finally:
        if pool is not None:
            pool.terminate()
    rate = {k: statistics.median(n / w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(1000 * c / n for _, c in v) for k, v in runs.items() if v[0][1] is not None}

    res = {"shards": str(shards), "role": role, "loader": backend, "threads": threads, "batch_size": batch_size,
           "frames": frames, "stride": stride, "size": size, "interp": interp, "clips": n, "rounds": rounds,
           "clips_per_s": rate["ours"], "frames_per_s": rate["ours"] * frames, "cpu_ms_per_clip": cpu}
    if backend == "dali":
        from .dali import decode_device
        res["device"] = decode_device(ss)[0]
    if vs_raw is not None:
        bounds = {k[len("decode_"):]: v for k, v in rate.items() if k.startswith("decode_")}
        res.update(raw_clips_per_s=rate["raw"], decode_clips_per_s=bounds, vs_raw=rate["ours"] / rate["raw"],
                   vs_decode=rate["ours"] / max(bounds.values()))
        if "ours" in cpu:   # the same ratios from CPU time: steadier when the machine is shared
            res.update(vs_raw_cpu=cpu["raw"] / cpu["ours"],
                       vs_decode_cpu=min(v for k, v in cpu.items() if k.startswith("decode_")) / cpu["ours"])
    return res


bench_cli = click.Group("bench", help="Throughput benchmarks (numbers for bench/README.md).")


@bench_cli.command("loader")
@click.option("--shards", "shards_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="A shard folder.")
@click.option("--loader", type=click.Choice(["dali", "torch"]), default="dali", show_default=True,
              help="The loader measured: the DALI graph, or the webdataset + PyAV fallback.")
@click.option("--batch-size", default=8, show_default=True, type=click.IntRange(1), help="Clips per batch.")
@click.option("--frames", default=16, show_default=True, type=click.IntRange(1), help="T, frames per clip.")
@click.option("--stride", default=2, show_default=True, type=click.IntRange(1), help="Take every s-th frame of the shard clip.")
@click.option("--size", default=112, show_default=True, type=click.IntRange(8), help="Output height = width, pixels.")
@click.option("--threads", default=2, show_default=True, type=click.IntRange(1), help="DALI threads / DataLoader workers / baseline processes.")
@click.option("--clips", default=256, show_default=True, type=click.IntRange(1),
              help="Clips to time per measurement; more than the role holds wrap into the next epoch, as in training.")
@click.option("--interp", type=click.Choice(TRAIN_INTERP), default=ClipSpec.interp, show_default=True,
              help="Resampling of our loader's training crops (the baseline's is linear, as MMAction2's).")
@click.option("--rounds", default=1, show_default=True, type=click.IntRange(1), help="Repeat every measurement, order rotating; medians.")
@click.option("--vs-raw", default=None, type=click.Path(exists=True, file_okay=False),
              help="Dataset root of the source videos: also time the per-video baseline and the bare decode.")
@click.option("--json", "as_json", is_flag=True, help="End with one JSON line of the results.")
def loader_command(shards_dir, loader, batch_size, frames, stride, size, threads, clips, interp, rounds, vs_raw,
                   as_json):
    """Clips/s and frames/s of the loader on a shard folder (training role, augmentation on).

    With --vs-raw, two baselines timed in the same run: vs_raw = our clips/s over a per-video
    loader's (MMAction2-style: PyAV decode of the source file, resize, crop, flip, in
    --threads processes; above 1: we are faster), and vs_decode = our clips/s over the faster
    bare decode of the same clip bytes (PyAV or DALI, no augmentation; near 1: the loader costs
    little beyond decoding). The CPU ratios compare CPU time per clip the same way (ours is
    cheaper above 1).

    Example:

    \b
    jedi-pipe bench loader --shards shards/hmdb51 --loader dali --rounds 3
    """
    try:
        r = bench_loader(shards_dir, loader, batch_size, frames, stride, size, threads, clips, vs_raw, rounds, interp)
    except (ValueError, FileNotFoundError) as e:   # one sentence and exit 2, as cli.fail (cli imports this module)
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    click.echo(f"{r['loader']}{' (' + r['device'] + ')' if 'device' in r else ''}: {r['clips_per_s']:.1f} clips/s, "
               f"{r['frames_per_s']:.0f} frames/s ({r['clips']} clips, {frames}x{size}px, {threads} threads)")
    if vs_raw:
        click.echo(f"per-video baseline (source files, PyAV): {r['raw_clips_per_s']:.1f} clips/s "
                   f"-> vs_raw {r['vs_raw']:.2f}")
        bounds = ", ".join(f"{k} {v:.1f} clips/s" for k, v in r["decode_clips_per_s"].items())
        click.echo(f"bare decode of the clip bytes: {bounds} -> vs_decode {r['vs_decode']:.2f}")
    if r["cpu_ms_per_clip"]:
        ratios = f" -> vs_raw {r['vs_raw_cpu']:.2f}, vs_decode {r['vs_decode_cpu']:.2f}" if "vs_raw_cpu" in r else ""
        click.echo("CPU ms per clip: " + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_ms_per_clip"].items()) + ratios)
    if as_json:
        click.echo(json.dumps(r))
