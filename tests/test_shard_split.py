"""`jedi-pipe split`: a new labeled selection from an existing folder, by copying clip bytes."""
from __future__ import annotations

import io
import json
import subprocess
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import av
import pytest
from click.testing import CliRunner

from jedi_pipe import shards
from jedi_pipe.cli import main
from jedi_pipe.inspect_shards import verify_shards
from jedi_pipe.make_shards import ShardError, make_shards
from jedi_pipe.resplit import split_shards

from .conftest import SHARD_OPTS, dali_decoded_clips


@pytest.fixture(scope="module")
def src(synth_root, tmp_path_factory):
    """HMDB51 with 10 % labels (at least one per class) and one val video per class."""
    out = tmp_path_factory.mktemp("split-src") / "hmdb51"
    make_shards("hmdb51", synth_root / "hmdb51", out, **{**SHARD_OPTS, "labeled_fraction": 0.1, "val_per_class": 1})
    return out


@contextmanager
def no_transcode():
    """Any process (ffmpeg) or PyAV open inside the block fails the test."""
    def refuse(*a, **k):
        raise AssertionError(f"split started a process or a decode: {a[:2]}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess.Popen, "_execute_child", refuse)   # where every child process starts
        mp.setattr(av, "open", refuse)
        yield


def test_the_guard_has_teeth(tmp_path):
    from jedi_pipe.transcode import EncodeSettings, encode_clip, ffmpeg_exe
    exe = ffmpeg_exe()
    with no_transcode(), pytest.raises(AssertionError, match="started a process"):
        subprocess.run([exe, "-version"], capture_output=True)
    binary = tmp_path / "x.avi"   # not text: a text file is refused before ffmpeg starts
    binary.write_bytes(b"RIFF\x00\x00\x00\x00AVI ")
    with no_transcode(), pytest.raises(AssertionError, match="started a process"):
        encode_clip(str(binary), EncodeSettings())


def check_folder(d: Path, src: Path) -> list[dict]:
    """Every check of the shard tests, on a folder made by split from `src`."""
    ss, old = shards.open_shards(d), shards.open_shards(src)
    assert verify_shards(d)["ok"], verify_shards(d)["problems"]
    rows, old_rows = ss.full_rows(), old.full_rows()
    # the same videos, each with its clip bytes unchanged
    assert sorted((r["video_id"], r["sha256"], r["label"]) for r in rows) == \
           sorted((r["video_id"], r["sha256"], r["label"]) for r in old_rows)
    # roles disjoint, test untouched (rows and tar bytes), no test video in a training tar
    by_role = {r: {x["video_id"] for x in rows if x["role"] == r} for r in shards.ROLES}
    assert sum(map(len, by_role.values())) == len(rows)
    assert [r for r in rows if r["role"] == "test"] == [r for r in old_rows if r["role"] == "test"]
    for name in ss.card["shards"]["test"]:
        assert (d / name).read_bytes() == (src / name).read_bytes()
    test_keys = {r["key"] for r in rows if r["role"] == "test"}
    for role in shards.TRAIN_ROLES:
        for tar in ss.tars(role):
            for s in shards.iter_tar_samples(tar):
                assert s["__key__"] not in test_keys
                meta = json.loads(s["json"])
                if role == "unlabeled":
                    assert int(s["cls"]) == -1 and set(meta) == {"key", "role", "dataset", "frames", "fps", "width", "height"}
    # stock webdataset reads every tar; DALI (CPU) decodes every clip; PyAV one per tar
    import webdataset as wds
    tars = [str(t) for r in shards.ROLES for t in ss.tars(r)]
    assert sum(1 for _ in wds.WebDataset(tars, shardshuffle=False)) == len(rows)
    for t in tars:
        s = next(shards.iter_tar_samples(t))
        with av.open(io.BytesIO(s["webm"])) as c:
            assert len(list(c.decode(video=0))) == shards.decode_meta(s[shards.META_EXT])["frames"]
    seen = {sample_id for _, sample_id in dali_decoded_clips(tars, len(rows), frames=2)}
    assert seen == {r["sample_id"] for r in rows}
    return rows


def per_class(rows, role):
    return Counter(r["label"] for r in rows if r["role"] == role)


def test_same_settings_reproduce_the_source_selection(src, tmp_path):
    with no_transcode():
        split_shards(src, tmp_path / "same", labeled_fraction=0.1, val_per_class=1, seed=0)
    roles = lambda d: {(r["video_id"], r["role"]) for r in shards.open_shards(d).full_rows()}
    assert roles(tmp_path / "same") == roles(src)


def test_split_without_a_seed_keeps_the_sources(src, tmp_path):
    # a folder drawn with seed 3, split again with its own rules and no seed: the same roles, not seed 0's
    roles = lambda d: {(r["video_id"], r["role"]) for r in shards.open_shards(d).full_rows()}
    with no_transcode():
        split_shards(src, tmp_path / "s3", labeled_fraction=0.3, val_per_class=1, seed=3)
        split_shards(tmp_path / "s3", tmp_path / "again")
        split_shards(tmp_path / "s3", tmp_path / "s0", seed=0)
    assert roles(tmp_path / "again") == roles(tmp_path / "s3") != roles(tmp_path / "s0")
    assert shards.open_shards(tmp_path / "again").card["selection"]["seed"] == 3


def test_split_to_half_labeled(src, tmp_path):
    with no_transcode():
        s = split_shards(src, tmp_path / "half", labeled_fraction=0.5, seed=1, val_per_class=0)   # 0: no val role
    rows = check_folder(tmp_path / "half", src)
    train = Counter(r["label"] for r in rows if r["role"] != "test")
    assert per_class(rows, "labeled") == {c: max(1, round(0.5 * n)) for c, n in train.items()}
    assert s.counts["val"] == 0 and not shards.open_shards(tmp_path / "half").tars("val")
    # without a val option the source's val rule goes on: held-out videos are not handed back to training
    with no_transcode():
        kept = split_shards(src, tmp_path / "kept", labeled_fraction=0.5, seed=1)
    assert kept.counts["val"] == shards.open_shards(src).count("val") > 0
    assert shards.open_shards(tmp_path / "kept").card["selection"]["val"] == {"rule": "per_class", "value": 1}
    card = shards.open_shards(tmp_path / "half").card
    assert card["selection"]["rule"] == "fraction" and card["selection"]["split_from"]["selection"]["value"] == 0.1


def test_split_to_everything_labeled_keeps_val(src, tmp_path):
    with no_transcode():
        split_shards(src, tmp_path / "all", labeled_fraction=1.0, val_per_class=1)
    rows = check_folder(tmp_path / "all", src)
    assert per_class(rows, "unlabeled") == {}
    assert all(n == 1 for n in per_class(rows, "val").values())
    assert shards.open_shards(tmp_path / "all").withheld().num_rows == 0


def test_split_to_a_list_file(src, tmp_path):
    old = shards.open_shards(src).full_rows()
    train = [r for r in old if r["role"] != "test"]
    first = {}
    for r in train:
        first.setdefault(r["label"], r)
    # published lists come as ids, file names or paths (with a label after them, as UCF101's do)
    chosen = list(first.values())
    lines = [r["video_id"] if i % 3 == 0 else f"{Path(r['source']).name}" if i % 3 == 1 else f"{r['source']} 1"
             for i, r in enumerate(chosen)]
    lst = tmp_path / "list.txt"
    lst.write_text("\n".join(lines) + "\n")
    with no_transcode():
        split_shards(src, tmp_path / "listed", labeled_list=lst, val_per_class=1)
    rows = check_folder(tmp_path / "listed", src)
    assert {r["video_id"] for r in rows if r["role"] == "labeled"} == {r["video_id"] for r in chosen}
    assert not {r["video_id"] for r in rows if r["role"] == "val"} & {r["video_id"] for r in chosen}


def test_bad_list_files_are_one_sentence(src, tmp_path):
    rows = shards.open_shards(src).full_rows()
    train = next(r for r in rows if r["role"] == "labeled")
    test = next(r for r in rows if r["role"] == "test")
    cases = {"no training video of the shard folder: 'nope_1', 'nope_2', 'nope_3' and 1 more":
             ["nope_1", "nope_2", "nope_3", "nope_4"],
             "name test videos, which never train": [test["video_id"]],
             "name a video listed before": [train["video_id"], train["source"]]}
    for i, (msg, lines) in enumerate(cases.items()):
        lst = tmp_path / f"l{i}.txt"
        lst.write_text("\n".join(lines) + "\n")
        with pytest.raises(ShardError, match=msg):
            split_shards(src, tmp_path / f"o{i}", labeled_list=lst)


def test_cli_split_and_a_rerun_is_a_noop(src, tmp_path):
    run = lambda *a: CliRunner().invoke(main, ["split", str(src), "--out", str(tmp_path / "c"), *a])
    r = run("--labeled-per-class", "2")
    assert r.exit_code == 0, r.output
    assert "nothing transcoded" in r.output and "labeled " in r.output
    assert "already complete" in run("--labeled-per-class", "2").output
    r = run("--labeled-per-class", "1")
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = run("--labeled-per-class", "1", "--labeled-fraction", "0.5")
    assert r.exit_code == 2 and "exactly one of --labeled-fraction" in r.output
    # without a labeled option the source's rule goes on, as its val rule does: here only val changes
    r = CliRunner().invoke(main, ["split", str(src), "--out", str(tmp_path / "no-val"), "--val-per-class", "0"])
    assert r.exit_code == 0, r.output
    sel = shards.open_shards(tmp_path / "no-val").card["selection"]
    assert (sel["rule"], sel["value"], sel["val"]) == ("fraction", 0.1, {"rule": "per_class", "value": 0})
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "no-val")])
    assert "labeled selection: fraction 0.1 (seed 0), no val; split from hmdb51 (fraction 0.1 (seed 0), val 1 per class)" \
        in r.output, r.output
    r = CliRunner().invoke(main, ["split", str(src), "--out", str(src), "--labeled-fraction", "0.5"])
    assert r.exit_code == 2 and "is the source folder" in r.output


