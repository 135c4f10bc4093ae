"""torchrun: two CPU processes (gloo) train like one process with the same global batch."""
from __future__ import annotations

import gc
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

from conftest import perturb_
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


def _rank_jedi(rank, world, store, **config):
    """This rank's process group (when world > 1) and a two-dataset tiny JEDI, the same on every rank."""
    import torch
    import torch.distributed as dist

    from jedi_pipe.jedi import JEDI, JEDIConfig
    from jedi_pipe.models import build
    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    return JEDI.from_experts({"a": build("tiny3d", 3, width=8), "b": build("tiny3d", 5, width=8)}, JEDIConfig(**config))


def _jedi_step_grads(rank, world, store, batch, out_path):
    """One JEDI step on this rank's share of `batch` (under DDP when world > 1); its gradients."""
    import torch
    import torch.distributed as dist

    from jedi_pipe import distributed
    from jedi_pipe.jedi import jedi_losses
    jedi = _rank_jedi(rank, world, store, w_mutual=0.5, threshold=0.5)
    # BatchNorm on running statistics, so each clip's outputs do not depend on the other clips of its
    # batch (which is what lets one rank's half stand for its part of the whole batch); statistics of
    # the whole batch (one training forward, momentum 1, the same on every rank), since fresh ones
    # (mean 0, variance 1) shrink the features to ~1e-4 and every logit to its bias
    bns = [m for m in jedi.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for m in bns:
            m.momentum = 1.0
        jedi.train()({n: x for n, (x, _, _) in batch.items()}, {n: u for n, (_, _, u) in batch.items()})
        for m in bns:
            m.momentum = 0.1
        for k, t in enumerate(jedi.teachers.values()):
            perturb_(t, 0.3, seed=k)    # teachers that differ from their students and read every block
    jedi.train().apply(lambda m: m.eval() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) else None)
    share = lambda x: x.chunk(world)[rank]
    forward = distributed.wrap(jedi)
    out = forward({n: share(x) for n, (x, _, _) in batch.items()}, {n: share(u) for n, (_, _, u) in batch.items()})
    loss, logs = jedi_losses(out, {n: share(y) for n, (_, y, _) in batch.items()}, jedi.config)
    if world == 1:   # the threshold masks some clips, and a's masks fall unevenly on the two halves (1 and 0 of 2):
        # a loss normalised per rank by its kept clips would then differ from the one-process step
        assert all(0 < logs[f"{n}/mask_rate"] < 1 and logs[f"{n}/distill"] > 1e-2 for n in "ab"), logs
        kept = out.unlabeled["a"].target.softmax(-1).amax(-1) >= 0.5
        assert kept[:2].sum() != kept[2:].sum(), kept
    loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in jedi.named_parameters() if p.grad is not None}, out_path)
    # The DDP wrapper holds the process group: while it lives, destroy_process_group leaves gloo's
    # threads running, and their destructor at interpreter exit aborts the rank ("terminate called
    # without an active exception"), now and then. So it goes first, as it does in the CLI, where
    # train() has returned before shutdown; then both ranks meet, so neither leaves mid-collective.
    del forward, out, loss
    gc.collect()
    if world > 1:
        dist.barrier()
    distributed.shutdown()


