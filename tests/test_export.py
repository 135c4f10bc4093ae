"""export -> predict: the exported model scores raw source videos as `eval` scores the test shards."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from jedi_pipe import transcode
from jedi_pipe.config import load_config
from jedi_pipe.export import export_model, inference_module, load_model
from jedi_pipe.prediction import predict_shards, predict_videos
from jedi_pipe.shards import open_shards
from jedi_pipe.trainer import evaluate, load_expert, load_joint, train

TINY = ["pretrain.epochs=3", "jedi.epochs=2", "pretrain.batch_size=4", "jedi.batch_size=4",
        "jedi.unlabeled_ratio=1", "checkpoint_every=100", "eval_batch_size=16", "jedi.teacher_ema=0.9"]


@pytest.fixture(scope="module")
def tiny_run(shard_dirs, tmp_path_factory):
    """A finished JEDI run on hmdb51 + ssv2 (DALI loader), mean teacher on, so every export path is used;
    with TensorBoard events beside metrics.jsonl."""
    out = tmp_path_factory.mktemp("run")
    data = {"name": "tiny", "out": str(out), "seed": 0, "loader": "dali", "logger": "tensorboard",
            "datasets": [{"name": "hmdb51", "shards": str(shard_dirs["hmdb51"]), "model": "tiny3d"},
                         {"name": "ssv2", "shards": str(shard_dirs["ssv2"]), "model": "tiny3d", "flip": False}],
            "clip": {"frames": 4, "stride": 1, "size": 24, "eval_views": 2, "eval_crops": 3}}
    cfg = load_config(data=data, overrides=TINY)
    train(cfg, log=None)    # None: quiet (a notebook's choice); it once failed at the first line logged
    return cfg


@pytest.fixture(scope="module")
def scored(tiny_run):
    """`jedi-pipe eval` of the run: DALI over the test shards."""
    return evaluate(tiny_run, log=lambda m: None)


def _test_videos(shard_dir, synth_dir):
    t = open_shards(shard_dir).manifest(columns=["role", "source", "label_name"]).to_pylist()
    rows = [r for r in t if r["role"] == "test"]
    return [synth_dir / r["source"] for r in rows], [r["label_name"] for r in rows]


@pytest.mark.parametrize("which", ["student", "student_ema", "teacher", "expert"])
def test_predict_on_raw_videos_agrees_with_eval(tiny_run, scored, synth_root, shard_dirs, tmp_path, which):
    path = export_model(tiny_run.out, "hmdb51", which, tmp_path / "m.pt2")
    model = load_model(path)
    assert model.card["which"] == which and model.classes == open_shards(shard_dirs["hmdb51"]).classes
    assert model.card["encoding"]["fps"] == 8.0 and (model.views, model.crops) == (2, 3)

    # the file computes what `eval` computes for `which` (trainer.evaluate_jedi's forward on the joint model:
    # the teacher over every backbone, the average's), and what the run's module computes
    x = torch.randn(3, 3, 4, 24, 24)
    names = [d.name for d in tiny_run.datasets]
    experts = {n: load_expert(tiny_run, n, "cpu") for n in names}
    with torch.no_grad():
        joint = load_joint(tiny_run, experts, Path(tiny_run.out) / "checkpoint.pt", "cpu").eval()
        o = joint({"hmdb51": x}).labeled["hmdb51"]
        want = {"student": o.student, "teacher": o.target, "expert": experts["hmdb51"].eval()(x),
                "student_ema": joint.ema_students["hmdb51"](x)}[which]
        assert not torch.allclose(joint.ema_students["hmdb51"](x), o.student, atol=1e-4)
        assert torch.allclose(model.module(x), want, atol=1e-5)
        assert torch.allclose(model.module(x), inference_module(tiny_run.out, "hmdb51", which)(x), atol=1e-5)
    assert not torch.allclose(o.student, o.target, atol=1e-3)     # the three are apart, so a swap would show
    assert not torch.allclose(o.student, experts["hmdb51"](x), atol=1e-3)

    videos, labels = _test_videos(shard_dirs["hmdb51"], synth_root / "hmdb51")
    raw = list(predict_videos(model, videos, k=3))
    assert all("top" in r for r in raw) and [r["video"] for r in raw] == [str(v) for v in videos]
    raw_top1 = [r["top"][0]["class"] for r in raw]
    hits = sum(p == y for p, y in zip(raw_top1, labels))

    top1 = scored["datasets"]["hmdb51"][which]["top1"]
    assert abs(hits - top1 / 100 * len(labels)) <= 2, (hits, len(labels), top1)

    # raw videos are transcoded bit-exactly as the shards were: clip for clip the same answer as the
    # torch loader on the test shards
    shard = {r["key"]: r for r in predict_shards(model, shard_dirs["hmdb51"], backend="torch", k=3)}
    keys = open_shards(shard_dirs["hmdb51"]).manifest(columns=["role", "key"]).to_pylist()
    keys = [r["key"] for r in keys if r["role"] == "test"]
    assert [shard[k]["top"] for k in keys] == [r["top"] for r in raw]


def test_predict_cli_skips_corrupt_and_missing_files(tiny_run, synth_root, shard_dirs, tmp_path):
    model = export_model(tiny_run.out, "ssv2", "student", tmp_path / "ssv2.pt2")
    videos, _ = _test_videos(shard_dirs["ssv2"], synth_root / "ssv2")
    corrupt = tmp_path / "corrupt.webm"
    corrupt.write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 8)
    missing = tmp_path / "missing.mp4"
    cmd = [sys.executable, "-m", "jedi_pipe.cli", "predict", "--model", str(model)]
    proc = subprocess.run(cmd + ["--json", "-k", "2", str(videos[0]), str(corrupt), str(missing), str(videos[1])],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(ln) for ln in proc.stdout.splitlines()]   # one object per input, the failed ones too
    assert [r["video"] for r in out] == [str(videos[0]), str(corrupt), str(missing), str(videos[1])]
    assert [("top" in r, "error" in r) for r in out] == [(True, False), (False, True), (False, True), (True, False)]
    assert out[2]["error"] == "missing file"
    assert all(len(r["top"]) == 2 and r["top"][0]["prob"] >= r["top"][1]["prob"] for r in out if "top" in r)
    proc = subprocess.run(cmd + [str(videos[0]), str(corrupt), str(missing)], capture_output=True, text=True)
    errors = proc.stderr.strip().splitlines()
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 1
    assert len(errors) == 2 and str(corrupt) in errors[0] and errors[1] == f"error: {missing}: missing file"

    proc = subprocess.run(cmd + [str(corrupt), str(missing)], capture_output=True, text=True)
    assert proc.returncode != 0 and "none of the 2 input(s)" in proc.stderr

    # a shard folder's test role, by key, with each clip's true class
    proc = subprocess.run(cmd + ["-k", "1", str(shard_dirs["ssv2"])], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    ss = open_shards(shard_dirs["ssv2"])
    names = {r["key"]: r["label_name"] for r in ss.manifest().to_pylist() if r["role"] == "test"}
    assert len(lines) == ss.count("test") and all(
        ln.startswith(f"{shard_dirs['ssv2']}/{key} [{names[key]}]: ") for ln, key in
        zip(lines, (ln.split("/")[-1].split(" ")[0] for ln in lines)))


def test_predict_refuses_shards_encoded_otherwise(tiny_run, shard_dirs, tmp_path):
    import shutil

    from jedi_pipe.errors import InputError
    model = export_model(tiny_run.out, "ssv2", "student", tmp_path / "ssv2.pt2")
    other = tmp_path / "ssv2"
    shutil.copytree(shard_dirs["ssv2"], other)
    card = json.loads((other / "dataset.json").read_text())
    card["encoding"]["short_side"] *= 2
    (other / "dataset.json").write_text(json.dumps(card))
    with pytest.raises(InputError, match=r"encoded otherwise than the model's shards \(short_side"):
        next(predict_shards(model, other))
    # shards of the filters before deinterlacing and square pixels (no chain recorded: 1) are the same
    # clips of progressive, square-pixelled sources: predicted
    card["encoding"]["short_side"] //= 2
    del card["encoding"]["chain"]
    (other / "dataset.json").write_text(json.dumps(card))
    assert next(predict_shards(model, other))["top"]


def test_plain_pytorch_recipe_and_bad_files(tiny_run, tmp_path):
    path = export_model(tiny_run.out, "hmdb51", "teacher", tmp_path / "model.pt2")
    # the README's two lines, in a fresh interpreter that never imports jedi_pipe
    code = ("import torch, sys\n"
            f"model = torch.export.load({str(path)!r}).module()\n"
            "assert 'jedi_pipe' not in sys.modules\n"
            "print(tuple(model(torch.zeros(5, 3, 4, 24, 24)).shape))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "(5, 8)"
    not_a_model = tmp_path / "x.pt2"
    not_a_model.write_bytes(b"hello")
    with pytest.raises(ValueError, match="is not a model written by `jedi-pipe export`"):
        load_model(not_a_model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "none.pt2")
    with pytest.raises(ValueError, match="no dataset 'ucf101' in this run; it has hmdb51, ssv2"):
        export_model(tiny_run.out, "ucf101", "student", tmp_path / "m.pt2")
    assert not Path(tmp_path / "m.pt2").exists()


def test_results_name_classes_and_record_views(tiny_run, shard_dirs):
    run = Path(tiny_run.out)
    res = json.loads((run / "results.json").read_text())
    assert res["views"] == {"temporal": 2, "spatial": 3}
    for n in ("hmdb51", "ssv2"):
        classes = open_shards(shard_dirs[n]).classes
        assert res["classes"][n] == classes
        for kind, r in res["datasets"][n].items():
            cells = r["confusion"]
            assert sum(c for _, _, c in cells) == r["n"] == open_shards(shard_dirs[n]).count("test")
            support = [sum(c for t, _, c in cells if t == k) for k in range(len(classes))]
            right = [sum(c for t, q, c in cells if t == q == k) for k in range(len(classes))]
            assert r["per_class"] == [round(100 * h / s, 2) if s else None for h, s in zip(right, support)]
            assert r["top1"] == pytest.approx(100 * sum(right) / r["n"], abs=0.01)
    md = (run / "results.md").read_text()
    assert f"## hmdb51: top-1 per class (%), {res['datasets']['hmdb51']['student']['n']} test clips, 2 x 3 views" in md
    assert all(f"| {c} |" in md for c in res["classes"]["ssv2"])


def test_tensorboard_events_hold_every_metrics_line(tiny_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from jedi_pipe.records import read_metrics
    run = Path(tiny_run.out)
    steps, evals = read_metrics(run / "metrics.jsonl")
    assert steps and evals
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for n in ("hmdb51", "ssv2"):
        mine = [r for r in steps if r.dataset == n]
        for name in ("loss", "lr", "clips_per_s", "input_wait", "sup_student", "distill", "pseudo_label_acc"):
            events = acc.Scalars(f"{n}/{name}")
            assert [e.step for e in events] == [r.step for r in mine], (n, name)
            assert [e.value for e in events] == pytest.approx([r.value(name) for r in mine], rel=1e-6)
        for kind in ("student", "teacher"):
            events = acc.Scalars(f"{n}/test_top1/{kind}")
            assert [(e.step, e.value) for e in events] == pytest.approx(
                [(r.step, r.scores[n][kind]["top1"]) for r in evals])
    assert all(t.split("/")[0] in ("hmdb51", "ssv2") for t in tags)


def test_cli_offers_every_exportable_model():
    """`jedi-pipe export --which` lists what export_model can hand out (the CLI keeps torch out of --help)."""
    from jedi_pipe.cli import main
    from jedi_pipe.export import WHICH
    option = next(p for p in main.commands["export"].params if p.name == "which")
    assert tuple(option.type.choices) == WHICH


def test_the_card_says_where_the_model_came_from_and_how_to_feed_it(tiny_run, tmp_path):
    from click.testing import CliRunner

    from jedi_pipe.cli import main
    res = json.loads((Path(tiny_run.out) / "results.json").read_text())
    path = export_model(tiny_run.out, "hmdb51", "teacher", tmp_path / "t.pt2")
    card = load_model(path).card
    step = torch.load(Path(tiny_run.out) / "checkpoint.pt", weights_only=False)["step"]
    want = res["datasets"]["hmdb51"]["teacher"]
    assert card["step"] == step and card["test"] == {"top1": want["top1"], "top5": want["top5"]}
    assert card["teacher"] == "the moving average's" and "minus clip.mean, over clip.std" in card["preprocess"]
    expert = load_model(export_model(tiny_run.out, "ssv2", "expert", tmp_path / "e.pt2")).card
    saved = torch.load(Path(tiny_run.out) / "experts" / "ssv2.pt", weights_only=False)["test"]
    assert expert["step"] is None and expert["test"] == {"top1": saved["top1"], "top5": saved["top5"]}
    r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert f"teacher of hmdb51 (tiny3d + tiny3d), {len(card['classes'])} classes; test top-1 {want['top1']:.1f}" in r.output
    assert "input: [B, 3, 4, 24, 24] (frames every 1 at 8 fps, first 3 s)" in r.output
    assert json.loads(CliRunner().invoke(main, ["inspect", str(path), "--json"]).output) == card
    # the data the weights saw: a teacher every dataset of the run, an expert its own, with their selections
    for name in ("hmdb51", "ssv2"):
        shard_card = open_shards(next(d.shards for d in tiny_run.datasets if d.name == name)).card
        assert card["trained_on"][name] == {"name": shard_card["name"], "dataset": shard_card["dataset"],
                                            "classes": len(shard_card["classes"]),
                                            "selection": shard_card["selection"], "counts": shard_card["counts"],
                                            "source_split": shard_card["source_split"]}
    assert list(expert["trained_on"]) == ["ssv2"]
    assert "trained on hmdb51: 8 classes, split1, labeled by" in r.output
    assert "filter chain" not in r.output   # today's
    # a model of shards made with the first filter chain: inspect says what every later one changed
    import jedi_pipe.export

    def of_chain_1(p):
        model = load_model(p)
        model.card["encoding"]["chain"] = 1
        return model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jedi_pipe.export, "load_model", of_chain_1)
        r = CliRunner().invoke(main, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "made with filter chain 1, before: " + "; ".join(transcode.FILTER_CHAINS.values()) in r.output


def test_the_cards_transcode_command_makes_the_shards_clip(tiny_run, synth_root, shard_dirs, tmp_path):
    """Plain users re-encode raw videos by the card's command (the lossy encode is part of what the
    model saw): run as written, it gives the shard's clip byte for byte."""
    import shlex

    from jedi_pipe.transcode import ffmpeg_exe
    card = load_model(export_model(tiny_run.out, "hmdb51", "student", tmp_path / "m.pt2")).card
    videos, _ = _test_videos(shard_dirs["hmdb51"], synth_root / "hmdb51")
    args = shlex.split(card["transcode"])
    dst = next(a for a in args if a.startswith("OUT."))
    assert args[0] == "ffmpeg" and "IN" in args
    out = tmp_path / dst
    args = [ffmpeg_exe(), *(str(videos[0]) if a == "IN" else str(out) if a == dst else a for a in args[1:])]
    subprocess.run(args, check=True, capture_output=True)
    ss = open_shards(shard_dirs["hmdb51"])
    row = next(r for r in ss.manifest().to_pylist() if r["role"] == "test")
    import webdataset as wds
    sample = next(s for s in wds.WebDataset([str(t) for t in ss.tars("test")], shardshuffle=False, empty_check=False)
                  if s["__key__"] == row["key"])
    assert out.read_bytes() == sample[ss.clip_ext]


