"""synth -> shard -> read back, for each of the four datasets and the on-disk variants."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from pathlib import Path

import av
import pytest

from jedi_pipe import shards
from jedi_pipe.make_shards import JOB, make_shards
from jedi_pipe.inspect_shards import verify_shards

from .conftest import SHARD_OPTS, dali_decoded_clips


def expected_counts(name: str, root: Path) -> dict:
    """Train/test video ids straight from the split files (not through the adapters)."""
    if name == "hmdb51":
        ids = {"train": set(), "test": set()}
        for f in root.rglob("*_test_split1.txt"):
            for line in f.read_text().splitlines():
                vid, flag = line.split()
                if flag != "0":
                    ids["train" if flag == "1" else "test"].add(Path(vid).stem)
    elif name == "ucf101":
        lists = next(root.rglob("ucfTrainTestlist"))
        ids = {s: {Path(ln.split()[0]).stem for ln in (lists / f"{s}list01.txt").read_text().splitlines() if ln.strip()}
               for s in ("train", "test")}
    elif name == "kinetics400":
        ids = {}
        for s, f in (("train", "train.csv"), ("test", "val.csv")):
            rows = csv.DictReader(open(next(root.rglob(f)), newline=""))
            ids[s] = {f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}" for r in rows}
    else:
        ids = {s: {str(e["id"]) for e in json.loads(next(root.rglob(f)).read_text())}
               for s, f in (("train", "train.json"), ("test", "validation.json"))}
    return ids


def source_classes(name: str, root: Path) -> dict:
    """video id -> class name straight from the source's own files (not through the adapters)."""
    if name == "hmdb51":        # <class>_test_split1.txt lists that class's videos
        return {Path(line.split()[0]).stem: f.name[:-len("_test_split1.txt")]
                for f in root.rglob("*_test_split1.txt") for line in f.read_text().splitlines() if line.strip()}
    if name == "ucf101":        # <Class>/v_<Class>_gNN_cNN.avi in the train and test lists
        lists = next(root.rglob("ucfTrainTestlist"))
        return {Path(ln.split()[0]).stem: ln.split("/")[0] for s in ("trainlist01.txt", "testlist01.txt")
                for ln in (lists / s).read_text().splitlines() if ln.strip()}
    if name == "kinetics400":
        return {f"{r['youtube_id']}_{int(r['time_start']):06d}_{int(r['time_end']):06d}": r["label"]
                for f in ("train.csv", "val.csv") for r in csv.DictReader(open(next(root.rglob(f)), newline=""))}
    return {str(e["id"]): e["template"].replace("[", "").replace("]", "")       # ssv2: the template is the class
            for f in ("train.json", "validation.json") for e in json.loads(next(root.rglob(f)).read_text())}


def read_manifest(d: Path) -> list[dict]:
    return shards.open_shards(d).manifest().to_pylist()


def full_rows(d: Path) -> list[dict]:
    """Manifest rows with the withheld sidecar's video ids and labels put back."""
    return shards.open_shards(d).full_rows()


@pytest.mark.parametrize("name", ["hmdb51", "ucf101", "kinetics400", "ssv2"])
def test_roles_match_split_files(name, synth_root, shard_dirs):
    d = shard_dirs[name]
    rows = full_rows(d)
    errors = [json.loads(ln) for ln in (d / shards.ERRORS).read_text().splitlines()]
    missing = [json.loads(ln) for ln in (d / shards.MISSING).read_text().splitlines()]
    failed = {e["video_id"] for e in errors + missing}
    want = expected_counts(name, synth_root / name)
    got = {"train": {r["video_id"] for r in rows if r["role"] in shards.TRAIN_ROLES},
           "test": {r["video_id"] for r in rows if r["role"] == "test"}}
    for split in ("train", "test"):
        assert got[split] == want[split] - failed, split
    assert not got["train"] & got["test"]
    # every sample's label names the class its source files give it (an adapter off by one fails here)
    classes, truth = shards.open_shards(d).card["classes"], source_classes(name, synth_root / name)
    assert rows and all(classes[r["label"]] == truth[r["video_id"]] for r in rows)
    if name == "kinetics400":     # the synthetic download misses some videos, as real ones do
        assert missing and all("missing file" in e["reason"] for e in missing)
        assert not any("missing file" in e["reason"] for e in errors)   # failures are apart
        assert shards.open_shards(d).card["missing"] == len(missing)


