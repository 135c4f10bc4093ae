"""Memory and time model of a config's joint step (`jedi-pipe plan`); docs/scale.md explains it.

Per registered model, at the config's clip size, on the CPU:
  - activation memory of one clip-pass: the bytes autograd keeps for the backward pass, counted
    with ``torch.autograd.graph.saved_tensors_hooks`` over one forward (each storage once,
    parameters left out), at batch 1 and 2: the difference is the cost per clip, the rest a
    fixed cost per pass. Counted per stage too (``model.feature_stages()``), which gives what
    activation checkpointing keeps (the stages' inputs) and what it recomputes at once (one stage).
  - forward FLOPs of one clip (``torch.utils.flop_counter``, a multiply-add counted as 2).
Everything else is arithmetic on the config, written out in ``plan()``: the weights, their
gradients, SGD's momentum, the mean teacher's copies, DDP's gradient buckets, and a stated
allowance for the CUDA context, cuDNN workspaces and the allocator's fragmentation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from . import shards as shardfmt
from .config import Config
from .errors import InputError
from .models import build
from .trainer import micro_batch_count

GiB = 2**30
CONTEXT_GIB = 3.0       # CUDA context + cuDNN workspaces, a round allowance (not measured here)
FRAGMENTATION = 0.10    # caching-allocator slack on top of the live tensors, an allowance (not measured here)
# Labeled clips per dataset at labeled_fraction 0.1, from the published split sizes (docs/scale.md, "Shard
# counts"), and classes per dataset: used only when a config's shard folder is not there to count (shard_counts).
PUBLISHED_LABELED = {"hmdb51": 357, "ucf101": 954, "kinetics400": 24_000, "ssv2": 16_900}
PUBLISHED_CLASSES = {"hmdb51": 51, "ucf101": 101, "kinetics400": 400, "ssv2": 174}   # other names: 400 assumed


@dataclass
class ModelCost:
    arch: str
    params: int                 # parameters of the model (backbone + its head)
    act_per_clip: float         # bytes kept for backward per clip, whole forward (no checkpointing)
    act_fixed: float            # bytes kept per pass whatever the batch (e.g. bf16 copies of the weights)
    kept_per_clip: float        # with checkpointing: stage inputs + what runs after the stages, per clip
    stage_peak_per_clip: float  # with checkpointing: the largest stage's activations, recomputed in backward
    out_per_clip: float         # largest stage output (bytes per clip): the mean teacher's no-grad working set
    flops_per_clip: float       # forward FLOPs of one clip
    act_per_clip_fp32: float    # act_per_clip without autocast (the figure to compare with an fp32 count)
    num_features: int = 512     # width of the penultimate features (the teachers' input block)


def _saved_bytes(fn, params: set[int]) -> float:
    """Bytes of the distinct storages autograd saves while `fn()` runs (parameters excluded)."""
    seen: dict[int, int] = {}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return float(sum(seen.values()))


def measure_model(arch: str, num_classes: int, frames: int, size: int, bf16: bool) -> ModelCost:
    """Count one model's activations per clip-pass (train mode, CPU) and its FLOPs per clip.

    ``bf16``: under ``torch.autocast("cpu", bfloat16)``, which casts convolutions and what
    follows them to bf16 as CUDA's autocast does (a CPU stand-in for the GPU's bf16 run).
    """
    torch.manual_seed(0)
    model = build(arch, num_classes).train()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def whole(b, autocast=True):
        x = torch.randn(b, 3, frames, size, size)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16 and autocast):
            return _saved_bytes(lambda: model(x), params)

    def per_stage(b):
        x = torch.randn(b, 3, frames, size, size)
        saved, inputs, outputs = [], [], []
        with amp:
            for stage in model.feature_stages():
                inputs.append(x.untyped_storage().nbytes())
                x = _run_and_count(stage, x, params, saved)
                outputs.append(x.untyped_storage().nbytes())
        return saved, inputs, outputs

    one, two = whole(1), whole(2)
    s1, in1, out1 = per_stage(1)
    s2, in2, out2 = per_stage(2)
    stage_per_clip = [b - a for a, b in zip(s1, s2)]
    after_stages = (two - one) - sum(stage_per_clip)      # pooling, head: kept as they are
    kept = sum(b - a for a, b in zip(in1, in2)) + max(after_stages, 0.0)
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, frames, size, size))
    return ModelCost(arch, sum(p.numel() for p in model.parameters()), two - one, 2 * one - two, kept,
                     max(stage_per_clip), max(b - a for a, b in zip(out1, out2)), float(counter.get_total_flops()),
                     whole(2, False) - whole(1, False) if bf16 else two - one, model.num_features)


def _run_and_count(stage, x, params, saved: list) -> torch.Tensor:
    out = []
    saved.append(_saved_bytes(lambda: out.append(stage(x)), params))
    return out[0]


@dataclass
class StepClips:
    """The clips one GPU's joint step runs (trainer.joint_step), read off the forward of the model
    that jedi.teachers names: jedi.JEDI, EMABaseline or FixMatchBaseline. Every backbone runs as
    many clips as the others, since every dataset brings the same batch."""
    decoded: int     # clips the loaders decode: every dataset's labeled and unlabeled ones
    inputs: int      # clip tensors on the GPU: the decoded ones, and with views the strong view of each unlabeled clip
    trained: int     # clips each student backbone runs with gradients
    averaged: int    # clips each moving-average backbone runs without gradients (0: no moving average)


def step_clips(j, datasets: int, lab: int, unl: int) -> StepClips:
    """StepClips of a GPU's step of `lab` labeled and `unl` unlabeled clips per dataset under
    jedi config `j`. With views the loader gives each unlabeled clip a weak and a strong view,
    cut from the same decode: the students learn on the strong ones, the targets come from the
    weak ones."""
    decoded = datasets * (lab + unl)
    inputs = decoded + (datasets * unl if j.views else 0)
    if j.teachers == "ema":
        # EMABaseline: each student its own dataset's clips; its moving average the same rows
        # (the unlabeled ones as weak views, with views)
        return StepClips(decoded, inputs, lab + unl, lab + unl)
    if j.teachers == "fixmatch":
        # FixMatchBaseline: each student its own labeled, unlabeled (strong) and weak clips, all in
        # one batch with gradients (only the weak logits are detached)
        return StepClips(decoded, inputs, lab + unl + (unl if j.views else 0), 0)
    # JEDI: every backbone runs every dataset's clips as one batch (the strong views in place of the
    # unlabeled clips, with views); the moving average (teacher_ema) runs the unlabeled rows (their weak views)
    return StepClips(decoded, inputs, decoded, datasets * unl if j.teacher_ema else 0)


@dataclass
class Settings:
    micro_batch_size: int       # jedi.micro_batch_size (0: the whole step)
    grad_checkpointing: bool


def shard_counts(cfg: Config) -> tuple[dict[str, int], dict[str, int]]:
    """Labeled clips and classes of each config dataset whose shard folder is there (others left out)."""
    labeled, classes = {}, {}
    for d in cfg.datasets:
        if (Path(d.shards) / shardfmt.CARD).is_file():
            ss = shardfmt.open_shards(d.shards)
            labeled[d.name], classes[d.name] = ss.count("labeled"), len(ss.classes)
    return labeled, classes


def plan(cfg: Config, gpus: int = 1, gpu_mem_gb: float = 80.0, tflops: float = 989.0, utilisation: float = 0.3,
         costs: dict[str, ModelCost] | None = None, labeled_counts: dict[str, int] | None = None,
         class_counts: dict[str, int] | None = None) -> dict:
    """The memory and time model of cfg's joint step on `gpus` GPUs of `gpu_mem_gb` GB each.

    ``tflops``: the GPU's dense bf16 peak (989 for an H100/H200 SXM, 312 for an A100), of which
    ``utilisation`` is assumed reached. ``costs``: measured ModelCost per arch (measured here
    when missing). ``labeled_counts`` and ``class_counts``: labeled clips and classes per dataset,
    for the epoch length and the teachers' heads (None: counted in the shard folders that exist,
    shard_counts, as `jedi-pipe plan` does); the published sizes stand in for a dataset left out.
    """
    for name, value, low in (("gpus", gpus, 1), ("gpu_mem_gb", gpu_mem_gb, 1), ("tflops", tflops, 1)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= low:
            raise InputError(f"{name} must be a number >= {low}, got {value!r}")
    if not isinstance(gpus, int):
        raise InputError(f"gpus must be a whole number, got {gpus!r}")
    if not (isinstance(utilisation, (int, float)) and 0.01 <= utilisation <= 1):
        raise InputError(f"utilisation must be in [0.01, 1] (the fraction of the peak reached), got {utilisation!r}")
    if labeled_counts is None or class_counts is None:
        counted = shard_counts(cfg)
        labeled_counts = counted[0] if labeled_counts is None else labeled_counts
        class_counts = counted[1] if class_counts is None else class_counts
    j = cfg.jedi
    names = [d.name for d in cfg.datasets]
    bf16 = cfg.bf16
    costs = dict(costs or {})
    for d in cfg.datasets:
        if d.model not in costs:
            costs[d.model] = measure_model(d.model, 400, cfg.clip.frames, cfg.clip.size, bf16)
    archs = [costs[d.model] for d in cfg.datasets]
    if j.batch_size % gpus:
        raise InputError(f"jedi.batch_size: {j.batch_size} labeled clips per dataset do not split over {gpus} GPUs")
    lab_gpu, unl_gpu = j.batch_size // gpus, j.batch_size * j.unlabeled_ratio // gpus
    micro_batch_count(j.micro_batch_size, lab_gpu)   # the trainer's check: a size that does not divide is refused
    clips = step_clips(j, len(names), lab_gpu, unl_gpu)

    # -- weights and their state (fp32 master weights; autocast keeps them fp32); JEDI's teacher i: a linear
    #    head over all students' features, [C_i, sum of widths]; a moving average copies all it averages
    width = sum(c.num_features for c in archs)
    classes = {n: (class_counts or {}).get(n, PUBLISHED_CLASSES.get(n, 400)) for n in names}
    heads = sum((width + 1) * classes[n] for n in names) if j.teachers == "joint" else 0
    params = sum(c.params for c in archs) + heads
    weights = 4.0 * params
    state = {"weights": weights, "gradients": weights, "SGD momentum": weights,
             "mean-teacher copies": weights if clips.averaged else 0.0,
             "students' average": 4.0 * sum(c.params for c in archs) if j.student_avg else 0.0,
             "DDP gradient buckets": weights if gpus > 1 else 0.0}

    def parts(s: Settings) -> int:
        return micro_batch_count(s.micro_batch_size, lab_gpu)

    def activations(s: Settings) -> dict:
        trained_mb, averaged_mb = clips.trained / parts(s), clips.averaged / parts(s)
        if s.grad_checkpointing:
            act = sum(c.kept_per_clip * trained_mb + c.act_fixed for c in archs) \
                + max(c.stage_peak_per_clip for c in archs) * trained_mb
        else:
            act = sum(c.act_per_clip * trained_mb + c.act_fixed for c in archs)
        ema = 2 * max(c.out_per_clip for c in archs) * averaged_mb
        inputs = clips.inputs * 3 * cfg.clip.frames * cfg.clip.size**2 * 4.0
        return {"activations": act, "mean-teacher forward": ema, "input clips": inputs}

    def live(s: Settings) -> float:      # what torch.cuda.max_memory_allocated would show
        return sum(state.values()) + sum(activations(s).values())

    def peak(s: Settings) -> float:
        return live(s) * (1 + FRAGMENTATION) + CONTEXT_GIB * GiB

    budget = gpu_mem_gb * 1e9
    chosen = Settings(j.micro_batch_size, j.grad_checkpointing)
    fits = peak(chosen) <= budget
    suggestion = None
    if not fits:   # the largest micro-batch that fits, without checkpointing first (it costs a third more compute)
        sizes = [m for m in range(int(lab_gpu), 0, -1) if lab_gpu % m == 0]
        for ckpt in (False, True):
            ok = [Settings(m, ckpt) for m in sizes if peak(Settings(m, ckpt)) <= budget]
            if ok:
                suggestion = ok[0]
                break

    # -- compute: forward + backward (~2x forward) per clip-pass, + a forward again when checkpointing,
    #    + the moving average's forward
    fwd = sum(c.flops_per_clip for c in archs)               # one clip through every backbone
    train_mult = 3 + (1 if chosen.grad_checkpointing else 0)
    flops_step = gpus * fwd * (clips.trained * train_mult + clips.averaged)
    clips_step = clips.decoded * gpus
    step_s = flops_step / gpus / (tflops * 1e12 * utilisation)
    counts = labeled_counts or {}
    labeled = {n: counts.get(n, PUBLISHED_LABELED.get(n)) for n in names}
    counted = [n for n in names if n in counts]
    # as the trainer counts them (loaders/mixing.py, trainer.train_jedi): one epoch = one pass over the largest labeled set
    steps_epoch = math.ceil(max(v for v in labeled.values() if v) / j.batch_size) if any(labeled.values()) else None
    joint_steps = j.steps or (j.epochs * steps_epoch if steps_epoch else None)
    return {
        "gpus": gpus, "gpu_mem_gb": gpu_mem_gb, "bf16": bf16, "clip": (cfg.clip.frames, cfg.clip.size),
        "models": {c.arch: c for c in archs}, "clips_per_step": clips_step, "clips_per_gpu": clips.decoded,
        "inputs_per_gpu": clips.inputs, "trained_passes_per_gpu": clips.trained * len(archs),
        "averaged_passes_per_gpu": clips.averaged * len(archs),
        "clip_passes_per_micro_batch": clips.trained * len(archs) / parts(chosen),
        "params": params, "state": state, "activations": activations(chosen), "live": live(chosen), "peak": peak(chosen),
        "budget": budget, "fits": fits, "settings": chosen, "suggestion": suggestion,
        "suggestion_peak": peak(suggestion) if suggestion else None,
        "flops_per_step": flops_step, "tflops": tflops, "utilisation": utilisation, "step_s": step_s,
        "labeled": labeled, "counted": counted, "steps_per_epoch": steps_epoch,
        "epoch_s": steps_epoch * step_s if steps_epoch else None, "loader_clips_per_s": clips_step / step_s,
        "joint_steps": joint_steps, "steps_from": "jedi.steps" if j.steps else f"{j.epochs} jedi.epochs",
        "joint_s": joint_steps * step_s if joint_steps else None,
    }


def format_plan(p: dict) -> str:
    g = lambda b: f"{b / GiB:.1f} GiB" if b >= 10 * GiB else f"{b / GiB:.3f} GiB"  # noqa: E731
    dur = lambda s: f"{s / 3600:.2f} h" if s >= 360 else f"{s:.1f} s"  # noqa: E731
    s = p["settings"]
    lines = [f"joint step on {p['gpus']} GPU(s) of {p['gpu_mem_gb']:g} GB, clips {p['clip'][0]}x{p['clip'][1]}^2, "
             f"{'bf16 autocast' if p['bf16'] else 'fp32'}; jedi.micro_batch_size={s.micro_batch_size}, "
             f"jedi.grad_checkpointing={str(s.grad_checkpointing).lower()}",
             "per model (measured on this CPU: saved-tensors count, one clip-pass; FLOPs counted):"]
    for c in p["models"].values():
        lines.append(f"  {c.arch}: {c.params / 1e6:.1f} M params, activations {g(c.act_per_clip)} per clip-pass "
                     f"({g(c.act_per_clip_fp32)} in fp32) "
                     f"(+{g(c.act_fixed)} per pass), checkpointed {g(c.kept_per_clip)} kept + largest stage "
                     f"{g(c.stage_peak_per_clip)}, {c.flops_per_clip / 1e9:.1f} GFLOP forward per clip")
    views = p["inputs_per_gpu"] - p["clips_per_gpu"]
    lines.append(f"clips per step {p['clips_per_step']:g} ({p['clips_per_gpu']:g} per GPU"
                 + (f", + {views:g} strong views" if views else "") + "); per GPU "
                 f"{p['trained_passes_per_gpu']:g} clip-passes with gradients ({p['clip_passes_per_micro_batch']:g} "
                 f"per micro-batch), {p['averaged_passes_per_gpu']:g} without (moving average)")
    lines.append("memory per GPU:")
    for k, v in {**p["state"], **p["activations"]}.items():
        if v:
            lines.append(f"  {k:22s} {g(v)}")
    lines.append(f"  {'+ context, slack':22s} {CONTEXT_GIB:g} GiB + {FRAGMENTATION:.0%}")
    verdict = "fits" if p["fits"] else "DOES NOT FIT"
    lines.append(f"peak per GPU {g(p['peak'])} of {g(p['budget'])} ({g(p['live'])} of tensors): {verdict}")
    if not p["fits"]:
        t = p["suggestion"]
        lines.append(f"  fits with: --set jedi.micro_batch_size={t.micro_batch_size} --set jedi.grad_checkpointing="
                     f"{str(t.grad_checkpointing).lower()} (peak {g(p['suggestion_peak'])})" if t else
                     "  no micro-batching or checkpointing setting fits: more GPUs, or a smaller clip or batch")
    lines.append(f"compute per step {p['flops_per_step'] / 1e12:.1f} TFLOP; at {p['utilisation']:.0%} of "
                 f"{p['tflops']:g} TFLOP/s per GPU: {p['step_s']:.2f} s per step")
    if p["steps_per_epoch"]:
        source = ("counted in the shard folders" if len(p["counted"]) == len(p["labeled"]) else
                  "published split sizes" + (f"; counted for {', '.join(p['counted'])}" if p["counted"] else ""))
        lines.append(f"epoch: {p['steps_per_epoch']} steps (labeled clips {p['labeled']}: {source}), "
                     f"{dur(p['epoch_s'])}")
    if p["joint_steps"]:
        lines.append(f"joint phase: {p['joint_steps']} steps ({p['steps_from']}), {dur(p['joint_s'])}")
    lines.append(f"the loaders must deliver {p['loader_clips_per_s']:.0f} clips/s (all GPUs) to keep up")
    lines.append("(predictions: not measured on a GPU here; docs/scale.md)")
    return "\n".join(lines)
