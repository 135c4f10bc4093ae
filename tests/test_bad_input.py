"""Input that is unusual rather than broken: half-made folders, empty roles, damaged shard folders.

Each case ends with one sentence (or a warning that names what is missing) before any long work,
never with a traceback from deep inside DALI or pyarrow, nor with a silent wrong result.
"""
from __future__ import annotations

import shutil

import pytest
import yaml

from jedi_pipe.datasets.folder import list_videos
from jedi_pipe.errors import InputError
from jedi_pipe.loaders import make_eval_loader
from jedi_pipe.make_shards import ShardError, make_shards, role_gaps
from jedi_pipe.resplit import split_shards
from jedi_pipe.shards import CARD, WITHHELD, open_shards

from .test_shard_stress import SMALL, _folder_stub, cli, make_video, one_sentence_error


def test_a_folder_without_videos_is_no_class(tmp_path):
    root = _folder_stub(tmp_path / "f", "a/1.avi", "b/2.avi", "b/3.mp4")
    (root / "empty").mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a video")
    listing = list_videos(root)
    assert listing.classes == ["a", "b"]
    assert sorted((it.source, it.label) for it in listing.items) == [("a/1.avi", 0), ("b/2.avi", 1), ("b/3.mp4", 1)]


def test_role_gaps_name_what_training_lacks():
    classes = ["a", "b", "c"]
    full = [(i, r) for i in range(3) for r in ("labeled", "unlabeled", "test")]
    assert role_gaps(full, classes) == []
    assert role_gaps([x for x in full if x != (1, "test")], classes) == ["1 class(es) without a test clip: b"]
    assert role_gaps([x for x in full if x[1] != "test"], classes)[0].startswith("no test clips")
    assert role_gaps([x for x in full if x[1] != "labeled" or x[0] == 2], classes) == \
        ["2 class(es) without a labeled clip: a, b"]
    assert role_gaps([(0, "labeled"), (0, "test")], ["a"], all_labeled=True) == ["1 class: nothing to tell apart"]
    # no unlabeled clip where some were asked for: nothing for the semi-supervised part
    assert role_gaps([(0, "labeled"), (0, "test")], ["a"])[-1].startswith("no unlabeled clips")


@pytest.fixture(scope="module")
def no_test_shards(tmp_path_factory):
    """A folder dataset whose test videos are all broken: a shard folder with training clips and no test clip."""
    tmp = tmp_path_factory.mktemp("notest")
    root = tmp / "src"
    for i, (split, cls) in enumerate([("train", "a"), ("train", "a"), ("train", "b"), ("train", "b")]):
        make_video(root / split / cls / f"{i}.avi", seconds=1.0 + i / 10)
    _folder_stub(root, "test/a/5.avi", "test/b/6.avi")
    out = tmp / "shards"
    args = ["--fps", "8", "--short-side", "32", "--max-seconds", "2", "--workers", "2",
            "--labeled-per-class", "1", "--max-failures", "0.5"]
    result = cli("shard", "--dataset", "folder", "--root", root, "--out", out, *args)
    return out, result


def test_a_shard_folder_without_test_clips_is_written_with_a_warning(no_test_shards):
    out, result = no_test_shards
    assert result.exit_code == 0, result.output
    assert "warning: no test clips" in result.output
    ss = open_shards(out)
    assert ss.count("test") == 0 and ss.count("labeled") == 2


def test_nothing_evaluates_or_trains_on_a_role_without_clips(no_test_shards, tmp_path):
    out, _ = no_test_shards
    with pytest.raises(InputError, match="has no test clips"):
        make_eval_loader(out, {"frames": 4, "size": 16}, backend="torch")
    cfg = {"name": "t", "out": str(tmp_path / "run"), "loader": "torch", "clip": {"frames": 4, "size": 16},
           "datasets": [{"name": "f", "shards": str(out)}], "pretrain": {"epochs": 1, "batch_size": 2}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    line = one_sentence_error(cli("pretrain", "--config", tmp_path / "c.yaml"))
    assert "has no test clips" in line
    assert not (tmp_path / "run" / "pretrain.jsonl").exists()    # refused before the first step, not after


def test_a_folder_of_no_clips_has_nothing_to_preview(tmp_path):
    root = _folder_stub(tmp_path / "f", "a/1.avi", "b/2.avi")
    with pytest.raises(ShardError, match="none of the 2 videos became a clip"):
        make_shards("folder", root, tmp_path / "o", max_failures=1.0, **SMALL)
    result = cli("inspect", tmp_path / "o", "--preview", tmp_path / "p.png")
    assert "holds no clips to preview" in result.output and "Traceback" not in result.output
    assert result.exit_code != 0


def test_a_damaged_card_is_one_sentence(shard_dirs, tmp_path):
    out = tmp_path / "s"
    shutil.copytree(shard_dirs["hmdb51"], out)
    (out / CARD).write_text("{")
    with pytest.raises(InputError, match="is not valid JSON"):
        open_shards(out)
    cfg = {"name": "p", "out": str(tmp_path / "o"), "datasets": [{"name": "hmdb51", "shards": str(out)}]}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert "is not valid JSON" in one_sentence_error(cli("plan", "--config", tmp_path / "c.yaml"))
    (out / CARD).write_text("[]")
    with pytest.raises(InputError, match="shard format None"):
        open_shards(out)


@pytest.mark.parametrize("damage", ["withheld", "tar"])
def test_split_from_a_damaged_folder_names_the_source(shard_dirs, tmp_path, damage):
    src = tmp_path / "src"
    shutil.copytree(shard_dirs["hmdb51"], src)
    if damage == "withheld":
        (src / WITHHELD).unlink()
    else:
        open_shards(src).tars("unlabeled")[0].unlink()
    with pytest.raises(ShardError, match=f"{src} is damaged"):
        split_shards(src, tmp_path / "new", labeled_per_class=1)
    assert not (tmp_path / "new" / CARD).exists()


def test_synth_with_no_dataset_named_or_a_damaged_record(tmp_path):
    assert "unknown dataset(s)" in one_sentence_error(cli("synth", "--out", tmp_path / "a", "--datasets", " , "))
    out = tmp_path / "b"
    _folder_stub(out, "hmdb51/x.avi")
    (out / ".jedi-pipe-synth.json").write_text("{not json")
    # nothing counts as synth's own when its record is unreadable: refused, nothing removed
    line = one_sentence_error(cli("synth", "--out", out, "--datasets", "hmdb51", "--overwrite"))
    assert "not made by jedi-pipe synth" in line and (out / "hmdb51" / "x.avi").is_file()


def test_split_warns_of_classes_left_without_a_labeled_clip(shard_dirs, tmp_path):
    ss = open_shards(shard_dirs["hmdb51"])
    first = next(r for r in ss.full_rows() if r["role"] in ("labeled", "unlabeled") and r["label"] == 0)
    (tmp_path / "list.txt").write_text(first["video_id"] + "\n")
    result = cli("split", shard_dirs["hmdb51"], "--out", tmp_path / "one", "--labeled-list", tmp_path / "list.txt")
    assert result.exit_code == 0, result.output
    others = ", ".join(ss.classes[1:])
    assert f"warning: {len(ss.classes) - 1} class(es) without a labeled clip: {others}" in result.output
