"""`jedi-pipe demo`: the whole pipeline on generated data, on a fresh install, in minutes."""
from __future__ import annotations

import time
from pathlib import Path

DEMO_DATASETS = ("hmdb51", "ucf101", "kinetics400", "ssv2")

# Shard settings of the demo: clips small enough for CPU training (8x32x32 crops of 40 px).
DEMO_SHARD = dict(fps=8.0, short_side=40, max_seconds=4.0, codec="vp9", labeled_fraction=0.1,
                  shard_max_count=200)


def run_demo(out="jedi-demo", quick: bool = False, seed: int = 0, echo=print) -> dict:
    """synth -> shard -> inspect for the four synthetic datasets; returns the shard folders."""
    from . import synth
    from .inspect_shards import verify_shards
    from .make_shards import make_shards

    out = Path(out)
    echo(f"jedi-pipe demo: writing into {out.resolve()} (--out to change)")
    vpc = 12 if quick else 30
    t0 = time.time()

    echo(f"[1/3] synth: {len(DEMO_DATASETS)} datasets, {vpc} videos per class")
    roots = synth.generate(out / "sources", datasets=DEMO_DATASETS, videos_per_class=vpc, seed=seed)

    echo("[2/3] shard: transcode to VP9 clip shards")
    shard_dirs = {}
    for name in DEMO_DATASETS:
        s = make_shards(name, roots[name], out / "shards" / name, seed=seed, **DEMO_SHARD)
        shard_dirs[name] = Path(s.out)
        counts = ", ".join(f"{r} {n}" for r, n in s.counts.items())
        echo(f"      {name:12s} {counts}; failures {s.failures}; {s.clips_per_s:.0f} clips/s")

    echo("[3/3] inspect: tars against manifests")
    for name, d in shard_dirs.items():
        report = verify_shards(d)
        echo(f"      {name:12s} {'ok' if report['ok'] else 'PROBLEMS: ' + '; '.join(report['problems'][:3])}")

    echo(f"done in {time.time() - t0:.0f}s; shards under {(out / 'shards').resolve()}")
    return shard_dirs