def test_adding_a_val_role_keeps_the_labeled_choice():
    """shards/README.md: labeled videos come from the front of each class's shuffled ids and val
    from the back, so adding val (where the two fit) changes no labeled video; val is drawn only
    from what was unlabeled."""
    from jedi_pipe.make_shards import select_roles
    train = [(f"v{c}_{i:03d}", c, f"v{c}_{i:03d}") for c in range(5) for i in range(20)]   # no groups: its own
    without = select_roles(train, seed=3, labeled_fraction=0.15)
    for val in ({"val_per_class": 4}, {"val_fraction": 0.3}):
        with_val = select_roles(train, seed=3, labeled_fraction=0.15, **val)
        assert {v for v, r in with_val.items() if r == "labeled"} == {v for v, r in without.items() if r == "labeled"}
        assert {v for v, r in with_val.items() if r == "val"} and all(
            without[v] == "unlabeled" for v, r in with_val.items() if r == "val")


def test_val_never_shares_a_source_group_with_labeled():
    """A val video of a labeled video's scene (UCF101 group, HMDB51 movie) would score memory:
    per class the two roles take disjoint groups, at every labeled rule, and each class keeps a
    labeled video."""
    from jedi_pipe.make_shards import select_roles
    sizes = [1, 5, 2, 4, 3, 6, 1, 2]   # videos per group, as UCF101's 4-7 and HMDB51's 1-4
    train = [(f"c{c}_g{g}_v{i}", c, f"c{c}_g{g}") for c in range(4) for g, k in enumerate(sizes) for i in range(k)]
    group = {v: g for v, _, g in train}
    for rule in ({"labeled_fraction": 0.1}, {"labeled_fraction": 0.5}, {"labeled_fraction": 1.0},
                 {"labeled_per_class": 3}, {"labeled_list": {v for v, _, _ in train[::7]}}):
        for val in ({"val_per_class": 3}, {"val_fraction": 0.4}):
            roles = select_roles(train, seed=1, **rule, **val)
            for c in range(4):
                of = lambda r: {group[v] for v, role in roles.items() if role == r and v.startswith(f"c{c}_")}  # noqa: E731
                assert of("val") and of("labeled") and not of("val") & of("labeled"), (rule, val, c)
    # the same ids without groups: val is the back of the shuffle, exactly as many as asked
    plain = select_roles([(v, c, v) for v, c, _ in train], seed=1, labeled_fraction=0.1, val_per_class=3)
    assert Counter(v.split("_")[0] for v, r in plain.items() if r == "val") == {f"c{c}": 3 for c in range(4)}
    # val takes whole groups: the oracle (every video labeled) leaves out at most the rest of one group a class
    oracle = select_roles(train, seed=1, labeled_fraction=1.0, val_per_class=3)
    for c in range(4):
        left = [v for v, r in oracle.items() if r == "unlabeled" and v.startswith(f"c{c}_")]
        assert len({group[v] for v in left}) <= 1 and len(left) < max(sizes), (c, left)


