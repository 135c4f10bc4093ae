"""torchrun support: one process group for every student and teacher head of a run.

Under `torchrun --nproc-per-node N [--nnodes M ...] -m jedi_pipe.cli train --config F`, the
trainer calls `init()`: gloo on the CPU, nccl on GPUs (one per local rank). Batch sizes in the
config are global: each rank loads batch_size / world_size clips of its own part of the data
(loaders split by rank), DDP averages the gradients, so N processes take the same steps as one
process with the same config. Rank 0 alone writes files; metrics are reduced over ranks.

A rank that fails ends the run: its exception is printed with its rank and it exits non-zero,
torchrun then stops the others; a collective that waits longer than JEDI_PIPE_DIST_TIMEOUT
seconds (default 600) raises instead of hanging.

`JEDI_PIPE_TRACE_IDS=DIR` makes every rank write the sample ids of its training clips, one line
per step, to DIR/rank<r>.jsonl (used by the tests to check that ranks see disjoint clips).
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import InputError


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def init() -> tuple[int, int]:
    """Join the torchrun process group when there is one; (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        unset = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(k)]
        if unset:   # torchrun sets them all; a hand-set WORLD_SIZE alone is no process group
            raise InputError(f"WORLD_SIZE={world} but {', '.join(unset)} not set: start the run with torchrun "
                             f"(or unset WORLD_SIZE for one process)")
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        seconds = float(os.environ.get("JEDI_PIPE_DIST_TIMEOUT", 600))
        try:
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=seconds))
        except dist.DistError as e:   # said here, not taken later for another rank's failure
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise InputError(f"could not join the {world} processes of this run at {os.environ['MASTER_ADDR']}:"
                             f"{os.environ['MASTER_PORT']} within {seconds:g} s (JEDI_PIPE_DIST_TIMEOUT): "
                             f"{first}") from None
    return rank(), world_size()


def per_rank(global_batch: int, what: str) -> int:
    """The part of a global batch size that each rank loads."""
    w = world_size()
    if global_batch % w:
        raise InputError(f"{what}={global_batch} does not split over {w} processes; "
                         f"use a multiple of {w}")
    return global_batch // w


def wrap(model: torch.nn.Module) -> torch.nn.Module:
    """DDP over the model when there are several ranks (gradients averaged over ranks)."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [torch.cuda.current_device()] if torch.cuda.is_available() else None
    return DistributedDataParallel(model, device_ids=device_ids)


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over ranks (one collective for the whole dict)."""
    if world_size() == 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    if torch.cuda.is_available():
        t = t.cuda()
    dist.all_reduce(t)
    return {k: v / world_size() for k, v in zip(keys, t.tolist())}


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def sync_buffers(model: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm statistics) on every rank. DDP syncs them at the start of each
    training forward, so after a step rank r still holds statistics of its own last batch; an
    evaluation must use the model the checkpoint holds, rank 0's."""
    if world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def average_buffers(model: torch.nn.Module) -> None:
    """Every floating-point buffer (BatchNorm statistics) averaged over ranks, in place: statistics
    each rank gathered over its own share of the data, made the statistics of all of it."""
    if world_size() > 1:
        for b in model.buffers():
            if b.is_floating_point():
                dist.all_reduce(b)
                b /= world_size()


def same_files(paths) -> None:
    """Raise InputError on every rank unless every rank finds each of `paths` as rank 0 does (there or
    not). Ranks decide from their own disk whether to resume, to pretrain, which experts to load; ranks
    on nodes that do not share the run folder would decide apart and part ways silently (one resumed at
    step s, another from step 0, until a collective hangs). A collective: every rank calls it."""
    if world_size() == 1:
        return
    paths = [Path(p) for p in paths]
    views = gather([p.is_file() for p in paths])
    for r, view in enumerate(views):
        for path, at_main, here in zip(paths, views[0], view):
            if here != at_main:
                raise InputError(f"rank {r} {'does not find' if at_main else 'finds'} {path}, rank 0 "
                                 f"{'does' if at_main else 'does not'}: every process of a run must see one "
                                 f"run folder (out on a filesystem that every node mounts)")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def trace_ids(step: int, batch: dict) -> None:
    """With JEDI_PIPE_TRACE_IDS set: this rank's sample ids of one training step, by dataset/role."""
    folder = os.environ.get("JEDI_PIPE_TRACE_IDS")
    if folder:
        ids = {f"{n}/{role}": b[key].tolist() for n, b in batch.items()
               for role, key in (("labeled", "id"), ("unlabeled", "id_u")) if key in b}
        Path(folder).mkdir(parents=True, exist_ok=True)
        with open(Path(folder) / f"rank{rank()}.jsonl", "a") as f:
            f.write(json.dumps({"step": step, "ids": ids}) + "\n")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
