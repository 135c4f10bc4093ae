"""JEDI: teacher construction, one pass per backbone, gradient routing, losses."""

import copy

import pytest
import torch
import torch.nn.functional as F

from jedi_pipe.jedi import (JEDI, EMABaseline, JEDIConfig, OwnStatsBatchNorm, SourceBatchNorm, distill_loss,
                            ema_update, fit_teacher_heads_probe, jedi_losses, precise_bn)
from jedi_pipe.models import build

from .conftest import perturb_

CLIP = (3, 4, 16, 16)


def clips(b=2, shape=CLIP):
    return torch.randn(b, *shape)


def make_jedi(**cfg):
    torch.manual_seed(0)
    experts = {"a": build("tiny3d", 3, width=8), "b": build("tiny3d", 5, width=16)}
    return JEDI.from_experts(experts, JEDIConfig(**cfg)), experts


def backbone_params(model):
    return [p for n, p in model.named_parameters() if not n.startswith(("head.", "fc."))]


def test_teacher_width_is_sum_of_feature_widths():
    jedi, experts = make_jedi()
    assert jedi.teacher_dim == 32 + 64
    assert jedi.teachers["a"].weight.shape == (3, 96) and jedi.teachers["b"].weight.shape == (5, 96)
    assert jedi.feature_slices == {"a": slice(0, 32), "b": slice(32, 96)}
    assert jedi.students["a"] is not experts["a"]  # from_experts copies: experts stay intact


def test_block_init_teacher_equals_student():
    jedi, _ = make_jedi()
    out = jedi({"a": clips(), "b": clips(3)}, {"a": clips(4), "b": clips(1)})
    for role in (out.labeled, out.unlabeled):
        for name, (s, t, _) in role.items():
            torch.testing.assert_close(t, s, rtol=1e-5, atol=1e-6)
    assert out.labeled["b"].student.shape == (3, 5) and out.unlabeled["a"].teacher.shape == (4, 3)
    # soft distillation of a teacher into an identical student is zero
    loss, mask_rate, _ = distill_loss(out.unlabeled["a"].student, out.unlabeled["a"].teacher, jedi.config)
    assert loss.abs() < 1e-6 and mask_rate == 0


def test_each_backbone_runs_once_over_the_union():
    jedi, _ = make_jedi()
    seen = {name: [] for name in jedi.names}
    for name in jedi.names:
        jedi.students[name].stem.register_forward_hook(lambda m, i, o, name=name: seen[name].append(i[0].shape[0]))
    jedi({"a": clips(2), "b": clips(3)}, {"a": clips(4), "b": clips(5)})
    assert seen == {"a": [14], "b": [14]}


def _teacher_loss_grads(jedi):
    out = jedi({"a": clips()})
    loss = F.cross_entropy(out.labeled["a"].teacher, torch.tensor([0, 2]))
    jedi.zero_grad(set_to_none=True)
    loss.backward()
    return {name: [p.grad for p in backbone_params(jedi.students[name])] for name in jedi.names}


def test_teacher_loss_reaches_every_backbone():
    jedi, _ = make_jedi()
    # at the block init, T_a ignores f_b (zero block), so the first gradient reaches f_a only
    grads = _teacher_loss_grads(jedi)
    assert all(g is not None and g.abs().sum() > 0 for g in grads["a"])
    assert all(g is None or g.abs().sum() == 0 for g in grads["b"])
    # one optimizer step moves g_a's off-block weights; from then on every backbone is trained
    torch.optim.SGD(jedi.teachers.parameters(), lr=0.5).step()
    grads = _teacher_loss_grads(jedi)
    for name in jedi.names:
        assert sum(g.abs().sum() for g in grads[name] if g is not None) > 0, name
    assert all(g is not None for g in grads["b"])


def test_detached_teacher_features_stop_at_the_heads():
    jedi, _ = make_jedi(detach_teacher_features=True)
    torch.nn.init.normal_(jedi.teachers["a"].weight)  # no zero blocks, so detaching is what stops it
    grads = _teacher_loss_grads(jedi)
    for name in jedi.names:
        assert all(g is None or g.abs().sum() == 0 for g in grads[name]), name
    assert jedi.teachers["a"].weight.grad.abs().sum() > 0


