"""The CLI as a user meets it: --help everywhere, inspect with a preview PNG, clear errors."""
from __future__ import annotations

import io

import pytest
from click.testing import CliRunner

from jedi_pipe.cli import main


@pytest.mark.parametrize("cmd", [[], ["synth"], ["shard"], ["inspect"], ["pretrain"], ["train"], ["eval"],
                                 ["demo"], ["bench", "loader"], ["split"], ["plan"], ["export"], ["predict"],
                                 ["plot"]])
def test_help(cmd):
    r = CliRunner().invoke(main, cmd + ["--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output) > 200


def test_inspect_checks_and_previews(shard_dirs, tmp_path):
    png = tmp_path / "sheet.png"
    r = CliRunner().invoke(main, ["inspect", str(shard_dirs["ssv2"]), "--preview", str(png)])
    assert r.exit_code == 0, r.output
    assert "all match the manifest" in r.output and "labeled" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def _changed_copy(src, dst, tars: str, member: str, change):
    """A copy of shard folder `src` whose first `tars` tar has its first sample's `member` bytes
    replaced by change(bytes) (same length), found through the tar's DALI index."""
    import shutil
    shutil.copytree(src, dst)
    tar = sorted(dst.glob(tars))[0]
    first = (dst / (tar.name + ".idx")).read_text().splitlines()[1].split()
    at = first.index(member)
    offset, size = int(first[at + 1]), int(first[at + 2])
    data = bytearray(tar.read_bytes())
    data[offset:offset + size] = change(bytes(data[offset:offset + size]))
    tar.write_bytes(bytes(data))
    return dst


def test_inspect_reports_a_tampered_tar(shard_dirs, tmp_path):
    flip = lambda b: b[:len(b) // 2] + bytes([b[len(b) // 2] ^ 0xFF]) + b[len(b) // 2 + 1:]   # noqa: E731
    d = _changed_copy(shard_dirs["hmdb51"], tmp_path / "copy", "test-*.tar", "webm", flip)   # one clip byte
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code != 0 and "problem" in r.output


def test_inspect_reports_a_label_put_into_an_unlabeled_samples_meta(shard_dirs, tmp_path):
    """The loaders read labels from .meta.i32, not .cls: a label there must not pass the check."""
    import numpy as np

    def label_4(meta: bytes) -> bytes:
        fields = np.frombuffer(meta, "<i4").copy()
        assert fields[0] == -1   # the label field: unlabeled
        fields[0] = 4
        return fields.tobytes()
    d = _changed_copy(shard_dirs["hmdb51"], tmp_path / "copy", "train-unlabeled-*.tar", "meta.i32", label_4)
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code == 1 and "meta.i32" in r.output and "differs from its manifest row" in r.output


def test_inspect_reports_a_cut_tar_and_a_missing_manifest(shard_dirs, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(shard_dirs["hmdb51"], d)
    tar = sorted(d.glob("test-*.tar"))[0]
    tar.write_bytes(tar.read_bytes()[:1000])               # a copy cut short
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output     # a report, not a crash
    assert f"{tar.name}: truncated or damaged" in r.output and "is in no tar" in r.output, r.output
    (d / "manifest.parquet").unlink()
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert isinstance(r.exception, SystemExit) and r.exit_code != 0 and "manifest.parquet: unreadable" in r.output, r.output


def test_inspect_reports_a_sample_without_its_cls_and_a_swapped_index(shard_dirs, tmp_path):
    import shutil
    import tarfile

    from jedi_pipe.make_shards import ShardError
    from jedi_pipe.resplit import split_shards
    d = tmp_path / "copy"
    shutil.copytree(shard_dirs["hmdb51"], d)
    tar = sorted(d.glob("train-unlabeled-*.tar"))[0]
    with tarfile.open(tar) as t:
        members = [(m, t.extractfile(m).read()) for m in t]
    dropped = members[0][0].name.split(".")[0] + ".cls"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT) as t:   # the tar again, one sample's .cls left out
        for m, data in members:
            if m.name != dropped:
                t.addfile(m, io.BytesIO(data))
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), r.output   # a report, not a KeyError
    assert "cls None != manifest label -1" in r.output, r.output
    # the index of the first sample's removal no longer matches: DALI would read wrong bytes
    assert f"{tar.name}.idx: " in r.output and "at other offsets" in r.output, r.output
    # an index swapped for another tar's: reported, and split refuses with one sentence
    shutil.rmtree(d)
    shutil.copytree(shard_dirs["hmdb51"], d)
    labeled = sorted(d.glob("train-labeled-*.tar"))[0]
    shutil.copyfile(sorted(d.glob("train-unlabeled-*.tar"))[0].with_suffix(".tar.idx"), labeled.with_suffix(".tar.idx"))
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code == 1 and f"{labeled.name}.idx: " in r.output, r.output
    with pytest.raises(ShardError, match="is in no tar's DALI index"):
        split_shards(d, tmp_path / "new", labeled_per_class=1)


def test_train_with_a_bad_config_is_one_sentence(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("name: x\nout: o\ndatasets: [{name: a, shards: s}]\njedi: {lrate: 1}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(conf)])
    assert r.exit_code == 2 and "jedi.lrate" in r.output and "Traceback" not in r.output


# ---- expected failures are one sentence; anything else keeps its traceback (cli._run_guarded)

def _config(tmp_path, shards, model="tiny3d"):
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: x\nout: {tmp_path / 'run'}\ndatasets: [{{name: a, shards: {shards}, model: {model}}}]\n"
                    "pretrain: {epochs: 1}\n")
    return conf


def _one_sentence(r, *words):
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output and lines[-1].startswith("error: "), r.output
    assert all(w in lines[-1] for w in words), r.output


def test_missing_shards_are_one_sentence_naming_the_folder(tmp_path):
    r = CliRunner().invoke(main, ["pretrain", "--config", str(_config(tmp_path, tmp_path / "nowhere"))])
    _one_sentence(r, str(tmp_path / "nowhere"), "not a shard folder")


def test_an_unknown_model_is_one_sentence(shard_dirs, tmp_path):
    r = CliRunner().invoke(main, ["pretrain", "--config", str(_config(tmp_path, shard_dirs["ssv2"], "r3d_19"))])
    _one_sentence(r, "c.yaml: datasets.0.model: 'r3d_19' is not a registered model; registered: r2plus1d_18")


def test_eval_without_experts_is_one_sentence(shard_dirs, tmp_path):
    r = CliRunner().invoke(main, ["eval", "--config", str(_config(tmp_path, shard_dirs["ssv2"]))])
    _one_sentence(r, "no expert for a", "jedi-pipe pretrain")


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   ValueError("mat1 and mat2 shapes cannot be multiplied (8x512 and 256x10)")])
@pytest.mark.parametrize("world_size", ["1", "2"])
def test_an_unexpected_error_keeps_its_traceback(tmp_path, monkeypatch, error, world_size):
    # What an out-of-memory or a shape bug inside torch raises; the guard must not flatten it.
    import jedi_pipe.trainer

    def step_that_breaks(cfg, log):
        raise error
    monkeypatch.setattr(jedi_pipe.trainer, "pretrain", step_that_breaks)
    monkeypatch.setenv("WORLD_SIZE", world_size)   # 2: the torchrun path, which also names the rank
    monkeypatch.setenv("RANK", "0")
    r = CliRunner().invoke(main, ["pretrain", "--config", str(_config(tmp_path, tmp_path / "s"))])
    assert r.exception is error and r.exit_code == 1, r.output
    tb = "".join(__import__("traceback").format_exception(*r.exc_info))
    assert "step_that_breaks" in tb   # the frame where it happened is kept
    assert ("rank 0/2: unexpected failure" in r.output) == (world_size == "2")


def test_an_unexpected_error_prints_its_traceback_from_the_command_line(tmp_path):
    # The same through a real process: what the user sees on stderr.
    import subprocess
    import sys
    code = ("import sys, jedi_pipe.trainer as t\n"
            "def pretrain(cfg, log): raise RuntimeError('CUDA out of memory')\n"
            "t.pretrain = pretrain\n"
            "from jedi_pipe.cli import main\n"
            "sys.argv = ['jedi-pipe', 'pretrain', '--config', sys.argv[1]]\n"
            "main()\n")
    p = subprocess.run([sys.executable, "-c", code, str(_config(tmp_path, tmp_path / "s"))],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert "Traceback (most recent call last)" in p.stderr and "in pretrain" in p.stderr
    assert p.stderr.strip().splitlines()[-1] == "RuntimeError: CUDA out of memory"


# ---- nothing lost, nothing mixed

def test_train_does_not_start_again_over_a_run_unless_told(shard_dirs, tmp_path, monkeypatch):
    import jedi_pipe.trainer
    conf = _config(tmp_path, shard_dirs["ssv2"])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"a run's checkpoint")
    # the refusal is the library's (jedi_pipe.train from a notebook refuses the same), before any work
    _one_sentence(CliRunner().invoke(main, ["train", "--config", str(conf)]), "checkpoint.pt exists", "--resume",
                  "--overwrite")
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == b"a run's checkpoint"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]
    _one_sentence(CliRunner().invoke(main, ["train", "--config", str(conf), "--resume", "--overwrite"]), "not both")
    calls = []
    monkeypatch.setattr(jedi_pipe.trainer, "train",
                        lambda cfg, resume, overwrite, log: calls.append((resume, overwrite)) or {"datasets": {}})
    monkeypatch.setattr("jedi_pipe.plots.draw", lambda out, echo: None)
    monkeypatch.setattr("jedi_pipe.records.results_table", lambda results: "")
    for flag, asked in (("--resume", (True, False)), ("--overwrite", (False, True))):
        assert CliRunner().invoke(main, ["train", "--config", str(conf), flag]).exit_code == 0
        assert calls.pop() == asked