@pytest.mark.parametrize("name", ["hmdb51", "ucf101", "kinetics400", "ssv2"])
def test_labeled_selection_and_tars(name, shard_dirs):
    d = shard_dirs[name]
    ss = shards.open_shards(d)
    rows = full_rows(d)
    # labeled per class: round(0.25 * n_train_c), at least 1; exactly so when no video failed to encode
    # (the selection is made before encoding, so a failure can take one from a class's count)
    train = Counter(r["label"] for r in rows if r["role"] != "test")
    labeled = Counter(r["label"] for r in rows if r["role"] == "labeled")
    failures = len((d / shards.ERRORS).read_text().splitlines())
    for c, n in train.items():
        want = max(1, round(SHARD_OPTS["labeled_fraction"] * n))
        assert labeled[c] >= 1 and (labeled[c] == want if not failures else abs(labeled[c] - want) <= failures), c
    roles_of = {}
    for role in shards.ROLES:
        for tar in ss.tars(role):
            assert (Path(str(tar) + ".idx")).is_file()
            for s in shards.iter_tar_samples(tar):
                key = s["__key__"]
                assert key not in roles_of, "a sample sits in two tars"
                roles_of[key] = role
                assert set(key) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
                meta = json.loads(s["json"])
                m = shards.decode_meta(s[shards.META_EXT])
                assert meta["role"] == role and meta["key"] == key
                if role == "unlabeled":   # nothing but what the spec lists
                    assert int(s["cls"]) == -1 and m["label"] == -1
                    assert set(meta) == {"key", "role", "dataset", "frames", "fps", "width", "height"}
                else:
                    assert meta["video_id"] and int(s["cls"]) == meta["label"] == m["label"] >= 0
                assert meta["frames"] == m["frames"] >= 1
    test_keys = {r["key"] for r in rows if r["role"] == "test"}
    assert all(roles_of[k] == "test" for k in test_keys)
    assert verify_shards(d)["ok"]


@pytest.mark.parametrize("name", ["hmdb51", "ssv2"])
def test_clips_decode_with_pyav_at_requested_size_and_fps(name, shard_dirs):
    ss = shards.open_shards(shard_dirs[name])
    n = 0
    for tar in ss.tars("test")[:1] + ss.tars("unlabeled")[:1]:
        for s in shards.iter_tar_samples(tar):
            with av.open(io.BytesIO(s["webm"])) as c:
                st = c.streams.video[0]
                assert st.codec_context.name == "vp9"
                frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
                assert float(st.average_rate) == pytest.approx(SHARD_OPTS["fps"])
            h, w, _ = frames[0].shape
            assert min(h, w) == SHARD_OPTS["short_side"]
            assert len(frames) == shards.decode_meta(s[shards.META_EXT])["frames"]
            n += 1
    assert n > 0


@pytest.mark.parametrize("name", ["ucf101", "kinetics400"])
def test_every_clip_decodes_with_dali_cpu(name, shard_dirs):
    ss = shards.open_shards(shard_dirs[name])
    tars = [str(t) for r in shards.ROLES for t in ss.tars(r)]
    total = sum(ss.count(r) for r in shards.ROLES)
    seen = set()
    for f, sample_id in dali_decoded_clips(tars, total, frames=4):
        assert f.shape[0] == 4 and min(f.shape[1:3]) == SHARD_OPTS["short_side"] and f.shape[3] == 3
        seen.add(sample_id)
    assert len(seen) == total