def test_source_groups_of_real_names(synth_root):
    from jedi_pipe.datasets import list_videos, source_group
    assert source_group("ucf101", "v_HandStandPushups_g08_c03", "HandstandPushups") == "v_HandStandPushups_g08"
    assert source_group("hmdb51", "April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair") == "April_09"
    # a movie whose title holds the class name: the class is the last match (the fields after it are tags)
    assert source_group("hmdb51", "my_kiss_movie_kiss_h_nm_np2_fr_goo_1", "kiss") == "my_kiss_movie"
    assert source_group("kinetics400", "-x_y_z0123_000010_000020", "abseiling") == "-x_y_z0123"
    assert source_group("ssv2", "10234", "Pushing something") == "10234"
    # every synth video of UCF101 and HMDB51 (the real naming) falls into a group of its class
    for name in ("ucf101", "hmdb51"):
        listing = list_videos(name, synth_root / name)
        groups = Counter(source_group(name, it.video_id, listing.classes[it.label]) for it in listing.items)
        assert all(g != it.video_id for it in listing.items
                   for g in [source_group(name, it.video_id, listing.classes[it.label])]), name
        assert max(groups.values()) > 1, name


def test_shard_and_split_keep_val_apart_from_labeled_movies(tmp_path):
    """HMDB51 subjects of 1-4 videos, half of each class labeled and two val: drawn per video, some
    val video would share a labeled one's movie; `shard` and `split` both draw by movie."""
    from jedi_pipe import synth
    from jedi_pipe.datasets import source_group
    root = synth.generate(tmp_path / "synth", datasets=("hmdb51",), videos_per_class=12, workers=2)["hmdb51"]
    rule = {"labeled_fraction": 0.5, "val_per_class": 2}
    make_shards("hmdb51", root, tmp_path / "shard", **{**SHARD_OPTS, **rule})
    with no_transcode():
        split_shards(tmp_path / "shard", tmp_path / "split", **{**rule, "seed": 1})
    for folder in ("shard", "split"):
        ss = shards.open_shards(tmp_path / folder)
        rows = [r for r in ss.full_rows() if r["role"] in ("labeled", "val")]
        group = lambda r: (r["label"], source_group("hmdb51", r["video_id"], ss.classes[r["label"]]))  # noqa: E731
        val = {group(r) for r in rows if r["role"] == "val"}
        assert len(val) >= len(ss.classes) and not val & {group(r) for r in rows if r["role"] == "labeled"}, folder


def test_a_val_rule_that_takes_every_training_video_is_warned_of(src, tmp_path):
    with no_transcode():
        s = split_shards(src, tmp_path / "all-val", labeled_fraction=0.5, val_per_class=100)
        oracle = split_shards(src, tmp_path / "oracle", labeled_fraction=1.0, val_per_class=0)
    assert s.counts["unlabeled"] == 0 and any(w.startswith("no unlabeled clips") for w in s.warnings)
    assert oracle.counts["unlabeled"] == 0 and not any("unlabeled" in w for w in oracle.warnings)   # asked for none
