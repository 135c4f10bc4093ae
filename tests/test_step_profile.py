"""jedi_pipe.step_profile (`bench/step.py profile`) times the trainer's step cut at its seams: the
cut must compute the same loss and the same gradients as the trainer's path (jedi(labeled, unlabeled) -> jedi_losses -> backward)."""
from __future__ import annotations

import copy

import pytest
import torch

from jedi_pipe.jedi import JEDI, JEDIConfig, jedi_losses
from jedi_pipe.models import build
from jedi_pipe.step_profile import Clock, cut_step

from .conftest import perturb_


@pytest.mark.parametrize("cfg", [JEDIConfig(teacher_ema=0.9, w_mutual=0.5), JEDIConfig(teacher_ema=0.9, w_distill_heads=1.0),
                                 JEDIConfig(), JEDIConfig(bn_stats="own")])
def test_cut_step_is_the_trainers_step(cfg):
    torch.manual_seed(0)
    classes = {"a": 3, "b": 4}
    ref = JEDI({n: build("tiny3d_s", c) for n, c in classes.items()}, cfg).train()
    with torch.no_grad():
        perturb_(ref.teachers["a"], 0.05)   # T != S and live != average: the teacher terms are not zero
    cut = copy.deepcopy(ref)
    labeled = {n: torch.randn(4, 3, 4, 16, 16) for n in classes}
    unlabeled = {n: torch.randn(4, 3, 4, 16, 16) for n in classes}
    labels = {n: torch.randint(0, c, (4,)) for n, c in classes.items()}
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (ref, cut)]

    loss, _ = jedi_losses(ref(labeled, unlabeled), labels, cfg)
    opts[0].zero_grad()
    loss.backward()
    grads = {k: p.grad.clone() for k, p in ref.named_parameters() if p.grad is not None}

    clock = Clock()
    got = cut_step(cut, labeled, unlabeled, labels, cfg, opts[1], clock)
    assert got.item() == pytest.approx(loss.item(), rel=1e-5)
    cut_grads = {k: p.grad for k, p in cut.named_parameters() if p.grad is not None}
    assert cut_grads.keys() == grads.keys()
    for k, g in grads.items():
        torch.testing.assert_close(cut_grads[k], g, rtol=1e-4, atol=1e-6, msg=f"gradient of {k}")
    parts = {"fwd a", "fwd b", "bwd a", "bwd b", "heads", "loss", "optimizer"}
    assert parts <= set(clock.wall) and all(clock.wall[p] > 0 for p in parts)
    assert ("mean teacher" in clock.wall) == bool(cfg.teacher_ema)


def test_cut_step_is_the_trainers_step_with_views_and_source_statistics():
    """The demo's setting: targets from weak views through the moving average, each dataset's rows
    by its own BatchNorm statistics (made to differ from the backbone's own, so using the wrong
    ones shows)."""
    torch.manual_seed(0)
    classes = {"a": 3, "b": 4}
    cfg = JEDIConfig(teacher_ema=0.9, bn_stats="source")
    ref = JEDI({n: build("tiny3d_s", c) for n, c in classes.items()}, cfg).train()
    with torch.no_grad():
        for bns in ref.ema_source_bns.values():
            for bn in bns:
                bn.source_mean.normal_()
        for p in ref.ema_teachers.parameters():   # off the block init: every backbone's features count
            p.normal_()
    cut = copy.deepcopy(ref)
    labeled, strong, weak = ({n: torch.randn(4, 3, 4, 16, 16) for n in classes} for _ in range(3))
    labels = {n: torch.randint(0, c, (4,)) for n, c in classes.items()}
    loss, _ = jedi_losses(ref(labeled, strong, weak), labels, cfg)
    # the weak views and the per-dataset statistics change the targets, so a cut that ignored either would differ
    with torch.no_grad():
        assert not torch.allclose(ref(labeled, strong, weak).unlabeled["a"].teacher_ema,
                                  ref(labeled, strong).unlabeled["a"].teacher_ema, atol=1e-3)
    opt = torch.optim.SGD([p for p in cut.parameters() if p.requires_grad], lr=0.1)
    got = cut_step(cut, labeled, strong, labels, cfg, opt, Clock(), weak)
    assert got.item() == pytest.approx(loss.item(), rel=1e-5)


def test_cut_step_moves_every_average_as_the_trainer():
    """The students' weight average (jedi.student_avg) and the mean teacher move in the timed step as in
    trainer.joint_step: the profile times the averages the trainer updates."""
    from jedi_pipe.jedi import add_students_avg
    from jedi_pipe.trainer import joint_step
    torch.manual_seed(0)
    classes = {"a": 3, "b": 4}
    cfg = JEDIConfig(teacher_ema=0.9)
    ref = JEDI({n: build("tiny3d_s", c) for n, c in classes.items()}, cfg).train()
    add_students_avg(ref, 0.5)
    cut = copy.deepcopy(ref)
    start = copy.deepcopy(ref.students_avg.state_dict())
    labeled, unlabeled = ({n: torch.randn(4, 3, 4, 16, 16) for n in classes} for _ in range(2))
    labels = {n: torch.randint(0, c, (4,)) for n, c in classes.items()}
    opts = [torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1) for m in (ref, cut)]
    joint_step(ref, ref, opts[0], labeled, unlabeled, labels, cfg)
    cut_step(cut, labeled, unlabeled, labels, cfg, opts[1], Clock())
    moved = ref.students_avg.state_dict()
    assert any(not torch.equal(moved[k], start[k]) for k in start)
    for k, v in cut.students_avg.state_dict().items():
        torch.testing.assert_close(v, moved[k], rtol=1e-4, atol=1e-6, msg=k)
    for k, v in cut.ema_students.state_dict().items():
        torch.testing.assert_close(v, ref.ema_students.state_dict()[k], rtol=1e-4, atol=1e-6, msg=k)
