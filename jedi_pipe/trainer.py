"""Training loops: expert pretraining, joint JEDI training, evaluation. Reads top to bottom.

Run folder (`cfg.out`):
    config.yaml                 the resolved config
    experts/<dataset>.pt        one expert per dataset, trained on its labeled clips only
    checkpoint.pt               the joint run's latest checkpoint (model, optimizer, step, RNG, loader)
    metrics.jsonl               one line per logged step and dataset, plus evaluation lines
    results.json / results.md   expert, student and teacher top-1/top-5, per-class top-1 and confusions per
                                dataset, class names, evaluation views (run_results, score_probs)
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import math
import os
import pickle
import random
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from . import shards as shardfmt
from .config import Config, save_config, with_new_keys
from .errors import DivergedError, InputError, MissingError, UnavailableError, first_line
from .jedi import (JEDI, EMABaseline, FixMatchBaseline, Logits, StepOutput, add_students_avg, fit_teacher_heads_probe,
                   jedi_losses, precise_bn, update_averages)
from .loaders import make_eval_loader, resolve_backend, role_loader
from .loaders.clip import ClipSpec
from .loaders.mixing import MultiDatasetLoader
from .models import build, load_weights
from .progress import Progress
from .shard_jobs import default_workers
from .records import EvalRecord, MetricsLog, StepRecord, headline, parse_line, summary, write_results
from .weights_guard import check_init

LOG_EVERY = 10        # steps between metrics.jsonl lines (each costs a host sync on GPU)
PROGRESS_EVERY_S = 60  # an expert or the joint phase says where it is at the first logged step this long after its
#                        last line (s)


# ---------------------------------------------------------------------------- plumbing

def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UnavailableError("device: cuda was asked for but no GPU is visible")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.set_num_threads(cpu_threads(cfg))
    return torch.device("cpu")


def cpu_threads(cfg: Config) -> int:
    """torch's intra-op threads on the CPU: cfg.torch_threads, or (0) the cores this process may use,
    shared among torchrun's processes on this machine. The loader's threads run beside them: they use
    little of a core in a joint step, which every core makes faster (bench/README.md)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return cfg.torch_threads or max(1, default_workers() // local)


def role_loader_cls(cfg: Config, sets=()):
    """The role-loader class for cfg.loader (auto: DALI when usable here, else PyTorch)."""
    return role_loader(resolve_backend(cfg.loader, list(sets)))


def clip_spec(cfg: Config) -> ClipSpec:
    return ClipSpec(frames=cfg.clip.frames, stride=cfg.clip.stride, size=cfg.clip.size, interp=cfg.clip.interp)


def rampup_at(step: int, steps: int) -> float:
    """The distillation weight's factor at `step`: exp(-5 (1 - t/T)^2) up to T = `steps` (mean
    teacher's sigmoid-shaped ramp, 0.0067 at step 0), then 1; `steps` 0: always 1."""
    if step >= steps:
        return 1.0
    return math.exp(-5.0 * (1.0 - step / steps) ** 2)


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
    # the GPUs' generators too: dropout on a GPU draws from them
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(), "cuda": cuda}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast(device: torch.device, bf16: bool = True):
    # bf16 on the GPU: no loss scaling needed; the CPU runs fp32 (bf16 conv3d is slow there).
    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else nullcontext()


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda":
        return x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last_3d)
    return x


def step_inputs(batch: dict, views: bool, device) -> tuple[dict, dict, dict | None, dict]:
    """A loader batch as the joint step takes it: (labeled clips, the unlabeled clips the students
    learn on, their weak views or None, labels). With views the students learn on the strong views
    (`x_us`) and the targets come from the weak ones (`x_u`)."""
    labeled = {n: to_device(b["x"], device) for n, b in batch.items()}
    unlabeled = {n: to_device(b["x_u"], device) for n, b in batch.items() if "x_u" in b}
    weak = None
    if views:
        weak, unlabeled = unlabeled, {n: to_device(b["x_us"], device) for n, b in batch.items() if "x_us" in b}
    labels = {n: b["y"].to(device, non_blocking=True) for n, b in batch.items()}
    return labeled, unlabeled, weak, labels


def append_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "a") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")


def open_all(cfg: Config) -> dict[str, shardfmt.ShardSet]:
    """Every dataset's shard folder; refused before any training when one cannot be scored (no test clips)."""
    sets = {d.name: shardfmt.open_shards(d.shards) for d in cfg.datasets}
    for name, ss in sets.items():
        if not ss.count("test"):
            raise InputError(f"{name}: {ss.root} has no test clips, and every dataset is scored on test; "
                             f"shard it from a source with test videos")
    return sets


def prepare_run(cfg: Config) -> Path:
    out = Path(cfg.out)
    if distributed.is_main():
        (out / "experts").mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    distributed.barrier()
    return out


def quiet_unless_main(log):
    """Under torchrun only rank 0 prints; log=None prints nothing anywhere."""
    return log if log is not None and distributed.is_main() else (lambda m: None)


# ---------------------------------------------------------------------------- evaluation

def eval_loader(cfg: Config, ss: shardfmt.ShardSet, role: str = "test", views: int = 1, crops: int = 1):
    """This rank's share of a role, as the evaluation loader of the run's backend and clip."""
    return make_eval_loader(ss, clip_spec(cfg), cfg.eval_batch_size, views=views, crops=crops, backend=cfg.loader,
                            rank=distributed.rank(), world_size=distributed.world_size(), threads=cfg.threads,
                            role=role)


@torch.no_grad()
def evaluate_logits(forward, ss: shardfmt.ShardSet, cfg: Config, device, role: str = "test") -> dict:
    """Run `forward(x) -> {kind: logits}` over a role (test or val); per kind, the `score_probs` record.

    Views of a clip (cfg.clip.eval_views windows x eval_crops crops) are averaged as
    probabilities; every test clip counts once (ids dedupe any padding a reader adds). Under
    torchrun each rank runs its part and every rank gets the totals.
    """
    loader = eval_loader(cfg, ss, role, cfg.clip.eval_views, cfg.clip.eval_crops)
    probs, labels, ids = {}, [], []
    for b in loader:
        x = b["x"]                                    # [B, V, C, T, H, W]
        B, V = x.shape[:2]
        with autocast(device, cfg.bf16):
            out = forward(to_device(x.flatten(0, 1), device))
        for kind, logits in out.items():
            p = logits.float().softmax(-1).view(B, V, -1).mean(1)
            probs.setdefault(kind, []).append(p.cpu())
        labels.append(b["y"])
        ids.append(b["id"])
    if distributed.world_size() > 1:
        parts = distributed.gather((probs, labels, ids))
        # a rank past the role's clip count read nothing (make_eval_loader): its part is empty
        probs = {k: [p for part in parts for p in part[0].get(k, [])] for k in parts[0][0]}
        labels, ids = [y for part in parts for y in part[1]], [i for part in parts for i in part[2]]
    ids_t = torch.cat(ids)
    _, first = np.unique(ids_t.numpy(), return_index=True)
    keep = torch.as_tensor(np.sort(first))
    y = torch.cat(labels)[keep]
    return {kind: score_probs(torch.cat(ps)[keep], y) for kind, ps in probs.items()}