def test_a_ddp_step_over_two_ranks_is_the_one_process_step(tmp_path):
    """Two ranks with half the clips each take the step one process takes with all of them.

    Tolerance, from the arithmetic: every loss term is a mean over the step's clips of a per-clip
    value (CE; distillation averaged over all unlabeled clips, masked ones as zero) and DDP averages
    the ranks' gradients, so the mean over 2 ranks of means over 2 clips is the mean over 4 clips:
    equal in exact arithmetic. In float32 only the order of the sums changes, a relative error of a
    few ulp (2^-24 ~ 6e-8) per addition over at most a few thousand terms: rtol 1e-4, atol 1e-6 of
    the largest gradient leaves room for that and none for a gradient summed instead of averaged
    (2x), a rank that drops its clips, or a loss normalised per rank by the wrong count."""
    import torch
    import torch.multiprocessing as mp
    torch.manual_seed(1)
    batch = {n: (torch.randn(4, 3, 4, 16, 16), torch.randint(0, k, (4,)), torch.randn(4, 3, 4, 16, 16))
             for n, k in (("a", 3), ("b", 5))}
    _jedi_step_grads(0, 1, None, batch, tmp_path / "one.pt")
    mp.spawn(_jedi_step_grads, args=(2, tmp_path / "store", batch, tmp_path / "two.pt"), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and len(one) > 20
    scale = max(g.abs().max() for g in one.values())
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-6 * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _precise_bn_buffers(rank, world, store, batches, out_path):
    """precise_bn over this rank's batches (rank r: batch r; one process: all), then averaged over ranks."""
    import torch
    import torch.distributed as dist

    from jedi_pipe import distributed
    from jedi_pipe.jedi import precise_bn
    jedi = _rank_jedi(rank, world, store, bn_stats="source")
    precise_bn(jedi, batches[rank::world])
    distributed.average_buffers(jedi.students)
    if rank == 0:
        torch.save({k: v for k, v in jedi.students.named_buffers() if v.is_floating_point()}, out_path)
    if world > 1:
        dist.barrier()
    distributed.shutdown()


def test_precise_bn_over_two_ranks_is_over_both_ranks_clips(tmp_path):
    """PreciseBN's statistics are the mean of its batches' statistics: two ranks of one batch each,
    averaged, are the one process's two batches (it gave rank 0's alone before). Only the order of
    float32 sums differs: rtol 1e-5."""
    import torch
    import torch.multiprocessing as mp
    torch.manual_seed(1)
    batches = [({"a": torch.randn(2, 3, 4, 16, 16) + k, "b": torch.randn(3, 3, 4, 16, 16) * (k + 1)},)
               for k in range(2)]
    _precise_bn_buffers(0, 1, None, batches, tmp_path / "one.pt")
    mp.spawn(_precise_bn_buffers, args=(2, tmp_path / "store", batches, tmp_path / "two.pt"), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    assert one.keys() == two.keys() and any(k.endswith("source_mean") for k in one)
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6, msg=lambda m, k=k: f"{k}: {m}")


def test_two_ranks_match_one_process_and_see_disjoint_clips(shard_dirs, tmp_path):
    extra = ["jedi.epochs=3"]
    one = write_config(shard_dirs, tmp_path / "one", extra)
    two = write_config(shard_dirs, tmp_path / "two", extra)
    run(cli("train", "--config", str(one), *overrides(extra)), env={"JEDI_PIPE_TRACE_IDS": str(tmp_path / "ids1")})
    trace = tmp_path / "ids"
    p = run(torchrun(2, "train", "--config", str(two), *overrides(extra)), env={"JEDI_PIPE_TRACE_IDS": str(trace)})
    assert p.stdout.count("| mean |") == 1, "rank 0 alone prints the results"

    # The trained numbers are not compared: each rank normalises BatchNorm over its own 2 clips
    # instead of 4 and draws its own crops, so the runs follow different paths, and on test roles
    # of 8 clips (12.5 points a clip) a tolerance wide enough for that could not fail on a bug.
    # What must be equal is checked exactly: the step itself (test_a_ddp_step_over_two_ranks_...),
    # the steps and learning rates here, and the scores of the same weights under two ranks below.
    one_steps = [json.loads(ln) for ln in (tmp_path / "ids1" / "rank0.jsonl").read_text().splitlines()]
    assert [s["step"] for s in one_steps] == list(range(1, 7)) and all(
        len(ids) == 4 for s in one_steps for ids in s["ids"].values()), "3 epochs of 2 steps of 4 clips"

    def last_lr(run):
        return [(m["step"], m["lr"]) for m in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines())
                if m.get("dataset") == "hmdb51"][-1]
    assert last_lr("two") == last_lr("one")
    r1 = json.loads((tmp_path / "one" / "results.json").read_text())["datasets"]
    p = run(torchrun(2, "eval", "--config", str(one), *overrides(extra)))
    for name, kinds in r1.items():   # eval mode: a clip's scores do not depend on its batch or rank
        line = f"{name:12s} " + "  ".join(f"{k} {v['top1']:.1f}/{v['top5']:.1f}" for k, v in kinds.items())
        assert line in p.stdout, (line, p.stdout)
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
    # (--overwrite: the killed run may have left a checkpoint in the folder)
    bad = subprocess.run(torchrun(2, "train", "--config", str(conf), "--overwrite", *overrides(extra + ["jedi.batch_size=3"])),
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode != 0
    assert re.search(r"error: rank [01]/2: jedi.batch_size=3 does not split over 2 processes", bad.stderr), \
        bad.stderr[-2000:]


def test_a_process_group_that_cannot_start_is_one_sentence_of_its_own(shard_dirs, tmp_path):
    """Not "another process failed": what is missing, or that the others never joined."""
    conf = write_config(shard_dirs, tmp_path / "run")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")}
    start = lambda more: subprocess.run(cli("eval", "--config", str(conf)), capture_output=True, text=True,  # noqa: E731
                                        timeout=300, env={**env, "WORLD_SIZE": "2", **more})
    half = start({})
    assert half.returncode == 2 and "Traceback" not in half.stderr
    assert "error: WORLD_SIZE=2 but RANK, MASTER_ADDR, MASTER_PORT not set: start the run with torchrun" \
        in half.stderr, half.stderr
    alone = start({"RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29563", "JEDI_PIPE_DIST_TIMEOUT": "2"})
    assert alone.returncode == 2 and "another process" not in alone.stderr
    assert re.search(r"error: rank 0/2: could not join the 2 processes of this run at 127.0.0.1:29563 within 2 s",
                     alone.stderr), alone.stderr[-2000:]


def test_a_rank_past_the_role_s_clips_merges_into_the_evaluation(monkeypatch):
    """Under torchrun with more ranks than a role's clips, make_eval_loader gives the last ranks nothing;
    their empty share must merge into every rank's scores (it once failed the merge with a KeyError)."""
    from types import SimpleNamespace

    import torch

    from jedi_pipe import distributed, trainer
    y, ids = torch.tensor([1]), torch.tensor([7])
    rank0 = ({"expert": [torch.tensor([[0.2, 0.8]])]}, [y], [ids])     # rank 0's one clip, right
    monkeypatch.setattr(trainer, "eval_loader", lambda *a, **k: [])     # this rank: rank 1, past it
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "gather", lambda part: [rank0, part])
    cfg = SimpleNamespace(clip=SimpleNamespace(eval_views=1, eval_crops=1), bf16=False)
    scores = trainer.evaluate_logits(lambda x: pytest.fail("no clip to run"), None, cfg, torch.device("cpu"))
    assert scores["expert"]["top1"] == 100.0 and scores["expert"]["n"] == 1


