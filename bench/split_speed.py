"""`jedi-pipe split` against `jedi-pipe shard` on the same videos, and against a bare file copy.

    python bench/split_speed.py                               # 25 videos/class of synthetic HMDB51, 2 workers
    python bench/split_speed.py --videos-per-class 60 --rounds 5

The synthetic HMDB51 videos (jedi_pipe.synth, AVI/MPEG-4, 72-96 px, 1.5-3.5 s) are sharded
once with the default encoding (VP9, short side 128, 12 fps) and 10 % labels, timed end to end;
that is what a second labeled selection cost before `split`. Then, per round, the folder is
re-split to 50 % labels with a val role into a fresh folder, and its tars and index files are
copied with shutil.copyfile into another (the disk-speed baseline: the same bytes, no tar
parsing, no hashing). Reported: the median over rounds of each, the ratio shard / split, and
split / copy (how far split is from the speed of the disk). The source folder was just written,
so both read it from the page cache: the copy and the split see the same disk.
Real videos (HMDB51 320x240, Kinetics 340 px and 10 s) take several times longer to transcode
than these small ones; split's per-clip cost also grows with clip size (it hashes every clip),
far less than a transcode's, but this was not measured on larger clips.
Results: bench/README.md ("Re-splitting").
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from jedi_pipe import shards, synth
from jedi_pipe.errors import script_main
from jedi_pipe.make_shards import make_shards
from jedi_pipe.resplit import split_shards


def copy_folder(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for f in sorted(src.glob("*.tar*")):
        shutil.copyfile(f, dst / f.name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--videos-per-class", type=int, default=25)
    ap.add_argument("--workers", type=int, default=2, help="transcoding processes of the shard run")
    ap.add_argument("--rounds", type=int, default=3, help="split and copy rounds (median reported)")
    ap.add_argument("--out", type=Path, default=None, help="scratch folder [default: a temporary one]")
    args = ap.parse_args()
    if args.videos_per_class < 2 or args.workers < 1 or args.rounds < 1:
        ap.error("--videos-per-class must be at least 2, --workers and --rounds at least 1")

    work = args.out or Path(tempfile.mkdtemp(prefix="split-speed-"))
    roots = synth.generate(work / "sources", datasets=["hmdb51"], videos_per_class=args.videos_per_class,
                           seed=0, workers=args.workers)
    src = work / "shards"
    shutil.rmtree(src, ignore_errors=True)
    t0 = time.perf_counter()
    s = make_shards("hmdb51", roots["hmdb51"], src, labeled_fraction=0.1, workers=args.workers, progress=False)
    t_shard = time.perf_counter() - t0
    n = sum(s.counts.values())
    train_bytes = sum(f.stat().st_size for r in shards.TRAIN_ROLES for f in shards.open_shards(src).tars(r))

    t_split, t_copy = [], []
    for i in range(args.rounds):
        for d in (work / "split", work / "copy"):
            shutil.rmtree(d, ignore_errors=True)
        t0 = time.perf_counter()
        split_shards(src, work / "split", labeled_fraction=0.5, val_per_class=1, seed=i)
        t_split.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        copy_folder(src, work / "copy")
        t_copy.append(time.perf_counter() - t0)
    split_s, copy_s = statistics.median(t_split), statistics.median(t_copy)
    print(f"{n} clips ({s.counts}), {s.bytes / 1e6:.1f} MB of clips, {train_bytes / 1e6:.1f} MB of training tars")
    print(f"shard (transcode, {args.workers} workers): {t_shard:8.2f} s  {n / t_shard:9.1f} clips/s")
    print(f"split (copy clip bytes):        {split_s:8.3f} s  {n / split_s:9.1f} clips/s  "
          f"(rounds: {', '.join(f'{t:.3f}' for t in t_split)})")
    print(f"copy (shutil.copyfile, tars):   {copy_s:8.3f} s  {n / copy_s:9.1f} clips/s")
    print(f"split is {t_shard / split_s:.0f}x faster than shard; copy is {split_s / copy_s:.1f}x faster than split")
    if args.out is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    script_main(main)