def score_probs(p: torch.Tensor, y: torch.Tensor) -> dict:
    """Scores of class probabilities p [N, C] against labels y [N] (the record results.json keeps):

    top1, top5: % of clips; n: clips; per_class: top-1 % of each class (None: no test clip);
    confusion: [true, predicted, clips] for every non-zero cell (sparse: 400 classes stay small).
    """
    C = p.shape[1]
    topk = p.topk(min(5, C), dim=1).indices
    pred = topk[:, 0]
    cells = torch.bincount(y * C + pred, minlength=C * C).view(C, C)
    support = cells.sum(1)
    nz = cells.nonzero().tolist()
    return {"top1": round(100.0 * (pred == y).float().mean().item(), 2),
            "top5": round(100.0 * (topk == y[:, None]).any(1).float().mean().item(), 2),
            "n": int(len(y)),
            "per_class": [round(100.0 * cells[c, c].item() / support[c].item(), 2) if support[c] else None
                          for c in range(C)],
            "confusion": [[t, q, int(cells[t, q])] for t, q in nz]}


# ---------------------------------------------------------------------------- experts

def expert_path(cfg: Config, name: str) -> Path:
    return Path(cfg.out) / "experts" / f"{name}.pt"


def resume_path(cfg: Config, name: str) -> Path:
    """An unfinished expert's checkpoint (every checkpoint_every steps), gone once the expert is written."""
    return Path(cfg.out) / "experts" / f"{name}.resume.pt"


def resume_checkpoint(cfg: Config, name: str, world: int, threads: int) -> dict | None:
    """An unfinished expert's checkpoint, when one was made with its settings on `world` processes of
    `threads` torch threads each (threads round differently: another count would finish another expert)
    and the same loader threads (the torch loader's workers decide its batches)."""
    path = resume_path(cfg, name)
    if not path.is_file():
        return None
    ck = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    same = (expert_signature(ck["config"], name) == expert_signature(cfg.to_dict(), name)
            and len(ck["rng"]) == world and ck.get("threads") == threads
            and ck["loader"].get("threads", cfg.threads) == cfg.threads)
    return ck if same else None


def resume_expert(cfg: Config, name: str, model, opt, loader, rank: int, world: int, say) -> int:
    """Load an unfinished expert's checkpoint (resume_checkpoint; prepare_resumes removed any other)
    into model, optimizer, loader and RNG; the step to go on from (0: from the start)."""
    ck = resume_checkpoint(cfg, name, world, torch.get_num_threads())
    if ck is None:
        return 0
    model.load_state_dict(ck["model"])
    opt.load_state_dict(ck["optimizer"])
    loader.load_state_dict(ck["loader"])
    set_rng_state(ck["rng"][rank])
    say(f"expert {name}: resumed from {resume_path(cfg, name)} at step {ck['step']}")
    return ck["step"]


def prepare_resumes(cfg: Config, names: list[str], world: int, threads: int, log) -> None:
    """Before experts `names` (re)start, in the one process that starts them (they append to
    pretrain.jsonl side by side): remove a resume checkpoint made with other settings, processes or
    threads (the expert starts again), and drop the log lines from the step each expert starts at on,
    which it logs again."""
    start = {}
    for n in names:
        ck = resume_checkpoint(cfg, n, world, threads)
        if ck is None and resume_path(cfg, n).is_file():
            log(f"expert {n}: {resume_path(cfg, n)} was made with other settings, processes or threads; "
                f"training it from the start")
            resume_path(cfg, n).unlink()
        start[n] = ck["step"] if ck is not None else 0
    path = Path(cfg.out) / "pretrain.jsonl"
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines()
                if ln and not ((r := json.loads(ln))["dataset"] in start and r["step"] >= start[r["dataset"]])]
        path.write_text("".join(ln + "\n" for ln in keep))


def expert_signature(config: dict, name: str) -> dict:
    """What an expert depends on: its dataset entry, the clip, the pretrain schedule, the seed."""
    # evaluation settings do not change an expert's weights
    config = with_new_keys(config)     # an expert saved before a key existed ran with that key's default
    clip = {k: v for k, v in config["clip"].items() if not k.startswith("eval_")}
    config = without_placement(config)
    return {"dataset": next(d for d in config["datasets"] if d["name"] == name), "clip": clip,
            "pretrain": config["pretrain"], "seed": config["seed"]}


def without_placement(config: dict) -> dict:
    """A saved config without the keys that say where a run's work ran or how often it was saved, not
    what it learned (torch_threads, pretrain.workers, checkpoint_every): a resume or an expert check
    need not match them."""
    config = {k: v for k, v in config.items() if k not in ("torch_threads", "checkpoint_every")}
    return {**config, "pretrain": {k: v for k, v in config["pretrain"].items() if k != "workers"}}


def check_same_run(saved_config: dict, cfg: Config, what: str,
                   fix: str = "choose another run folder (out), or start again with overwrite=True (--overwrite)") -> None:
    """Refuse (InputError) when a run's saved config differs from `cfg` in anything it learned from."""
    _check_same(without_placement(with_new_keys(saved_config)), without_placement(cfg.to_dict()), what, fix)


def _check_same(saved: dict, now: dict, what: str, fix: str = "choose another run folder (out) or delete it") -> None:
    if saved != now:
        raise InputError(f"{what} was made with other settings ({', '.join(_differing(saved, now))} differ); {fix}")