def test_workers_do_not_change_selection_or_keys(synth_root, tmp_path):
    opts = {**SHARD_OPTS, "max_failures": 0.5}
    a = make_shards("ucf101", synth_root / "ucf101", tmp_path / "w1", **{**opts, "workers": 1})
    b = make_shards("ucf101", synth_root / "ucf101", tmp_path / "w2", **{**opts, "workers": 2})
    ra, rb = read_manifest(tmp_path / "w1"), read_manifest(tmp_path / "w2")
    assert [(r["key"], r["role"], r["shard"]) for r in ra] == [(r["key"], r["role"], r["shard"]) for r in rb]
    assert a.counts == b.counts
    # VP9 at one thread per encode is deterministic: the tars are byte-identical
    for t in sorted((tmp_path / "w1").glob("*.tar")):
        assert t.read_bytes() == (tmp_path / "w2" / t.name).read_bytes()


def test_rerun_is_noop_and_changed_settings_are_refused(synth_root, tmp_path):
    from jedi_pipe.make_shards import ShardError
    opts = {**SHARD_OPTS, "max_failures": 0.5}
    make_shards("ssv2", synth_root / "ssv2", tmp_path / "s", **opts)
    again = make_shards("ssv2", synth_root / "ssv2", tmp_path / "s", **opts)
    assert again.already_complete and again.transcoded == 0
    with pytest.raises(ShardError, match="--overwrite"):
        make_shards("ssv2", synth_root / "ssv2", tmp_path / "s", **{**opts, "short_side": 40})
    s = make_shards("ssv2", synth_root / "ssv2", tmp_path / "s", overwrite=True, **{**opts, "short_side": 40})
    assert not s.already_complete and s.transcoded > 0
    # a folder of older ffmpeg filters (its job names no chain) is not finished with today's
    import json
    job = json.loads((tmp_path / "s" / JOB).read_text())
    del job["encoding"]["chain"]
    (tmp_path / "s" / JOB).write_text(json.dumps(job))
    with pytest.raises(ShardError, match="--overwrite"):
        make_shards("ssv2", synth_root / "ssv2", tmp_path / "s", **{**opts, "short_side": 40})


def test_layout_variants(tmp_path):
    """Per-class Kinetics (MMAction2) and renamed top folders give the same samples."""
    from jedi_pipe import synth
    flat = synth.generate(tmp_path / "a", datasets=["kinetics400", "hmdb51"], videos_per_class=2, workers=2)
    other = synth.generate(tmp_path / "b", datasets=["kinetics400", "hmdb51"], videos_per_class=2, workers=2,
                           kinetics_layout="per_class", top_dirs={"hmdb51": "hmdb51_org"})
    opts = {**SHARD_OPTS, "max_failures": 0.5}
    for name in ("kinetics400", "hmdb51"):
        make_shards(name, flat[name], tmp_path / f"{name}-a", **opts)
        make_shards(name, other[name], tmp_path / f"{name}-b", **opts)
        ka = [(r["key"], r["role"], r["sha256"]) for r in read_manifest(tmp_path / f"{name}-a")]
        kb = [(r["key"], r["role"], r["sha256"]) for r in read_manifest(tmp_path / f"{name}-b")]
        assert ka == kb and ka


def test_executors_share_one_interface_without_an_import_circle():
    """The Ray executor needs only shard_jobs (ShardJob, write_shard), never the stage module (the
    absence of any import circle is tests/test_imports.py's)."""
    import subprocess
    import sys
    code = ("import sys, jedi_pipe.ray_executor as r, jedi_pipe.shard_jobs as j; "
            "assert 'jedi_pipe.make_shards' not in sys.modules; assert r.write_shard is j.write_shard")
    subprocess.run([sys.executable, "-c", code], check=True)
