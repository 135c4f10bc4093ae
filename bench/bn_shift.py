"""What the joint phase's BatchNorm statistics alone do to the experts.

    python bench/bn_shift.py RUN_DIR [--batches 40]

A JEDI backbone runs over the clips of every dataset at once, so in training its BatchNorm
layers normalise with (and track) statistics of the mixed batch, not of its own dataset as
its expert did. This loads a run's experts (RUN_DIR: config.yaml and experts/), scores the
students on the test clips, runs --batches mixed training batches through the joint model
with no gradient (only the running statistics move), and scores them again. The default
jedi.bn_stats=source keeps statistics per source dataset, so a default run shows little here:
pass a run made with `--set jedi.bn_stats=batch` to see the shift. With jedi.bn_stats=own the
statistics stay each backbone's own and the scores move by a few points at most (within 3 on
the equal-size benchmark's seed 0, docs/experiments.md).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from jedi_pipe import trainer
from jedi_pipe.config import load_config
from jedi_pipe.errors import script_main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run folder with config.yaml and experts/")
    ap.add_argument("--batches", type=int, default=40, help="mixed batches to run (BN momentum 0.1: 40 forget the start)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    args = ap.parse_args()
    cfg = load_config(args.run / "config.yaml", overrides=args.set)
    device = torch.device("cpu")
    sets = trainer.open_all(cfg)
    jedi = trainer.joint_model({d.name: trainer.load_expert(cfg, d.name, device) for d in cfg.datasets}, cfg)

    def top1() -> dict:
        return {n: v["student"]["top1"] for n, v in trainer.evaluate_jedi(jedi, cfg, sets, device).items()}

    before = top1()
    jedi.train()
    it = iter(trainer.joint_loader(cfg, sets))
    with torch.no_grad():
        for _ in range(args.batches):
            batch = next(it)
            jedi({n: b["x"] for n, b in batch.items()}, {n: b["x_u"] for n, b in batch.items() if "x_u" in b})
    after = top1()
    print(f"| dataset | expert | after {args.batches} mixed batches (bn_stats={cfg.jedi.bn_stats}) |")
    print("| --- | --- | --- |")
    for n in before:
        print(f"| {n} | {before[n]:.1f} | {after[n]:.1f} |")


if __name__ == "__main__":
    script_main(main)
