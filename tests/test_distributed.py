"""torchrun: two CPU processes (gloo) train like one process with the same global batch."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from test_trainer import TINY, tiny_config


def cli(*args):
    return [sys.executable, "-m", "jedi_pipe.cli", *args]


def torchrun(n, *args):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={n}",
            "-m", "jedi_pipe.cli", *args]


def write_config(shard_dirs, out: Path, extra=()) -> Path:
    data, cfg = tiny_config(shard_dirs, out, extra)
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump({**data, "out": str(out)}))
    return path


def overrides(extra=()):
    return [a for o in TINY + list(extra) for a in ("--set", o)]


def run(args, env=None, timeout=600):
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_two_ranks_match_one_process_and_see_disjoint_clips(shard_dirs, tmp_path):
    extra = ["jedi.epochs=3"]
    one = write_config(shard_dirs, tmp_path / "one", extra)
    two = write_config(shard_dirs, tmp_path / "two", extra)
    run(cli("train", "--config", str(one), *overrides(extra)))
    trace = tmp_path / "ids"
    p = run(torchrun(2, "train", "--config", str(two), *overrides(extra)), env={"JEDI_PIPE_TRACE_IDS": str(trace)})
    assert p.stdout.count("| mean |") == 1, "rank 0 alone prints the results"

    r1 = json.loads((tmp_path / "one" / "results.json").read_text())["datasets"]
    r2 = json.loads((tmp_path / "two" / "results.json").read_text())["datasets"]
    assert r1.keys() == r2.keys()
    for name in r1:
        # experts: the same clips, seed and global batch; per-rank BatchNorm statistics and the
        # ranks' own augmentation draws make the runs close, not equal
        for kind in ("expert", "student", "teacher"):
            assert abs(r1[name][kind]["top1"] - r2[name][kind]["top1"]) <= 25, (name, kind, r1, r2)
    # one writer: the metrics have each step once
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()
             if "dataset" in ln and '"hmdb51"' in ln]
    assert steps == sorted(set(steps))

    seen = {}
    for r in (0, 1):
        lines = [json.loads(ln) for ln in (trace / f"rank{r}.jsonl").read_text().splitlines()]
        assert len(lines) == 3 * 2, "3 epochs of 2 steps (4 labeled clips per global batch of hmdb51's 8)"
        for ln in lines:
            for key, ids in ln["ids"].items():
                assert len(ids) == 2          # the global batch of 4, split over 2 ranks
                seen.setdefault((r, key), set()).update(ids)
    for key in {k for _, k in seen}:
        assert not seen[0, key] & seen[1, key], f"ranks shared {key} clips"


def test_resume_under_torchrun(shard_dirs, tmp_path):
    extra = ["jedi.epochs=4"]
    ref = write_config(shard_dirs, tmp_path / "ref", extra)
    run(torchrun(2, "train", "--config", str(ref), *overrides(extra)))
    killed = write_config(shard_dirs, tmp_path / "killed", extra)
    (tmp_path / "killed").mkdir()
    os.symlink(tmp_path / "ref" / "experts", tmp_path / "killed" / "experts")
    args = torchrun(2, "train", "--config", str(killed), *overrides(extra))
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (tmp_path / "killed" / "checkpoint.pt").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)      # torchrun and both ranks, at once
    proc.wait()
    assert not (tmp_path / "killed" / "results.json").is_file(), "the run finished before it could be killed"
    run(args + ["--resume"])
    assert (json.loads((tmp_path / "killed" / "results.json").read_text())
            == json.loads((tmp_path / "ref" / "results.json").read_text()))


def test_a_failed_rank_ends_the_run(shard_dirs, tmp_path):
    extra = ["jedi.epochs=50"]
    conf = write_config(shard_dirs, tmp_path / "run", extra)
    pre = run(cli("pretrain", "--config", str(conf), *overrides(extra)))
    assert pre.returncode == 0
    trace = tmp_path / "ids"
    proc = subprocess.Popen(torchrun(2, "train", "--config", str(conf), *overrides(extra)), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "JEDI_PIPE_TRACE_IDS": str(trace)})
    deadline = time.time() + 300
    while not (trace / "rank1.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)
    # the training processes are torchrun's children; kill rank 1's
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    rank1 = [pid for pid in children
             if "LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")]
    assert len(rank1) == 1, children
    os.kill(int(rank1[0]), signal.SIGKILL)
    _, err = proc.communicate(timeout=120)    # ends, does not hang
    assert proc.returncode != 0
    # torchrun stops rank 0 and names the killed rank as the root cause
    assert re.search(r"Root Cause.*?rank\s*:\s*1\b", err, re.S), err[-2000:]

    # a rank's own error is one line that names the rank
    bad = subprocess.run(torchrun(2, "train", "--config", str(conf), *overrides(extra + ["jedi.batch_size=3"])),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert re.search(r"error: rank [01]/2: jedi.batch_size=3 does not split over 2 processes", bad.stderr), \
        bad.stderr[-2000:]
