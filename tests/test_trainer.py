"""synth -> shard -> pretrain -> train -> eval on tiny data on the CPU; kill -9 and --resume."""
from __future__ import annotations

import copy
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import torch

from jedi_pipe.config import load_config
from jedi_pipe.errors import InputError
from jedi_pipe.loaders import make_eval_loader
from jedi_pipe.models import build
from jedi_pipe.shards import open_shards
from jedi_pipe.trainer import evaluate, pretrain, train

TINY = ["pretrain.workers=1", "pretrain.epochs=2", "jedi.epochs=2", "pretrain.batch_size=4", "jedi.batch_size=4",
        "jedi.unlabeled_ratio=1", "checkpoint_every=2", "eval_batch_size=16"]


def tiny_config(shard_dirs, out, extra=()):
    data = {"name": "tiny", "out": str(out), "seed": 0, "loader": "dali",
            "datasets": [{"name": "hmdb51", "shards": str(shard_dirs["hmdb51"]), "model": "tiny3d"},
                         {"name": "ssv2", "shards": str(shard_dirs["ssv2"]), "model": "tiny3d", "flip": False}],
            "clip": {"frames": 4, "stride": 1, "size": 24}}
    return data, load_config(data=data, overrides=TINY + list(extra))


def test_pipeline_writes_every_output(shard_dirs, tmp_path, monkeypatch):
    from jedi_pipe import trainer
    _, cfg = tiny_config(shard_dirs, tmp_path / "run")
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", -1)    # a progress line at every logged step
    monkeypatch.setattr(trainer, "LOG_EVERY", 1)
    said = []
    experts = pretrain(cfg, log=said.append)                # TINY: pretrain.workers=1, the experts in this process
    assert set(experts) == {"hmdb51", "ssv2"}
    for name in experts:
        progress = [m for m in said if f": expert {name}, loss" in m]
        assert progress and all(re.match(rf"step \d+/\d+: expert {name}, loss \d+\.\d{{3}}; \d+ s, about \d+ s to go$", m)
                                for m in progress), said
    lines = []
    results = train(cfg, log=lines.append)
    out = Path(cfg.out)
    # the console: a line per logged step between evaluations (every PROGRESS_EVERY_S), one per evaluation,
    # the last at the final step with the results' means (test here: these shards have no val role)
    losses = [m for m in lines if "clips/s" in m]
    assert losses and all(re.match(r"step \d+/\d+: loss \d+\.\d{3}, \d+ clips/s; \d+ s, about \d+ s to go$", m)
                          for m in losses), losses
    evals = [m for m in lines if m.startswith("step ") and "top-1" in m]
    mean = lambda kind: sum(k[kind]["top1"] for k in results["datasets"].values()) / 2   # noqa: E731
    assert len(evals) >= 2 and re.match(rf"step (\d+)/\1: test top-1, mean of 2: students {mean('student'):.1f}, "
                                         rf"teachers {mean('teacher'):.1f}; \d+ s$", evals[-1]), evals
    assert "to go" in evals[0] and "to go" not in evals[-1]
    for f in ("config.yaml", "metrics.jsonl", "results.json", "results.md", "checkpoint.pt",
              "experts/hmdb51.pt", "experts/ssv2.pt"):
        assert (out / f).is_file(), f
    saved = json.loads((out / "results.json").read_text())
    assert saved == results
    # where the work runs is no part of what it learned: the experts and the checkpoint are taken as they are
    same_threads = [f"torch_threads={torch.get_num_threads()}", "pretrain.workers=2"]
    _, moved = tiny_config(shard_dirs, out, same_threads)
    assert pretrain(moved, log=lambda m: None) == experts
    assert train(moved, resume=True, log=lambda m: None) == results
    for name, kinds in saved["datasets"].items():
        assert set(kinds) == {"expert", "student", "teacher"}
        n = open_shards(shard_dirs[name]).count("test")
        for v in kinds.values():   # every test clip counted once: k of n clips, rounded to 2 decimals
            for key in ("top1", "top5"):
                assert any(round(100 * k / n, 2) == v[key] for k in range(n + 1)), (name, key, v, n)
            assert v["top1"] <= v["top5"]
        # the students' numbers are what their weights in the checkpoint score, counted here by hand
        state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
        student = build("tiny3d", len(open_shards(shard_dirs[name]).classes)).eval()
        prefix = f"students.{name}."
        # bn_stats source keeps the other datasets' BatchNorm statistics beside the student's own (source_mean,
        # source_var); on its own dataset's clips a student is the plain model with its own statistics
        student.load_state_dict({k[len(prefix):]: v for k, v in state.items()
                                 if k.startswith(prefix) and not k.endswith(("source_mean", "source_var"))})
        hits, seen = {1: 0, 5: 0}, set()
        for b in make_eval_loader(shard_dirs[name], clip={"frames": cfg.clip.frames, "size": cfg.clip.size},
                                  batch_size=5, views=cfg.clip.eval_views, backend=cfg.loader):
            with torch.no_grad():
                p = student(b["x"].flatten(0, 1)).softmax(-1).view(*b["x"].shape[:2], -1).mean(1)
            for probs, y, i in zip(p, b["y"].tolist(), b["id"].tolist()):
                if i not in seen:
                    seen.add(i)
                    ranked = probs.argsort(descending=True).tolist()
                    hits[1] += ranked[0] == y
                    hits[5] += y in ranked[:5]
        assert len(seen) == n
        assert (kinds["student"]["top1"], kinds["student"]["top5"]) == (round(100 * hits[1] / n, 2),
                                                                       round(100 * hits[5] / n, 2))
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [ln for ln in lines if "dataset" in ln]
    assert steps and all({"loss", "lr", "sup_student", "sup_teacher", "distill", "pseudo_label_acc",
                          "clips_per_s", "input_wait"} <= set(ln) for ln in steps)
    assert any("eval" in ln for ln in lines)
    assert "| hmdb51 |" in (out / "results.md").read_text()
    # eval reproduces the final numbers from the checkpoint
    again = evaluate(cfg, log=lambda m: None)
    assert again == results


