"""A shard job and the one function that writes it; executors map it over a plan.

The plan of the shard stage (make_shards.py) is a list of `ShardJob`s, one per output tar.
An executor writes them by calling `write_shard(job, results)`, the one public way to write a
shard: the local executor (make_shards.write_shards_local) with encodes from its thread pool,
the Ray one (ray_executor.write_shards_ray) in a task per job. Both write the same bytes, and a
shard is complete when its part file is there, whoever wrote it. This module imports neither
executor, so neither imports the other.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import shards
from .datasets import VideoItem
from .errors import JediPipeError
from .progress import Progress
from .transcode import DEFAULT_TIMEOUT_S, EncodeSettings, TranscodeError, encode_clip

PARTS = ".parts"          # per-shard manifest rows and errors, merged at the end
JOB = shards.JOB          # the settings fingerprint the folder was started with
TMP = ".tmp"              # ffmpeg's output files while they are written
LINE_EVERY_S = 60.0       # seconds between progress lines where no terminal shows a bar (VideoBar)


class ShardError(JediPipeError):
    """The shard stage cannot go on; the message is one sentence for the user."""


class VideoBar:
    """An executor's progress over `total` videos: tqdm's bar on a terminal; where no terminal
    shows one (a log file, a batch job: hours for Kinetics-400), a log line every LINE_EVERY_S.
    `progress`: None decides by the terminal, False says nothing, True always draws the bar."""

    def __init__(self, total: int, desc: str, progress: bool | None):
        from tqdm import tqdm
        self.bar = tqdm(total=total, unit="video", desc=desc, disable=None if progress is None else not progress,
                        leave=False)
        self.desc, self.done = desc, 0
        self.lines = Progress(total, every=LINE_EVERY_S, unit="video") if self.bar.disable and progress is None else None

    def update(self, n: int) -> None:
        self.bar.update(n)
        self.done += n
        if self.lines is not None and self.lines.due():
            logging.getLogger(__name__).info("%s: %s", self.desc, self.lines.line(self.done))

    def set_postfix_str(self, text: str) -> None:
        self.bar.set_postfix_str(text)

    def close(self) -> None:
        self.bar.close()


@dataclass(slots=True)   # one per video for the whole run: keep them small
class PlannedSample:
    item: VideoItem          # (split: the manifest row of the clip it copies)
    key: str
    role: str
    sample_id: int
    shard: str


def default_workers() -> int:
    """The cores this process may use (a container or taskset may allow fewer than the machine has)."""
    return (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()) or 1


def encode(path: str, settings: EncodeSettings, tmp_dir: str, timeout_s: float, min_frames: int):
    """One source video -> (clip bytes, ClipInfo, sha256) or (None, reason, None).

    The work happens in the ffmpeg child process, so a thread per worker is enough: a crashing
    decoder takes down one ffmpeg (reported as that video's failure), never a worker, and
    nothing is forked from this process. The probe and the hash run here too (hashlib drops the
    GIL), which leaves the writing thread only the tar to write.
    """
    try:
        data, info = encode_clip(path, settings, tmp_dir=tmp_dir, timeout_s=timeout_s, min_frames=min_frames)
        return data, info, hashlib.sha256(data).hexdigest()
    except TranscodeError as e:
        return None, str(e), None
    except OSError as e:
        import av
        if isinstance(e, av.error.FFmpegError):   # PyAV's errors subclass OSError: the clip's fault
            return None, f"unreadable clip: {e}", None
        raise   # the temp folder is full, ffmpeg is missing, ...: the run's fault, not the video's
    except Exception as e:  # a broken container can make PyAV raise anything; record, go on
        return None, f"{type(e).__name__}: {e}", None


@dataclass
class ShardJob:
    """One output tar of the plan: which samples, in which order, with which settings."""
    out: Path                       # the shard folder (absolute for Ray: a task's working directory is not ours)
    shard: str                      # the tar's name
    samples: list[PlannedSample]    # in planned order
    settings: EncodeSettings
    dataset: str
    classes: list[str]
    min_frames: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S

    def encodes(self):
        """The samples' encodes one after another, in this thread (what a Ray task does)."""
        tmp = str(self.out / TMP)
        return (encode(p.item.path, self.settings, tmp, self.timeout_s, self.min_frames) for p in self.samples)


def write_shard(job: ShardJob, results=None) -> int:
    """Write `job`'s tar and index, then its part (which marks it complete); returns its videos.

    `results` yields one `encode` result per sample, in the order of `job.samples`; without it
    the samples are encoded here one after another. Every executor maps this function over the
    plan's jobs: the local one feeds it encodes from its thread pool, a Ray task its own.
    """
    out, shard, samples = job.out, job.shard, job.samples
    settings, dataset, classes = job.settings, job.dataset, job.classes
    results = job.encodes() if results is None else results
    writer = shards.ShardWriter(out / shard)
    rows, errors = [], []
    try:
        for p, (data, info, sha) in zip(samples, results, strict=True):
            if data is None:
                errors.append({"video_id": p.item.video_id, "path": p.item.source, "reason": info})
            else:
                writer.write(_members(p, data, info, dataset, classes, settings))
                rows.append(_manifest_row(p, data, info, sha, classes))
        if rows:
            writer.close()
        else:   # every video of the shard failed: no tar, not even one an earlier run left
            writer.abort()
            for stale in (out / shard, out / shards.index_name(shard)):
                stale.unlink(missing_ok=True)
    except BaseException:
        try:
            writer.abort()
        except OSError:
            pass
        raise
    # The part is written last: it marks the shard complete for a resumed run.
    write_json_atomic(out / PARTS / (shard + ".json"), {"rows": rows, "errors": errors})
    return len(samples)


def _members(p: PlannedSample, data: bytes, info, dataset: str, classes: list[str], settings: EncodeSettings):
    label = shards.UNLABELED if p.role == "unlabeled" else p.item.label
    meta = shards.sample_json(p.key, p.role, dataset, info.frames, info.fps, info.width, info.height,
                              p.item.video_id, p.item.split, p.item.label, classes[p.item.label])
    return shards.sample_members(p.key, settings.ext, data, meta, label, info.frames,
                                 info.height, info.width, p.sample_id)


def _manifest_row(p: PlannedSample, data: bytes, info, sha: str, classes: list[str]) -> dict:
    """The sample's full row, true label included; `shards.public_row` (through TableWriter) moves what is withheld apart."""
    return {"sample_id": p.sample_id, "key": p.key, "shard": p.shard, "role": p.role, "split": p.item.split,
            "label": p.item.label, "label_name": classes[p.item.label],
            "video_id": p.item.video_id, "source": p.item.source,
            "frames": info.frames, "fps": info.fps, "width": info.width, "height": info.height,
            "bytes": len(data), "sha256": sha}


def write_json_atomic(path: Path, obj, indent=None, sort_keys=False) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=indent, sort_keys=sort_keys))
    os.replace(tmp, path)
