"""The command as people type it: split files found by their own names, missing videos counted
apart from failures, and the default roots (data/<dataset>, $JEDI_PIPE_DATA/<dataset>)."""
from __future__ import annotations

import csv
import json
import shutil

import pytest
from click.testing import CliRunner

from jedi_pipe import shards, synth
from jedi_pipe.cli import main


def shard(*args):
    return CliRunner().invoke(main, ["shard", *map(str, args)])


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    return synth.generate(tmp_path_factory.mktemp("layouts"), datasets=["hmdb51", "kinetics400"],
                          videos_per_class=3, workers=2)


def test_hmdb51_split_files_in_a_folder_of_another_name(sources, tmp_path, monkeypatch):
    root = tmp_path / "hmdb51"
    shutil.copytree(sources["hmdb51"], root)
    (root / "testTrainMulti_7030_splits").rename(root / "annotations")   # as MMAction2 keeps them
    (root / "annotations").rename(tmp_path / "x")
    (root / "meta").mkdir()
    (tmp_path / "x").rename(root / "meta" / "annotations")
    monkeypatch.chdir(tmp_path)
    r = shard("--dataset", "hmdb51", "--root", root)
    assert r.exit_code == 0, r.output
    assert "missing 0 (missing.jsonl)" in r.output
    ss = shards.open_shards(tmp_path / "shards" / "hmdb51")
    assert ss.count("labeled") > 0 and ss.count("test") > 0


def test_kinetics_with_15_percent_missing_shards_and_counts_them_apart(sources, tmp_path, monkeypatch):
    root = tmp_path / "kinetics400"
    shutil.copytree(sources["kinetics400"], root)
    ann = root / "annotations"
    for split in ("train", "val"):   # MMAction2's names for the two csv files
        (ann / f"{split}.csv").rename(ann / f"kinetics_{split}.csv")
    listed = [f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}.mp4"
              for s in ("train", "val") for r in csv.DictReader(open(ann / f"kinetics_{s}.csv", newline=""))]
    files = {p.name: p for p in root.rglob("*.mp4")}
    want = round(0.15 * len(listed))
    for name in [n for n in listed if n in files][: want - sum(n not in files for n in listed)]:
        files[name].unlink()
    assert sum(not (n in files and files[n].exists()) for n in listed) == want
    monkeypatch.chdir(tmp_path)
    r = shard("--dataset", "kinetics400", "--root", root)
    assert r.exit_code == 0, r.output
    assert f"failures 0 (errors.jsonl); missing {want} (missing.jsonl)" in r.output
    out = tmp_path / "shards" / "kinetics400"
    assert len((out / shards.MISSING).read_text().splitlines()) == want
    assert (out / shards.ERRORS).read_text() == ""
    # a stricter --max-missing (the guard against the wrong folder): one sentence, before any transcode
    r = shard("--dataset", "kinetics400", "--root", root, "--out", tmp_path / "o2", "--max-missing", "0.1")
    assert r.exit_code == 2 and f"{want} of the {len(listed)} videos that the split files" in r.output
    assert "> --max-missing 10%); is --root (or --videos) the right folder?" in r.output
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").glob("*.tar"))


def test_default_roots_and_the_sentence_naming_them(sources, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JEDI_PIPE_DATA", raising=False)
    r = shard("--dataset", "ssv2")
    assert r.exit_code == 2
    assert "data/sthv2, data/ssv2 ($JEDI_PIPE_DATA is not set)" in r.output and "--root" in r.output
    # $JEDI_PIPE_DATA/<dataset>
    (tmp_path / "store").mkdir()
    shutil.copytree(sources["hmdb51"], tmp_path / "store" / "hmdb51")
    monkeypatch.setenv("JEDI_PIPE_DATA", str(tmp_path / "store"))
    r = shard("--dataset", "hmdb51", "--fps", "4", "--short-side", "32", "--max-seconds", "1")
    assert r.exit_code == 0, r.output
    assert f"(from {(tmp_path / 'store' / 'hmdb51').resolve()})" in r.output
    # data/hmdb51 under the working directory comes first
    shutil.copytree(sources["hmdb51"], tmp_path / "data" / "hmdb51")
    r = shard("--dataset", "hmdb51", "--out", "o3", "--fps", "4", "--short-side", "32", "--max-seconds", "1")
    assert r.exit_code == 0, r.output
    assert f"(from {(tmp_path / 'data' / 'hmdb51').resolve()})" in r.output
    assert json.loads((tmp_path / "o3" / shards.CARD).read_text())["counts"]["test"] > 0


def test_find_any_file_precedence_in_one_walk(tmp_path, monkeypatch):
    from jedi_pipe.datasets import common

    def touch(*rel):
        for r in rel:
            (tmp_path / r).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / r).write_text("")

    walks = []
    walk = common._walk_sorted
    monkeypatch.setattr(common, "_walk_sorted", lambda root: walks.append(root) or walk(root))
    names = ("train.csv", "train.json")

    def find(prefer="labels"):
        hit = common.find_any_file(tmp_path, names, prefer_parent=prefer)
        return hit and hit.relative_to(tmp_path).as_posix()

    assert find() is None and len(walks) == 1     # one walk, not one per name
    touch("train.json", "b/train.csv", "a/deep/train.csv")
    assert find() == "b/train.csv"                 # an earlier name wins over a shallower later one; then the shallowest
    touch("a/train.csv")
    assert find() == "a/train.csv"                 # same depth: the sorted walk's first
    touch("z/y/labels/train.csv", "labels/train.json")
    assert find() == "z/y/labels/train.csv"        # in prefer_parent wins over shallower, but not over an earlier name
    assert find(None) == "a/train.csv"             # without prefer_parent: the shallowest
    assert common.find_file(tmp_path, "train.json", prefer_parent="labels").name == "train.json"
    assert common.find_file(tmp_path, "train.json", prefer_parent="labels").parent.name == "labels"
    assert len(walks) == 7                         # still one walk per call