@pytest.mark.parametrize("mode", ["in process", "in workers", "on other threads", "on other loader threads"])
def test_an_interrupted_expert_goes_on_from_its_checkpoint_to_the_same_weights(shard_dirs, tmp_path, monkeypatch,
                                                                             mode):
    """Cut in this process (one torch thread) after an update that followed the step-2 checkpoint; go on in
    this process, in worker processes (two of one thread each: the same threads), or on two threads, which
    round differently: that expert starts again rather than finish as no uninterrupted run would; so does it
    with other loader threads (the torch loader's workers decide its batches; its state refuses another count)."""
    from jedi_pipe import trainer
    monkeypatch.setattr(trainer, "LOG_EVERY", 1)    # lines after the checkpoint, which the resume must drop
    sets = ["device=cpu", "torch_threads=1", "pretrain.epochs=3"]
    _, whole = tiny_config(shard_dirs, tmp_path / "whole", sets)
    _, cut = tiny_config(shard_dirs, tmp_path / "cut", sets)
    pretrain(whole, log=lambda m: None)
    real_lr_at = trainer.lr_at

    def lr_at_then_stop(step, *a):   # a kill before update 3: update 2 ran after the checkpoint at step 2
        if step == 3:
            raise KeyboardInterrupt
        return real_lr_at(step, *a)
    monkeypatch.setattr(trainer, "lr_at", lr_at_then_stop)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cut, log=lambda m: None)
    monkeypatch.setattr(trainer, "lr_at", real_lr_at)
    experts, first = Path(cut.out) / "experts", cut.datasets[0].name
    assert (experts / f"{first}.resume.pt").is_file() and not (experts / f"{first}.pt").exists()
    logged = [json.loads(ln) for ln in (Path(cut.out) / "pretrain.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [0, 1, 2]      # update 2's line too: after the checkpoint
    lines = []
    more = {"in process": [], "in workers": ["pretrain.workers=2"], "on other threads": ["torch_threads=2"],
            "on other loader threads": ["threads=3"]}[mode]
    _, again = tiny_config(shard_dirs, tmp_path / "cut", sets + more)
    pretrain(again, log=lines.append)
    resumed = f"expert {first}: resumed from {experts / (first + '.resume.pt')} at step 2"
    assert not list(experts.glob("*.resume.pt"))                      # written experts leave no checkpoint behind
    logged = [json.loads(ln) for ln in (Path(cut.out) / "pretrain.jsonl").read_text().splitlines()]
    keys = [(r["dataset"], r["step"]) for r in logged]
    assert len(set(keys)) == len(keys)                                # each step once, however it went on
    if mode in ("on other threads", "on other loader threads"):
        assert resumed not in lines and any("training it from the start" in m for m in lines), lines
        return
    assert resumed in lines, lines
    assert any(re.match(rf"expert {first}: \d+ steps in \d+s \(resumed at step 2\)", m) for m in lines), lines
    for d in cut.datasets:
        a, b = (torch.load(Path(c.out) / "experts" / f"{d.name}.pt", weights_only=False) for c in (whole, cut))
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (d.name, k)
    # the loss log reads as the uninterrupted run's: the same losses (worker processes log every
    # trainer.LOG_EVERY of their own, so there only at the steps they log)
    ref = {(r["dataset"], r["step"]): r["loss"]
           for r in map(json.loads, (Path(whole.out) / "pretrain.jsonl").read_text().splitlines())}
    assert all(ref[k] == r["loss"] for k, r in zip(keys, logged))
    if mode == "in workers":
        return
    assert set(keys) == set(ref)
    # a refused run leaves the folder's config.yaml as it was: it must keep describing what the folder holds
    saved = (Path(cut.out) / "config.yaml").read_text()
    with pytest.raises(InputError, match="made with other settings"):
        pretrain(tiny_config(shard_dirs, tmp_path / "cut", sets + ["pretrain.lr=0.5"])[1], log=lambda m: None)
    assert (Path(cut.out) / "config.yaml").read_text() == saved
    train(again, log=lambda m: None)
    saved = (Path(cut.out) / "config.yaml").read_text()
    with pytest.raises(InputError, match=r"made with other settings \(jedi.lr differ\); .* overwrite=True"):
        train(tiny_config(shard_dirs, tmp_path / "cut", sets + ["jedi.lr=0.5"])[1], resume=True, log=lambda m: None)
    assert (Path(cut.out) / "config.yaml").read_text() == saved
    # a checkpoint of two processes resumed by one: refused by name (it was an IndexError on rank 1
    # of the other way round, and a silent change of data shares with fewer processes)
    ck_path = Path(cut.out) / "checkpoint.pt"
    ck = torch.load(ck_path, map_location="cpu", weights_only=False)
    torch.save({**ck, "rng": ck["rng"] * 2}, ck_path)
    with pytest.raises(InputError, match=r"saved by a run of 2 process\(es\), this one has 1"):
        train(again, resume=True, log=lambda m: None)
    torch.save(ck, ck_path)
    # a fresh train (overwrite) over experts made with other settings: refused too, before the run is replaced
    with pytest.raises(InputError, match="expert .* was made with other settings"):
        train(tiny_config(shard_dirs, tmp_path / "cut", sets + ["pretrain.lr=0.5"])[1], overwrite=True,
              log=lambda m: None)
    assert (Path(cut.out) / "config.yaml").read_text() == saved and (Path(cut.out) / "checkpoint.pt").is_file()


def test_experts_side_by_side_equal_experts_in_turn(shard_dirs, tmp_path, monkeypatch):
    # two worker processes of one torch thread each against one after another on one thread: each
    # expert depends on its seed, data and threads only, so the weights must be equal bit for bit
    from jedi_pipe import trainer
    monkeypatch.setattr(trainer, "PROGRESS_EVERY_S", -1)    # the workers too: a progress line at every logged step
    _, par = tiny_config(shard_dirs, tmp_path / "par", ["device=cpu", "pretrain.workers=2", "torch_threads=2"])
    _, seq = tiny_config(shard_dirs, tmp_path / "seq", ["device=cpu", "pretrain.workers=1", "torch_threads=1"])
    lines = []
    assert pretrain(par, log=lines.append) == pretrain(seq, log=lambda m: None)
    assert any("up to 2 at a time" in m for m in lines), lines
    for name in ("hmdb51", "ssv2"):   # the workers' progress reaches the caller's log, not only a terminal
        assert any(re.match(rf"step \d+/\d+: expert {name}, loss \d+\.\d{{3}}; ", m) for m in lines), lines
    for name in ("hmdb51", "ssv2"):
        a, b = (torch.load(Path(c.out) / "experts" / f"{name}.pt", weights_only=False) for c in (par, seq))
        assert a["model"].keys() == b["model"].keys()
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
    # one expert lost (a crash, a deleted file) is retrained on the same threads: the same weights
    ssv2 = Path(par.out) / "experts" / "ssv2.pt"
    before = torch.load(ssv2, weights_only=False)["model"]
    ssv2.unlink()
    pretrain(par, log=lambda m: None)
    again = torch.load(ssv2, weights_only=False)["model"]
    assert all(torch.equal(before[k], again[k]) for k in before)
    # pretrain.jsonl: both experts' lines, whichever process wrote them
    logged = {json.loads(line)["dataset"] for line in (Path(par.out) / "pretrain.jsonl").read_text().splitlines()}
    assert logged == {"hmdb51", "ssv2"}


def test_a_script_without_a_main_guard_trains_experts_side_by_side(shard_dirs, tmp_path):
    # the workers are fresh interpreters: nothing re-runs the calling script (multiprocessing's spawn would)
    data, _ = tiny_config(shard_dirs, tmp_path / "run")
    script = tmp_path / "plain.py"
    script.write_text("from jedi_pipe.config import load_config\nfrom jedi_pipe.trainer import pretrain\n"
                      f"cfg = load_config(data={data!r}, overrides={TINY + ['device=cpu', 'pretrain.workers=2']!r})\n"
                      "print('TRAINED', sorted(pretrain(cfg, log=print)))\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("TRAINED") == 1 and "up to 2 at a time" in p.stdout, p.stdout


def test_an_expert_failing_in_its_worker_fails_pretrain_with_its_error(shard_dirs, tmp_path):
    import shutil

    from jedi_pipe.shards import open_shards
    # a labeled tar damaged after sharding: only the worker that reads it finds out (pretrain's up-front
    # checks read cards and inits, not clips)
    shards = tmp_path / "hmdb51"
    shutil.copytree(shard_dirs["hmdb51"], shards)
    tar = open_shards(shards).tars("labeled")[0]
    tar.write_bytes(b"not a tar" * 100)
    data, _ = tiny_config(shard_dirs, tmp_path / "run")
    data["datasets"][0]["shards"], data["loader"] = str(shards), "torch"
    cfg = load_config(data=data, overrides=TINY + ["device=cpu", "pretrain.workers=2"])
    with pytest.raises(Exception) as raised:
        pretrain(cfg, log=lambda m: None)
    if sys.version_info >= (3, 11):   # the worker's traceback rides along as a note
        assert any("in the worker process of expert hmdb51" in n for n in raised.value.__notes__), raised.value
    # an init that is no weights file is refused up front, in this process, before any worker starts
    init = tmp_path / "bad.pt"      # the guard's record says ImageNet, but the file holds no weights
    init.write_bytes(b"not weights")
    (tmp_path / "bad.pt.json").write_text(json.dumps({"trained_on": ["imagenet"]}))
    data, _ = tiny_config(shard_dirs, tmp_path / "run2")
    data["datasets"][0]["init"] = str(init)
    cfg = load_config(data=data, overrides=TINY + ["device=cpu", "pretrain.workers=2"])
    with pytest.raises(InputError, match=r"bad\.pt: not a weights file torch can load \(UnpicklingError"):
        pretrain(cfg, log=lambda m: None)


def test_jedi_steps_fixes_the_joint_length(shard_dirs, tmp_path):
    """jedi.steps: that many joint steps whatever the epochs and data sizes say; 0: epochs decide."""
    _, cfg = tiny_config(shard_dirs, tmp_path / "run", ["jedi.steps=3", "jedi.epochs=50", "checkpoint_every=1000"])
    train(cfg, log=lambda m: None)
    rows = [json.loads(line) for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in rows) == 3
    assert torch.load(Path(cfg.out) / "checkpoint.pt", map_location="cpu", weights_only=False)["step"] == 3


def test_kill_and_resume_gives_the_same_results(shard_dirs, tmp_path):
    import yaml
    # with the students' weight average and a scaled student lr: both must come back from the checkpoint,
    # and the teacher heads' lr switch (step 5) falls after the first checkpoint (step 2)
    extra = ["jedi.epochs=4", "jedi.student_avg=0.8", "jedi.student_lr_scale=0.5", "jedi.teacher_lr_from=5"]
    data, cfg = tiny_config(shard_dirs, tmp_path / "ref", extra)
    pretrain(cfg, log=lambda m: None)
    ref = train(cfg, log=lambda m: None)

    # a second run folder with the same experts, killed after its first checkpoint
    killed = tmp_path / "killed"
    (killed / "experts").mkdir(parents=True)
    for f in (Path(cfg.out) / "experts").iterdir():
        (killed / "experts" / f.name).write_bytes(f.read_bytes())
    conf = tmp_path / "killed.yaml"
    conf.write_text(yaml.safe_dump({**data, "out": str(killed)}))
    args = [sys.executable, "-m", "jedi_pipe.cli", "train", "--config", str(conf)]
    for o in TINY + extra:
        args += ["--set", o]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "results.json").is_file(), "the run finished before it could be killed"
    done = subprocess.run(args + ["--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((killed / "results.json").read_text()) == ref
    assert all("student_avg" in v for v in ref["datasets"].values())


def test_mean_teacher_run(shard_dirs, tmp_path):
    """jedi.teacher_ema: the run saves the average and `eval` scores its teachers from it."""
    _, cfg = tiny_config(shard_dirs, tmp_path / "run", ["jedi.teacher_ema=0.9"])
    results = train(cfg, log=lambda m: None)
    assert evaluate(cfg, log=lambda m: None) == results
    # scored fairly: the average's students next to the average's teachers
    assert all({"student", "teacher", "student_ema"} <= set(v) for v in results["datasets"].values())
    state = torch.load(Path(cfg.out) / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("ema_teachers.") for k in state) and any(k.startswith("ema_students.") for k in state)
    assert not torch.equal(state["ema_teachers.hmdb51.weight"], state["teachers.hmdb51.weight"]), "the average is not the live head"
    # the teachers' score is the average's: an average made to call every clip class c is scored so
    # (confusion rows are [true, predicted, clips]; c is a class the teachers did not always call)
    before = results["datasets"]["hmdb51"]
    c = (max(before["teacher"]["confusion"], key=lambda r: r[2])[1] + 1) % len(before["teacher"]["per_class"])
    ckpt = torch.load(Path(cfg.out) / "checkpoint.pt", map_location="cpu", weights_only=False)
    ckpt["model"]["ema_teachers.hmdb51.bias"][c] += 1e4
    torch.save(ckpt, Path(cfg.out) / "checkpoint.pt")
    again = evaluate(cfg, log=lambda m: None)["datasets"]["hmdb51"]
    assert {p for _, p, _ in again["teacher"]["confusion"]} == {c} != {p for _, p, _ in before["teacher"]["confusion"]}
    assert again["student"] == before["student"]


@pytest.mark.parametrize("extra", [["jedi.views=true", "jedi.teacher_ema=0.9", "jedi.bn_stats=source",
                                    "jedi.strong_stats=split", "jedi.distill_rampup=3", "jedi.teacher_warmup=2"],
                                   ["jedi.teachers=fixmatch", "jedi.views=true", "jedi.threshold=0.3",
                                    "jedi.distill_rampup=3"]],
                         ids=["jedi-views-source-bn", "fixmatch"])
def test_views_runs(shard_dirs, tmp_path, extra, monkeypatch):
    """Weak/strong views through the trainer: JEDI (with per-dataset BatchNorm) and the FixMatch
    baseline train on the strong views (x_us) with the weak ones (x_u) as where the targets come
    from, save and evaluate back to the same numbers; the distillation term is logged."""
    from jedi_pipe import jedi as jedi_mod
    from jedi_pipe.loaders.mixing import MultiDatasetLoader
    batches, calls = [], []
    loader_iter = MultiDatasetLoader.__iter__

    def recording_iter(self):
        for b in loader_iter(self):
            batches.append(b)
            yield b
    monkeypatch.setattr(MultiDatasetLoader, "__iter__", recording_iter)
    model_cls = jedi_mod.FixMatchBaseline if "jedi.teachers=fixmatch" in extra else jedi_mod.JEDI
    forward = model_cls.forward

    heads_only = []

    def recording_forward(self, labeled, unlabeled=None, unlabeled_weak=None):
        if unlabeled:   # a training step (evaluation passes labeled clips only)
            calls.append((unlabeled, unlabeled_weak))
            heads_only.append(getattr(self, "heads_only", None))
        return forward(self, labeled, unlabeled, unlabeled_weak)
    monkeypatch.setattr(model_cls, "forward", recording_forward)
    from jedi_pipe import trainer as trainer_mod
    weights, losses = [], trainer_mod.jedi_losses

    def recording_losses(out, labels, cfg):
        weights.append(cfg.w_distill)
        return losses(out, labels, cfg)
    monkeypatch.setattr(trainer_mod, "jedi_losses", recording_losses)

    _, cfg = tiny_config(shard_dirs, tmp_path / "run", extra)
    results = train(cfg, log=lambda m: None)
    # distill_rampup 3: the distillation weight of steps 0, 1, 2 is w_distill * exp(-5 (1 - t/3)^2), then w_distill
    assert cfg.jedi.distill_rampup == 3 and len(weights) > 3
    w = cfg.jedi.w_distill
    assert weights[:3] == pytest.approx([w * math.exp(-5), w * math.exp(-5 * (2 / 3) ** 2), w * math.exp(-5 / 9)])
    if model_cls is jedi_mod.JEDI:   # teacher_warmup 2: the teacher losses train the heads only in steps 0 and 1
        assert heads_only[:3] == [True, True, False] and not any(heads_only[2:])
    assert set(weights[3:]) == {w}
    batches = [b for b in batches if "x_u" in next(iter(b.values()))]   # the joint phase's (pretraining has none)
    assert calls and len(calls) == len(batches)
    for (strong, weak), batch in zip(calls, batches):
        for n, b in batch.items():
            assert torch.equal(strong[n], b["x_us"]) and torch.equal(weak[n], b["x_u"])
    assert evaluate(cfg, log=lambda m: None) == results
    steps = [r for r in map(json.loads, (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()) if "eval" not in r]
    assert steps and all("distill" in r and "mask_rate" in r for r in steps)
    if "jedi.teachers=fixmatch" in extra:   # FixMatch trains no teacher: no mutual term
        assert all("mutual" not in r for r in steps)


@pytest.mark.parametrize("heads_from", [0, 2])
def test_student_lr_scale_slows_the_students_only(shard_dirs, tmp_path, monkeypatch, heads_from):
    """jedi.student_lr_scale: every student weight (backbone and head) steps at lr x scale, the
    teacher heads at lr, at every step of the schedule; with jedi.teacher_lr_from the heads step at
    the students' lr before that step."""
    from jedi_pipe import trainer as trainer_mod
    seen, joint_step = [], trainer_mod.joint_step

    def recording_step(jedi, forward, opt, *args, **kw):
        groups = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
        seen.append(({n: groups[id(p)] for n, p in jedi.named_parameters() if p.requires_grad}))
        return joint_step(jedi, forward, opt, *args, **kw)
    monkeypatch.setattr(trainer_mod, "joint_step", recording_step)
    _, cfg = tiny_config(shard_dirs, tmp_path / "run", ["jedi.steps=3", "jedi.student_lr_scale=0.25",
                                                       "jedi.warmup_steps=2", "checkpoint_every=1000",
                                                       f"jedi.teacher_lr_from={heads_from}"])
    train(cfg, log=lambda m: None)
    assert len(seen) == 3
    for step, lrs in enumerate(seen):
        peak = trainer_mod.lr_at(step, 3, cfg.jedi.lr, 2)
        heads = 0.25 * peak if step < heads_from else peak
        assert {lr for n, lr in lrs.items() if n.startswith("teachers.")} == {heads}
        assert {lr for n, lr in lrs.items() if n.startswith("students.")} == {0.25 * peak}
        assert any(n.startswith("students.") and ".head." in n for n in lrs)   # heads are the students' too
    logged = [r for r in map(json.loads, (Path(cfg.out) / "metrics.jsonl").read_text().splitlines()) if "lr" in r]
    assert logged and all(r["lr"] == 0.25 * trainer_mod.lr_at(r["step"] - 1, 3, cfg.jedi.lr, 2) for r in logged)


def test_student_avg_is_the_students_moving_average(shard_dirs, tmp_path, monkeypatch):
    """jedi.student_avg: after each step avg <- d * avg + (1 - d) * live, from the experts on; it is
    checkpointed, scored as `student_avg`, and `evaluate` scores the checkpoint the same."""
    from jedi_pipe import trainer as trainer_mod
    live, joint_step = [], trainer_mod.joint_step

    def recording_step(jedi, *args, **kw):
        if not live:
            live.append({k: v.clone() for k, v in jedi.students.state_dict().items()})   # the experts
        out = joint_step(jedi, *args, **kw)
        live.append({k: v.clone() for k, v in jedi.students.state_dict().items()})
        return out
    monkeypatch.setattr(trainer_mod, "joint_step", recording_step)
    _, cfg = tiny_config(shard_dirs, tmp_path / "run", ["jedi.steps=3", "jedi.student_avg=0.6", "checkpoint_every=1000"])
    results = train(cfg, log=lambda m: None)
    saved = torch.load(Path(cfg.out) / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    key = next(k for k, v in live[0].items() if v.is_floating_point() and k.endswith("weight"))
    want = live[0][key]
    for state in live[1:]:
        want = 0.6 * want + 0.4 * state[key]
    assert not torch.equal(want, live[-1][key])            # the average is not the live student
    torch.testing.assert_close(saved[f"students_avg.{key}"], want)
    assert all("student_avg" in v for v in results["datasets"].values())
    assert evaluate(cfg, log=lambda m: None) == results
    from jedi_pipe.export import inference_module
    from jedi_pipe.records import results_table
    assert "weight average" in results_table(results)
    name = key.split(".")[0]
    exported = inference_module(cfg.out, name, "student_avg").state_dict()
    torch.testing.assert_close(exported[key[len(name) + 1:]], want)   # export hands out the average, not the live student
    # keeping the average changes no training step: the same run without it scores the same live students
    monkeypatch.undo()
    _, plain = tiny_config(shard_dirs, tmp_path / "plain", ["jedi.steps=3", "checkpoint_every=1000"])
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "experts").symlink_to(Path(cfg.out) / "experts")
    without = train(plain, log=lambda m: None)
    assert {n: {k: v for k, v in r.items() if k != "student_avg"} for n, r in results["datasets"].items()} \
        == without["datasets"]


def test_precise_bn_rescores_mid_run_and_changes_no_training_step(shard_dirs, tmp_path, monkeypatch):
    """jedi.precise_bn: each evaluation before the last scores students whose BatchNorm statistics
    were recomputed at their weights; then the run goes on from its own statistics, so every step,
    the final model and the results are those of the same run without it."""
    from jedi_pipe import jedi as jedi_mod
    from jedi_pipe import trainer as trainer_mod
    seen = {}   # run -> per joint step its loss, per evaluation the students' running means

    def recording(run):
        step, evaluate_jedi = trainer_mod.joint_step, trainer_mod.evaluate_jedi

        def recording_step(*args, **kw):
            out, logs = step(*args, **kw)
            seen[run]["loss"].append(logs["total"].item())
            seen[run]["rng"].append(torch.get_rng_state())   # what dropout, where a model has it, draws from
            return out, logs

        def recording_eval(jedi, *args, **kw):
            seen[run]["stats"].append({k: v.clone() for k, v in jedi.students.named_buffers() if k.endswith("running_mean")})
            seen[run].setdefault("first model", copy.deepcopy(jedi))
            return evaluate_jedi(jedi, *args, **kw)
        seen[run] = {"loss": [], "rng": [], "stats": []}
        monkeypatch.setattr(trainer_mod, "joint_step", recording_step)
        monkeypatch.setattr(trainer_mod, "evaluate_jedi", recording_eval)

    extra = ["jedi.steps=4", "eval_every=1", "eval_first=0", "checkpoint_every=1000", "jedi.views=true",
             "jedi.teacher_ema=0.9", "jedi.bn_stats=source", "jedi.micro_batch_size=2"]
    _, plain = tiny_config(shard_dirs, tmp_path / "plain", extra)
    recording("plain")
    without = train(plain, log=lambda m: None)
    monkeypatch.undo()
    _, cfg = tiny_config(shard_dirs, tmp_path / "precise", extra + ["jedi.precise_bn=2"])
    (tmp_path / "precise").mkdir()
    (tmp_path / "precise" / "experts").symlink_to(Path(plain.out) / "experts")
    recording("precise")
    precise_bn = trainer_mod.precise_bn

    def drawing_precise_bn(*args):   # as a model with dropout would in train mode: tiny3d has none
        torch.rand(3)
        return precise_bn(*args)
    monkeypatch.setattr(trainer_mod, "precise_bn", drawing_precise_bn)
    results = train(cfg, log=lambda m: None)

    a, b = seen["precise"], seen["plain"]
    assert len(a["loss"]) == 4 and a["loss"] == b["loss"], "the same steps"
    assert all(torch.equal(x, y) for x, y in zip(a["rng"], b["rng"])), "the run's RNG untouched"
    assert len(a["stats"]) == len(b["stats"]) >= 4     # steps 1, 2, 3, 4 (and test once more when 1-4 are on val)
    # step 1's, rebuilt: 2 training steps' clips of a loader seeded by the step, as the step runs them
    # (strong views with their weak ones, in the 2 micro-batches of micro_batch_size 2), averaged
    model, sets = b["first model"], trainer_mod.open_all(cfg)
    it = iter(trainer_mod.joint_loader(cfg, sets, seed=trainer_mod.recompute_bn_seed(cfg.seed, 1)))
    batches = []
    for _ in range(2):
        labeled, strong, weak, labels = trainer_mod.step_inputs(next(it), True, torch.device("cpu"))
        batches += [(lab, unl, wk) for lab, unl, _, wk in trainer_mod.micro_batches(labeled, strong, labels, 2, weak)]
    it.close()
    jedi_mod.precise_bn(model, batches)
    for k, v in model.students.named_buffers():
        if k.endswith("running_mean"):
            torch.testing.assert_close(a["stats"][0][k], v, msg=lambda m, k=k: f"{k}: {m}")
    for mid_a, mid_b in zip(a["stats"][:3], b["stats"][:3]):   # mid-run: recomputed
        assert all(not torch.equal(mid_a[k], mid_b[k]) for k in mid_b)
    for end_a, end_b in zip(a["stats"][3:], b["stats"][3:]):   # at the end: the run's own
        assert all(torch.equal(end_a[k], end_b[k]) for k in end_b)
    assert results == without
    assert evaluate(cfg, log=lambda m: None) == results


def test_a_file_that_is_not_a_runs_checkpoint_is_one_sentence(tmp_path):
    from jedi_pipe.trainer import load_joint
    cfg = load_config(data={"name": "t", "out": str(tmp_path), "datasets": [{"name": "a", "shards": "x"}]})
    experts = {"a": build("tiny3d", 3)}
    f = tmp_path / "c.pt"
    for content, words in ((b"", "EOFError"), (b"not a pickle", "is not a checkpoint written by `jedi-pipe train`")):
        f.write_bytes(content)
        with pytest.raises(InputError, match=re.escape(words)):
            load_joint(cfg, experts, f, "cpu")
    torch.save({"arch": "tiny3d", "model": experts["a"].state_dict()}, f)      # an expert's file
    with pytest.raises(InputError, match="an expert's file"):
        load_joint(cfg, experts, f, "cpu")
    torch.save({"model": {}, "step": 3}, f)                                   # another config's run
    with pytest.raises(InputError, match="does not fit this config's datasets and models"):
        load_joint(cfg, experts, f, "cpu")


def test_a_diverged_loss_is_logged_as_strict_json_and_read_back_as_nan(tmp_path):
    import math

    from jedi_pipe.records import StepRecord, append_records, read_metrics

    def refuse(name):   # what jq and other strict readers do with NaN / Infinity
        raise ValueError(f"not JSON: {name}")
    path = tmp_path / "metrics.jsonl"
    append_records(path, [StepRecord(3, "hmdb51", 0.01, float("nan"), 12.0, 0.1, {"distill": float("inf"), "ce": 1.5})])
    line = json.loads(path.read_text(), parse_constant=refuse)
    assert line["loss"] is None and line["distill"] is None and line["ce"] == 1.5
    (step,), _ = read_metrics(path)
    assert math.isnan(step.loss) and math.isnan(step.terms["distill"]) and step.terms["ce"] == 1.5


def test_a_diverging_run_stops_with_one_sentence_and_saves_nothing_of_it(shard_dirs, tmp_path):
    """A learning rate that blows the weights up ends the expert and the joint phase with a DivergedError
    naming the lr to lower, and no checkpoint or expert file holds a non-finite weight."""
    from jedi_pipe.errors import DivergedError
    _, cfg = tiny_config(shard_dirs, tmp_path / "run", ["pretrain.lr=1e30", "pretrain.epochs=3"])
    with pytest.raises(DivergedError, match=r"expert hmdb51 diverged at step \d+: .*Lower pretrain\.lr \(now 1e\+30\)"):
        pretrain(cfg, log=lambda m: None)
    for f in (Path(cfg.out) / "experts").glob("*.pt"):   # a resume checkpoint from before, if any, is finite
        assert all(torch.isfinite(v).all() for v in torch.load(f, weights_only=False)["model"].values()
                   if v.is_floating_point()), f

    # the joint phase from sound experts: a checkpoint every step, so one is due right after the blow-up
    _, cfg = tiny_config(shard_dirs, tmp_path / "joint", ["jedi.lr=1e30", "jedi.warmup_steps=0",
                                                          "checkpoint_every=1", "jedi.epochs=6"])
    pretrain(cfg, log=lambda m: None)
    with pytest.raises(DivergedError, match=r"the joint phase diverged at step \d+: .*Lower jedi\.lr \(now 1e\+30\)"
                                            r".*--overwrite"):
        train(cfg, log=lambda m: None)
    ck = torch.load(Path(cfg.out) / "checkpoint.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (Path(cfg.out) / "results.json").exists()
