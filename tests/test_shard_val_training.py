"""A run on folders with a val role: the curves are on val, test is evaluated once, at the end;
pseudo-label accuracy is measured against the withheld sidecar."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from jedi_pipe import shards, trainer
from jedi_pipe.config import load_config
from jedi_pipe.resplit import split_shards

TINY = ["pretrain.workers=1", "pretrain.epochs=2", "jedi.epochs=3", "pretrain.batch_size=4", "jedi.batch_size=4",
        "jedi.unlabeled_ratio=1", "checkpoint_every=100", "eval_batch_size=16"]


def test_periodic_evaluation_on_val_and_test_once_for_results(shard_dirs, tmp_path, monkeypatch):
    dirs = {}
    for name in ("hmdb51", "ssv2"):   # the session's folders, re-split with a val role (no transcode)
        dirs[name] = tmp_path / name
        split_shards(shard_dirs[name], dirs[name], labeled_fraction=0.25, val_per_class=1)
        assert shards.open_shards(dirs[name]).count("val") > 0
    cfg = load_config(data={
        "name": "val", "out": str(tmp_path / "run"), "seed": 0, "loader": "dali",
        "datasets": [{"name": "hmdb51", "shards": str(dirs["hmdb51"]), "model": "tiny3d"},
                     {"name": "ssv2", "shards": str(dirs["ssv2"]), "model": "tiny3d", "flip": False}],
        "clip": {"frames": 4, "stride": 1, "size": 24}}, overrides=TINY)
    calls = []
    real = trainer.evaluate_logits

    def spy(forward, ss, cfg, device, role="test"):
        calls.append((ss.name, role))
        return real(forward, ss, cfg, device, role)

    monkeypatch.setattr(trainer, "evaluate_logits", spy)
    said = []
    trainer.pretrain(cfg, log=said.append)
    # the log gives the experts' val scores, to choose by; test stays in the checkpoints
    experts_said = [m for m in said if m.startswith("expert ") and "steps in" in m]
    assert len(experts_said) == 2 and all("val top-1" in m and "test" not in m for m in experts_said), said
    assert Counter(calls) == {("hmdb51", "test"): 1, ("hmdb51", "val"): 1, ("ssv2", "test"): 1, ("ssv2", "val"): 1}
    calls.clear()
    results = trainer.train(cfg, log=lambda m: None)

    out = Path(cfg.out)
    evals = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines() if "eval" in ln]
    assert len(evals) >= 2 and all(e["split"] == "val" for e in evals)
    n_val = {n: shards.open_shards(d).count("val") for n, d in dirs.items()}
    assert all(e["eval"][n]["student"]["n"] == n_val[n] for e in evals for n in dirs)
    assert Counter(role for _, role in calls) == {"val": 2 * len(evals), "test": 2}   # test: once per dataset
    saved = json.loads((out / "results.json").read_text())
    assert saved == results and set(saved["val"]) == set(dirs)
    assert saved["val"]["hmdb51"]["student"]["top1"] == evals[-1]["eval"]["hmdb51"]["student"]["top1"]
    # `jedi-pipe eval --role val` scores the same checkpoint on val: the last curve point, every clip once
    monkeypatch.setattr(trainer, "evaluate_logits", real)
    on_val = trainer.evaluate(cfg, log=lambda m: None, role="val")
    assert all(on_val["datasets"][n]["student"]["n"] == n_val[n] for n in dirs)
    assert on_val["datasets"]["hmdb51"]["student"]["top1"] == saved["val"]["hmdb51"]["student"]["top1"]


def test_pseudo_label_truth_comes_from_the_sidecar(shard_dirs):
    ss = shards.open_shards(shard_dirs["hmdb51"])
    truth = trainer.label_truth(ss)
    withheld = ss.withheld().to_pylist()
    assert withheld and all(truth[r["sample_id"]] == r["label"] >= 0 for r in withheld)
    others = [r["sample_id"] for r in ss.manifest().to_pylist() if r["role"] != "unlabeled"]
    assert np.all(truth[others] == -1)   # only the unlabeled samples' truth is looked up