def test_train_interrupted_says_how_to_go_on(shard_dirs, tmp_path, monkeypatch):
    import jedi_pipe.trainer

    def interrupted(cfg, resume, overwrite, log):
        raise KeyboardInterrupt
    monkeypatch.setattr(jedi_pipe.trainer, "train", interrupted)
    r = CliRunner().invoke(main, ["train", "--config", str(_config(tmp_path, shard_dirs["ssv2"]))])
    assert r.exit_code == 130 and "interrupted" in r.output and "--resume" in r.output, r.output   # as shard's


def test_synth_into_a_folder_it_filled_before_needs_overwrite(tmp_path):
    args = ["synth", "--out", str(tmp_path), "--datasets", "ssv2", "--videos-per-class", "2", "--workers", "1"]
    assert CliRunner().invoke(main, args).exit_code == 0
    first = sorted(p.name for p in (tmp_path / "ssv2").rglob("*.webm"))
    _one_sentence(CliRunner().invoke(main, args + ["--seed", "1"]), "made by an earlier synth", "--overwrite")
    assert sorted(p.name for p in (tmp_path / "ssv2").rglob("*.webm")) == first
    assert CliRunner().invoke(main, args + ["--seed", "1", "--overwrite"]).exit_code == 0
    second = sorted(p.name for p in (tmp_path / "ssv2").rglob("*.webm"))
    assert second and second != first and len(second) == len(first)    # replaced, not added to
    # a folder synth did not make is never removed
    (tmp_path / "hmdb51").mkdir()
    (tmp_path / "hmdb51" / "mine.avi").write_bytes(b"a real video")
    _one_sentence(CliRunner().invoke(main, ["synth", "--out", str(tmp_path), "--datasets", "hmdb51", "--overwrite"]),
                  "not made by jedi-pipe synth")
    assert (tmp_path / "hmdb51" / "mine.avi").read_bytes() == b"a real video"