def test_scores_of_another_step_stay_off_the_card(tiny_run, tmp_path):
    """results.json names the step it scored: a run resumed for more steps and stopped after a
    checkpoint holds a newer checkpoint beside older scores, which are not this model's."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny_run.out, run)
    res = json.loads((run / "results.json").read_text())
    step = torch.load(run / "checkpoint.pt", weights_only=False)["step"]
    assert res["step"] == step
    (run / "results.json").write_text(json.dumps({**res, "step": step - 1}))
    card = load_model(export_model(run, "hmdb51", "student", tmp_path / "m.pt2")).card
    assert card["step"] == step and card["test"] is None


def test_export_refuses_to_replace_a_file_or_to_rename_the_classes(tiny_run, shard_dirs, tmp_path):
    import shutil

    import yaml
    from click.testing import CliRunner

    from jedi_pipe.cli import main
    from jedi_pipe.errors import InputError
    path = export_model(tiny_run.out, "hmdb51", "student", tmp_path / "m.pt2")
    before = path.read_bytes()
    r = CliRunner().invoke(main, ["export", tiny_run.out, "--dataset", "ssv2", "--out", str(path)])
    assert r.exit_code == 2 and "exists; pass --overwrite" in r.output and path.read_bytes() == before
    r = CliRunner().invoke(main, ["export", tiny_run.out, "--dataset", "ssv2", "--out", str(path), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert load_model(path).card["dataset"] == "ssv2"
    # the run, moved, with hmdb51's shards pointed at ssv2's folder: its outputs keep hmdb51's names, or nothing
    run = tmp_path / "moved"
    shutil.copytree(tiny_run.out, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["datasets"][0]["shards"] = str(shard_dirs["ssv2"])
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(InputError, match="its classes are not the 8 that hmdb51's models were trained on"):
        export_model(run, "hmdb51", "student", tmp_path / "swapped.pt2")
    # with its shards gone, the expert's saved encoding and classes still make a whole card
    config["datasets"][0]["shards"] = str(tmp_path / "gone")
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    card = load_model(export_model(run, "hmdb51", "student", tmp_path / "moved.pt2")).card
    assert card["classes"] == open_shards(shard_dirs["hmdb51"]).classes and card["encoding"]["fps"] == 8.0
    # and the data the weights saw is the experts' own record, not whatever the config points at now
    assert card["trained_on"]["hmdb51"]["counts"] == open_shards(shard_dirs["hmdb51"]).card["counts"]
    assert card["transcode"] and card["encoding"]["chain"] == transcode.FILTER_CHAIN


def test_a_training_checkpoint_is_not_taken_for_a_model(tiny_run):
    from jedi_pipe.errors import InputError
    for f in ("experts/hmdb51.pt", "checkpoint.pt"):
        with pytest.raises(InputError, match="is a training checkpoint .* write one with `jedi-pipe export"):
            load_model(Path(tiny_run.out) / f)


def test_predict_calls_a_text_file_no_video(tiny_run, synth_root, tmp_path):
    """ffmpeg's tty demuxer draws a text file as a video of its letters, which a model then 'classifies'."""
    model = export_model(tiny_run.out, "ssv2", "student", tmp_path / "ssv2.pt2")
    notes = tmp_path / "split.txt"
    notes.write_text("cartwheel_test_split1 1\nanother line 2\n")
    (r,) = predict_videos(model, [notes])
    assert r == {"video": str(notes), "error": "not a video: a text file"}