@pytest.mark.parametrize("entry", ["train", "pretrain", "evaluate"])
def test_ranks_that_see_different_run_folders_stop_before_parting_ways(shard_dirs, tmp_path, monkeypatch, entry):
    """Nodes without a shared run folder: rank 0 finds the checkpoint and the experts, rank 1 (this
    process) finds nothing. Each would decide on its own disk (rank 0 resumes at step s, rank 1 starts
    from 0 and pretrains) until a collective hangs; instead every rank stops with one sentence, before
    anything is written."""
    from jedi_pipe import distributed, trainer
    from jedi_pipe.errors import InputError
    _, cfg = tiny_config(shard_dirs, tmp_path / "run")
    monkeypatch.setattr(distributed, "init", lambda: (1, 2))
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    monkeypatch.setattr(distributed, "gather", lambda here: [[True] * len(here), here])
    call = {"train": lambda: trainer.train(cfg, resume=True, log=None),
            "pretrain": lambda: trainer.pretrain(cfg, log=None),
            "evaluate": lambda: trainer.evaluate(cfg, log=None)}[entry]
    first = tmp_path / "run" / ("experts/hmdb51.pt" if entry == "pretrain" else "checkpoint.pt")
    with pytest.raises(InputError, match=re.escape(f"rank 1 does not find {first}, rank 0 does: every process "
                                                   "of a run must see one run folder")):
        call()
    assert not (tmp_path / "run").exists()
