"""The joint step at real size: micro-batches, activation checkpointing, one config for library and CLI."""
import copy
import dataclasses

import pytest
import torch

from jedi_pipe.config import ConfigError, load_config
from jedi_pipe.errors import InputError
from jedi_pipe.jedi import JEDI, JEDIConfig, jedi_losses
from jedi_pipe.models import build, list_models
from jedi_pipe.plan import ModelCost, format_plan, measure_model, plan
from jedi_pipe.trainer import (joint_model, joint_step, loss_config, micro_batch_count, micro_batches,
                               step_inputs)

from .conftest import perturb_


def batch(names, n_lab, n_unl, shape=(3, 8, 32, 32), classes=(3, 5, 4, 6), seed=1):
    g = torch.Generator().manual_seed(seed)
    labeled = {n: torch.randn(n_lab, *shape, generator=g) for n in names}
    unlabeled = {n: torch.randn(n_unl, *shape, generator=g) for n in names}
    labels = {n: torch.randint(0, c, (n_lab,), generator=g) for n, c in zip(names, classes)}
    return labeled, unlabeled, labels


def experts(arch, names, classes=(3, 5, 4, 6), **kw):
    torch.manual_seed(0)
    return {n: build(arch, c, **kw) for n, c in zip(names, classes)}


def one_step(jedi, data, k, checkpointing):
    """A copy of `jedi` after one SGD step of trainer.joint_step; returns its state_dict and logs."""
    jedi = copy.deepcopy(jedi)
    for s in jedi.students.values():
        s.grad_checkpointing = checkpointing
    opt = torch.optim.SGD([p for p in jedi.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    _, logs = joint_step(jedi, jedi, opt, *data, jedi.config, k)
    return jedi.state_dict(), logs


def settle_for_eval(jedi, data, scale=0.3):
    """In place: BatchNorm running statistics from one training forward over `data` (momentum 1: that
    batch's), the moving average reset to the model, then teachers, live and average, moved apart from
    the students, and eval mode. With fresh statistics (mean 0, variance 1) the tiny backbones' features
    are ~1e-4, every logit is about its bias, and every distillation and mutual term is 0."""
    bns = [m for m in jedi.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    jedi.train()
    with torch.no_grad():
        jedi(data[0], data[1])
        for m in bns:
            m.momentum = 0.1
        jedi.reset_ema()
        for k, name in enumerate(jedi.names):
            perturb_(jedi.teachers[name], scale, seed=k)
            perturb_(jedi.ema_teachers[name], scale, seed=10 + k)
    jedi.eval()


def assert_same_state(a, b, atol, rtol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=rtol, atol=atol, msg=lambda m, key=key: f"{key}: {m}")


@pytest.mark.parametrize("bn_stats", ["batch", "own", "source"])
def test_checkpointing_changes_nothing_not_even_batchnorm(bn_stats):
    # train mode: the recompute in backward must use the forward's BatchNorm rows (bn_stats own)
    # and must not move the running statistics a second time
    names = ["a", "b"]
    jedi = JEDI.from_experts(experts("tiny3d", names, width=8), JEDIConfig(bn_stats=bn_stats, teacher_ema=0.9))
    jedi.train()
    data = batch(names, 2, 4)
    plain, logs_plain = one_step(jedi, data, 1, False)
    ckpt, logs_ckpt = one_step(jedi, data, 1, True)
    assert_same_state(plain, ckpt, atol=1e-6)
    assert any(not torch.equal(plain[k], v) for k, v in jedi.state_dict().items())   # the step did move things
    torch.testing.assert_close(logs_plain["total"], logs_ckpt["total"])


def test_micro_batches_are_the_same_step_with_batchnorm_in_eval_mode():
    names = ["a", "b"]
    jedi = JEDI.from_experts(experts("tiny3d", names, width=8), JEDIConfig(teacher_ema=0.9, w_mutual=0.5))
    data = batch(names, 4, 8)
    settle_for_eval(jedi, data)   # BatchNorm from running statistics: the only thing micro-batches change is out of play
    whole, logs1 = one_step(jedi, data, 1, False)
    parts, logs4 = one_step(jedi, data, 4, True)
    assert all(logs1[f"{n}/{k}"] > 1e-2 for n in names for k in ("distill", "mutual"))   # the unlabeled clips count
    assert_same_state(whole, parts, atol=1e-6)
    for key in logs1:
        torch.testing.assert_close(logs1[key], logs4[key], rtol=1e-5, atol=1e-6)


def test_micro_batches_keep_every_part_mixed_and_refuse_uneven_splits():
    lab, unl, y = batch(["a", "b"], 4, 8)
    parts = micro_batches(lab, unl, y, 2)
    assert [(p[0]["a"].shape[0], p[1]["b"].shape[0], p[2]["b"].shape[0]) for p in parts] == [(2, 4, 2)] * 2
    torch.testing.assert_close(torch.cat([p[1]["a"] for p in parts]), unl["a"])
    with pytest.raises(ValueError, match="3 micro-batches do not divide the 4 labeled clips of a"):
        micro_batches(lab, unl, y, 3)
    assert micro_batch_count(0, 16) == 1 and micro_batch_count(2, 16) == 8 and micro_batch_count(2, 2) == 1
    with pytest.raises(ValueError, match="micro_batch_size: 3 does not divide the 16"):
        micro_batch_count(3, 16)


def test_library_and_yaml_config_build_the_same_method(tmp_path):
    knobs = {"temperature": 2.0, "threshold": 0.35, "w_sup_teacher": 0.7, "w_distill": 1.5, "w_mutual": 0.25,
             "teacher_ema": 0.9, "bn_stats": "own"}
    yaml_text = "name: t\nout: {out}\ndatasets:\n  - {{name: a, shards: x}}\n  - {{name: b, shards: y}}\njedi:\n"
    yaml_text += "".join(f"  {k}: {v}\n" for k, v in knobs.items())
    (tmp_path / "c.yaml").write_text(yaml_text.format(out=tmp_path))
    cfg = load_config(tmp_path / "c.yaml")
    names = ["a", "b"]
    by_lib = JEDI.from_experts(experts("tiny3d", names, width=8), JEDIConfig(**knobs))
    by_yaml = joint_model(experts("tiny3d", names, width=8), cfg)
    lab, unl, y = batch(names, 2, 4)
    losses = []
    for model in (by_lib, by_yaml):
        with torch.no_grad():
            perturb_(model.teachers["a"], 0.05)   # T != S, so distillation and mutual terms are not zero
        model.train()
        losses.append(jedi_losses(model(lab, unl), y, model.config)[1])
    assert set(losses[0]) == set(losses[1]) and "a/mutual" in losses[0]
    assert 0 < losses[0]["a/mask_rate"] + losses[0]["b/mask_rate"] < 2   # the threshold masks some clips, not all
    for key in losses[0]:
        torch.testing.assert_close(losses[0][key], losses[1][key], rtol=0, atol=0)
    # and the defaults are the same object's: a library user gets the CLI's method
    assert load_config(data={"name": "t", "out": "o", "datasets": [{"name": "a", "shards": "x"}]}).jedi.w_mutual \
        == JEDIConfig().w_mutual


def test_baselines_drop_the_terms_that_train_a_teacher_head():
    # a baseline's teacher is a copy without gradient (or the student itself): a term into it would only cost
    # time, so the baselines run with JEDI's config (the demo's) even where its head options could not apply
    def jedi_section(**jedi):
        return load_config(data={"name": "t", "out": "o", "datasets": [{"name": "a", "shards": "x"}], "jedi": jedi}).jedi
    for teachers in ("ema", "fixmatch"):
        for knobs in ({"w_distill_heads": 1.0}, {"w_mutual": 0.5}):   # teacher_ema 0: JEDI would refuse the first
            cfg = loss_config(jedi_section(teachers=teachers, **knobs))
            assert cfg.w_distill_heads == 0.0 and cfg.w_mutual == 0.0, (teachers, knobs)
    joint = jedi_section(teacher_ema=0.9, w_distill_heads=1.0)
    assert loss_config(joint) is joint and joint.w_distill_heads == 1.0
    with pytest.raises(ConfigError, match="jedi.w_distill_heads: needs teacher_ema"):
        jedi_section(w_distill_heads=1.0)


@pytest.mark.slow
def test_four_r2plus1d_students_one_step_with_and_without_memory_settings():
    # One optimizer step of the real model (four R(2+1)D-18 students and their teachers, mean teacher on) at a
    # tiny batch on CPU: micro-batches + checkpointing against one pass. BatchNorm in eval mode, since
    # micro-batches change its statistics by design. Tolerance: the two runs sum the same fp32 gradients in a
    # different order (two halves, recomputed convolutions), relative error ~1e-6 per sum; after one SGD step
    # at lr 0.1 a parameter differs by lr x that x its gradient, which with every loss term on (four full-size
    # heads' CE and distillation) reaches ~1e2 on the stem: measured up to 2.7e-5, 7e-6 of the weight; so
    # 1e-5 plus 2e-5 of the weight. A wrong micro-batch scale (1/k) or a recompute with other BatchNorm rows
    # would move them by 1e-3 or more.
    torch.set_num_threads(2)
    names = ["hmdb51", "ucf101", "kinetics400", "ssv2"]
    jedi = JEDI.from_experts(experts("r2plus1d_18", names, classes=(51, 101, 400, 174)),
                             JEDIConfig(teacher_ema=0.999), copy_experts=False)
    data = batch(names, 2, 2, shape=(3, 4, 32, 32), classes=(51, 101, 400, 174))   # the model at full size, small clips
    settle_for_eval(jedi, data, scale=0.02)   # four 512-wide blocks: logits of order 1, not saturated softmaxes
    whole, logs1 = one_step(jedi, data, 1, False)
    assert all(logs1[f"{n}/distill"] > 1e-3 for n in names)
    parts, logs2 = one_step(jedi, data, 2, True)
    assert_same_state(whole, parts, atol=1e-5, rtol=2e-5)
    torch.testing.assert_close(logs1["total"], logs2["total"], rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(whole[k], v) for k, v in jedi.state_dict().items())


def plan_config(**jedi):
    data = {"name": "p", "out": "o", "clip": {"frames": 16, "size": 112},
            "datasets": [{"name": n, "shards": n, "model": "r2plus1d_18"} for n in ("hmdb51", "ucf101", "kinetics400", "ssv2")],
            "jedi": {"batch_size": 16, "unlabeled_ratio": 3, "teacher_ema": 0.999, **jedi}}
    return load_config(data=data)


# one R(2+1)D-18 clip-pass as measured by plan.measure_model (bf16, 16x112^2), so the arithmetic tests run fast
R2P1D = ModelCost("r2plus1d_18", 31_505_325, 0.234 * 2**30, 0.059 * 2**30, 0.016 * 2**30, 0.161 * 2**30,
                  0.02 * 2**30, 81e9, 0.467 * 2**30)


def test_plan_arithmetic_and_the_setting_that_would_fit():
    whole = plan(plan_config(), costs={"r2plus1d_18": R2P1D}, labeled_counts={"kinetics400": 24_000})
    assert whole["clips_per_step"] == 4 * (16 + 48) and whole["clip_passes_per_micro_batch"] == 1024
    assert whole["activations"]["activations"] == pytest.approx(4 * (256 * R2P1D.act_per_clip + R2P1D.act_fixed))
    assert not whole["fits"] and whole["suggestion"] is not None and whole["suggestion_peak"] <= whole["budget"]
    assert "DOES NOT FIT" in format_plan(whole) and "fits with: --set jedi.micro_batch_size=" in format_plan(whole)
    parts = plan(plan_config(micro_batch_size=2), costs={"r2plus1d_18": R2P1D})
    assert parts["fits"] and parts["clip_passes_per_micro_batch"] == 128
    # 8 micro-batches: 1/8 of the activations, the same weights and state
    assert parts["activations"]["activations"] == pytest.approx(4 * (32 * R2P1D.act_per_clip + R2P1D.act_fixed))
    assert parts["state"] == whole["state"]
    # 3 forward-equivalents per trained clip-pass, + the mean teacher's forward over the 192 unlabeled clips
    assert whole["flops_per_step"] == pytest.approx(256 * 4 * R2P1D.flops_per_clip * 3 + 192 * 4 * R2P1D.flops_per_clip)
    assert whole["steps_per_epoch"] == 1500
    ckpt = plan(plan_config(micro_batch_size=2, grad_checkpointing=True), costs={"r2plus1d_18": R2P1D})
    assert ckpt["peak"] < parts["peak"] and ckpt["flops_per_step"] > parts["flops_per_step"]
    eight = plan(plan_config(micro_batch_size=2), gpus=8, costs={"r2plus1d_18": R2P1D})
    assert eight["clip_passes_per_micro_batch"] == 128 and eight["state"]["DDP gradient buckets"] > 0


def test_measured_activations_scale_with_the_clip_and_checkpointing_keeps_less():
    small, big = (measure_model("tiny3d", 5, 8, s, bf16=False) for s in (16, 32))
    assert big.act_per_clip == pytest.approx(4 * small.act_per_clip, rel=0.05)   # activations ~ pixels
    assert big.kept_per_clip + big.stage_peak_per_clip < big.act_per_clip
    assert big.flops_per_clip == pytest.approx(4 * small.flops_per_clip, rel=0.05)


@pytest.mark.parametrize("arch, frames, size", [("tiny3d_s", 8, 32),
                                                 pytest.param("r2plus1d_18", 4, 56, marks=pytest.mark.slow)])
def test_plan_counts_per_dataset_batchnorm_as_the_joint_step_runs_it(arch, frames, size):
    """The plan counts a plain backbone; bn_stats "source" (the default) normalises each dataset's rows
    apart, and in a joint step each dataset's rows are two slices (labeled, then unlabeled), which
    SourceBatchNorm concatenates. The copy replaces the slice as what batch_norm saves, so the bytes
    per clip stay the plain count (the per-dataset means are a fixed cost, which the difference of two
    batch sizes leaves out); a BatchNorm that kept both would add ~40 % on tiny3d_s."""
    from jedi_pipe.jedi import source_batchnorm
    from jedi_pipe.plan import _saved_bytes
    torch.manual_seed(0)
    model = build(arch, 5).train()
    source_batchnorm(model, own=0, sources=4)
    bns = [m for m in model.modules() if hasattr(m, "stat_rows")]
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved(per_part):    # 4 datasets' labeled parts, then their unlabeled parts, per_part clips each
        for bn in bns:
            bn.stat_rows = [(k % 4, slice(k * per_part, (k + 1) * per_part)) for k in range(8)]
        return _saved_bytes(lambda: model(torch.randn(8 * per_part, 3, frames, size, size)), params)

    per_clip = (saved(2) - saved(1)) / 8
    assert per_clip == pytest.approx(measure_model(arch, 5, frames, size, bf16=False).act_per_clip, rel=1e-3)


@pytest.mark.slow
def test_plan_counts_r2plus1d_activations_as_a_fresh_count_does():
    torch.manual_seed(0)
    model = build("r2plus1d_18", 400).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(torch.randn(1, 3, 16, 112, 112))
    cost = measure_model("r2plus1d_18", 400, 16, 112, bf16=False)
    assert sum(kept.values()) == pytest.approx(cost.act_per_clip + cost.act_fixed, rel=1e-3)


@pytest.mark.parametrize("name", list_models())
def test_every_model_checkpoints_its_stages_to_the_same_gradients(name):
    torch.manual_seed(0)
    model = build(name, 5).train()
    x = torch.randn(2, 3, 4, 32, 32)
    grads, kept = [], []
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    for on in (False, True):
        model.grad_checkpointing = on
        model.zero_grad()
        torch.manual_seed(1)          # x3d's dropout draws the same mask
        saved = {}                    # activations the forward keeps for backward (storage -> bytes)

        def pack(t):
            if t.untyped_storage().data_ptr() not in params:
                saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = model(x)
        y.square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        kept.append(sum(saved.values()))
    assert len(model.feature_stages()) >= 2
    # checkpointing does run: the forward keeps the stages' inputs only (measured: 4-42 % of the bytes kept without)
    assert kept[1] < 0.5 * kept[0], kept
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_config_check_names_the_method_key():
    from jedi_pipe.config import ConfigError
    base = {"name": "t", "out": "o", "datasets": [{"name": "a", "shards": "x"}]}
    for jedi, message in (({"bn_stats": "frozen"}, "jedi.bn_stats: one of own, batch"),
                          ({"threshold": 2.0}, r"jedi.threshold: a probability in \[0, 1\]"),
                          ({"micro_batch_size": -1}, "jedi.micro_batch_size"),
                          ({"student_lr_scale": 0}, r"jedi.student_lr_scale: a fraction of lr in \(0, 1\]"),
                          ({"student_avg": 1.0}, r"jedi.student_avg: a decay in \[0, 1\)"),
                          ({"teacher_lr_from": -1}, "jedi.teacher_lr_from: a step >= 0"),
                          ({"teacher_dropout": 0.5}, "jedi.teacher_dropout: unknown key")):
        with pytest.raises(ConfigError, match=message):
            load_config(data={**base, "jedi": jedi})


def counted_step(cfg, n_lab, n_unl, shape=(3, 8, 32, 32)) -> dict:
    """The clips a real trainer.joint_step runs through the backbones of cfg's joint model, with
    and without gradients, counted at each backbone's first stage, and the clip tensors it is given."""
    names = [d.name for d in cfg.datasets]
    model = joint_model(experts("tiny3d", names, width=8), cfg).train()
    seen = {"trained": 0, "averaged": 0, "largest_trained_pass": 0}

    def count(stage, args):
        if torch.is_grad_enabled():
            seen["trained"] += args[0].shape[0]
            seen["largest_trained_pass"] = max(seen["largest_trained_pass"], args[0].shape[0])
        else:
            seen["averaged"] += args[0].shape[0]

    for m in model.modules():
        if hasattr(m, "feature_stages"):
            m.feature_stages()[0].register_forward_pre_hook(count)
    labeled, unlabeled, labels = batch(names, n_lab, n_unl, shape)
    strong = batch(names, n_lab, n_unl, shape, seed=2)[1]
    loader_batch = {n: {"x": labeled[n], "x_u": unlabeled[n], "x_us": strong[n], "y": labels[n]} for n in names}
    labeled, unlabeled, weak, labels = step_inputs(loader_batch, cfg.jedi.views, torch.device("cpu"))   # the trainer's
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    k = micro_batch_count(cfg.jedi.micro_batch_size, n_lab)
    joint_step(model, model, opt, labeled, unlabeled, labels, loss_config(cfg.jedi), k, None, weak)
    seen["inputs"] = sum(x.shape[0] for d in (labeled, unlabeled, weak or {}) for x in d.values())
    return seen


@pytest.mark.parametrize("teachers", ["joint", "ema", "fixmatch"])
@pytest.mark.parametrize("views", [False, True])
def test_plan_counts_the_clips_the_joint_step_runs(teachers, views):
    cfg = load_config(data={"name": "p", "out": "o", "clip": {"frames": 8, "size": 32},
                            "datasets": [{"name": n, "shards": n, "model": "tiny3d"} for n in ("a", "b")],
                            "jedi": {"batch_size": 2, "unlabeled_ratio": 2, "teacher_ema": 0.9, "views": views,
                                     "teachers": teachers, "micro_batch_size": 1}})
    p = plan(cfg, costs={"tiny3d": dataclasses.replace(R2P1D, arch="tiny3d")})
    ran = counted_step(cfg, 2, 4)
    assert (p["trained_passes_per_gpu"], p["averaged_passes_per_gpu"], p["inputs_per_gpu"]) \
        == (ran["trained"], ran["averaged"], ran["inputs"])
    assert p["clip_passes_per_micro_batch"] / 2 == ran["largest_trained_pass"]   # 2 backbones, 2 micro-batches


def test_plan_counts_views_as_the_models_run_them():
    off, on = (plan(plan_config(views=v), costs={"r2plus1d_18": R2P1D}) for v in (False, True))
    clip_bytes = 3 * 16 * 112**2 * 4
    # JEDI: the strong views take the unlabeled clips' place in the students' batch and the weak ones in the
    # moving average's, so only the inputs grow: 4 datasets x 48 weak views more on the GPU
    assert on["inputs_per_gpu"] - off["inputs_per_gpu"] == 192 and on["clips_per_step"] == off["clips_per_step"]
    assert (on["trained_passes_per_gpu"], on["averaged_passes_per_gpu"]) == (1024, 768) \
        == (off["trained_passes_per_gpu"], off["averaged_passes_per_gpu"])
    assert on["activations"]["input clips"] - off["activations"]["input clips"] == 192 * clip_bytes
    assert on["flops_per_step"] == off["flops_per_step"]
    # FixMatch: each student runs its 48 weak views in its own batch, with gradients
    off, on = (plan(plan_config(views=v, teachers="fixmatch"), costs={"r2plus1d_18": R2P1D}) for v in (False, True))
    assert on["trained_passes_per_gpu"] - off["trained_passes_per_gpu"] == 4 * 48
    assert off["trained_passes_per_gpu"] == 4 * 64 and on["averaged_passes_per_gpu"] == 0
    assert on["activations"]["activations"] - off["activations"]["activations"] \
        == pytest.approx(192 * R2P1D.act_per_clip)
    assert on["flops_per_step"] - off["flops_per_step"] == pytest.approx(192 * R2P1D.flops_per_clip * 3)
    assert on["state"]["mean-teacher copies"] == 0 and on["params"] == 4 * R2P1D.params   # no teacher heads, no copies


def test_plan_counts_the_students_weight_average():
    """jedi.student_avg keeps one fp32 copy of every student (backbone and head) beside the joint model."""
    off, on = (plan(plan_config(student_avg=a), costs={"r2plus1d_18": R2P1D}) for a in (0.0, 0.999))
    assert off["state"]["students' average"] == 0
    assert on["state"]["students' average"] == 4 * 4 * R2P1D.params


def test_plan_counts_the_config_shards_and_the_joint_phase(shard_dirs, tmp_path):
    import yaml
    from click.testing import CliRunner
    from jedi_pipe.cli import main
    from jedi_pipe.shards import open_shards
    cfg = {"name": "p", "out": str(tmp_path / "o"), "clip": {"frames": 4, "size": 16},
           "datasets": [{"name": "hmdb51", "shards": str(shard_dirs["hmdb51"])},
                        {"name": "ucf101", "shards": str(tmp_path / "not-sharded-yet")}],
           "jedi": {"batch_size": 2, "epochs": 3}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    ss = open_shards(shard_dirs["hmdb51"])
    r = CliRunner().invoke(main, ["plan", "--config", str(path)])
    assert r.exit_code == 0, r.output
    # hmdb51 counted in its folder (it has fewer labeled clips than the published 357), ucf101 from the published 954
    assert f"'hmdb51': {ss.count('labeled')}, 'ucf101': 954" in r.output and "counted for hmdb51" in r.output
    assert "epoch: 477 steps" in r.output and "joint phase: 1431 steps (3 jedi.epochs)" in r.output
    r = CliRunner().invoke(main, ["plan", "--config", str(path), "--set", "jedi.steps=450"])
    assert "joint phase: 450 steps (jedi.steps)" in r.output
    # the teachers' heads are sized by the folder's classes, not the published 51
    p = plan(load_config(path), labeled_counts={}, class_counts={"hmdb51": len(ss.classes)},
             costs={"tiny3d": measure_model("tiny3d", 5, 4, 16, bf16=False)})
    q = plan(load_config(path), labeled_counts={}, class_counts={}, costs=p["models"])   # the published sizes
    width = 2 * p["models"]["tiny3d"].num_features
    assert q["params"] - p["params"] == (width + 1) * (51 - len(ss.classes))
    # from Python without counts, the folders are counted as the CLI counts them
    counted = plan(load_config(path), costs=p["models"])
    assert counted["params"] == p["params"] and counted["labeled"]["hmdb51"] == ss.count("labeled")
    for bad in ({"gpus": 0}, {"gpus": 1.5}, {"utilisation": 0}, {"tflops": 0}, {"gpu_mem_gb": -1}):
        with pytest.raises(InputError, match=f"{next(iter(bad))} must be"):
            plan(load_config(path), costs=p["models"], **bad)
