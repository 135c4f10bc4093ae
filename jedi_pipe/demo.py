"""`jedi-pipe demo`: the whole pipeline on generated data, on a fresh install, in minutes."""
from __future__ import annotations

import time
from pathlib import Path

import yaml

DEMO_DATASETS = ("hmdb51", "ucf101", "kinetics400", "ssv2")
DEMO_CONFIG = Path(__file__).resolve().parent / "demo.yaml"   # packaged copy of train/demo.yaml

# Shard settings of the demo: clips small enough for CPU training (8x32x32 crops of 40 px).
DEMO_SHARD = dict(fps=8.0, short_side=40, max_seconds=4.0, codec="vp9", labeled_fraction=0.15,
                  shard_max_count=200)
# Videos per class. 40 with 15 % labels leave about 4 labeled clips per class, the fewest at which
# the experts get clearly above chance on this data (28 training videos, 12 test). Kinetics-400
# gets three times as many (12 labeled per class), as the real one is many times larger than
# HMDB51 or UCF101: a richer backbone is what the other datasets' teachers can use and their
# students cannot; with equal sizes the teachers only match their students (docs/method.md).
# Every video costs synth and shard time (~60 ms of CPU each, a third of the demo's 5 minutes).
DEMO_VIDEOS_PER_CLASS = {"hmdb51": 40, "ucf101": 40, "kinetics400": 120, "ssv2": 40}
# --quick: fewer videos and epochs; a smoke run of every stage, not a result.
QUICK = dict(videos_per_class=8, overrides=["pretrain.epochs=4", "jedi.epochs=2"])


def demo_config(out: Path, quick: bool, seed: int, overrides=()):
    """train/demo.yaml with its paths moved under `out`."""
    from .config import load_config
    data = yaml.safe_load(DEMO_CONFIG.read_text())
    data["out"] = str(out / "run")
    data["seed"] = seed
    for d in data["datasets"]:
        d["shards"] = str(out / "shards" / d["name"])
    return load_config(data=data, overrides=list(QUICK["overrides"] if quick else []) + list(overrides))


def run_demo(out="jedi-demo", quick: bool = False, seed: int = 0, overrides=(), echo=print) -> dict:
    """synth -> shard -> inspect -> pretrain -> train (JEDI) -> results table."""
    from . import synth
    from .errors import InputError
    from .inspect_shards import verify_shards
    from .make_shards import ShardError, make_shards
    from .plots import draw
    from .records import results_table
    from .trainer import train

    out = Path(out)
    cfg = demo_config(out, quick, seed, overrides)   # a bad --set fails here, not after minutes of synth and shard
    echo(f"jedi-pipe demo: writing into {out.resolve()} (--out to change)")
    vpc = {n: QUICK["videos_per_class"] for n in DEMO_DATASETS} if quick else DEMO_VIDEOS_PER_CLASS
    t0 = time.time()

    echo(f"[1/5] synth: {len(DEMO_DATASETS)} datasets in their real layouts, videos per class: "
         + ", ".join(f"{n} {vpc[n]}" for n in DEMO_DATASETS))
    try:   # a rerun keeps the videos it made; other ones (another --seed or --quick, an older jedi-pipe) are refused
        roots = synth.generate(out / "sources", datasets=DEMO_DATASETS, videos_per_class=vpc, seed=seed,
                               log=lambda m: echo("      " + m))
    except InputError as e:
        reason = str(e).split(";")[0]
        raise InputError(f"{reason}: the demo does not mix runs; delete {out / 'sources'}, {out / 'shards'} "
                         f"and {out / 'run'}, or choose another --out") from None

    echo(f"[2/5] shard: VP9 clips, {DEMO_SHARD['short_side']} px, {DEMO_SHARD['fps']:g} fps, "
         f"{DEMO_SHARD['labeled_fraction']:.0%} of the training videos labeled")
    for name in DEMO_DATASETS:
        try:
            s = make_shards(name, roots[name], out / "shards" / name, seed=seed, **DEMO_SHARD)
        except ShardError as e:
            if "other settings" not in str(e):
                raise
            # shards of another run (other settings, or an older jedi-pipe's filters): the demo has no --overwrite
            raise InputError(f"{out / 'shards' / name} holds shards made with other settings (another --seed or "
                             f"--quick, or an older jedi-pipe): the demo does not mix runs; delete {out / 'shards'} "
                             f"and {out / 'run'}, or choose another --out") from None
        counts = ", ".join(f"{r} {n}" for r, n in s.counts.items())
        echo(f"      {name:12s} {counts}; failures {s.failures}")

    echo("[3/5] inspect: every tar against its manifest")
    for name in DEMO_DATASETS:
        report = verify_shards(out / "shards" / name)
        if not report["ok"]:
            raise RuntimeError(f"{name} shards are inconsistent: {'; '.join(report['problems'][:3])}")
    echo("      ok")

    echo(f"[4/5] pretrain + [5/5] JEDI: {', '.join(d.model for d in cfg.datasets[:1])} students, "
         f"{cfg.pretrain.epochs} expert epochs, "
         + (f"{cfg.jedi.steps} joint steps" if cfg.jedi.steps else f"{cfg.jedi.epochs} joint epochs"))
    results = train(cfg, resume=True, log=lambda m: echo("      " + m))
    draw(cfg.out, lambda m: echo("      " + m))

    echo("")
    echo(results_table(results))
    echo(f"done in {time.time() - t0:.0f}s. Outputs: {Path(cfg.out).resolve()} "
         "(results.md, results.json, curves.png, results.png, confusion.png, metrics.jsonl, experts/, checkpoint.pt)")
    return results