def test_a_labeled_flag_wins_over_the_recipes_other_labeled_option(synth_root, tmp_path):
    import json
    # preprocess/hmdb51.yaml sets labeled_fraction; --labeled-per-class must replace it, not clash with it
    r = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(synth_root / "hmdb51"),
                                  "--out", str(tmp_path / "s"), "--recipe", "preprocess/hmdb51.yaml",
                                  "--labeled-per-class", "1", "--short-side", "32", "--max-seconds", "1",
                                  "--workers", "2"])
    assert r.exit_code == 0, r.output
    selection = json.loads((tmp_path / "s" / "dataset.json").read_text())["selection"]
    assert (selection["rule"], selection["value"]) == ("per_class", 1)


def test_an_output_path_through_a_file_is_one_sentence(shard_dirs, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    _one_sentence(CliRunner().invoke(main, ["synth", "--out", str(afile / "x"), "--datasets", "ssv2"]),
                  "--out", f"{afile} is a file, not a folder")
    _one_sentence(CliRunner().invoke(main, ["inspect", str(shard_dirs["ssv2"]), "--preview", str(afile / "x.png")]),
                  "--preview's folder", "is a file")
    _one_sentence(CliRunner().invoke(main, ["export", str(tmp_path), "--dataset", "a", "--out", str(afile / "m.pt2")]),
                  "--out's folder", "is a file")
    conf = tmp_path / "c.yaml"
    conf.write_text(f"name: x\nout: {afile}\ndatasets: [{{name: a, shards: s}}]\n")
    _one_sentence(CliRunner().invoke(main, ["train", "--config", str(conf)]), f"out {afile}: {afile} is a file")
    assert afile.read_text() == "not a folder"


def test_pretrain_interrupted_says_how_to_go_on(tmp_path, monkeypatch):
    from jedi_pipe import trainer

    def interrupted(cfg, log=print):
        raise KeyboardInterrupt
    monkeypatch.setattr(trainer, "pretrain", interrupted)
    r = CliRunner().invoke(main, ["pretrain", "--config", "train/demo.yaml", "--set", f"out={tmp_path / 'run'}"])
    assert r.exit_code == 130, r.output
    assert "Rerun the same command: finished experts are kept, and the others go on from their last checkpoint " \
           "(every 100 steps)" in r.output and "Aborted" not in r.output


def test_synth_interrupted_ends_at_once_and_the_same_command_finishes_it(tmp_path):
    """Ctrl-C (SIGINT to the terminal's whole process group) during synth's worker pool: the command
    ends at once with one line (the pool's queued jobs once kept it waiting forever), `shard` refuses the
    half-written dataset, and the same synth command redoes it to the files of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "cut"
    args = ["synth", "--datasets", "hmdb51", "--videos-per-class", "30", "--workers", "2"]
    # SIGINT's default action, as under a terminal: a test run started in the background (`cmd &` in a
    # script) passes SIGINT on ignored, and a synth that ignores it rightly finishes
    proc = subprocess.Popen([sys.executable, "-m", "jedi_pipe.cli", *args, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 60
        while not list(out.rglob("*.avi")) and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert proc.poll() is None, "synth finished before it could be interrupted"
        assert list(out.rglob("*.avi")), "no video written within 60 s"     # a slow machine reads as such
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:   # a hung synth must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "interrupted. Rerun the same command" in err, err
    assert "Traceback" not in err, err
    written = len(list(out.rglob("*.avi")))
    assert 0 < written < 240         # cut short: 8 classes x 30
    _one_sentence(CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(out / "hmdb51"),
                                            "--out", str(tmp_path / "shards")]),
                  "an interrupted `jedi-pipe synth`", "rerun")
    assert not (tmp_path / "shards").exists()
    r = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert r.exit_code == 0 and "cut short by an interrupted synth" in r.output, r.output
    assert CliRunner().invoke(main, [*args, "--out", str(tmp_path / "whole")]).exit_code == 0
    files = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "whole"): p.read_bytes() for p in (tmp_path / "whole").rglob("*")
                     if p.is_file()}


def test_an_interrupted_shard_folder_is_named_as_such(tmp_path):
    from jedi_pipe.errors import MissingError
    from jedi_pipe.shard_jobs import JOB
    from jedi_pipe.shards import open_shards
    (tmp_path / JOB).write_text("{}")
    with pytest.raises(MissingError, match="interrupted `jedi-pipe shard` or `split`.*rerun the same command"):
        open_shards(tmp_path)


@pytest.mark.parametrize("target, argv, says", [
    ("jedi_pipe.resplit.split_shards", ["split", "src", "--out", "dst"], "Rerun the same command to finish dst"),
    ("jedi_pipe.export.export_model", ["export", "run", "--dataset", "a", "--out", "m.pt2"], "Nothing was written to m.pt2"),
    ("jedi_pipe.demo.run_demo", ["demo", "--quick"], "the finished datasets, shards and experts are kept"),
    ("jedi_pipe.prediction.predict_videos", ["predict", "--model", "m.pt2", "a.mp4"], "The lines above are whole predictions"),
    # before a command's own handler (an import, a check): the group's line, not click's "Aborted!"
    ("jedi_pipe.cli.can_be_folder", ["export", "run", "--dataset", "a", "--out", "m.pt2"], "Nothing of this command"),
])
def test_ctrl_c_says_what_is_kept_and_what_to_run(target, argv, says, monkeypatch, tmp_path):
    """Ctrl-C in any long command: exit 130 and one line saying what to do next (not click's bare 'Aborted!')."""
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt
    import importlib
    monkeypatch.chdir(tmp_path)
    module, _, name = target.rpartition(".")
    monkeypatch.setattr(importlib.import_module(module), name, interrupt)
    monkeypatch.setattr(importlib.import_module("jedi_pipe.export"), "load_model", lambda path: object())   # predict's
    r = CliRunner().invoke(main, argv)
    assert r.exit_code == 130 and r.output.startswith("interrupted. ") and says in r.output, r.output


def test_a_shipped_recipe_is_for_its_own_dataset_and_makes_a_val_role(tmp_path):
    import yaml
    for name in ("hmdb51", "ucf101", "kinetics400", "ssv2"):
        recipe = yaml.safe_load(open(f"preprocess/{name}.yaml"))
        assert recipe["dataset"] == name and recipe["val_per_class"] > 0, name   # choices are made on val
    r = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "s"),
                                  "--recipe", "preprocess/ssv2.yaml"])
    _one_sentence(r, "recipe preprocess/ssv2.yaml is for --dataset ssv2, not hmdb51")
    bad = tmp_path / "bad.yaml"
    bad.write_text("fps: true\n")   # click would read true as 1
    r = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(tmp_path), "--out", str(tmp_path / "s"),
                                  "--recipe", str(bad)])
    _one_sentence(r, f"recipe {bad}: fps: True is not a number or a name")


