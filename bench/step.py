"""Where the time of a JEDI step goes, and where the time of `jedi-pipe demo` goes.

    python bench/step.py profile --shards jedi-demo/shards --steps 30     # per-step table
    python bench/step.py demo --out /tmp/demo-profile                      # the demo's phases

`profile` runs joint steps of `train/demo.yaml` (its model, clip, batches, losses, views; `--set` to
change them) on the shard folders under `--shards` (one per dataset, as `jedi-pipe demo` writes
them), from freshly initialised students: the step's cost does not depend on the weights. Each
step is the trainer's step cut at its seams, computing the same things in the same order:

    data wait        next(loader): the DALI (or torch) loader's batch for every dataset
    fwd <dataset>    that student's backbone over all the step's clips (every dataset's)
    heads            student and teacher heads on the features (the concatenation included)
    mean teacher     the moving average's backbones and teacher heads, no gradient
    loss             jedi_losses
    bwd heads+loss   the loss's backward down to the backbones' features
    bwd <dataset>    that backbone's backward, from its features' gradient
    optimizer        zero_grad + SGD step
    ema update       the moving average's update

The first step's loss is checked against the trainer's path (`jedi(labeled, unlabeled)` then
`jedi_losses`), so the cut cannot drift from what the trainer runs. Wall and CPU time of the
main thread are reported per part, and the CPU of the rest of the process (DALI's threads, and
torch's other intra-op threads: `trainer.cpu_threads`; `--set torch_threads=1` keeps torch on the
main thread alone, where the per-part CPU column is then the whole of each part).

`demo` runs `jedi-pipe demo` (the same library function) and splits its wall and CPU time into
synth, shard, inspect, pretraining, joint steps, evaluation (the test passes of this process: the
experts' count in pretraining when they train in worker processes, `pretrain.workers`) and
pictures (the results table's printing counts in the joint steps).
"""
from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from jedi_pipe import plots, trainer
from jedi_pipe.demo import demo_config
from jedi_pipe.errors import script_main
from jedi_pipe.jedi import jedi_losses
from jedi_pipe.models import build
from jedi_pipe.step_profile import Clock, cut_step


def profile(shards: Path, steps: int, overrides: list[str]) -> str:
    cfg = demo_config(shards.parent, False, 0, overrides)
    for d in cfg.datasets:
        d.shards = str(shards / d.name)
    if cfg.jedi.teachers != "joint":
        raise SystemExit("profile times the JEDI step (jedi.teachers=joint)")
    if cfg.jedi.micro_batch_size or cfg.jedi.grad_checkpointing:
        raise SystemExit("profile times the whole step in one pass (jedi.micro_batch_size=0, no checkpointing)")
    device = trainer.pick_device(cfg)
    sets = trainer.open_all(cfg)
    torch.manual_seed(0)
    experts = {d.name: build(d.model, len(sets[d.name].classes)) for d in cfg.datasets}
    jedi = trainer.joint_model(experts, cfg).to(device).train()
    jcfg = cfg.jedi      # a jedi.JEDIConfig (config.JediCfg extends it)
    opt = torch.optim.SGD(trainer.param_groups(jedi, cfg.jedi.student_lr_scale), lr=cfg.jedi.lr, momentum=0.9,
                          weight_decay=cfg.jedi.weight_decay)     # the trainer's groups, at their peak lrs
    for g in opt.param_groups:
        g["lr"] *= g["lr_scale"]
    it = iter(trainer.joint_loader(cfg, sets))
    clock, warm = Clock(), 3
    for step in range(warm + steps):
        if step == warm:   # the first steps build pipelines and warm up allocators: not timed
            clock, c0, p0, t0 = Clock(), time.thread_time(), time.process_time(), time.perf_counter()
        with clock.part("data wait"):
            batch = next(it)
        labeled, unlabeled, weak, labels = trainer.step_inputs(batch, cfg.jedi.views, device)   # as the trainer
        if step == 0:   # the cut computes what the trainer computes
            with torch.no_grad():
                ref, _ = jedi_losses(jedi(labeled, unlabeled, weak), labels, jcfg)
        loss = cut_step(jedi, labeled, unlabeled, labels, jcfg, opt, clock, weak)
        if step == 0 and not torch.allclose(loss, ref, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"the timed step's loss {loss.item()} differs from the trainer's {ref.item()}")
    wall, main_cpu = time.perf_counter() - t0, time.thread_time() - c0
    loader_cpu = time.process_time() - p0 - main_cpu
    clips = sum(b["x"].shape[0] + (b["x_u"].shape[0] if "x_u" in b else 0) for b in batch.values())

    lines = [f"{steps} steps of {clips} clips ({', '.join(d.model for d in cfg.datasets)}; "
             f"{cfg.clip.frames}x{cfg.clip.size}x{cfg.clip.size}; batch {cfg.jedi.batch_size} labeled + "
             f"{cfg.jedi.unlabeled_ratio}x unlabeled per dataset; w_mutual {cfg.jedi.w_mutual}; "
             f"teacher_ema {cfg.jedi.teacher_ema}; torch threads {torch.get_num_threads()}, loader threads "
             f"{cfg.threads})", "",
             "| part | ms / step (wall) | ms / step (CPU, main thread) | share of the step (wall) |",
             "| --- | --- | --- | --- |"]
    for name in clock.wall:
        lines.append(f"| {name} | {1e3 * clock.wall[name] / steps:.1f} | {1e3 * clock.cpu[name] / steps:.1f} | "
                     f"{clock.wall[name] / wall:.0%} |")
    lines.append(f"| **step** | **{1e3 * wall / steps:.1f}** | **{1e3 * main_cpu / steps:.1f}** | 100% |")
    lines.append(f"| other threads: loader, torch beyond the main (CPU, overlapping the step) | | {1e3 * loader_cpu / steps:.1f} | |")
    return "\n".join(lines)