def test_teacher_warmup_heads_only_stops_teacher_losses_at_the_heads():
    jedi, _ = make_jedi()
    torch.nn.init.normal_(jedi.teachers["a"].weight)
    jedi.heads_only = True          # what the trainer sets for the first teacher_warmup steps
    grads = _teacher_loss_grads(jedi)
    assert all(g is None or g.abs().sum() == 0 for name in jedi.names for g in grads[name])
    assert jedi.teachers["a"].weight.grad.abs().sum() > 0
    jedi.heads_only = False         # after it, teacher losses reach every backbone again
    grads = _teacher_loss_grads(jedi)
    assert all(sum(g.abs().sum() for g in grads[name] if g is not None) > 0 for name in jedi.names)
    with pytest.raises(ValueError, match="teacher_warmup"):
        JEDIConfig(teacher_warmup=-1)


def test_mixed_architectures_forward_backward():
    torch.manual_seed(0)
    jedi = JEDI([("small", build("tiny3d", 4, width=8)), ("kin", build("r3d_18", 6))])
    assert jedi.teacher_dim == 32 + 512
    out = jedi({"small": clips(), "kin": clips()}, {"small": clips(), "kin": clips()})
    total, logs = jedi_losses(out, {"small": torch.tensor([0, 3]), "kin": torch.tensor([5, 1])}, jedi.config)
    total.backward()
    assert torch.isfinite(total)
    assert jedi.students["kin"].layer1[0].conv1[0].weight.grad is not None
    assert jedi.teachers["small"].weight.grad[:, 32:].abs().sum() > 0  # g_small learns from r3d features


def test_clip_shapes_must_match():
    jedi, _ = make_jedi()
    with pytest.raises(ValueError, match="share"):
        jedi({"a": clips()}, {"b": clips(shape=(3, 8, 16, 16))})
    with pytest.raises(KeyError, match="unknown dataset"):
        jedi({"c": clips()})


def test_losses_logs_and_label_routing():
    jedi, _ = make_jedi(w_sup_teacher=0.5, w_distill=2.0, w_mutual=0.25)
    with torch.no_grad():      # T != S: else every distillation and mutual term is 0 and S's CE is T's
        perturb_(jedi.teachers["a"], 0.3, seed=1)
        perturb_(jedi.teachers["b"], 0.3, seed=2)
    out = jedi({"a": clips()}, {"a": clips(3), "b": clips(3)})
    total, logs = jedi_losses(out, {"a": torch.tensor([1, 2])}, jedi.config)
    assert all(logs[f"{n}/{k}"] > 1e-3 for n in "ab" for k in ("distill", "mutual"))
    assert (logs["a/sup_student"] - logs["a/sup_teacher"]).abs() > 1e-3
    expected = (logs["a/sup_student"] + 0.5 * logs["a/sup_teacher"] + 2.0 * (logs["a/distill"] + logs["b/distill"])
                + 0.25 * (logs["a/mutual"] + logs["b/mutual"]))
    torch.testing.assert_close(total.detach(), expected)
    assert set(logs) == {"a/sup_student", "a/sup_teacher", "a/distill", "a/mask_rate", "a/teacher_conf", "a/mutual",
                         "b/distill", "b/mask_rate", "b/teacher_conf", "b/mutual", "total"}
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    # labels exist only for labeled clips: there is no slot for labels of unlabeled ones
    with pytest.raises(ValueError, match="labels given"):
        jedi_losses(out, {"a": torch.tensor([1, 2]), "b": torch.tensor([0, 0, 0])}, jedi.config)
    with pytest.raises(ValueError, match="expected shape"):
        jedi_losses(out, {"a": torch.tensor([1, 2, 0])}, jedi.config)


