"""Shard-stage memory: peak RSS of `jedi-pipe shard` (parent + ffmpeg children) vs dataset size.

    python bench/shard_memory.py                        # 200 and 2,000 videos, all cores
    python bench/shard_memory.py --videos 200 2000 20000 --max-seconds 0.5
    python bench/shard_memory.py --canned --videos 200 2000 20000 200000

The datasets are `folder` layouts (10 classes) of hard links to 8 distinct HMDB51/UCF101-like
source videos (bench/shard_throughput.py makes them), so 2,000 videos cost no disk and no
generation time; every link is still a separate video to the shard stage (own id, own
transcode, own sample). The command runs as a subprocess; every 20 ms the bench reads VmRSS
of it and of all its descendants from /proc (Linux only). Reported: the parent's own peak
(VmHWM), the peak of the summed tree, and the largest single ffmpeg.

`--canned` isolates our own code: `make_shards` runs in a fresh process with the transcode
replaced by one canned clip (everything else as usual: listing, plan, tars, index files,
manifest, card), so that 200,000 videos take minutes; it reports that process's peak RSS.
Results: bench/README.md.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shard_throughput import make_lavfi_videos  # noqa: E402  (sibling script)

from jedi_pipe.errors import script_main  # noqa: E402

CLI = "import sys; from jedi_pipe.cli import main; main(sys.argv[1:])"
CANNED = r"""
import hashlib, resource, sys, time
import jedi_pipe.make_shards as ms
import jedi_pipe.shard_jobs as jobs
from jedi_pipe.transcode import EncodeSettings, encode_clip
source, root, out, workers = sys.argv[1:5]
data, info = encode_clip(source, EncodeSettings(max_seconds=1.0))
canned = (data, info, hashlib.sha256(data).hexdigest())
jobs.encode = lambda *args: canned
t0 = time.perf_counter()
s = ms.make_shards("folder", root, out, workers=int(workers), progress=False)
print(time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, sum(s.counts.values()))
"""


def status_kb(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, []):
            out.append(c)
            todo.append(c)
    return out


def link_dataset(sources: list[Path], root: Path, n: int, classes: int = 10) -> None:
    for i in range(n):
        dst = root / f"class{i % classes:02d}" / f"v{i // classes:05d}.avi"
        if not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.link(sources[i % len(sources)], dst)


def run(root: Path, out: Path, workers: int, max_seconds: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", CLI, "shard", "--dataset", "folder", "--root", str(root), "--out", str(out),
           "--workers", str(workers), "--max-seconds", str(max_seconds), "--max-failures", "1"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent_hwm = tree_peak = child_peak = 0
    while proc.poll() is None:
        parent_hwm = max(parent_hwm, status_kb(proc.pid, "VmHWM"))
        kids = [status_kb(c, "VmRSS") for c in descendants(proc.pid)]
        tree_peak = max(tree_peak, status_kb(proc.pid, "VmRSS") + sum(kids))
        child_peak = max([child_peak, *kids])
        time.sleep(0.02)
    wall = time.perf_counter() - t0
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"shard failed: {stderr}")
    return {"wall_s": wall, "parent_peak_mb": parent_hwm / 1024, "tree_peak_mb": tree_peak / 1024,
            "ffmpeg_peak_mb": child_peak / 1024, "summary": stdout.strip().splitlines()[-1]}


def run_canned(source: Path, root: Path, out: Path, workers: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-c", CANNED, str(source), str(root), str(out), str(workers)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"canned shard failed: {proc.stderr}")
    wall, maxrss_kb, written = proc.stdout.split()
    return {"wall_s": float(wall), "parent_peak_mb": int(maxrss_kb) / 1024, "written": int(written)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos", type=int, nargs="+", default=[200, 2000])
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--max-seconds", type=float, default=10.0, help="the shard option (default: its default)")
    ap.add_argument("--data", default=None, help="folder for sources and links (kept; default: a temp folder)")
    ap.add_argument("--canned", action="store_true", help="no transcodes: our code's memory alone (see above)")
    args = ap.parse_args(argv)
    if min(args.videos) < 1 or args.workers < 1 or not args.max_seconds > 0:
        ap.error("--videos and --workers must be at least 1, --max-seconds above 0")
    tmp = tempfile.mkdtemp(prefix="shard-mem-")
    data = Path(args.data or tmp)
    try:
        make_lavfi_videos(data / "sources", 8, classes=8)
        sources = sorted((data / "sources").rglob("*.avi"))
        print(f"shard memory: {len(sources)} distinct sources linked into folder datasets, "
              f"{args.workers} workers, --max-seconds {args.max_seconds:g}, {os.cpu_count()} cores")
        if args.canned:
            print("\n| videos | seconds | peak RSS MB | kB per video added since the previous row |")
            print("| --- | --- | --- | --- |")
            prev = None
            for n in args.videos:
                root = data / f"folder-{n}"
                link_dataset(sources, root, n)
                r = run_canned(sources[0], root, Path(tmp) / f"canned-{n}", args.workers)
                assert r["written"] == n
                per = f"{(r['parent_peak_mb'] - prev[1]) * 1024 / (n - prev[0]):.2f}" if prev else "-"
                prev = (n, r["parent_peak_mb"])
                print(f"| {n} | {r['wall_s']:.0f} | {r['parent_peak_mb']:.0f} | {per} |", flush=True)
            return
        rows = []
        for n in args.videos:
            root = data / f"folder-{n}"
            link_dataset(sources, root, n)
            r = run(root, Path(tmp) / f"out-{n}", args.workers, args.max_seconds)
            rows.append((n, r))
            print(f"  {n} videos: {r['wall_s']:.0f} s, parent peak {r['parent_peak_mb']:.0f} MB, "
                  f"tree peak {r['tree_peak_mb']:.0f} MB, largest ffmpeg {r['ffmpeg_peak_mb']:.0f} MB | {r['summary']}",
                  flush=True)
        print("\n| videos | wall s | videos/s | parent peak RSS MB | parent + children peak RSS MB | largest ffmpeg MB |")
        print("| --- | --- | --- | --- | --- | --- |")
        for n, r in rows:
            print(f"| {n} | {r['wall_s']:.0f} | {n / r['wall_s']:.1f} | {r['parent_peak_mb']:.0f} | "
                  f"{r['tree_peak_mb']:.0f} | {r['ffmpeg_peak_mb']:.0f} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    script_main(main)