# Real copies' quirks, at the listing (no video is read: stub files are enough)

def _stub(root, *names):
    for n in names:
        (root / n).parent.mkdir(parents=True, exist_ok=True)
        (root / n).write_bytes(b"x")
    return root


def test_folder_split_names_any_case_and_a_val_folder_beside_test(tmp_path):
    from jedi_pipe.datasets import list_videos
    kaggle = _stub(tmp_path / "k", "Train/cat/a.mp4", "Train/dog/b.mp4", "Test/cat/c.mp4", "Test/dog/d.mp4")
    listing = list_videos("folder", kaggle)   # Train/ and Test/ were the two "classes" before
    assert listing.classes == ["cat", "dog"]
    assert {(it.video_id, it.split) for it in listing.items} == {
        ("Train/cat/a", "train"), ("Train/dog/b", "train"), ("Test/cat/c", "test"), ("Test/dog/d", "test")}
    three = _stub(tmp_path / "t", "train/cat/a.mp4", "train/dog/b.mp4", "val/cat/v.mp4", "val/dog/w.mp4",
                  "test/cat/c.mp4", "test/dog/d.mp4")
    splits = {it.video_id: it.split for it in list_videos("folder", three).items}   # val/ was dropped before
    assert splits == {"train/cat/a": "train", "train/dog/b": "train", "val/cat/v": "train", "val/dog/w": "train",
                      "test/cat/c": "test", "test/dog/d": "test"}


def test_annotations_with_a_byte_order_mark_and_macos_copies(sources, tmp_path):
    from jedi_pipe.datasets import list_videos
    plain = {name: list_videos(name, sources[name]) for name in ("hmdb51", "kinetics400")}
    for name in ("hmdb51", "kinetics400"):
        root = tmp_path / name
        shutil.copytree(sources[name], root)
        for f in sorted(root.rglob("*")):
            if f.suffix in (".txt", ".csv"):
                f.write_bytes(b"\xef\xbb\xbf" + f.read_bytes())               # saved by Notepad / Excel
                (f.parent / f"._{f.name}").write_bytes(b"\x00\x05\x16\x07Mac OS X")   # an AppleDouble twin
        listing = list_videos(name, root)
        assert [(it.video_id, it.label, it.split) for it in listing.items] == \
            [(it.video_id, it.label, it.split) for it in plain[name].items], name
        assert listing.missing == plain[name].missing and not listing.errors, name


def test_kinetics_replacements_win_over_the_corrupted_originals(sources, tmp_path):
    from jedi_pipe.datasets import list_videos
    root = tmp_path / "k400"
    shutil.copytree(sources["kinetics400"], root)
    (root / "annotations" / "train.csv").rename(root / "annotations" / "kinetics-400_train.csv")  # the crawler's name
    first = sorted((root / "train").iterdir())[0]
    fixed = root / "replacement" / "replacement_for_corrupted_k400" / first.name
    fixed.parent.mkdir(parents=True)
    fixed.write_bytes(first.read_bytes())
    first.write_bytes(b"")   # CVDF: the broken original stays in train/
    path = {it.video_id: it.path for it in list_videos("kinetics400", root).items}
    assert path[first.stem] == str(fixed)


def test_videos_and_annotations_apart_without_a_root(sources, tmp_path, monkeypatch):
    # the two halves on different disks, as --videos / --annotations' help offers; no --root given
    vids, ann = tmp_path / "disk1" / "hmdb51_org", tmp_path / "disk2" / "splits"
    shutil.copytree(sources["hmdb51"], vids, ignore=shutil.ignore_patterns("testTrainMulti_7030_splits"))
    shutil.copytree(sources["hmdb51"] / "testTrainMulti_7030_splits", ann)
    monkeypatch.chdir(tmp_path)
    r = shard("--dataset", "hmdb51", "--videos", vids, "--annotations", ann, "--out", "h")
    assert r.exit_code == 0, r.output
    manifest = shards.open_shards(tmp_path / "h").manifest()
    sources_seen = [s for s in manifest.column("source").to_pylist() if s]   # unlabeled rows name no source
    assert sources_seen and [s for s in sources_seen if not s.startswith("disk1/hmdb51_org/")] == []   # relative to what they share
    # --videos alone: the split files are searched for under it
    r = shard("--dataset", "kinetics400", "--videos", sources["kinetics400"], "--out", "k")
    assert r.exit_code == 0, r.output
    assert shards.open_shards(tmp_path / "k").count("test") > 0