def _differing(saved, now, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ (jedi.lr, not jedi); a list of datasets differs as a whole."""
    if not (isinstance(saved, dict) and isinstance(now, dict)):
        return [prefix.rstrip(".")] if saved != now else []
    return [k for key in sorted(set(saved) | set(now), key=str)
            for k in _differing(saved.get(key), now.get(key), f"{prefix}{key}.")]


def load_expert(cfg: Config, name: str, device) -> torch.nn.Module:
    ck = torch.load(expert_path(cfg, name), map_location="cpu", weights_only=False)
    model = build(ck["arch"], ck["num_classes"])
    model.load_state_dict(ck["model"])
    return model.to(device)


def pretrain(cfg: Config, log=print) -> dict:
    """Train one expert per dataset on its labeled clips only; skip experts already written.

    Writes cfg.out/experts/<dataset>.pt (and pretrain.jsonl) and returns {dataset: test scores
    {top1, top5, n, ...}}; an interrupted expert goes on from its <dataset>.resume.pt. log: a
    function of one line (default print; None: quiet). Raises jedi_pipe.errors (InputError for
    experts made with other settings, MissingError for missing shards) before any training.

    On the CPU, outside torchrun, experts train side by side in `pretrain.workers` processes that
    share the torch threads: small batches split poorly over threads (measured: bench/README.md,
    "Back under 5 minutes"). Each expert depends on its seed, data and thread count only, so the same
    threads give the same experts either way. On a GPU or under torchrun, one after another. Each
    worker is a fresh interpreter (expert_worker.py)."""
    rank, world = distributed.init()
    distributed.same_files([p for d in cfg.datasets for p in (expert_path(cfg, d.name), resume_path(cfg, d.name))])
    check_batches(cfg)
    log = quiet_unless_main(log)
    device = pick_device(cfg)
    sets = open_all(cfg)
    names = {d.name: {d.name, sets[d.name].card.get("dataset", d.name)} for d in cfg.datasets}
    for d in cfg.datasets:      # before any training: a refused init should not cost an hour of experts
        if not expert_path(cfg, d.name).is_file():   # (a finished expert's init may have moved since)
            run = set().union(*(n for other, n in names.items() if other != d.name))
            check_init(d.name, names[d.name], d.init, d.init_trained_on_ok, run=run)
            if d.init:   # its layout and shapes too, now: not when this expert's turn comes after the others
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")   # "head skipped" is said when the expert is built
                    load_weights(build(d.model, len(sets[d.name].classes)), d.init)
    finished = finished_experts(cfg)
    metrics = {name: scores["test"] for name, scores in finished.items()}
    todo = [i for i, d in enumerate(cfg.datasets) if d.name not in metrics]
    for name, scores in finished.items():
        log(f"expert {name}: exists ({expert_path(cfg, name)}), {expert_score_said(scores['test'], scores['val'])}")
    prepare_run(cfg)   # after the checks: a refused run leaves the folder's config.yaml as it was
    # from the config alone, not from how many experts are left: an expert's threads (and so its
    # weights) must not depend on which others a crash or a deleted file left to retrain
    workers = expert_workers(cfg, device, world)
    threads = max(1, cpu_threads(cfg) // workers) if workers > 1 else torch.get_num_threads()
    if distributed.is_main():
        prepare_resumes(cfg, [cfg.datasets[i].name for i in todo], world, threads, log)
    distributed.barrier()   # every rank sees the same resume checkpoints
    backend = resolve_backend(cfg.loader, list(sets.values()))   # one loader for every expert, as in one process
    if workers > 1 and todo:
        # longest first: the largest labeled set would otherwise start last and finish alone
        todo.sort(key=lambda i: -sets[cfg.datasets[i].name].count("labeled"))
        log(f"experts: {len(todo)} to train, up to {workers} at a time (pretrain.workers)")
        children = []
        with concurrent.futures.ThreadPoolExecutor(min(workers, len(todo))) as pool:   # each thread waits on a child
            jobs = [pool.submit(expert_in_child, cfg, i, threads, backend, children, log) for i in todo]
            try:
                for job in concurrent.futures.as_completed(jobs):
                    name, test, note = job.result()
                    metrics[name] = test
                    log(note)
            except BaseException:    # one expert failed, or an interrupt: stop the others, start none
                pool.shutdown(wait=False, cancel_futures=True)
                for child in children:
                    child.terminate()
                raise
    else:
        for i in todo:
            name, test, note = train_expert(cfg, i, sets, device, backend, rank, world, say=log)
            metrics[name] = test
            log(note)
    return {d.name: metrics[d.name] for d in cfg.datasets}


def finished_experts(cfg: Config) -> dict:
    """{name: {"test", "val"} scores} of the experts already written, each refused unless made with cfg's settings
    (expert_signature): pretrain keeps them, train builds on them, and the run's config.yaml must
    describe them."""
    done = {}
    for d in cfg.datasets:
        path = expert_path(cfg, d.name)
        if path.is_file():
            ck = torch.load(path, map_location="cpu", weights_only=False, mmap=True)   # the config, not the weights
            _check_same(expert_signature(ck["config"], d.name), expert_signature(cfg.to_dict(), d.name),
                        f"expert {path}")
            done[d.name] = {"test": ck["test"], "val": ck.get("val")}
    return done


def expert_workers(cfg: Config, device, world: int) -> int:
    """How many experts train at once: pretrain.workers (0: one per torch thread), on the CPU outside torchrun."""
    if device.type != "cpu" or world > 1:
        return 1
    return min(len(cfg.datasets), cfg.pretrain.workers or cpu_threads(cfg))


def expert_in_child(cfg: Config, i: int, threads: int, backend: str, children: list, log=print) -> tuple:
    """train_expert(cfg, i) in a child Python process on `threads` torch threads (jedi_pipe/expert_worker.py);
    its exception, if it raised one, is raised here. The child is appended to `children` while it runs.
    Its progress lines (its stdout) go through `log`, as the experts trained in this process say theirs."""
    name = cfg.datasets[i].name
    package_root = str(Path(__file__).resolve().parents[1])    # first on the child's path: this very jedi_pipe
    run = "import sys; sys.path.insert(0, sys.argv[1]); from jedi_pipe.expert_worker import main; main(sys.argv[2])"
    with tempfile.TemporaryDirectory(prefix=f"expert-{name}-") as tmp:
        job = os.path.join(tmp, "job.pkl")
        with open(job, "wb") as f:
            pickle.dump((cfg.to_dict(), i, threads, backend, PROGRESS_EVERY_S), f)
        # its warnings and tracebacks go to this process's stderr
        proc = subprocess.Popen([sys.executable, "-c", run, package_root, job], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, text=True)
        children.append(proc)    # pretrain terminates it on an interrupt or another expert's failure
        for line in proc.stdout:
            log(line.rstrip("\n"))
        proc.wait()
        if not os.path.exists(job + ".out"):     # killed (out of memory, a signal) before it could say why
            raise RuntimeError(f"the worker process of expert {name} stopped (exit {proc.returncode}) without a "
                               "result; its messages, if any, are above")
        with open(job + ".out", "rb") as f:
            status, value = pickle.load(f)
    if status == "error":
        raise value
    return value


def train_expert(cfg: Config, i: int, sets: dict, device, backend: str, rank: int = 0, world: int = 1,
                 say=None, say_every: float | None = None) -> tuple:
    """Train, score and write the expert of cfg.datasets[i]: (name, test scores, a line for the log).
    `say`: where a progress line goes once `say_every` seconds (default PROGRESS_EVERY_S) have passed
    since the last (None: nowhere)."""
    d, ss = cfg.datasets[i], sets[cfg.datasets[i].name]
    path, out = expert_path(cfg, d.name), Path(cfg.out)
    seed_everything(cfg.seed * 1000 + i)
    model = build(d.model, len(ss.classes), weights=d.init or None).to(device)
    loader = MultiDatasetLoader([(d.name, ss, d.flip)], clip_spec(cfg),
                                distributed.per_rank(cfg.pretrain.batch_size, "pretrain.batch_size"), 0,
                                role_loader(backend), seed=cfg.seed * 1000 + i, rank=rank, world_size=world,
                                threads=cfg.threads)
    total = cfg.pretrain.epochs * loader.steps_per_epoch
    opt = torch.optim.SGD(model.parameters(), lr=cfg.pretrain.lr, momentum=0.9,
                          weight_decay=cfg.pretrain.weight_decay)
    start = resume_expert(cfg, d.name, model, opt, loader, rank, world, say or (lambda m: None))

    def save_checkpoint(done: int):   # what an uninterrupted run has at this step, so a resume ends the same
        rng = distributed.gather(rng_state())
        if distributed.is_main():
            tmp = resume_path(cfg, d.name).with_suffix(".partial")
            torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                        "rng": rng, "step": done, "threads": torch.get_num_threads(), "config": cfg.to_dict()}, tmp)
            os.replace(tmp, resume_path(cfg, d.name))

    model.train()
    forward = distributed.wrap(model)
    t0 = time.time()
    progress = Progress(total, start, every=PROGRESS_EVERY_S if say_every is None else say_every)
    for step, batch in zip(range(start, total), loader):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, cfg.pretrain.lr, cfg.pretrain.warmup_steps)
        b = batch[d.name]
        with autocast(device, cfg.bf16):
            loss = F.cross_entropy(forward(to_device(b["x"], device)), b["y"].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        diverged = functools.partial(stop_if_diverged, f"expert {d.name}", step + 1, "pretrain.lr", cfg.pretrain.lr,
                                     "run again (an expert with other settings starts from step 0)")
        if step % LOG_EVERY == 0 or step == total - 1:
            mean = distributed.mean_over_ranks({"loss": loss.item()})
            if distributed.is_main():
                append_jsonl(out / "pretrain.jsonl", [{"dataset": d.name, "step": step, "loss": mean["loss"],
                                                      "lr": opt.param_groups[0]["lr"]}])
                if say is not None and progress.due() and step < total - 1:
                    say(progress.line(step + 1, f"expert {d.name}, loss {mean['loss']:.3f}"))
            diverged(loss=mean["loss"])
        if (step + 1) % cfg.checkpoint_every == 0 and step + 1 < total:
            diverged(model=model)
            save_checkpoint(step + 1)
    if start < total:
        diverged(model=model)
    model.eval()
    distributed.sync_buffers(model)
    test = evaluate_logits(lambda x: {"expert": model(x)}, ss, cfg, device)["expert"]
    # val, when the folder has one, is the score to choose by; test is only reported
    val = evaluate_logits(lambda x: {"expert": model(x)}, ss, cfg, device, "val")["expert"] if ss.count("val") else None
    if distributed.is_main():
        tmp = path.with_suffix(".pt.partial")
        torch.save({"arch": d.model, "num_classes": len(ss.classes), "classes": ss.classes,
                    "encoding": ss.card["encoding"],   # what `jedi-pipe export` gives predict, wherever the shards go
                    # the data it learnt from, as the model card states it (export.trained_on)
                    "shards": shardfmt.data_record(ss.card),
                    "model": model.state_dict(), "test": test, "val": val, "config": cfg.to_dict()}, tmp)
        os.replace(tmp, path)
        resume_path(cfg, d.name).unlink(missing_ok=True)   # finished: nothing left to resume
    distributed.barrier()   # every rank finds the expert before it goes on
    return d.name, test, (f"expert {d.name}: {total - start} steps in {time.time() - t0:.0f}s"
                          + (f" (resumed at step {start})" if start else "") + f", {expert_score_said(test, val)}")


def stop_if_diverged(what: str, step: int, lr_key: str, lr: float, again: str,
                     loss: float | None = None, model: torch.nn.Module | None = None) -> None:
    """Stop a run that diverged: its (logged) loss, or its weights before they are saved, no longer
    finite. Every later step would be wasted and its scores meaningless, and a checkpoint never holds
    such weights. Ranks stop together: `loss` is the mean over ranks and the weights are the same."""
    if loss is not None and not math.isfinite(loss):
        reason = f"its loss is {loss}"
    elif model is not None and not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        reason = "its weights are no longer finite numbers"
    else:
        return
    raise DivergedError(f"{what} diverged at step {step}: {reason}, and training stopped before saving it. "
                        f"Lower {lr_key} (now {lr:g}) or lengthen its warm-up, then {again}")


def expert_score_said(test: dict, val: dict | None) -> str:
    """An expert's score for the log: val's when its folder has a val role (choices are made there;
    test stays in the checkpoint and results.json), else test's."""
    if val:
        return f"val top-1 {val['top1']:.1f} top-5 {val['top5']:.1f}"
    return f"test top-1 {test['top1']:.1f} top-5 {test['top5']:.1f}"


# ---------------------------------------------------------------------------- JEDI

def joint_model(experts: dict, cfg: Config):
    """Students from the experts, with JEDI's joint teachers or (baseline) per-dataset EMA teachers."""
    if cfg.jedi.teachers == "ema":
        model = EMABaseline.from_experts(experts, cfg.jedi, decay=cfg.jedi.ema_decay)
    elif cfg.jedi.teachers == "fixmatch":
        model = FixMatchBaseline.from_experts(experts, loss_config(cfg.jedi))
    else:
        model = JEDI.from_experts(experts, cfg.jedi)   # cfg.jedi is a jedi.JEDIConfig (config.JediCfg extends it)
    for student in model.students.values():
        student.grad_checkpointing = cfg.jedi.grad_checkpointing
    if cfg.jedi.student_avg:
        add_students_avg(model, cfg.jedi.student_avg)
    return model


def loss_config(jcfg):
    """The loss settings of the joint phase: the config's; for the baselines without the terms into a
    teacher head (w_mutual, w_distill_heads: their teacher is a copy without gradient or the student
    itself, detached, so those terms are zero and only cost time); for FixMatch also its rule: hard
    pseudo-labels, no teacher CE."""
    if jcfg.teachers == "joint":
        return jcfg
    jcfg = dataclasses.replace(jcfg, w_mutual=0.0, w_distill_heads=0.0)
    if jcfg.teachers == "fixmatch":
        jcfg = dataclasses.replace(jcfg, hard=True, w_sup_teacher=0.0)
    return jcfg


def load_joint(cfg: Config, experts: dict, checkpoint, device):
    """The joint model (students and teachers) of a checkpoint written by `train`."""
    jedi = joint_model(experts, cfg).to(device)
    not_a_checkpoint = f"{checkpoint} is not a checkpoint written by `jedi-pipe train`"
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    except Exception as e:   # torch and pickle raise several kinds for a file that is not one
        raise InputError(f"{not_a_checkpoint} ({type(e).__name__}: {first_line(e)})") from None
    if not (isinstance(state, dict) and "model" in state and "step" in state):
        raise InputError(f"{not_a_checkpoint} (an expert's file? those are experts/<dataset>.pt, read by pretrain and eval)")
    try:
        jedi.load_state_dict(state["model"])
    except RuntimeError as e:
        raise InputError(f"{checkpoint} does not fit this config's datasets and models: {first_line(e)}") from None
    return jedi


def joint_loader(cfg: Config, sets, rank: int = 0, world: int = 1, seed: int | None = None) -> MultiDatasetLoader:
    """The joint phase's batches: per step, labeled and unlabeled clips of every dataset (`seed`: the run's)."""
    return MultiDatasetLoader([(d.name, sets[d.name], d.flip) for d in cfg.datasets], clip_spec(cfg),
                              distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size"),
                              cfg.jedi.unlabeled_ratio, role_loader_cls(cfg, sets.values()),
                              seed=cfg.seed if seed is None else seed, rank=rank, world_size=world,
                              threads=cfg.threads, strong=cfg.strong if cfg.jedi.views else None)


def recompute_bn_seed(seed: int, step: int) -> int:
    """The seed of recompute_bn's loader at `step`: its own stream, apart from the run's (seeded `seed`)."""
    return 1_000_003 * (seed + 1) + step


def recompute_bn(model, cfg: Config, sets, device, step: int) -> dict:
    """jedi.precise_bn: the students' BatchNorm statistics recomputed over that many training steps' clips
    (each rank over its share, then averaged over ranks: the statistics of the whole steps), each step in the micro-batches a
    training step runs in, from a loader of their own seeded by the step. The run's stream of batches and
    its RNG are untouched (dropout in train mode draws from a forked RNG); returns the buffers replaced."""
    rank, world = distributed.rank(), distributed.world_size()
    k = micro_batch_count(cfg.jedi.micro_batch_size, distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size"))
    it = iter(joint_loader(cfg, sets, rank, world, seed=recompute_bn_seed(cfg.seed, step)))
    try:
        def batches():
            for _ in range(cfg.jedi.precise_bn):
                labeled, unlabeled, weak, labels = step_inputs(next(it), cfg.jedi.views, device)
                for lab, unl, _, wk in micro_batches(labeled, unlabeled, labels, k, weak):
                    yield (lab, unl) if wk is None else (lab, unl, wk)
        cuda = [torch.cuda.current_device()] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda), autocast(device, cfg.bf16):
            before = precise_bn(model, batches())
        distributed.average_buffers(model.students)
        return before
    finally:
        it.close()


@torch.no_grad()
def teacher_features(jedi: JEDI, cfg: Config, name: str, ss: shardfmt.ShardSet, role: str, device) -> tuple:
    """[f_1; ...; f_N] of every clip of a role of dataset `name` (one centre view, eval mode), as its
    teacher sees them, and the labels."""
    jedi.eval()
    loader = make_eval_loader(ss, clip_spec(cfg), cfg.eval_batch_size, backend=cfg.loader, threads=cfg.threads,
                              role=role)
    fs, ys = [], []
    for b in loader:
        fs.append(jedi.teacher_features(to_device(b["x"][:, 0], device), name).float())
        ys.append(b["y"].to(device))
    return torch.cat(fs), torch.cat(ys)


def probe_teachers(jedi: JEDI, cfg: Config, sets, device) -> None:
    """teacher_init: probe: fit the teacher heads on the labeled clips' concatenated features."""
    feats, labels = {}, {}
    for d in cfg.datasets:
        feats[d.name], labels[d.name] = teacher_features(jedi, cfg, d.name, sets[d.name], "labeled", device)
    fit_teacher_heads_probe(jedi, feats, labels)


def check_batches(cfg: Config) -> None:
    """Both phases' batches split over this run's processes (and micro-batches), checked before
    either phase runs: a joint batch that does not split must not wait for hours of experts."""
    distributed.per_rank(cfg.pretrain.batch_size, "pretrain.batch_size")
    micro_batch_count(cfg.jedi.micro_batch_size, distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size"))


def micro_batch_count(micro_batch_size: int, batch_per_gpu: int) -> int:
    """How many micro-batches one GPU's step runs in (jedi.micro_batch_size labeled clips per dataset each)."""
    if not micro_batch_size:
        return 1
    if batch_per_gpu % micro_batch_size:
        raise InputError(f"jedi.micro_batch_size: {micro_batch_size} does not divide the {batch_per_gpu} labeled "
                         "clips per dataset and GPU of a step; choose a divisor (or 0 for the whole step)")
    return batch_per_gpu // micro_batch_size


def micro_batches(labeled: dict, unlabeled: dict, labels: dict, k: int, weak: dict | None = None) -> list[tuple]:
    """The step's clips in k equal parts, each with 1/k of every dataset's labeled and unlabeled
    clips (and their weak views, with views): every part holds the step's mix of datasets and
    roles, and since each loss term is a mean over a dataset's clips, the mean of the parts'
    losses is the step's loss exactly, for the same outputs: BatchNorm in training normalises each
    part by its own statistics, so the outputs (and gradients) differ unless it is frozen
    (docs/scale.md, "BatchNorm under micro-batches"). Parts are (labeled, unlabeled, labels, weak or None)."""
    if k == 1:
        return [(labeled, unlabeled, labels, weak)]
    for role, clips in (("labeled", labeled), ("unlabeled", unlabeled)):
        for n, x in clips.items():
            if x.shape[0] % k:
                raise InputError(f"{k} micro-batches do not divide the {x.shape[0]} {role} clips of {n} in "
                                 "this step; jedi.micro_batch_size must divide the per-GPU batch")
    cut = lambda d: {n: x.chunk(k) for n, x in d.items()}  # noqa: E731
    lc, uc, yc, wc = cut(labeled), cut(unlabeled), cut(labels), cut(weak) if weak is not None else None
    return [({n: c[i] for n, c in lc.items()}, {n: c[i] for n, c in uc.items()}, {n: c[i] for n, c in yc.items()},
             None if wc is None else {n: c[i] for n, c in wc.items()}) for i in range(k)]


def param_groups(model, student_lr_scale: float = 1.0) -> list[dict]:
    """The joint model's trained weights (not the moving averages) as optimizer groups, each with the
    `lr_scale` the loop multiplies the scheduled lr by: the students' at `student_lr_scale` (first:
    the logged lr is theirs), the rest (JEDI's teacher heads) at 1. One group when nothing is
    scaled, as checkpoints before the scale have it."""
    trained = [p for p in model.parameters() if p.requires_grad]
    if student_lr_scale == 1.0:
        return [{"params": trained, "lr_scale": 1.0}]
    student = {id(p) for p in model.students.parameters()}
    return [{"params": [p for p in trained if id(p) in student], "lr_scale": student_lr_scale},
            {"params": [p for p in trained if id(p) not in student], "lr_scale": 1.0}]


def joint_step(jedi, forward, opt, labeled: dict, unlabeled: dict, labels: dict, jcfg,
               k: int = 1, amp=None, weak: dict | None = None) -> tuple[StepOutput, dict]:
    """One optimizer step of the joint phase, its clips run in `k` micro-batches.

    Gradients accumulate over the micro-batches (each loss scaled by 1/k), so the step is the
    same arithmetic as one pass over all clips, except for BatchNorm: in training it normalises
    with the statistics of the clips it sees at once, here a micro-batch (as DDP does per rank),
    and its running statistics move k times per step. Under DDP the gradients are all-reduced
    once, on the last micro-batch. Returns the outputs (detached, all clips) and the mean logs.
    """
    parts = micro_batches(labeled, unlabeled, labels, k, weak)
    opt.zero_grad(set_to_none=True)
    outs, logs = [], {}
    for i, (lab, unl, y, wk) in enumerate(parts):
        last = i == len(parts) - 1
        no_sync = getattr(forward, "no_sync", None)
        with (nullcontext() if last or no_sync is None else no_sync()), (amp or nullcontext()):
            out = forward(lab, unl, wk) if wk is not None else forward(lab, unl)
            loss, part_logs = jedi_losses(out, y, jcfg)
        (loss / len(parts)).backward()
        outs.append(out)
        for key, v in part_logs.items():
            logs[key] = logs.get(key, 0.0) + v / len(parts)
    opt.step()
    update_averages(jedi)     # the moving averages, where there are any (EMA baseline, teacher_ema, student_avg)
    return _concat_outputs(outs), logs


def _concat_outputs(outs: list[StepOutput]) -> StepOutput:
    if len(outs) == 1:
        return outs[0]
    merged = StepOutput()
    for role in ("labeled", "unlabeled"):
        for n in getattr(outs[0], role):
            rows = [getattr(o, role)[n] for o in outs]
            getattr(merged, role)[n] = Logits(*(None if f[0] is None else torch.cat([t.detach() for t in f])
                                                for f in zip(*rows)))
    return merged


def train(cfg: Config, resume: bool = False, overwrite: bool = False, log=print) -> dict:
    """JEDI from the experts (pretrained first when missing); writes results.json/.md.

    Returns what results.json holds: {"datasets": {dataset: {kind: scores}}, "classes", "views"}
    (records.py). A run folder that holds a checkpoint.pt is not started again unless asked:
    resume=True goes on from it (with the same settings), overwrite=True replaces the run (its
    metrics, checkpoint and results; experts/ stay). log: a function of one line (default print;
    None: quiet). Raises jedi_pipe.errors (InputError, MissingError) before the folder is written.
    Sets torch's thread count (torch_threads) and seeds the global RNGs (seed), as a script would.
    """
    ckpt_path, ck = Path(cfg.out) / "checkpoint.pt", None
    names = [d.name for d in cfg.datasets]
    if resume and overwrite:
        raise InputError("resume (--resume) or overwrite (--overwrite), not both")
    rank, world = distributed.init()
    distributed.same_files([ckpt_path] + [expert_path(cfg, n) for n in names])
    if ckpt_path.is_file() and not (resume or overwrite):
        raise InputError(f"{ckpt_path} exists: a run was started in {cfg.out}. resume=True (--resume) goes on "
                         f"from it (a finished run is scored again); overwrite=True (--overwrite) starts again "
                         f"and replaces it")
    check_batches(cfg)
    log = quiet_unless_main(log)
    device = pick_device(cfg)
    sets = open_all(cfg)
    if resume and ckpt_path.is_file():   # checked before the run folder is written: a refused resume changes nothing
        # mmap: held through any pretraining below, read when its state is loaded
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False, mmap=True)
        check_same_run(ck["config"], cfg, f"checkpoint {ckpt_path}")
        if len(ck["rng"]) != world:   # each rank goes on with its own RNG and its share of the data
            raise InputError(f"{ckpt_path} was saved by a run of {len(ck['rng'])} process(es), this one has {world}: "
                             f"resume with {len(ck['rng'])} (torchrun --nproc-per-node), or start again with "
                             f"overwrite=True (--overwrite)")
    finished_experts(cfg)   # experts made with other settings are refused here too, before the folder is written
    out = prepare_run(cfg)
    if not all(expert_path(cfg, n).is_file() for n in names):
        log("experts missing: pretraining them first")
        pretrain(cfg, log=log)
        distributed.same_files(expert_path(cfg, n) for n in names)   # rank 0 wrote them
    experts = {n: load_expert(cfg, n, device) for n in names}
    jcfg = loss_config(cfg.jedi)

    # -- model, optimizer, loader
    seed_everything(cfg.seed)
    jedi = joint_model(experts, cfg).to(device)
    loader = joint_loader(cfg, sets, rank, world)
    total = cfg.jedi.steps or cfg.jedi.epochs * loader.steps_per_epoch
    k = micro_batch_count(cfg.jedi.micro_batch_size, distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size"))
    opt = torch.optim.SGD(param_groups(jedi, cfg.jedi.student_lr_scale), lr=cfg.jedi.lr, momentum=0.9,
                          weight_decay=cfg.jedi.weight_decay)
    forward = distributed.wrap(jedi)
    forward = torch.compile(forward) if cfg.compile else forward
    label_true = {n: torch.as_tensor(label_truth(sets[n])) for n in names}   # diagnostics only
    # Periodic evaluations (the curves) run on val when every folder has one; test is then
    # evaluated once, at the end, for results.json.
    eval_split = "val" if all(sets[n].count("val") for n in names) else "test"
    if eval_split == "test":
        log(f"curves on test: no val role in {', '.join(n for n in names if not sets[n].count('val'))} "
            f"(choose settings on val: shard or split with --val-per-class)")

    step = 0
    if ck is not None:
        jedi.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        loader.load_state_dict(ck["loader"])
        set_rng_state(ck["rng"][rank])
        step = ck["step"]
        if distributed.is_main():
            _truncate_metrics(out / "metrics.jsonl", step)
        log(f"resumed from {ckpt_path} at step {step}/{total}")
    else:
        if distributed.is_main():   # a fresh run: nothing of an earlier one in this folder stays to be resumed or read
            for name in ("metrics.jsonl", "checkpoint.pt", "results.json", "results.md"):
                (out / name).unlink(missing_ok=True)
        if jcfg.teacher_init == "probe" and cfg.jedi.teachers == "joint":
            probe_teachers(jedi, cfg, sets, device)
            jedi.reset_ema()
    # metrics.jsonl (+ TensorBoard events with logger: tensorboard); rank 0 writes, the others log nowhere
    metrics_log = MetricsLog(out, cfg.logger == "tensorboard", step if step else None) if distributed.is_main() \
        else _NoLog()

    def save_checkpoint():
        rng = distributed.gather(rng_state())    # every rank's augmentation RNG, by rank
        if distributed.is_main():
            tmp = ckpt_path.with_suffix(".pt.partial")
            torch.save({"model": jedi.state_dict(), "optimizer": opt.state_dict(), "loader": loader.state_dict(),
                        "rng": rng, "step": step, "config": cfg.to_dict(), "names": names}, tmp)
            os.replace(tmp, ckpt_path)    # a kill mid-save leaves the previous checkpoint intact

    # -- the loop
    log(f"JEDI: {len(names)} datasets, {total} steps " + ("(jedi.steps)" if cfg.jedi.steps else
                                                          f"({cfg.jedi.epochs} epochs of {loader.steps_per_epoch})"))
    jedi.train()
    it = iter(loader)
    t_wait = t_step = 0.0
    clips_done = 0
    final = None          # the evaluation at the last step, which is also the result
    progress = Progress(total, step, every=PROGRESS_EVERY_S)   # the console: a line per evaluation, and between them once a minute
    while step < total:
        lr = lr_at(step, total, cfg.jedi.lr, cfg.jedi.warmup_steps)
        heads_slow = step < cfg.jedi.teacher_lr_from     # the teacher heads at the students' pace until then
        for g in opt.param_groups:
            # a checkpoint from before the scale has no lr_scale
            g["lr"] = lr * (cfg.jedi.student_lr_scale if heads_slow else g.get("lr_scale", 1.0))
        t0 = time.perf_counter()
        batch = next(it)
        t1 = time.perf_counter()
        labeled, unlabeled, weak, labels = step_inputs(batch, cfg.jedi.views, device)
        if isinstance(jedi, JEDI):   # teacher_warmup: the first steps' teacher losses train the heads only
            jedi.heads_only = step < jcfg.teacher_warmup
        step_cfg = jcfg if not jcfg.distill_rampup else dataclasses.replace(
            jcfg, w_distill=jcfg.w_distill * rampup_at(step, jcfg.distill_rampup))
        outputs, logs = joint_step(jedi, forward, opt, labeled, unlabeled, labels, step_cfg, k,
                                   autocast(device, cfg.bf16), weak)
        step += 1
        t2 = time.perf_counter()
        t_wait, t_step = t_wait + (t1 - t0), t_step + (t2 - t0)
        clips_done += sum(x.shape[0] for x in labeled.values()) + sum(x.shape[0] for x in unlabeled.values())
        distributed.trace_ids(step, batch)

        diverged = functools.partial(stop_if_diverged, "the joint phase", step, "jedi.lr", cfg.jedi.lr,
                                     "start it again with --overwrite")
        if step % LOG_EVERY == 0 or step == total:
            # clips/s of all ranks together; everything else is the mean over ranks
            flat = {"loss": logs["total"].item(), "clips_per_s": clips_done / t_step * world,
                    "input_wait": t_wait / t_step, **{k: v.item() for k, v in logs.items() if "/" in k}}
            for n, b in batch.items():
                if "x_u" in b:   # how often the teacher's pseudo-label is right (label_true never trains)
                    pl = outputs.unlabeled[n].target.argmax(-1).cpu()
                    flat[f"{n}/pseudo_label_acc"] = (pl == label_true[n][b["id_u"]]).float().mean().item()
            flat = distributed.mean_over_ranks(flat)
            if progress.due() and step < total:
                log(progress.line(step, f"loss {flat['loss']:.3f}, {flat['clips_per_s']:.0f} clips/s"))
            if distributed.is_main():
                metrics_log.write([
                    StepRecord(step, n, opt.param_groups[0]["lr"], flat["loss"], flat["clips_per_s"], flat["input_wait"],
                               terms={k.split("/", 1)[1]: v for k, v in flat.items() if k.startswith(n + "/")})
                    for n in batch])
            diverged(loss=flat["loss"])
            t_wait = t_step = 0.0
            clips_done = 0
        epoch_end = step % loader.steps_per_epoch == 0
        if (cfg.eval_every and step % cfg.eval_every == 0) or (not cfg.eval_every and epoch_end) or step == total \
                or step == cfg.eval_first:
            # precise_bn: mid-run, students scored on statistics of their current weights, then the run goes on
            # from its own; at the end the weights have stood still under the decayed lr and its own are those
            trained_stats = recompute_bn(jedi, cfg, sets, device, step) if cfg.jedi.precise_bn and step < total else None
            scores = evaluate_jedi(jedi, cfg, sets, device, eval_split)
            final = scores if step == total else None
            if trained_stats is not None:
                jedi.students.load_state_dict(trained_stats, strict=False)
            if distributed.is_main():
                metrics_log.write([EvalRecord(step, summary(scores), eval_split)])
            log(progress.line(step, scores_said(scores, eval_split)))
            jedi.train()
        if step % cfg.checkpoint_every == 0 or step == total:
            diverged(model=jedi)
            save_checkpoint()

    metrics_log.close()

    # -- results: test once, here (unless the curves were on test, whose last point is this)
    if final is None:     # resumed from the final checkpoint: the loop did not run
        final = evaluate_jedi(jedi, cfg, sets, device, eval_split)
    test = final if eval_split == "test" else evaluate_jedi(jedi, cfg, sets, device, "test")
    log(f"test evaluation ({'once, at the end' if eval_split == 'val' else 'the last of the curves'}): "
        + ", ".join(f"{n} student {test[n]['student']['top1']:.1f}" for n in names))
    results = run_results(cfg, sets, {n: expert_test(cfg, n, sets[n], device) for n in names}, test, step)
    if eval_split == "val":   # the numbers to choose by, next to the ones to report
        for n in names:
            expert_val = torch.load(expert_path(cfg, n), map_location="cpu", weights_only=False).get("val")
            results.setdefault("val", {})[n] = {**({"expert": headline(expert_val)} if expert_val else {}),
                                               **summary(final)[n]}
    if distributed.is_main():
        write_results(out, results)
    return results


def scores_said(scores: dict, split: str) -> str:
    """The mean top-1 of students and teachers of an evaluation, for the console."""
    kinds = [k for k in ("student", "teacher") if all(k in s for s in scores.values())]
    means = ", ".join(f"{k}s {sum(s[k]['top1'] for s in scores.values()) / len(scores):.1f}" for k in kinds)
    return f"{split} top-1, mean of {len(scores)}: {means}"


class _NoLog:
    def write(self, records):
        pass

    def close(self):
        pass


def expert_test(cfg: Config, name: str, ss: shardfmt.ShardSet, device) -> dict:
    """An expert's test scores: those saved by pretrain, unless the evaluation settings changed since."""
    ck = torch.load(expert_path(cfg, name), map_location="cpu", weights_only=False)
    evals = {k: v for k, v in ck["config"]["clip"].items() if k.startswith("eval_")}
    if "per_class" in ck["test"] and evals == {k: v for k, v in cfg.to_dict()["clip"].items() if k.startswith("eval_")}:
        return ck["test"]
    model = load_expert(cfg, name, device).eval()
    return evaluate_logits(lambda x: {"expert": model(x)}, ss, cfg, device)["expert"]


def run_results(cfg: Config, sets, experts: dict, joint: dict, step: int | None = None) -> dict:
    """The results.json record: per dataset, the `score_probs` of expert, student and teacher;
    the class names that per_class and confusion index; the evaluation views; the joint step
    scored (none for experts alone)."""
    names = [d.name for d in cfg.datasets]
    return {"datasets": {n: {"expert": experts[n], **joint.get(n, {})} for n in names},
            "classes": {n: sets[n].classes for n in names},
            "views": {"temporal": cfg.clip.eval_views, "spatial": cfg.clip.eval_crops},
            **({"step": step} if step is not None else {})}


@torch.no_grad()
def evaluate_jedi(jedi, cfg: Config, sets, device, role: str = "test", experts=None) -> dict:
    """Student and teacher top-1/top-5 on every dataset's `role` (test or val); `experts` ({name:
    model}, optional): scored as "expert" in the same pass, so the clips are decoded once."""
    distributed.sync_buffers(jedi)
    jedi.eval()
    res = {}
    ema_students = getattr(jedi, "ema_students", None)
    avg = getattr(jedi, "students_avg", None)
    for n in jedi.names:
        def forward(x, n=n):
            o = jedi({n: x}).labeled[n]
            # with teacher_ema the teachers are scored from the moving average: so are its students, for a fair pair
            return {"student": o.student, "teacher": o.target,
                    **({"student_ema": ema_students[n](x)} if ema_students is not None else {}),
                    **({"student_avg": avg[n](x)} if avg is not None else {}),
                    **({"expert": experts[n](x)} if experts is not None else {})}
        res[n] = evaluate_logits(forward, sets[n], cfg, device, role)
    return res


def label_truth(ss: shardfmt.ShardSet) -> np.ndarray:
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
        keep = [ln for ln in path.read_text().splitlines() if ln and (r := parse_line(ln)) and r.step <= step]
        tmp = path.with_name(path.name + ".partial")   # a kill mid-write keeps the whole history
        tmp.write_text("".join(ln + "\n" for ln in keep))
        os.replace(tmp, path)


def evaluate(cfg: Config, checkpoint=None, log=print, role: str = "test") -> dict:
    """Experts, and students and teachers of a JEDI checkpoint (default: the run's), on the test
    roles (role="val": the val roles, to choose by; every shard folder needs one).

    Returns the results.json record (as train's) and logs it; it writes no file (the run's
    results.json stays train's). log as train's.
    Note: like train and pretrain it sets torch's thread count (torch_threads) and seeds the global
    RNGs (seed); a notebook that relies on its own settings sets them again afterwards."""
    distributed.init()
    log = quiet_unless_main(log)
    out = Path(cfg.out)
    names = [d.name for d in cfg.datasets]
    ckpt = Path(checkpoint) if checkpoint else out / "checkpoint.pt"
    distributed.same_files([ckpt] + [expert_path(cfg, n) for n in names])
    device = pick_device(cfg)
    sets = open_all(cfg)
    if role not in ("test", "val"):
        raise InputError(f"role: test or val, got {role!r}")
    lacking = [n for n in names if not sets[n].count(role)]
    if lacking:
        raise InputError(f"no {role} role in the shards of {', '.join(lacking)}: shard or split them with "
                         f"--val-per-class N")
    experts = {}
    for n in names:
        if not expert_path(cfg, n).is_file():
            raise MissingError(f"no expert for {n} in {out / 'experts'}: run `jedi-pipe pretrain` first")
        experts[n] = load_expert(cfg, n, device).eval()
    joint, step = {}, None
    if ckpt.is_file():   # the experts in the joint model's pass: each clip decoded once
        step = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["step"]
        joint = evaluate_jedi(load_joint(cfg, experts, ckpt, device), cfg, sets, device, role, experts=experts)
        expert_scores = {n: joint[n].pop("expert") for n in names}
    elif checkpoint:
        raise MissingError(f"checkpoint {ckpt} does not exist")
    else:
        log(f"no JEDI checkpoint in {out}: evaluating the experts only")
        expert_scores = {n: evaluate_logits(lambda x, n=n: {"expert": experts[n](x)}, sets[n], cfg, device,
                                            role)["expert"] for n in names}
    return run_results(cfg, sets, expert_scores, joint, step)
