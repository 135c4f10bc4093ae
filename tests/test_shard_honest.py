"""Nothing in an unlabeled tar names its class or its video (shards/README.md, "What an
unlabeled sample does not say"): every member name and every byte is scanned."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from jedi_pipe import shards
from jedi_pipe.make_shards import make_shards
from jedi_pipe.transcode import ffmpeg_exe

from .conftest import SHARD_OPTS


@pytest.fixture(scope="module")
def tagged(synth_root, tmp_path_factory):
    """HMDB51 and UCF101 copies (file names hold the class) whose every video also carries its
    id and class in the container's title and comment tags, as downloaded files often do; sharded."""
    base = tmp_path_factory.mktemp("tagged")
    exe = ffmpeg_exe()
    out = {}
    for name in ("hmdb51", "ucf101"):
        root = base / name
        shutil.copytree(synth_root / name, root)
        for f in sorted(root.rglob("*.avi")):
            tmp = f.with_name("tmp_" + f.name)
            subprocess.run([exe, "-v", "error", "-i", str(f), "-c", "copy", "-metadata", f"title={f.stem}",
                            "-metadata", f"comment={f.parent.name}", str(tmp)], check=True)
            tmp.replace(f)
        out[name] = base / "shards" / name
        make_shards(name, root, out[name], **{**SHARD_OPTS, "max_failures": 0.5})
    return out


def needles(d: Path) -> tuple[list[str], list[str]]:
    """The class names and every video id of the folder (labeled, unlabeled, val, test)."""
    ss = shards.open_shards(d)
    return ss.classes, sorted({r["video_id"] for r in ss.full_rows()})


def found_in(data: bytes, words) -> list[str]:
    return [w for w in words if w.encode() in data or w.lower().encode() in data]


@pytest.mark.parametrize("name", ["hmdb51", "ucf101"])
def test_unlabeled_tars_name_no_class_and_no_video(tagged, name):
    d = tagged[name]
    ss = shards.open_shards(d)
    classes, ids = needles(d)
    assert all(any(c.lower() in v.lower() for c in classes) for v in ids)   # the ids do contain the class
    assert ss.tars("unlabeled")
    for tar in ss.tars("unlabeled"):
        data = tar.read_bytes()                     # member names, headers, json, every clip byte
        assert found_in(data, classes) == [], tar.name
        assert found_in(data, ids) == [], tar.name
        assert found_in(Path(str(tar) + ".idx").read_bytes(), classes + ids) == []
    # the manifest's unlabeled rows are as blank; the sidecar holds what was withheld
    assert all(not r["video_id"] and not r["source"] and r["label"] == -1
               for r in ss.manifest().to_pylist() if r["role"] == "unlabeled")
    assert ss.withheld().num_rows == ss.count("unlabeled")


@pytest.mark.parametrize("name", ["hmdb51", "ucf101"])
def test_the_scan_finds_them_where_the_spec_allows(tagged, name):
    """Labeled and test samples name their video and class in .json (the spec allows it): the
    scan finds them there, which shows it would find a leak; the clips themselves carry no tag."""
    d = tagged[name]
    ss = shards.open_shards(d)
    classes, _ = needles(d)
    rows = {r["key"]: r for r in ss.full_rows()}
    for role in ("labeled", "test"):
        for tar in ss.tars(role):
            for s in shards.iter_tar_samples(tar):
                r = rows[s["__key__"]]
                assert found_in(s["json"], [r["video_id"]]) and found_in(s["json"], [classes[r["label"]]])
                assert found_in(s["webm"], [r["video_id"], Path(r["source"]).parent.name]) == []
