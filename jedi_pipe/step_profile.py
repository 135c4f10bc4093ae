"""A JEDI joint step cut at its seams and timed part by part (`bench/step.py profile` prints it).

`cut_step` computes what `jedi(labeled, unlabeled[, weak])` -> `jedi_losses` -> backward -> SGD ->
`update_averages` computes, in the same order, with each backbone's forward and backward, the
heads, the mean teacher, the loss, the optimizer and the averages under their own `Clock` part;
tests/test_step_profile.py checks that its loss, gradients and averages are the trainer's.
"""
from __future__ import annotations

import time

import torch

from .jedi import Logits, StepOutput, jedi_losses, update_averages


class Clock:
    """Accumulates wall and main-thread CPU seconds per named part."""

    def __init__(self):
        self.wall, self.cpu = {}, {}

    def part(self, name):
        clock = self

        class _Part:
            def __enter__(self):
                self.t, self.c = time.perf_counter(), time.thread_time()

            def __exit__(self, *exc):
                clock.wall[name] = clock.wall.get(name, 0.0) + time.perf_counter() - self.t
                clock.cpu[name] = clock.cpu.get(name, 0.0) + time.thread_time() - self.c
        return _Part()


def cut_step(jedi, labeled, unlabeled, labels, jcfg, opt, clock: Clock, weak=None):
    """One step of trainer.joint_step in one pass (no micro-batches, no checkpointing, fp32), timed
    part by part; returns the loss. `weak`: the unlabeled clips' weak views (views), `unlabeled`
    then being the strong ones, as the trainer passes them."""
    parts = [("labeled", n, x) for n, x in labeled.items()] + [("unlabeled", n, x) for n, x in unlabeled.items()]
    x = torch.cat([c for _, _, c in parts])
    feats = {}
    for n in jedi.names:
        with clock.part(f"fwd {n}"):
            feats[n] = jedi._features(n, x, parts, strong=weak is not None)
    # the heads run on detached copies, so that each backbone's backward can be timed on its own
    leaves = {n: f.detach().requires_grad_() for n, f in feats.items()}
    with clock.part("heads"):
        teacher_in = torch.cat([leaves[n] for n in jedi.names], dim=1)
        if jcfg.detach_teacher_features or jedi.heads_only:
            teacher_in = teacher_in.detach()
    n_lab = sum(c.shape[0] for role, _, c in parts if role == "labeled")
    ema_in = None
    if jcfg.teacher_ema:
        with clock.part("mean teacher"), torch.no_grad():
            ema_in = jedi.ema_features(x, parts, n_lab, weak)
    out, start = StepOutput(), 0
    for role, name, clips in parts:
        rows = slice(start, start + clips.shape[0])
        start = rows.stop
        with clock.part("heads"):
            student = jedi.students[name].head(leaves[name][rows])
            teacher = jedi.teacher_head(name, role, teacher_in[rows])
        ema = None
        if ema_in is not None and role == "unlabeled":
            with clock.part("mean teacher"), torch.no_grad():
                ema = jedi.ema_teachers[name](ema_in[rows.start - n_lab:rows.stop - n_lab])
        getattr(out, role)[name] = Logits(student, teacher, ema)
    with clock.part("loss"):
        loss, _ = jedi_losses(out, labels, jcfg)
    with clock.part("optimizer"):
        opt.zero_grad(set_to_none=True)
    with clock.part("bwd heads+loss"):
        loss.backward()
    for n in jedi.names:
        with clock.part(f"bwd {n}"):
            feats[n].backward(leaves[n].grad)
    with clock.part("optimizer"):
        opt.step()
    with clock.part("ema update"):
        update_averages(jedi)
    return loss.detach()