def cpu_now() -> float:
    """CPU seconds of this process and its finished children (ffmpeg, synth workers)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def demo_phases(out: Path, quick: bool, overrides: list[str]) -> str:
    from jedi_pipe.demo import run_demo
    marks = []        # (wall, cpu, phase that starts here), from the demo's own progress lines
    inner = []        # (wall, cpu, phase it ran in, name): test passes and pictures, moved out of their phase

    def mark(phase):
        marks.append((time.perf_counter(), cpu_now(), phase))

    def echo(line):
        s = line.strip()
        for prefix, phase in (("[1/5]", "synth"), ("[2/5]", "shard"), ("[3/5]", "inspect"),
                              ("[4/5]", "pretraining"), ("JEDI:", "joint steps")):
            if s.startswith(prefix):
                mark(phase)
        print(line, flush=True)

    def timed(fn, name):
        def wrapper(*a, **k):
            t, c = time.perf_counter(), cpu_now()
            try:
                return fn(*a, **k)
            finally:
                inner.append((time.perf_counter() - t, cpu_now() - c, marks[-1][2], name))
        return wrapper

    originals = [(trainer, "evaluate_logits", trainer.evaluate_logits), (plots, "draw", plots.draw)]
    # every test pass of pretrain and train goes through evaluate_logits; the demo draws the plots last
    trainer.evaluate_logits = timed(trainer.evaluate_logits, "evaluation")
    plots.draw = timed(plots.draw, "pictures")
    try:
        t0 = time.perf_counter()
        run_demo(out, quick=quick, overrides=overrides, echo=echo)
        mark("end")
    finally:
        for module, name, fn in originals:
            setattr(module, name, fn)
    total_wall, total_cpu = marks[-1][0] - t0, marks[-1][1] - marks[0][1]
    phases = {}
    for (w0, c0, name), (w1, c1, _) in zip(marks, marks[1:]):
        w, c = phases.get(name, (0.0, 0.0))
        phases[name] = (w + w1 - w0, c + c1 - c0)
    for w, c, phase, name in inner:
        pw, pc = phases[phase]
        phases[phase] = (pw - w, pc - c)
        nw, nc = phases.get(name, (0.0, 0.0))
        phases[name] = (nw + w, nc + c)
    passes = sum(1 for *_, name in inner if name == "evaluation")
    lines = [f"`jedi-pipe demo{' --quick' if quick else ''}`: {total_wall:.0f} s wall, {total_cpu:.0f} s CPU "
             f"(this process and its children), {passes} test passes", "",
             "| phase | wall s | share of wall | CPU s |", "| --- | --- | --- | --- |"]
    for name in ("synth", "shard", "inspect", "pretraining", "joint steps", "evaluation", "pictures"):
        if name in phases:
            w, c = phases[name]
            lines.append(f"| {name} | {w:.1f} | {w / total_wall:.0%} | {c:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("profile", help="time the parts of a joint step")
    p.add_argument("--shards", type=Path, required=True, help="folder with one shard folder per demo dataset")
    p.add_argument("--steps", type=int, default=30, help="timed steps (after 3 untimed)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    d = sub.add_parser("demo", help="split the demo's wall time into its phases")
    d.add_argument("--out", type=Path, required=True, help="the demo's output folder (a fresh one)")
    d.add_argument("--quick", action="store_true")
    d.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if args.cmd == "profile" and args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.cmd == "demo" and args.out.exists() and any(args.out.iterdir()):
        # the demo reuses what a folder holds: its phases would time a cached run
        ap.error(f"--out {args.out} is not empty: the phases are those of a fresh demo; choose a new folder")
    t = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.cmd == "profile":
        print(profile(args.shards, args.steps, args.overrides))
    else:
        print(demo_phases(args.out, args.quick, args.overrides))
    print(f"\n({t}; load average {' '.join(f'{x:.1f}' for x in __import__('os').getloadavg())} at the end)")


if __name__ == "__main__":
    script_main(main)
