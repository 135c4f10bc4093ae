"""The shard stage on Ray: one Ray task per output shard (`jedi-pipe shard --executor ray`).

`make_shards` plans, locks and claims the folder and merges the parts exactly as it does for
the local executor; only the writing of the pending shard jobs moves into Ray tasks. A task
runs `shard_jobs.write_shard(job)`, the function the local executor maps too, which encodes
the job's videos one after another (one ffmpeg at a time: a task is one CPU), so the bytes are
the same and a shard is complete when its part is there, whoever wrote it.

Every node must see --out and the source videos at the same absolute paths (a shared file
system) and run the same jedi-pipe, which finds ffmpeg the same way on every node
(`transcode.ffmpeg_exe`: a system ffmpeg on PATH, else imageio-ffmpeg's binary).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket

from .shard_jobs import JOB, ShardError, ShardJob, VideoBar, default_workers, write_shard

INSTALL_HINT = 'pip install "jedi-pipe[ray]"'


def require_ray():
    """The `ray` module, or a ShardError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ShardError(f'--executor ray needs Ray, which is not installed; install it with: {INSTALL_HINT}') from None
    return ray


def write_shards_ray(jobs: list[ShardJob], *, workers: int | None = None, progress: bool | None = None,
                     address: str | None = None) -> int:
    """The Ray executor: `write_shard` over the jobs, one Ray task each; returns the videos done.

    With `address`, connect to that cluster (`auto`: the one `ray start` made on this node);
    without, use the Ray this process already initialised, or start a local one of `workers` CPUs.
    """
    ray = require_ray()
    if not jobs:   # every shard written by an earlier run: no need to start Ray for the merge
        return 0
    started = False
    if not ray.is_initialized():
        try:
            if address is not None:
                _check_reachable(address)
                ray.init(address=address, logging_level=logging.WARNING)
            else:   # "local": a fresh Ray of our size, never one that RAY_ADDRESS happens to name
                ray.init(address="local", num_cpus=workers or default_workers(),
                         include_dashboard=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise ShardError(f"cannot start or reach {where}: {e}") from None
        started = True
    task = ray.remote(num_cpus=1)(_shard_task)
    bar = VideoBar(sum(len(j.samples) for j in jobs), f"shard {jobs[0].dataset} (ray)", progress)
    done, refs, left = 0, {}, []
    try:
        for job in jobs:   # absolute paths: a task's working directory is not ours
            ref = task.remote(dataclasses.replace(job, samples=_absolute(job.samples)))   # job.out: absolute already
            refs[ref] = job.shard
            left.append(ref)
        bar.set_postfix_str(f"0/{len(refs)} shards")
        while left:
            ready, left = ray.wait(left, num_returns=1)
            try:
                n = ray.get(ready[0])
            except ray.exceptions.RayTaskError as e:   # the task's own exception, re-raised here
                cause = getattr(e, "cause", None)
                if isinstance(cause, (ShardError, OSError)):
                    raise cause from None   # make_shards turns an OSError into "rerun to resume"
                raise
            except ray.exceptions.RayError as e:       # a worker or node lost beyond Ray's retries
                raise ShardError(f"Ray lost the task writing {refs[ready[0]]} ({type(e).__name__}); "
                                 f"rerun the same command to resume") from None
            done += n
            bar.update(n)   # a shard at a time: the tasks report nothing until their shard is written
            bar.set_postfix_str(f"{len(refs) - len(left)}/{len(refs)} shards")
    finally:
        bar.close()
        for ref in left:   # a failed run must not leave tasks writing into a folder it unlocks
            ray.cancel(ref, force=True)
        if started:
            ray.shutdown()
    return done


def _check_reachable(address: str) -> None:
    """A `host:port` nobody listens on is one sentence; ray.init would retry it for minutes."""
    host, _, port = address.rpartition(":")
    if "://" in address or not host or not port.isdigit():
        return   # auto, ray:// client addresses, ...: Ray resolves and reports them itself
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as e:
        raise ShardError(f"cannot reach the Ray cluster at {address} ({e.strerror or e}); "
                         f"is `ray start --head` running there?") from None


def _absolute(samples: list) -> list:
    """The samples with absolute source paths (a relative --videos gives relative ones)."""
    return [p if os.path.isabs(p.item.path) else
            dataclasses.replace(p, item=dataclasses.replace(p.item, path=os.path.abspath(p.item.path)))
            for p in samples]


def _shard_task(job: ShardJob) -> int:
    """Runs in a Ray worker: check that this node sees the folders, then write the job's shard."""
    if not (job.out / JOB).is_file():   # the driver wrote it before submitting anything
        raise ShardError(f"--out {job.out} is not visible on Ray node {socket.gethostname()}; "
                         f"it must be on a file system that every node mounts at the same path")
    for folder in sorted({os.path.dirname(p.item.path) for p in job.samples}):
        if not os.path.isdir(folder):   # the driver listed videos there, so the node cannot see them
            raise ShardError(f"the source folder {folder} is not visible on Ray node {socket.gethostname()}; "
                             f"the videos must be on a file system that every node mounts at the same path")
    return write_shard(job)