def test_soft_and_hard_distillation():
    torch.manual_seed(0)
    s = torch.randn(6, 5, requires_grad=True)
    t = torch.randn(6, 5, requires_grad=True)
    soft, _, _ = distill_loss(s, t, JEDIConfig(temperature=2.0))
    reference = F.kl_div(F.log_softmax(s / 2, -1), F.softmax(t / 2, -1), reduction="batchmean") * 4
    torch.testing.assert_close(soft, reference)
    hard, _, _ = distill_loss(s, t, JEDIConfig(hard=True, temperature=2.0))
    torch.testing.assert_close(hard, F.cross_entropy(s, t.argmax(-1)))
    (soft + hard).backward()
    assert s.grad is not None and t.grad is None  # stop-gradient on the teacher


def test_threshold_masks_unconfident_teacher():
    t = torch.tensor([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])  # confident, uniform (max prob 1/3)
    s = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 5.0]])
    for hard in (False, True):
        kept_only, _, _ = distill_loss(s[:1], t[:1], JEDIConfig(hard=hard))
        loss, mask_rate, conf = distill_loss(s, t, JEDIConfig(hard=hard, threshold=0.5))
        torch.testing.assert_close(loss, kept_only / 2)  # mean over all clips, masked count as 0
        assert mask_rate == 0.5
        assert 0.5 < conf < 1
    _, mask_rate, _ = distill_loss(s, t, JEDIConfig(threshold=0.0))
    assert mask_rate == 0


def test_probe_fits_teacher_heads_only():
    jedi, _ = make_jedi(teacher_init="probe")
    torch.manual_seed(1)
    y = torch.randint(0, 3, (64,))
    feats = torch.randn(64, jedi.teacher_dim) + 3 * F.one_hot(y, jedi.teacher_dim).float()  # separable
    before = [p.clone() for p in jedi.students.parameters()]
    losses = fit_teacher_heads_probe(jedi, {"a": feats}, {"a": y}, steps=200)
    assert losses["a"] < 0.1
    assert (jedi.teachers["a"](feats).argmax(-1) == y).float().mean() == 1
    assert all(torch.equal(p, q) for p, q in zip(before, jedi.students.parameters()))
    assert jedi.teachers["a"].weight.grad is None
    with pytest.raises(ValueError, match="probe features"):
        fit_teacher_heads_probe(jedi, {"a": feats[:, :10]}, {"a": y})


def test_ema_update():
    student, teacher = build("tiny3d", 3, width=8), build("tiny3d", 3, width=8)
    student.train()(clips())  # move BN running stats and num_batches_tracked
    old = {k: v.clone() for k, v in teacher.state_dict().items()}
    ema_update(teacher, student, decay=0.75)
    for key, value in teacher.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.75 * old[key] + 0.25 * student.state_dict()[key])
        else:
            assert torch.equal(value, student.state_dict()[key])


def test_ema_baseline_uses_its_own_dataset_only():
    torch.manual_seed(0)
    experts = {"a": build("tiny3d", 3, width=8), "b": build("tiny3d", 5, width=8)}
    base = EMABaseline.from_experts(experts, decay=0.5)
    for m in experts.values():
        m.eval()
    xa, xua = clips(2), clips(3)
    out = base({"a": xa}, {"a": xua})
    assert set(out.labeled) == set(out.unlabeled) == {"a"}          # b's student never ran
    torch.testing.assert_close(out.unlabeled["a"].teacher, experts["a"](xua), rtol=1e-5, atol=1e-6)
    assert not out.unlabeled["a"].teacher.requires_grad and out.unlabeled["a"].student.requires_grad
    loss, _ = jedi_losses(out, {"a": torch.tensor([0, 2])}, base.config)
    loss.backward()
    assert all(p.grad is None for p in base.teachers.parameters())   # teachers move by EMA only
    assert all(p.grad is None for p in base.students["b"].parameters())
    with torch.no_grad():
        for p in base.students["a"].parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in base.teachers["a"].state_dict().items()}
    base.update_ema()
    w = "head.weight"
    torch.testing.assert_close(base.teachers["a"].state_dict()[w],
                               0.5 * before[w] + 0.5 * base.students["a"].state_dict()[w])


