"""Does a teacher have anything its student lacks? Linear probes on a JEDI run's features.

    python bench/teacher_probe.py RUN_DIR [RUN_DIR ...]

A teacher is a linear head over the concatenated penultimate features of all students; it can
only beat its student if the other backbones' features carry information about this dataset's
classes that the student's own features lack. This measures that on a finished run (its
config.yaml, experts and checkpoint.pt), per dataset:

    head     test top-1 of the run's student head (own block) and teacher head (all blocks;
             the live head, also where jedi.teacher_ema makes the average the reported teacher)
    probe    test top-1 of a logistic regression fit on the labeled clips' features of the
             student's own block, of all blocks, and of the other blocks alone
    weights  Frobenius norm of the teacher head's weights on each block (own block first)

Features are taken in eval mode from one centre view per clip; probes standardise each
feature and fit with L-BFGS and an L2 penalty (--l2). Runs on the CPU in about a minute.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from jedi_pipe import trainer
from jedi_pipe.config import load_config
from jedi_pipe.errors import script_main


def probe_top1(x_train, y_train, x_test, y_test, num_classes: int, l2: float) -> float:
    """Multinomial logistic regression on standardised features; test top-1 (%)."""
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_test = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(x_train.shape[1], num_classes, requires_grad=True)
    b = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x_train @ w + b, y_train) + l2 * w.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return 100.0 * ((x_test @ w + b).argmax(1) == y_test).float().mean().item()


def probe_run(run: Path, l2: float) -> dict:
    cfg = load_config(run / "config.yaml")
    device = torch.device("cpu")
    sets = trainer.open_all(cfg)
    experts = {d.name: trainer.load_expert(cfg, d.name, device) for d in cfg.datasets}
    jedi = trainer.joint_model(experts, cfg)
    jedi.load_state_dict(torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)["model"])
    jedi.eval()
    blocks = jedi.feature_slices
    rows = {}
    for n in jedi.names:
        x_tr, y_tr = trainer.teacher_features(jedi, cfg, n, sets[n], "labeled", device)
        x_te, y_te = trainer.teacher_features(jedi, cfg, n, sets[n], "test", device)
        own = blocks[n]
        others = [blocks[m] for m in jedi.names if m != n]
        other_tr = torch.cat([x_tr[:, s] for s in others], 1)
        other_te = torch.cat([x_te[:, s] for s in others], 1)
        c = len(sets[n].classes)
        with torch.no_grad():
            student = jedi.students[n].head(x_te[:, own]).argmax(1)
            teacher = jedi.teachers[n](x_te).argmax(1)
        w = jedi.teachers[n].weight
        rows[n] = {
            "student_head": 100.0 * (student == y_te).float().mean().item(),
            "teacher_head": 100.0 * (teacher == y_te).float().mean().item(),
            "probe_own": probe_top1(x_tr[:, own], y_tr, x_te[:, own], y_te, c, l2),
            "probe_all": probe_top1(x_tr, y_tr, x_te, y_te, c, l2),
            "probe_other": probe_top1(other_tr, y_tr, other_te, y_te, c, l2),
            "norm_own": w[:, own].norm().item(),
            "norm_other": [w[:, s].norm().item() for s in others],
        }
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="JEDI run folders (config.yaml, experts/, checkpoint.pt)")
    ap.add_argument("--l2", type=float, default=1e-2, help="L2 penalty of the probes")
    args = ap.parse_args()
    print("| run | dataset | student head | teacher head | probe own | probe all | probe other | "
          "teacher weights own / others |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for run in args.runs:
        for n, r in probe_run(run, args.l2).items():
            others = " ".join(f"{v:.1f}" for v in r["norm_other"])
            print(f"| {run} | {n} | {r['student_head']:.1f} | {r['teacher_head']:.1f} | {r['probe_own']:.1f} | "
                  f"{r['probe_all']:.1f} | {r['probe_other']:.1f} | {r['norm_own']:.1f} / {others} |", flush=True)


if __name__ == "__main__":
    script_main(main)
