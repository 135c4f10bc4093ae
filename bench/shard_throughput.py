"""Shard-stage throughput: `make_shards` against a bare loop of the same ffmpeg commands.

    python bench/shard_throughput.py                      # 200 videos, all cores, 3 rounds, vp9
    python bench/shard_throughput.py --codecs             # + bytes/clip and clips/s per codec
    python bench/shard_throughput.py --source synth       # jedi_pipe.synth UCF101 videos instead

The bare loop runs `jedi_pipe.transcode.ffmpeg_args` (the exact command line of the shard
stage) for every listed video, `--workers` at a time, writing to a scratch file and doing
nothing else: no probe, no tar, no manifest. The shard stage is timed end to end (listing,
plan, transcode, probe, tars, index files, manifest, card). Rounds alternate which goes first,
so drift in machine load hits both; the ratio reported is the median over rounds. The CPU ratio
(CPU seconds of the bare loop, driver + ffmpeg, over those of the shard stage) is printed too:
on a machine shared with other jobs it is the steadier measure of the overhead we add.

Sources (`--source lavfi`, default): videos shaped like HMDB51 / UCF101 files: 320x240, 30
fps, MPEG-4 part 2 (XVID tag) at about 600 kbit/s, 3-6 s, in `<data>/lavfi-N/<class>/<video>.avi`.
Results: bench/README.md ("Shard stage").
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jedi_pipe.shard_jobs as shard_jobs_module
from jedi_pipe.datasets import list_videos
from jedi_pipe.errors import script_main
from jedi_pipe.make_shards import make_shards
from jedi_pipe.transcode import CODECS, EncodeSettings, ffmpeg_args, ffmpeg_exe

PATTERNS = ("testsrc2", "mandelbrot", "cellauto:rule=110", "rgbtestsrc", "smptehdbars",
            "gradients:speed=0.05", "testsrc", "sierpinski")


def make_lavfi_videos(root: Path, n: int, classes: int = 10) -> None:
    """n videos in <root>/<class>/<video>.avi, HMDB51/UCF101-like; existing files are kept."""
    jobs = []
    for i in range(n):
        path = root / f"class{i % classes:02d}" / f"v{i // classes:04d}.avi"
        if path.is_file():
            continue
        name, _, opts = PATTERNS[i % len(PATTERNS)].partition(":")
        src = f"{name}=size=320x240:rate=30" + (f":{opts}" if opts else "")
        seconds = 3 + (7 * i % 31) / 10
        jobs.append((path, src, seconds))

    def make(job):
        path, src, seconds = job
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part.avi")
        subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i", src,
                        "-t", f"{seconds:.2f}", "-vf", "format=yuv420p,noise=alls=6:allf=t+u,hue=H=t/2",
                        "-c:v", "mpeg4", "-vtag", "XVID", "-b:v", "600k", str(tmp)], check=True)
        os.replace(tmp, path)

    with ThreadPoolExecutor(os.cpu_count()) as ex:
        list(ex.map(make, jobs))


def source_root(args) -> tuple[str, Path]:
    data = Path(args.data)
    if args.source == "synth":
        from jedi_pipe import synth
        root = data / "ucf101"
        if not root.is_dir():
            synth.generate(data, datasets=["ucf101"], videos_per_class=max(2, args.videos // 10), seed=0)
        return "ucf101", root
    root = data / f"lavfi-{args.videos}"
    make_lavfi_videos(root, args.videos)
    return "folder", root


# (start, end) of every transcode of the current measurement: how busy the workers were
SPANS: list[tuple[float, float]] = []
_encode = shard_jobs_module.encode


def _traced_encode(*args):
    t0 = time.perf_counter()
    try:
        return _encode(*args)
    finally:
        SPANS.append((t0, time.perf_counter()))


shard_jobs_module.encode = _traced_encode   # a timing wrapper; the work is unchanged


def utilisation(t0: float, t1: float, workers: int) -> dict:
    """Share of workers x wall with a transcode running; seconds before the first and after the last."""
    return {"busy": sum(b - a for a, b in SPANS) / (workers * (t1 - t0)),
            "startup_s": min(a for a, _ in SPANS) - t0, "tail_s": t1 - max(b for _, b in SPANS)}


def bare_loop(paths: list[str], settings: EncodeSettings, workers: int, scratch: Path) -> float:
    """Seconds for the same ffmpeg commands, `workers` at a time, nothing else."""
    def one(i_path):
        i, path = i_path
        dst = scratch / f"{i}.{settings.ext}"
        t0 = time.perf_counter()
        subprocess.run(ffmpeg_args(path, str(dst), settings), stdin=subprocess.DEVNULL, capture_output=True)
        SPANS.append((t0, time.perf_counter()))
        dst.unlink(missing_ok=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers) as ex:
        list(ex.map(one, enumerate(paths)))
    return time.perf_counter() - t0


def shard_run(dataset: str, root: Path, out: Path, settings: EncodeSettings, workers: int):
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    s = make_shards(dataset, root, out, workers=workers, codec=settings.codec, progress=False, max_failures=1.0)
    return time.perf_counter() - t0, s


def cpu_seconds() -> tuple[float, float]:
    """CPU seconds used so far by this process (all threads) and by its waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def measure(dataset, root, settings, workers, rounds, scratch: Path) -> dict:
    listing = list_videos(dataset, root)
    paths = [it.path for it in listing.items]
    bare, shard, ratios, cpu, summary = [], [], [], {"bare": [], "shard": []}, None
    util = {"bare": [], "shard": []}
    for r in range(rounds):
        order = ("bare", "shard") if r % 2 == 0 else ("shard", "bare")
        times = {}
        for what in order:
            SPANS.clear()
            c0, w0 = cpu_seconds(), time.perf_counter()
            if what == "bare":
                times[what] = bare_loop(paths, settings, workers, scratch)
            else:
                times[what], summary = shard_run(dataset, root, scratch / "out", settings, workers)
            c1, w1 = cpu_seconds(), time.perf_counter()
            cpu[what].append((c1[0] - c0[0], c1[1] - c0[1]))   # (driver, ffmpeg) CPU seconds
            util[what].append(utilisation(w0, w1, workers))
        bare.append(len(paths) / times["bare"])
        shard.append(len(paths) / times["shard"])
        ratios.append(times["bare"] / times["shard"])
        print(f"  round {r + 1}: bare {bare[-1]:6.1f} videos/s   shard {shard[-1]:6.1f} videos/s   "
              f"ratio {ratios[-1]:.3f}   driver CPU ms/video: bare {cpu['bare'][-1][0] / len(paths) * 1e3:.1f}, "
              f"shard {cpu['shard'][-1][0] / len(paths) * 1e3:.1f}; ffmpeg CPU ms/video "
              f"{cpu['shard'][-1][1] / len(paths) * 1e3:.0f}; workers busy: bare {util['bare'][-1]['busy']:.1%}, "
              f"shard {util['shard'][-1]['busy']:.1%} (startup {util['shard'][-1]['startup_s']:.2f} s, "
              f"tail {util['shard'][-1]['tail_s']:.2f} s)", flush=True)
    written = sum(summary.counts.values())
    # CPU seconds are not stretched by other tenants of a shared machine the way wall time is:
    # the ratio of total CPU per video (driver + ffmpeg) is the overhead the shard stage adds.
    total = {k: statistics.median(d + f for d, f in v) for k, v in cpu.items()}
    return {"codec": settings.codec, "videos": len(paths), "workers": workers,
            "bare_videos_per_s": statistics.median(bare), "shard_videos_per_s": statistics.median(shard),
            "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
            "cpu_ratio": total["bare"] / total["shard"],
            "busy": {k: statistics.median(u["busy"] for u in v) for k, v in util.items()},
            "driver_cpu_ms": {k: statistics.median(d for d, _ in v) / len(paths) * 1e3 for k, v in cpu.items()},
            "bytes_per_clip": summary.bytes / max(written, 1), "failures": summary.failures}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="folder for the source videos (kept; default: a temp folder)")
    ap.add_argument("--source", choices=("lavfi", "synth"), default="lavfi")
    ap.add_argument("--videos", type=int, default=200, help="number of source videos")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--codecs", action="store_true", help="also vp9, mjpeg, h264 at the default settings")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    if args.videos < 1 or args.workers < 1 or args.rounds < 1:
        ap.error("--videos, --workers and --rounds must be at least 1")
    tmp = tempfile.mkdtemp(prefix="shard-bench-")
    args.data = args.data or tmp
    try:
        dataset, root = source_root(args)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"shard throughput: {root} ({args.source}), {args.workers} workers, {os.cpu_count()} cores, "
              f"load {load:.1f}, python {sys.version.split()[0]}")
        results = []
        for codec in (CODECS if args.codecs else ("vp9",)):
            print(f"{codec} (defaults: {EncodeSettings(codec=codec).as_dict()})")
            res = measure(dataset, root, EncodeSettings(codec=codec), args.workers, args.rounds, Path(tmp))
            results.append(res)
            print(f"  => ratio shard/bare {res['ratio_median']:.3f} (median; {res['ratio_min']:.3f}..{res['ratio_max']:.3f}); "
                  f"CPU ratio {res['cpu_ratio']:.3f}; {res['shard_videos_per_s']:.1f} clips/s; "
                  f"{res['bytes_per_clip'] / 1e3:.1f} KB/clip")
        print("\n| codec | videos | workers | bare ffmpeg videos/s | shard videos/s | ratio (median, min..max) "
              "| CPU ratio | driver CPU ms/video (bare, shard) | workers busy (bare, shard) | KB/clip |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r['codec']} | {r['videos']} | {r['workers']} | {r['bare_videos_per_s']:.1f} | "
                  f"{r['shard_videos_per_s']:.1f} | {r['ratio_median']:.2f} ({r['ratio_min']:.2f}..{r['ratio_max']:.2f}) | "
                  f"{r['cpu_ratio']:.2f} | {r['driver_cpu_ms']['bare']:.1f}, {r['driver_cpu_ms']['shard']:.1f} | "
                  f"{r['busy']['bare']:.0%}, {r['busy']['shard']:.0%} | "
                  f"{r['bytes_per_clip'] / 1e3:.1f} |")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    script_main(main)
