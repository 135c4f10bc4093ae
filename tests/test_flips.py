"""The SSv2 flip map: given in preprocess/ssv2.yaml, reported from a real label file's names, written
into the card by the shard stage (with or without --recipe), kept by `split`, read by flip_map."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from jedi_pipe import flips
from jedi_pipe.cli import main
from jedi_pipe.loaders.clip import flip_map
from jedi_pipe.shards import open_shards

REPO = Path(__file__).resolve().parents[1]
PUSH = ("Pushing something from left to right", "Pushing something from right to left")
PULL = ("Pulling something from left to right", "Pulling something from right to left")
CAMERA = ("Turning the camera left while filming something", "Turning the camera right while filming something")
PLUG = "Plugging something into something but pulling it right out as you remove your hand"   # "right", no partner
# A labels.json as the real one (template without brackets -> index string, alphabetical), cut to
# these real SSv2 templates: every left/right template of the 174, and some without a direction.
REAL_NAMES = sorted([*PUSH, *PULL, *CAMERA, PLUG, "Moving something up", "Moving something down",
                     "Plugging something into something", "Turning the camera upwards while filming something"])


def write_ssv2_labels(root: Path, names: list[str]) -> Path:
    lab = root / "labels"
    lab.mkdir(parents=True)
    (lab / "labels.json").write_text(json.dumps({n: str(i) for i, n in enumerate(names)}))
    for split in ("train", "validation"):
        (lab / f"{split}.json").write_text("[]")
    return root


def test_the_packaged_map_is_preprocess_ssv2_yaml():
    recipe = REPO / "preprocess" / "ssv2.yaml"
    assert recipe.resolve() == flips.PACKAGED["ssv2"]   # one file: the recipe users pass is the packaged one
    rule = flips.packaged_rule("ssv2")
    assert set(rule.pairs) == {PUSH, PULL, CAMERA} and rule.words == ("left", "right")
    assert flips.packaged_rule("hmdb51") is None


def _shard_listing_only(root, out):
    """The shard stage up to its listing (the label files hold no videos, so it stops there)."""
    from jedi_pipe.make_shards import ShardError, make_shards
    with pytest.raises(ShardError, match="no usable videos"):
        make_shards("ssv2", root, out)


def test_ssv2_shard_reports_the_pairs_of_a_real_label_file(tmp_path, caplog):
    root = write_ssv2_labels(tmp_path / "ssv2", REAL_NAMES)
    with caplog.at_level(logging.INFO, logger="jedi_pipe"):
        _shard_listing_only(root, tmp_path / "o")
    lines = [r.getMessage() for r in caplog.records]
    assert sum("3 mirror pair(s)" in ln for ln in lines) == 1, lines   # one report, of the map in use
    for a, b in (PUSH, PULL, CAMERA):
        assert f"  {a} <-> {b}" in lines
    assert lines.count(f"  never flipped (a direction, no partner): {PLUG}") == 1
    assert sum("never flipped" in ln for ln in lines) == 1   # "upwards" and "up" are no left/right
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]

    # half a pair: the present class is never flipped, and the report says which name is missing
    caplog.clear()
    half = write_ssv2_labels(tmp_path / "half", [n for n in REAL_NAMES if n != CAMERA[0]])
    with caplog.at_level(logging.INFO, logger="jedi_pipe"):
        _shard_listing_only(half, tmp_path / "o2")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and repr(CAMERA[0]) in warnings[0] and repr(CAMERA[1]) in warnings[0]


def test_jedi_pipe_shard_prints_the_pairs_it_found(tmp_path):
    root = write_ssv2_labels(tmp_path / "ssv2", REAL_NAMES)   # no videos: shard stops after listing
    r = CliRunner().invoke(main, ["shard", "--dataset", "ssv2", "--root", str(root), "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and "no usable videos" in r.stderr
    assert "3 mirror pair(s)" in r.stderr and f"{PUSH[0]} <-> {PUSH[1]}" in r.stderr and PLUG in r.stderr


def test_card_map_restricted_to_the_classes_present():
    rule = flips.packaged_rule("ssv2")
    classes = ["Moving something up", CAMERA[1], *PUSH, PLUG]
    assert flips.card_flips(classes, rule) == {"pairs": [list(PUSH)], "never": [CAMERA[1], PLUG]}
    assert flips.card_flips(classes, None) is None


@pytest.mark.parametrize("data, words", [({"flip_pairs": [["a", "a"]]}, "two different"),
                                         ({"flip_pairs": [["a", "b"], ["b", "c"]]}, "two pairs"),
                                         ({"flip_pairs": "a <-> b"}, "flip_pairs"),
                                         ({"direction_words": "left"}, "direction_words")])
def test_malformed_maps_are_one_sentence(tmp_path, data, words):
    from jedi_pipe.errors import InputError
    with pytest.raises(InputError, match=words):
        flips.read_rule(data, "r.yaml")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(data))
    root = write_ssv2_labels(tmp_path / "ssv2", REAL_NAMES)
    r = CliRunner().invoke(main, ["shard", "--dataset", "ssv2", "--root", str(root), "--recipe", str(recipe)])
    assert r.exit_code == 2 and r.stderr.startswith(f"error: recipe {recipe}: ") and words in r.stderr, r.output


@pytest.fixture(scope="module")
def ssv2_src(tmp_path_factory):
    from jedi_pipe import synth
    src = tmp_path_factory.mktemp("ssv2_src")
    synth.generate(src, datasets=["ssv2"], videos_per_class=2, seed=0, workers=2)
    return src / "ssv2"


def test_the_card_map_comes_from_the_yaml(ssv2_src, tmp_path):
    """Without --recipe the card holds preprocess/ssv2.yaml's pairs; with a recipe whose pairs differ,
    its pairs (a rerun on the complete folder rewrites the card's map and nothing else); `split`
    keeps the map."""
    small = ["--short-side", "32", "--fps", "6", "--max-seconds", "2", "--workers", "2", "--max-failures", "0.5"]
    out = tmp_path / "ssv2"
    shard = lambda *a: CliRunner().invoke(main, ["shard", "--dataset", "ssv2", "--root", str(ssv2_src),
                                                 "--out", str(out), *small, *a])
    r = shard()
    assert r.exit_code == 0, r.output
    assert "1 mirror pair(s)" in r.stderr   # synth's ssv2 holds the Pushing pair only
    card = open_shards(out).card
    assert card["flips"] == {"pairs": [list(PUSH)], "never": []}
    classes = card["classes"]
    fmap = flip_map(open_shards(out))
    assert fmap[classes.index(PUSH[0])] == classes.index(PUSH[1]) and fmap[classes.index(PUSH[1])] == classes.index(PUSH[0])
    assert all(fmap[i] == i for i, c in enumerate(classes) if c not in PUSH)

    # a temp recipe, preprocess/ssv2.yaml with one pair changed
    recipe = yaml.safe_load((REPO / "preprocess" / "ssv2.yaml").read_text())
    assert recipe["flip_pairs"][0] == list(PUSH)
    recipe["flip_pairs"][0] = ["Moving something up", "Moving something down"]
    for k in ("codec", "fps", "short_side", "max_seconds", "shard_max_count", "labeled_fraction", "val_per_class",
              "max_failures"):
        recipe.pop(k)   # the clip settings stay those of the first run: only the map differs
    path = tmp_path / "ssv2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    tars = {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")}
    r = shard("--recipe", str(path))
    assert r.exit_code == 0 and "already complete" in r.output, r.output
    card = open_shards(out).card
    assert card["flips"] == {"pairs": [["Moving something up", "Moving something down"]], "never": list(PUSH)}
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.tar")} == tars   # no clip written again
    fmap = flip_map(open_shards(out))
    up, down = classes.index("Moving something up"), classes.index("Moving something down")
    assert (fmap[up], fmap[down]) == (down, up) and all(fmap[classes.index(c)] == -1 for c in PUSH)

    # the map survives a re-split, and `inspect` lists it from the card
    r = CliRunner().invoke(main, ["split", str(out), "--out", str(tmp_path / "half"), "--labeled-fraction", "0.5"])
    assert r.exit_code == 0, r.output
    assert open_shards(tmp_path / "half").card["flips"] == card["flips"]
    assert flip_map(open_shards(tmp_path / "half")) == fmap
    r = CliRunner().invoke(main, ["inspect", str(tmp_path / "half")])
    assert r.exit_code == 0 and "flips (the card): 1 mirror pair(s)" in r.output, r.output
    assert f"never flipped: {PUSH[0]}" in r.output

    # a card from before maps: the packaged pairs, and a rerun of the command records them
    old = {k: v for k, v in card.items() if k != "flips"}
    (out / "dataset.json").write_text(json.dumps(old))
    r = CliRunner().invoke(main, ["inspect", str(out)])
    assert "written before it held one" in r.output and f"{PUSH[0]} <-> {PUSH[1]}" in r.output, r.output
    assert shard().exit_code == 0
    assert open_shards(out).card["flips"] == {"pairs": [list(PUSH)], "never": []}