def test_the_library_reads_a_recipe_as_the_cli_does():
    import yaml

    import jedi_pipe
    from jedi_pipe.make_shards import ShardError
    recipe = yaml.safe_load(open("preprocess/hmdb51.yaml"))
    got = jedi_pipe.read_recipe("preprocess/hmdb51.yaml", "hmdb51", labeled_per_class=1, fps=8)
    # the given options win, over their alternative too; the rest is the recipe's; `dataset:` is no keyword
    assert got == {**{k: v for k, v in recipe.items() if k not in ("dataset", "labeled_fraction")},
                   "labeled_per_class": 1, "fps": 8}
    with pytest.raises(ShardError, match="is for --dataset hmdb51, not ucf101"):
        jedi_pipe.read_recipe("preprocess/hmdb51.yaml", "ucf101")


def test_inspect_of_a_run_folder_says_what_to_run_instead(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("name: x\n")
    _one_sentence(CliRunner().invoke(main, ["inspect", str(tmp_path / "run")]), "is a run folder",
                  f"jedi-pipe plot {tmp_path / 'run'}")


def test_inspect_says_the_selection_in_words(shard_dirs, tmp_path):
    from jedi_pipe.resplit import split_shards
    split_shards(shard_dirs["hmdb51"], tmp_path / "s", labeled_fraction=0.5, val_per_class=1)
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "labeled selection: fraction 0.5 (seed 0), val 1 per class; split from hmdb51 (" in r.output
