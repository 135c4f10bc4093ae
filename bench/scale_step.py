"""The joint step of a config at its real size, alone: peak GPU memory and step time, next to
`jedi-pipe plan`'s prediction for the same settings.

    python bench/scale_step.py --config train/jedi.yaml [--steps 8] [--set jedi.micro_batch_size=4 ...]
    torchrun --nproc-per-node 2 bench/scale_step.py --config train/jedi.yaml     # DDP (nccl on GPUs)

It runs trainer.joint_step, the function `jedi-pipe train` runs, on the config's students
(randomly initialised, class counts of the real datasets) with random clips of the config's clip
size: no shards, no loader, so the numbers are the step's own (the input rate the step needs is
printed; `jedi-pipe bench loader` measures what the loader gives). One JSON line per run on stdout.
Runs on the CPU too (CUDA_VISIBLE_DEVICES=), for checking the script at tiny sizes.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch

from jedi_pipe import distributed
from jedi_pipe.config import load_config
from jedi_pipe.errors import script_main
from jedi_pipe.models import build
from jedi_pipe.plan import GiB, PUBLISHED_CLASSES, plan
from jedi_pipe.trainer import (autocast, joint_model, joint_step, loss_config, micro_batch_count, param_groups,
                               step_inputs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--steps", type=int, default=8, help="timed steps, after 2 untimed ones")
    ap.add_argument("--gpu-mem", type=float, default=None, help="GB for the plan (default: this GPU's)")
    ap.add_argument("--same-gpu", action="store_true",
                    help="under torchrun, every rank on GPU 0 (one GPU, and NCCL still to exercise)")
    args = ap.parse_args()
    if args.steps < 1:
        ap.error("--steps must be at least 1")
    if args.same_gpu:
        os.environ["LOCAL_RANK"] = "0"     # distributed.init picks the GPU by LOCAL_RANK

    cfg = load_config(args.config, args.overrides)
    rank, world = distributed.init()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    classes = {d.name: PUBLISHED_CLASSES.get(d.name, 400) for d in cfg.datasets}
    experts = {d.name: build(d.model, classes[d.name]) for d in cfg.datasets}
    jedi = joint_model(experts, cfg).to(device).train()
    opt = torch.optim.SGD(param_groups(jedi, cfg.jedi.student_lr_scale), lr=1e-3, momentum=0.9)   # the trainer's groups
    forward = distributed.wrap(jedi)
    forward = torch.compile(forward) if cfg.compile else forward
    b = distributed.per_rank(cfg.jedi.batch_size, "jedi.batch_size")
    k = micro_batch_count(cfg.jedi.micro_batch_size, b)
    shape = (3, cfg.clip.frames, cfg.clip.size, cfg.clip.size)
    u = b * cfg.jedi.unlabeled_ratio
    loader_batch = {n: {"x": torch.randn(b, *shape), "x_u": torch.randn(u, *shape), "x_us": torch.randn(u, *shape),
                        "y": torch.randint(0, c, (b,))} for n, c in classes.items()}
    # as the trainer wires a batch (with views: students on x_us, targets from x_u); on the device, channels-last
    labeled, unlabeled, weak, labels = step_inputs(loader_batch, cfg.jedi.views, device)

    def step():
        joint_step(jedi, forward, opt, labeled, unlabeled, labels, loss_config(cfg.jedi), k,
                   autocast(device, cfg.bf16), weak)

    t0 = time.perf_counter()
    for _ in range(2):     # the first steps build cuDNN plans (and the compiled graph): not timed
        step()
    if cuda:
        torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - t0) / args.steps
    clips = world * sum(x.shape[0] for x in (*labeled.values(), *unlabeled.values()))
    gpu_mem = args.gpu_mem or (torch.cuda.get_device_properties(device).total_memory / 1e9 if cuda else 80.0)
    # the model measured has the published class counts, whatever shard folders the config names
    predicted = plan(cfg, gpus=world, gpu_mem_gb=gpu_mem, labeled_counts={}, class_counts=classes)
    result = {"rank": rank, "world": world, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
              "micro_batch_size": cfg.jedi.micro_batch_size, "micro_batches": k,
              "grad_checkpointing": cfg.jedi.grad_checkpointing, "bf16": cfg.bf16, "compile": cfg.compile,
              "clip": [cfg.clip.frames, cfg.clip.size], "clips_per_step": clips,
              "step_s": round(step_s, 4), "first_two_steps_s": round(warm, 2),
              "clips_per_s": round(clips / step_s, 1),
              "peak_allocated_gib": round(torch.cuda.max_memory_allocated(device) / GiB, 2) if cuda else None,
              "peak_reserved_gib": round(torch.cuda.max_memory_reserved(device) / GiB, 2) if cuda else None,
              "predicted_peak_gib": round(predicted["peak"] / GiB, 2),
              "predicted_live_gib": round(predicted["live"] / GiB, 2),   # compare with peak_allocated_gib
              "predicted_step_s": round(predicted["step_s"], 3), "predicted_at_utilisation": predicted["utilisation"],
              "tflops_per_gpu": round(predicted["flops_per_step"] / world / step_s / 1e12, 1)}
    print(json.dumps(result), flush=True)
    distributed.shutdown()


if __name__ == "__main__":
    script_main(main)
