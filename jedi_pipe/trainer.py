"""Training loops: expert pretraining, joint JEDI training, evaluation. Reads top to bottom.

Run folder (`cfg.out`):
    config.yaml                 the resolved config
    experts/<dataset>.pt        one expert per dataset, trained on its labeled clips only
    checkpoint.pt               the joint run's latest checkpoint (model, optimizer, step, RNG, loader)
    metrics.jsonl               one line per logged step and dataset, plus evaluation lines
    results.json / results.md   expert, student and teacher top-1/top-5 per dataset
"""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from . import shards as shardfmt
from .config import Config, save_config
from .jedi import JEDI, EMABaseline, JEDIConfig, fit_teacher_heads_probe, jedi_losses
from .loaders import resolve_backend, role_loader
from .loaders.clip import ClipSpec
from .loaders.mixing import MultiDatasetLoader
from .models import build

LOG_EVERY = 10        # steps between metrics.jsonl lines (each costs a host sync on GPU)


# ---------------------------------------------------------------------------- plumbing

def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda was asked for but no GPU is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    # On the CPU the loader's decode threads share the cores with the step: half for each.
    # (torch's intra-op threads spin-wait; oversubscribed they run ~10x slower, not 2x.)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    return torch.device("cpu")


def role_loader_cls(cfg: Config, sets=()):
    """The role-loader class for cfg.loader (auto: DALI when usable here, else PyTorch)."""
    return role_loader(resolve_backend(cfg.loader, list(sets)))


def clip_spec(cfg: Config) -> ClipSpec:
    return ClipSpec(frames=cfg.clip.frames, stride=cfg.clip.stride, size=cfg.clip.size)


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to zero: a pure function of the step."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def autocast(device: torch.device):
    # bf16 on the GPU: no loss scaling needed; the CPU runs fp32 (bf16 conv3d is slow there).
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
    return x


def append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def open_all(cfg: Config) -> dict[str, shardfmt.ShardSet]:
    return {d.name: shardfmt.open_shards(d.shards) for d in cfg.datasets}


def prepare_run(cfg: Config) -> Path:
    out = Path(cfg.out)
    if distributed.is_main():
        (out / "experts").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    distributed.barrier()
    return out


def quiet_unless_main(log):
    """Under torchrun only rank 0 prints."""
    return log if distributed.is_main() else (lambda m: None)


# ---------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate_logits(forward, ss: shardfmt.ShardSet, cfg: Config, device, role: str = "test") -> dict:
    """Run `forward(x) -> {kind: logits}` over a role (test or val); top-1/top-5 (%) per kind.

    Views of a clip are averaged as probabilities; every test clip counts once (ids dedupe any
    padding a reader adds). Under torchrun each rank runs its part and every rank gets the totals.
    """
    loader = role_loader_cls(cfg, [ss])(ss, role, clip_spec(cfg), cfg.eval_batch_size, train=False,
                                         views=cfg.clip.eval_views, threads=cfg.threads, rank=distributed.rank(),
                                         world_size=distributed.world_size())
    probs, labels, ids = {}, [], []
    for b in loader:
        x = b["x"]                                    # [B, V, C, T, H, W]
        B, V = x.shape[:2]
        with autocast(device):
            out = forward(to_device(x.flatten(0, 1), device))
        for kind, logits in out.items():
            p = logits.float().softmax(-1).view(B, V, -1).mean(1)
            probs.setdefault(kind, []).append(p.cpu())
        labels.append(b["y"])
        ids.append(b["id"])
    if distributed.world_size() > 1:
        parts = distributed.gather((probs, labels, ids))
        probs = {k: [p for part in parts for p in part[0][k]] for k in parts[0][0]}
        labels, ids = [y for part in parts for y in part[1]], [i for part in parts for i in part[2]]
    ids_t = torch.cat(ids)
    _, first = np.unique(ids_t.numpy(), return_index=True)
    keep = torch.as_tensor(np.sort(first))
    y = torch.cat(labels)[keep]
    result = {}
    for kind, ps in probs.items():
        p = torch.cat(ps)[keep]
        k = min(5, p.shape[1])
        topk = p.topk(k, dim=1).indices
        result[kind] = {"top1": round(100.0 * (topk[:, 0] == y).float().mean().item(), 2),
                        "top5": round(100.0 * (topk == y[:, None]).any(1).float().mean().item(), 2),
                        "n": int(len(y))}
    return result