def test_mutual_term_trains_the_teacher_only():
    jedi, _ = make_jedi(detach_teacher_features=True, w_distill=0.0, w_mutual=1.0)
    with torch.no_grad():
        perturb_(jedi.teachers["a"])      # T != S, or the term is zero
    out = jedi({"a": clips()}, {"a": clips(3)})
    out = type(out)(labeled={}, unlabeled=out.unlabeled)      # the unlabeled terms alone
    loss, logs = jedi_losses(out, {}, jedi.config)
    loss.backward()
    assert "a/mutual" in logs
    assert jedi.teachers["a"].weight.grad is not None and jedi.teachers["a"].weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in jedi.students.parameters())


def test_head_distillation_trains_the_teacher_heads_alone_from_the_average():
    # w_distill_heads: the average's target (weak view), the live teacher's prediction on detached
    # features (strong view); with every other term off it trains the teacher head and nothing else
    with pytest.raises(ValueError, match="w_distill_heads.*teacher_ema"):
        make_jedi(w_distill_heads=1.0)
    with pytest.raises(ValueError, match="w_distill_heads.*w_mutual"):
        make_jedi(teacher_ema=0.9, w_distill_heads=1.0, w_mutual=0.5)
    jedi, _ = make_jedi(teacher_ema=0.9, w_distill=0.0, w_distill_heads=1.0, temperature=2.0)
    with torch.no_grad():
        perturb_(jedi.teachers["a"])      # live != average, and a non-zero weight on b's block
    out = jedi({"a": clips()}, {"a": clips(3)}, unlabeled_weak={"a": clips(3)})
    u = out.unlabeled["a"]
    loss, logs = jedi_losses(type(out)(labeled={}, unlabeled=out.unlabeled), {}, jedi.config)
    torch.testing.assert_close(loss, distill_loss(u.teacher, u.teacher_ema, jedi.config)[0])
    assert torch.equal(loss, logs["a/distill_heads"]) and loss > 0
    loss.backward()
    grad = {n: p.grad for n, p in jedi.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert set(grad) == {"teachers.a.weight", "teachers.a.bias"}
    # the labeled rows' teacher still reaches every backbone (the CE term is unchanged)
    jedi.zero_grad(set_to_none=True)
    out = jedi({"a": clips()}, {"a": clips(3)}, unlabeled_weak={"a": clips(3)})
    F.cross_entropy(out.labeled["a"].teacher, torch.tensor([0, 1])).backward()
    for name in ("a", "b"):
        assert any(p.grad is not None and p.grad.abs().sum() > 0
                   for n, p in jedi.students[name].named_parameters() if not n.startswith("head.")), name


def test_mutual_term_with_live_features_reaches_every_backbone_but_no_student_head():
    # The trainer's setting: teacher features not detached, so the student -> teacher term trains the
    # teacher head and, through [f_1; f_2], both backbones; the student's prediction is only a target.
    jedi, _ = make_jedi(w_distill=0.0, w_mutual=1.0)
    with torch.no_grad():
        perturb_(jedi.teachers["a"])      # T != S, and a non-zero weight on b's block
    out = jedi({"a": clips()}, {"a": clips(3)})
    out = type(out)(labeled={}, unlabeled=out.unlabeled)      # the unlabeled terms alone
    loss, logs = jedi_losses(out, {}, jedi.config)
    assert torch.equal(loss, logs["a/mutual"]) and loss > 0
    loss.backward()
    grad = {n: p.grad for n, p in jedi.named_parameters()}
    assert grad["teachers.a.weight"].abs().sum() > 0
    assert grad["teachers.b.weight"] is None                 # b's teacher saw no clip
    for name in ("a", "b"):
        backbone = [g for n, g in grad.items() if n.startswith(f"students.{name}.") and ".head." not in n]
        assert any(g is not None and g.abs().sum() > 0 for g in backbone), name
        head = [g for n, g in grad.items() if n.startswith(f"students.{name}.head.")]
        assert head and all(g is None or g.abs().sum() == 0 for g in head), name   # the target is stop-gradient

    # the gradient is the mutual term's and nothing else's: the same term written out by hand
    jedi.zero_grad(set_to_none=True)
    out = jedi({"a": clips()}, {"a": clips(3)})
    t, s = out.unlabeled["a"].teacher, out.unlabeled["a"].student
    by_hand = (F.softmax(s.detach(), -1) * (F.log_softmax(s.detach(), -1) - F.log_softmax(t, -1))).sum(-1).mean()
    mutual, _ = jedi_losses(type(out)(labeled={}, unlabeled=out.unlabeled), {}, jedi.config)
    torch.testing.assert_close(mutual, by_hand)


def test_config_validation():
    with pytest.raises(ValueError, match="teacher_init"):
        JEDIConfig(teacher_init="random")
    with pytest.raises(ValueError, match="threshold"):
        JEDIConfig(threshold=1.5)
    with pytest.raises(ValueError, match="bn_stats"):
        JEDIConfig(bn_stats="frozen")


def test_own_bn_stats_start_as_the_expert_in_a_mixed_batch():
    # dataset a's clips on another scale than b's: whole-batch statistics shift a's features
    xa, xb = 3 * clips(4) + 2, clips(6)
    for bn_stats in ("own", "batch"):
        jedi, experts = make_jedi(bn_stats=bn_stats)
        jedi.train()
        out = jedi({"a": xa}, {"b": xb})
        expert_a = experts["a"].train()(xa)       # the expert on its own clips, in training mode
        same = torch.allclose(out.labeled["a"].student, expert_a, rtol=1e-4, atol=1e-5)
        assert same == (bn_stats == "own")
    # own: the running statistics follow a's clips alone, in the same state_dict as the expert's
    jedi, experts = make_jedi(bn_stats="own")
    assert jedi.students["a"].state_dict().keys() == experts["a"].state_dict().keys()
    bn = next(m for m in jedi.students["a"].modules() if isinstance(m, OwnStatsBatchNorm))
    ref = next(m for m in experts["a"].modules() if isinstance(m, torch.nn.BatchNorm3d))
    jedi.train()({"a": xa}, {"b": xb})
    experts["a"].train()(xa)
    torch.testing.assert_close(bn.running_mean, ref.running_mean)
    torch.testing.assert_close(bn.running_var, ref.running_var)
    assert bn.stat_rows is None                       # set only for the duration of the forward
    # gradients flow through the own-rows statistics into every backbone as before
    out = jedi({"a": xa}, {"b": xb})
    F.cross_entropy(out.labeled["a"].student, torch.tensor([0, 1, 2, 0])).backward()
    assert all(p.grad is not None for p in backbone_params(jedi.students["a"]))


def test_source_bn_stats_normalise_each_dataset_by_its_own_statistics():
    # a's clips on another scale than b's. Every backbone must treat a's rows exactly as a fresh
    # copy of itself would that saw a's rows alone, in training (batch statistics) and in eval
    # (running statistics of a's rows, kept per dataset)
    xa, xb, ua = 3 * clips(4) + 2, clips(6), 3 * clips(2) + 2
    jedi, experts = make_jedi(bn_stats="source")
    torch.nn.init.normal_(jedi.teachers["a"].weight)   # off the block init, so backbone b counts for teacher a
    ref = {n: copy.deepcopy(m).train() for n, m in experts.items()}
    jedi.train()
    out = jedi({"a": xa, "b": xb}, {"a": ua})
    xa_all = torch.cat([xa, ua])                      # a's rows: its labeled and unlabeled clips
    torch.testing.assert_close(out.labeled["a"].student, ref["a"](xa_all)[:4], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.labeled["b"].student, ref["b"](xb), rtol=1e-4, atol=1e-5)
    # teacher a's input: backbone b over a's rows, normalised by a's rows alone
    fb = jedi.students["b"]
    with torch.no_grad():
        ref_b_on_a = copy.deepcopy(experts["b"]).train().features(xa_all)
        ta = jedi.teachers["a"](torch.cat([ref["a"].features(xa_all), ref_b_on_a], 1))[:4]
    torch.testing.assert_close(out.labeled["a"].teacher, ta, rtol=1e-4, atol=1e-5)
    # running statistics: own dataset in running_mean (as the expert's would move), others in source_mean
    bn_b = next(m for m in fb.modules() if isinstance(m, SourceBatchNorm))
    ref_b_bn = next(m for m in ref["b"].modules() if isinstance(m, torch.nn.BatchNorm3d))
    torch.testing.assert_close(bn_b.running_mean, ref_b_bn.running_mean)
    assert not torch.allclose(bn_b.source_mean[0], bn_b.running_mean)   # b's statistics of a's clips moved apart
    assert bn_b.stat_rows is None                     # set only for the duration of the forward
    # eval: b over a's test clips with the statistics of a's clips; the export view agrees
    jedi.eval()
    o = jedi({"a": xa}).labeled["a"]
    with torch.no_grad():
        exported = jedi.teachers["a"](torch.cat([m.features(xa) for m in jedi.backbones_for("a")], 1))
    torch.testing.assert_close(o.teacher, exported, rtol=1e-4, atol=1e-5)
    # the probe's features (teacher_init: probe, bench/teacher_probe.py) are the ones the teacher reads
    with torch.no_grad():
        probed = jedi.teachers["a"](jedi.teacher_features(xa, "a"))
    torch.testing.assert_close(o.teacher, probed, rtol=1e-4, atol=1e-5)
    plain_b = torch.cat([jedi.students["a"].features(xa), jedi.students["b"].features(xa)], 1)
    assert not torch.allclose(o.teacher, jedi.teachers["a"](plain_b), atol=1e-3)   # it is not b's own statistics


def test_teacher_ema_is_the_target_and_the_score():
    jedi, _ = make_jedi(teacher_ema=0.9)
    assert not any(p.requires_grad for p in [*jedi.ema_students.parameters(), *jedi.ema_teachers.parameters()])
    assert not jedi.ema_students.training          # from the start, not only after a train() call
    jedi.eval()                                    # at the start the average is the model: T_i == S_i
    o = jedi({"a": clips()}).labeled["a"]
    torch.testing.assert_close(o.target, o.student, rtol=1e-5, atol=1e-6)
    shift = torch.tensor([1.0, -1.0, 0.5])           # the average moved away from the live model: the score is its
    with torch.no_grad():
        jedi.ema_teachers["a"].bias.add_(shift)
    o = jedi({"a": clips()}).labeled["a"]
    assert o.target is o.teacher_ema
    torch.testing.assert_close(o.target - o.teacher, shift.expand_as(o.teacher), rtol=0, atol=1e-5)
    with torch.no_grad():
        jedi.ema_teachers["a"].bias.sub_(shift)

    jedi.train()
    assert not jedi.ema_students.training          # the average always runs on its running BN statistics
    out = jedi({"a": clips(), "b": clips()}, {"a": clips(3), "b": clips(4)})
    assert all(o.teacher_ema is None for o in out.labeled.values())       # not needed: no target there
    u = out.unlabeled["b"]
    assert u.teacher_ema.shape == u.teacher.shape and not u.teacher_ema.requires_grad
    assert u.target is u.teacher_ema
    _, logs = jedi_losses(out, {"a": torch.tensor([0, 1]), "b": torch.tensor([2, 3])}, jedi.config)
    torch.testing.assert_close(logs["b/distill"], distill_loss(u.student, u.teacher_ema, jedi.config)[0])


def test_update_ema_moves_the_average_toward_the_model():
    jedi, _ = make_jedi(teacher_ema=0.9)
    before = jedi.ema_teachers["a"].weight.clone()
    with torch.no_grad():
        jedi.teachers["a"].weight.add_(1.0)
    jedi.update_ema()
    torch.testing.assert_close(jedi.ema_teachers["a"].weight, before + 0.1)
    jedi.reset_ema()
    torch.testing.assert_close(jedi.ema_teachers["a"].weight, jedi.teachers["a"].weight)
    plain, _ = make_jedi()
    assert not any(k.startswith("ema_") for k in plain.state_dict())     # off: nothing extra to save
    plain.update_ema()
    with pytest.raises(ValueError, match="teacher_ema"):
        JEDIConfig(teacher_ema=1.0)


def test_fixmatch_loss_is_zero_for_clips_under_the_threshold():
    import dataclasses
    from jedi_pipe.jedi import FixMatchBaseline
    torch.manual_seed(0)
    experts = {"a": build("tiny3d", 3, width=8)}
    strong, weak = clips(4), clips(4)
    for threshold, expect_zero in ((0.99, True), (0.0, False)):
        cfg = dataclasses.replace(JEDIConfig(), hard=True, threshold=threshold, w_sup_teacher=0.0, w_mutual=0.0)
        model = FixMatchBaseline.from_experts(experts, cfg).train()
        out = model({"a": clips(2)}, {"a": strong}, {"a": weak})
        u = out.unlabeled["a"]
        assert not u.teacher.requires_grad and u.student.requires_grad
        # an untrained 3-class model is never 99 % sure: every clip is under the threshold
        assert (u.teacher.softmax(-1).amax(-1) < 0.99).all()
        _, logs = jedi_losses(out, {"a": torch.tensor([0, 1])}, cfg)
        assert (logs["a/distill"] == 0) == expect_zero and logs["a/mask_rate"] == (1.0 if expect_zero else 0.0)
        if not expect_zero:   # the target is the weak view's argmax, the prediction the strong view's
            torch.testing.assert_close(logs["a/distill"],
                                       F.cross_entropy(u.student, u.teacher.argmax(-1)))
    # the weak view is the target: the same model on the weak clips alone (one batch with the rest: BN in eval)
    model.eval()
    out = model({}, {"a": strong}, {"a": weak})
    torch.testing.assert_close(out.unlabeled["a"].teacher, model.students["a"](weak))
    torch.testing.assert_close(out.unlabeled["a"].student, model.students["a"](strong))


def test_views_targets_come_from_the_weak_view_students_learn_on_the_strong():
    jedi, _ = make_jedi(teacher_ema=0.9, bn_stats="source")
    for p in jedi.ema_teachers.parameters():   # off the block init: every backbone counts
        torch.nn.init.normal_(p)
    jedi.train()
    lab, strong, weak = {"a": clips(2), "b": clips(2)}, {"a": clips(3), "b": clips(3)}, {"a": clips(3), "b": clips(3)}
    out = jedi(lab, strong, weak)
    plain = jedi(lab, strong)                  # the same step without weak views
    for n in ("a", "b"):
        torch.testing.assert_close(out.unlabeled[n].student, plain.unlabeled[n].student)   # students: strong view
        assert not torch.allclose(out.unlabeled[n].teacher_ema, plain.unlabeled[n].teacher_ema)
    # the average's target on the weak view, each dataset's rows by its own statistics, as in evaluation
    with torch.no_grad():
        ema = jedi.eval()({"a": weak["a"]}).labeled["a"]
    torch.testing.assert_close(out.unlabeled["a"].teacher_ema, ema.teacher_ema, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="teacher_ema"):
        make_jedi()[0](lab, strong, weak)


def test_split_strong_stats_keep_strong_views_out_of_the_running_statistics():
    # strong_stats "split": with weak views given, each dataset's strong views are normalised by
    # their own batch statistics and never move a running statistic, so the running statistics
    # are those the labeled (clean) clips alone give, as in the experts' pretraining
    lab = {"a": 3 * clips(4) + 2, "b": clips(4)}
    strong = {"a": 10 * clips(3) - 5, "b": 10 * clips(3) - 5}    # far off the clean clips' scale
    weak = {"a": clips(3), "b": clips(3)}
    jedi, experts = make_jedi(teacher_ema=0.9, bn_stats="source", strong_stats="split")
    jedi.train()
    out = jedi(lab, strong, weak)
    ref = {n: copy.deepcopy(m).train() for n, m in experts.items()}
    for n in ("a", "b"):   # a student's labeled rows: as its expert would see the labeled clips alone
        torch.testing.assert_close(out.labeled[n].student, ref[n](lab[n]), rtol=1e-4, atol=1e-5)
        with torch.no_grad():  # its strong rows: as a fresh copy that saw the strong clips alone
            alone = copy.deepcopy(experts[n]).train()(strong[n])
        torch.testing.assert_close(out.unlabeled[n].student, alone, rtol=1e-4, atol=1e-5)
        bn = next(m for m in jedi.students[n].modules() if isinstance(m, SourceBatchNorm))
        ref_bn = next(m for m in ref[n].modules() if isinstance(m, torch.nn.BatchNorm3d))
        torch.testing.assert_close(bn.running_mean, ref_bn.running_mean)
        torch.testing.assert_close(bn.running_var, ref_bn.running_var)
    # "shared": the strong rows do enter the student's statistics
    shared, _ = make_jedi(teacher_ema=0.9, bn_stats="source")
    shared.train()(lab, strong, weak)
    bn = next(m for m in shared.students["a"].modules() if isinstance(m, SourceBatchNorm))
    ref_bn = next(m for m in ref["a"].modules() if isinstance(m, torch.nn.BatchNorm3d))
    assert not torch.allclose(bn.running_mean, ref_bn.running_mean, atol=1e-3)
    with pytest.raises(ValueError, match="strong_stats"):
        JEDIConfig(strong_stats="separate")
    with pytest.raises(ValueError, match="strong_stats: split"):
        JEDIConfig(strong_stats="split", bn_stats="batch")


def test_precise_bn_is_torchs_cumulative_average_and_gives_the_trained_statistics_back():
    # PreciseBN: every running statistic becomes the plain mean of its batch statistics over the
    # batches, at the current weights. torch's BatchNorm with momentum None keeps exactly that (a
    # cumulative average), so a copy run that way is the reference; the same sums in another
    # order, so float32 rounding is all assert_close's default tolerance has to absorb.
    jedi, _ = make_jedi(bn_stats="batch")
    with torch.no_grad():   # weights the running statistics were not gathered under
        for p in jedi.students.parameters():
            p.add_(0.1 * torch.randn_like(p))
    batches = [({"a": clips(3), "b": 2 * clips(3) + 1}, {"a": clips(2), "b": clips(2) - 1}) for _ in range(3)]
    ref = copy.deepcopy(jedi)
    for m in ref.students.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None
            m.reset_running_stats()
    with torch.no_grad():
        for args in batches:
            ref.train()(*args)
    trained = {k: v.clone() for k, v in jedi.students.named_buffers()}
    before = precise_bn(jedi.eval(), batches)
    assert not jedi.training, "the mode it was in comes back"
    now, want = dict(jedi.students.named_buffers()), dict(ref.students.named_buffers())
    stats = [k for k in now if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 4
    for k in stats:
        torch.testing.assert_close(now[k], want[k], msg=lambda m, k=k: f"{k}: {m}")
    assert all(not torch.allclose(now[k], trained[k]) for k in stats)
    assert all(m.momentum == 0.1 for m in jedi.students.modules() if isinstance(m, torch.nn.BatchNorm3d))
    jedi.students.load_state_dict(before, strict=False)
    assert all(torch.equal(v, trained[k]) for k, v in jedi.students.named_buffers())

    # with views and per-dataset statistics: the students' own statistics move, the average's do not
    jedi, _ = make_jedi(bn_stats="source", teacher_ema=0.9)
    avg = {k: v.clone() for k, v in jedi.ema_students.named_buffers()}
    own = {k: v.clone() for k, v in jedi.students.named_buffers() if k.endswith("running_mean")}
    precise_bn(jedi, [({"a": clips(3) + 2, "b": clips(3)}, {"a": clips(2), "b": clips(2)},
                       {"a": clips(2), "b": clips(2)})])
    assert all(torch.equal(v, avg[k]) for k, v in jedi.ema_students.named_buffers())
    moved = dict(jedi.students.named_buffers())
    assert all(not torch.allclose(moved[k], v) for k, v in own.items())