# ---------------------------------------------------------------------------- experts

def expert_path(cfg: Config, name: str) -> Path:
    return Path(cfg.out) / "experts" / f"{name}.pt"


def expert_signature(config: dict, name: str) -> dict:
    """What an expert depends on: its dataset entry, the clip, the pretrain schedule, the seed."""
    return {"dataset": next(d for d in config["datasets"] if d["name"] == name), "clip": config["clip"],
            "pretrain": config["pretrain"], "seed": config["seed"]}


def _check_same(saved: dict, now: dict, what: str) -> None:
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"{what} was made with other settings ({', '.join(diff)} differ); "
                         f"choose another run folder (out) or delete it")


def load_expert(cfg: Config, name: str, device) -> torch.nn.Module:
    ck = torch.load(expert_path(cfg, name), map_location="cpu", weights_only=False)
    model = build(ck["arch"], ck["num_classes"])
    model.load_state_dict(ck["model"])
    return model.to(device)


def pretrain(cfg: Config, log=print) -> dict:
    """Train one expert per dataset on its labeled clips only; skip experts already written."""
    rank, world = distributed.init()
    log = quiet_unless_main(log)
    out = prepare_run(cfg)
    device = pick_device(cfg)
    sets = open_all(cfg)
    RoleLoader = role_loader_cls(cfg, sets.values())
    metrics = {}
    for i, d in enumerate(cfg.datasets):
        path = expert_path(cfg, d.name)
        if path.is_file():
            ck = torch.load(path, map_location="cpu", weights_only=False)
            _check_same(expert_signature(ck["config"], d.name), expert_signature(cfg.to_dict(), d.name),
                        f"expert {path}")
            metrics[d.name] = ck["test"]
            log(f"expert {d.name}: exists ({path}), test top-1 {metrics[d.name]['top1']:.1f}")
            continue
        seed_everything(cfg.seed * 1000 + i)
        ss = sets[d.name]
        model = build(d.model, len(ss.classes), weights=d.init or None).to(device)
        loader = MultiDatasetLoader([(d.name, ss, d.flip)], clip_spec(cfg),
                                    distributed.per_rank(cfg.pretrain.batch_size, "pretrain.batch_size"), 0,
                                    RoleLoader, seed=cfg.seed * 1000 + i, rank=rank, world_size=world,
                                    threads=cfg.threads)
        total = cfg.pretrain.epochs * loader.steps_per_epoch
        opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain.lr, momentum=0.9,
                              weight_decay=cfg.pretrain.weight_decay)
        model.train()
        forward = distributed.wrap(model)
        t0 = time.time()
        for step, batch in zip(range(total), loader):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, cfg.pretrain.lr, cfg.pretrain.warmup_steps)
            b = batch[d.name]
            with autocast(device):
                loss = F.cross_entropy(forward(to_device(b["x"], device)), b["y"].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if step % LOG_EVERY == 0 or step == total - 1:
                mean = distributed.mean_over_ranks({"loss": loss.item()})
                if distributed.is_main():
                    append_jsonl(out / "pretrain.jsonl", [{"dataset": d.name, "step": step, "loss": mean["loss"],
                                                          "lr": opt.param_groups[0]["lr"]}])
        model.eval()
        distributed.sync_buffers(model)
        test = evaluate_logits(lambda x: {"expert": model(x)}, ss, cfg, device)["expert"]
        # val, when the folder has one, is the score to choose by; test is only reported
        val = evaluate_logits(lambda x: {"expert": model(x)}, ss, cfg, device, "val")["expert"] if ss.count("val") else None
        if distributed.is_main():
            tmp = path.with_suffix(".pt.partial")
            torch.save({"arch": d.model, "num_classes": len(ss.classes), "classes": ss.classes,
                        "model": model.state_dict(), "test": test, "val": val, "config": cfg.to_dict()}, tmp)
            os.replace(tmp, path)
        distributed.barrier()   # every rank finds the expert before it goes on
        metrics[d.name] = test
        log(f"expert {d.name}: {total} steps in {time.time() - t0:.0f}s, test top-1 {test['top1']:.1f} "
            f"top-5 {test['top5']:.1f}")
    return metrics


# ---------------------------------------------------------------------------- JEDI

def jedi_config(cfg: Config) -> JEDIConfig:
    j = cfg.jedi
    return JEDIConfig(temperature=j.temperature, threshold=j.threshold, hard=j.hard,
                      w_sup_student=j.w_sup_student, w_sup_teacher=j.w_sup_teacher, w_distill=j.w_distill,
                      detach_teacher_features=j.detach_teacher_features, teacher_init=j.teacher_init,
                      teacher_dropout=j.teacher_dropout, w_mutual=j.w_mutual,
                      teacher_ema=j.teacher_ema, bn_stats=j.bn_stats)


def joint_model(experts: dict, cfg: Config):
    """Students from the experts, with JEDI's joint teachers or (baseline) per-dataset EMA teachers."""
    if cfg.jedi.teachers == "ema":
        return EMABaseline.from_experts(experts, jedi_config(cfg), decay=cfg.jedi.ema_decay)
    return JEDI.from_experts(experts, jedi_config(cfg))


def joint_loader(cfg: Config, sets, rank: int = 0, world: int = 1) -> MultiDatasetLoader:
    """The joint phase's batches: per step, labeled and unlabeled clips of every dataset."""
    return MultiDatasetLoader([(d.name, sets[d.name], d.flip) for d in cfg.datasets], clip_spec(cfg),
                              distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size"),
                              cfg.jedi.unlabeled_ratio, role_loader_cls(cfg, sets.values()),
                              seed=cfg.seed, rank=rank, world_size=world, threads=cfg.threads)


@torch.no_grad()
def teacher_features(jedi: JEDI, cfg: Config, ss: shardfmt.ShardSet, role: str, device) -> tuple:
    """[f_1; ...; f_N] of every clip of a role (one centre view, eval mode), and the labels."""
    jedi.eval()
    loader = role_loader_cls(cfg, [ss])(ss, role, clip_spec(cfg), cfg.eval_batch_size, train=False,
                                        threads=cfg.threads)
    fs, ys = [], []
    for b in loader:
        fs.append(jedi.teacher_features(to_device(b["x"][:, 0], device)).float())
        ys.append(b["y"].to(device))
    return torch.cat(fs), torch.cat(ys)


def probe_teachers(jedi: JEDI, cfg: Config, sets, device) -> None:
    """teacher_init: probe: fit the teacher heads on the labeled clips' concatenated features."""
    feats, labels = {}, {}
    for d in cfg.datasets:
        feats[d.name], labels[d.name] = teacher_features(jedi, cfg, sets[d.name], "labeled", device)
    fit_teacher_heads_probe(jedi, feats, labels)


def train(cfg: Config, resume: bool = False, log=print) -> dict:
    """JEDI from the experts (pretrained first when missing); writes results.json/.md."""
    rank, world = distributed.init()
    log = quiet_unless_main(log)
    out = prepare_run(cfg)
    device = pick_device(cfg)
    sets = open_all(cfg)
    names = [d.name for d in cfg.datasets]
    if not all(expert_path(cfg, n).is_file() for n in names):
        log("experts missing: pretraining them first")
        pretrain(cfg, log=log)
    experts = {n: load_expert(cfg, n, device) for n in names}
    jcfg = jedi_config(cfg)

    # -- model, optimizer, loader
    seed_everything(cfg.seed)
    jedi = joint_model(experts, cfg).to(device)
    loader = joint_loader(cfg, sets, rank, world)
    total = cfg.jedi.epochs * loader.steps_per_epoch
    trained = [p for p in jedi.parameters() if p.requires_grad]     # not the EMA copies
    opt = torch.optim.SGD(trained, lr=cfg.jedi.lr, momentum=0.9, weight_decay=cfg.jedi.weight_decay)
    forward = distributed.wrap(jedi)
    forward = torch.compile(forward) if cfg.compile else forward
    label_true = {n: torch.as_tensor(_label_true(sets[n])) for n in names}   # diagnostics only
    # Periodic evaluations (the curves) run on val when every folder has one; test is then
    # evaluated once, at the end, for results.json.
    eval_split = "val" if all(sets[n].count("val") for n in names) else "test"

    ckpt_path, step = out / "checkpoint.pt", 0
    if resume and ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        _check_same(ck["config"], cfg.to_dict(), f"checkpoint {ckpt_path}")
        jedi.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        loader.load_state_dict(ck["loader"])
        set_rng_state(ck["rng"][rank])
        step = ck["step"]
        if distributed.is_main():
            _truncate_metrics(out / "metrics.jsonl", step)
        log(f"resumed from {ckpt_path} at step {step}/{total}")
    else:
        if distributed.is_main():
            (out / "metrics.jsonl").unlink(missing_ok=True)
        if jcfg.teacher_init == "probe" and cfg.jedi.teachers == "joint":
            probe_teachers(jedi, cfg, sets, device)
            jedi.reset_ema()

    def save_checkpoint():
        rng = distributed.gather(rng_state())    # every rank's augmentation RNG, by rank
        if distributed.is_main():
            tmp = ckpt_path.with_suffix(".pt.partial")
            torch.save({"model": jedi.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                        "rng": rng, "step": step, "config": cfg.to_dict(), "names": names}, tmp)
            os.replace(tmp, ckpt_path)    # a kill mid-save leaves the previous checkpoint intact

    # -- the loop
    log(f"JEDI: {len(names)} datasets, {total} steps ({cfg.jedi.epochs} epochs of {loader.steps_per_epoch})")
    jedi.train()
    it = iter(loader)
    t_wait = t_step = 0.0
    clips_done = 0
    final = None          # the evaluation at the last step, which is also the result
    while step < total:
        lr = lr_at(step, total, cfg.jedi.lr, cfg.jedi.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        labeled = {n: to_device(b["x"], device) for n, b in batch.items()}
        unlabeled = {n: to_device(b["x_u"], device) for n, b in batch.items() if "x_u" in b}
        labels = {n: b["y"].to(device, non_blocking=True) for n, b in batch.items()}
        with autocast(device):
            outputs = forward(labeled, unlabeled)
            loss, logs = jedi_losses(outputs, labels, jcfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        jedi.update_ema()     # the moving averages, where there are any (EMA baseline, teacher_ema)
        step += 1
        t2 = time.perf_counter()
        t_wait, t_step = t_wait + (t1 - t0), t_step + (t2 - t0)
        clips_done += sum(x.shape[0] for x in labeled.values()) + sum(x.shape[0] for x in unlabeled.values())
        distributed.trace_ids(step, batch)

        if step % LOG_EVERY == 0 or step == total:
            # clips/s of all ranks together; everything else is the mean over ranks
            flat = {"loss": logs["total"].item(), "clips_per_s": clips_done / t_step * world,
                    "input_wait": t_wait / t_step, **{k: v.item() for k, v in logs.items() if "/" in k}}
            for n, b in batch.items():
                if "x_u" in b:   # how often the teacher's pseudo-label is right (label_true never trains)
                    pl = outputs.unlabeled[n].target.argmax(-1).cpu()
                    flat[f"{n}/pseudo_label_acc"] = (pl == label_true[n][b["id_u"]]).float().mean().item()
            flat = distributed.mean_over_ranks(flat)
            if distributed.is_main():
                append_jsonl(out / "metrics.jsonl", [
                    {"step": step, "dataset": n, "lr": lr, "loss": flat["loss"], "clips_per_s": flat["clips_per_s"],
                     "input_wait": flat["input_wait"],
                     **{k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(n + "/")}} for n in batch])
            t_wait = t_step = 0.0
            clips_done = 0
        epoch_end = step % loader.steps_per_epoch == 0
        if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end) or step == total:
            scores = evaluate_jedi(jedi, cfg, sets, device, eval_split)
            final = scores if step == total else None
            if distributed.is_main():
                append_jsonl(out / "metrics.jsonl", [{"step": step, "split": eval_split, "eval": scores}])
            jedi.train()
        if step % cfg.checkpoint_every == 0 or step == total:
            save_checkpoint()

    # -- results: test once, here (unless the curves were on test, whose last point is this)
    if final is None:     # resumed from the final checkpoint: the loop did not run
        final = evaluate_jedi(jedi, cfg, sets, device, eval_split)
    test = final if eval_split == "test" else evaluate_jedi(jedi, cfg, sets, device, "test")
    log(f"test evaluation ({'once, at the end' if eval_split == 'val' else 'the last of the curves'}): "
        + ", ".join(f"{n} student {test[n]['student']['top1']:.1f}" for n in names))
    results = {"datasets": {}}
    for n in names:
        ck = torch.load(expert_path(cfg, n), map_location="cpu", weights_only=False)
        results["datasets"][n] = {"expert": _topk(ck["test"]), **{k: _topk(v) for k, v in test[n].items()}}
        if eval_split == "val":   # the numbers to choose by, next to the ones to report
            expert_val = {"expert": _topk(ck["val"])} if ck.get("val") else {}
            results.setdefault("val", {})[n] = {**expert_val, **{k: _topk(v) for k, v in final[n].items()}}
    if distributed.is_main():
        write_results(out, results)
        draw_pictures(out, log)
    return results


def draw_pictures(out: Path, log) -> None:
    """curves.png and results.png in the run folder; matplotlib is an optional extra."""
    from .plots import MISSING_MATPLOTLIB, write_plots
    try:
        log("pictures: " + ", ".join(str(p) for p in write_plots(out)))
    except RuntimeError as e:
        if str(e) != MISSING_MATPLOTLIB:
            raise
        log(f"no pictures: {e}")


@torch.no_grad()
def evaluate_jedi(jedi, cfg: Config, sets, device, role: str = "test") -> dict:
    """Student and teacher top-1/top-5 on every dataset's `role` (test or val)."""
    distributed.sync_buffers(jedi)
    jedi.eval()
    res = {}
    for n in jedi.names:
        def forward(x, n=n):
            o = jedi({n: x}).labeled[n]
            return {"student": o.student, "teacher": o.target}
        res[n] = evaluate_logits(forward, sets[n], cfg, device, role)
    return res


def _label_true(ss: shardfmt.ShardSet) -> np.ndarray:
    """The unlabeled samples' true labels indexed by sample_id (-1 elsewhere), from the withheld
    sidecar: read for the pseudo-label accuracy only, never for training."""
    n = max(ss.manifest(columns=["sample_id"]).column("sample_id").to_pylist(), default=-1) + 1
    arr = np.full(n, -1, dtype=np.int64)
    t = ss.withheld(columns=["sample_id", "label"]).to_pydict()
    arr[t["sample_id"]] = t["label"]
    return arr


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop lines logged after the checkpoint: they will be logged again."""
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= step]
        path.write_text("".join(ln + "\n" for ln in keep))


def _topk(m: dict) -> dict:
    return {"top1": m["top1"], "top5": m["top5"]}


def write_results(out: Path, results: dict) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(results_table(results))


def results_table(results: dict) -> str:
    lines = ["| dataset | expert top-1 | student top-1 (Δ) | teacher top-1 (Δ) | expert top-5 | student top-5 | teacher top-5 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = results["datasets"]
    for n, r in rows.items():
        e, s, t = r["expert"], r["student"], r["teacher"]
        lines.append(f"| {n} | {e['top1']:.1f} | {s['top1']:.1f} ({s['top1'] - e['top1']:+.1f}) | "
                     f"{t['top1']:.1f} ({t['top1'] - e['top1']:+.1f}) | {e['top5']:.1f} | {s['top5']:.1f} | {t['top5']:.1f} |")
    mean = {k: sum(r[k]["top1"] for r in rows.values()) / len(rows) for k in ("expert", "student", "teacher")}
    lines.append(f"| mean | {mean['expert']:.1f} | {mean['student']:.1f} ({mean['student'] - mean['expert']:+.1f}) | "
                 f"{mean['teacher']:.1f} ({mean['teacher'] - mean['expert']:+.1f}) | | | |")
    return "\n".join(lines) + "\n"


def evaluate(cfg: Config, checkpoint=None, log=print) -> dict:
    """Experts, and students and teachers of a JEDI checkpoint (default: the run's), on the test roles."""
    distributed.init()
    log = quiet_unless_main(log)
    out = Path(cfg.out)
    device = pick_device(cfg)
    sets = open_all(cfg)
    names = [d.name for d in cfg.datasets]
    experts = {}
    for n in names:
        if not expert_path(cfg, n).is_file():
            raise FileNotFoundError(f"no expert for {n} in {out / 'experts'}: run `jedi-pipe pretrain` first")
        experts[n] = load_expert(cfg, n, device).eval()
    results = {"datasets": {n: {"expert": _topk(evaluate_logits(lambda x, n=n: {"expert": experts[n](x)},
                                                                  sets[n], cfg, device)["expert"])} for n in names}}
    ckpt = Path(checkpoint) if checkpoint else out / "checkpoint.pt"
    if ckpt.is_file():
        jedi = joint_model(experts, cfg).to(device)
        jedi.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["model"])
        for n, kinds in evaluate_jedi(jedi, cfg, sets, device).items():
            results["datasets"][n].update({k: _topk(v) for k, v in kinds.items()})
    elif checkpoint:
        raise FileNotFoundError(f"checkpoint {ckpt} does not exist")
    else:
        log(f"no JEDI checkpoint in {out}: evaluating the experts only")
    return results
