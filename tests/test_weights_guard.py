"""The weights guard: an init trained on a dataset of the run does not start that dataset's expert."""
from __future__ import annotations

import json

import pytest
import torch

from jedi_pipe.config import load_config
from jedi_pipe.models import build
from jedi_pipe.trainer import pretrain
from jedi_pipe.weights_guard import OVERRIDE, check_init, trained_on


def config(shard_dirs, out, datasets, more=()):
    return load_config(data={"name": "g", "out": str(out), "loader": "torch",
                             "datasets": [{"name": n, "shards": str(shard_dirs[n]), "model": "tiny3d", **extra}
                                          for n, extra in datasets],
                             "clip": {"frames": 4, "stride": 1, "size": 24}},
                       overrides=["pretrain.epochs=1", "pretrain.batch_size=4", *more])


def test_torchvision_kinetics_weights_cannot_start_the_kinetics_expert(shard_dirs, tmp_path):
    weights = tmp_path / "r2plus1d_18-91a641e6.pth"     # torchvision's file name; never opened, only there
    weights.write_bytes(b"")
    cfg = config(shard_dirs, tmp_path / "run", [("kinetics400", {"init": str(weights)})])
    with pytest.raises(ValueError) as e:
        pretrain(cfg, log=lambda m: None)
    msg = str(e.value)
    assert msg.startswith(f"init {weights} was trained on kinetics400, so as the kinetics400 expert's init it would "
                          "bring all of kinetics400's labels into a semi-supervised run")
    assert f"datasets.N.{OVERRIDE}: true" in msg
    assert not (tmp_path / "run" / "experts" / "kinetics400.pt").exists()
    # the name of the shard card's dataset counts too: a Kinetics folder renamed in the config
    with pytest.raises(ValueError, match="was trained on kinetics400"):
        pretrain(config(shard_dirs, tmp_path / "run2", [("kinetics400", {"init": str(weights), "name": "k400"})]),
                 log=lambda m: None)


def test_cards_checkpoints_and_the_override(shard_dirs, tmp_path):
    w = tmp_path / "mine.pt"
    torch.save(build("tiny3d", 8).state_dict(), w)
    with pytest.raises(ValueError, match=r"nothing says which datasets these weights were trained on; write .*mine\.pt\.json"):
        check_init("hmdb51", set(), w)
    (tmp_path / "mine.pt.json").write_text(json.dumps({"trained_on": ["ucf101"]}))
    assert trained_on(w) == {"ucf101"}
    check_init("hmdb51", {"hmdb51"}, w)                                # trained elsewhere: fine
    with pytest.raises(ValueError, match="was trained on ucf101"):
        check_init("ucf101", {"ucf101"}, w)
    check_init("ucf101", {"ucf101"}, w, allowed=True)                  # the named override
    with pytest.raises(FileNotFoundError, match=r"init .*nope\.pth of hmdb51: no such file"):   # not 'write a card'
        check_init("hmdb51", set(), tmp_path / "nope.pth")

    # an expert of another run carries its datasets in its saved config; the override trains
    cfg = config(shard_dirs, tmp_path / "a", [("hmdb51", {})])
    pretrain(cfg, log=lambda m: None)
    expert = tmp_path / "a" / "experts" / "hmdb51.pt"
    assert trained_on(expert) == {"hmdb51"}
    for name in ("r3d_18-b3b3357e.pth", "swin3d_b_22k-7c6ae6fa.pth"):   # torchvision's names
        assert trained_on(tmp_path / name) == {"kinetics400"}
    with pytest.raises(ValueError, match="was trained on hmdb51"):
        pretrain(config(shard_dirs, tmp_path / "b", [("hmdb51", {"init": str(expert)})]), log=lambda m: None)
    pretrain(config(shard_dirs, tmp_path / "c", [("hmdb51", {"init": str(expert), OVERRIDE: True})]), log=lambda m: None)
    assert (tmp_path / "c" / "experts" / "hmdb51.pt").is_file()
    # an expert of hmdb51's shards under another name in its config (an oracle's "hmdb51-all") is hmdb51's too
    pretrain(config(shard_dirs, tmp_path / "d", [("hmdb51", {"name": "hmdb51-all"})]), log=lambda m: None)
    renamed = tmp_path / "d" / "experts" / "hmdb51-all.pt"
    assert trained_on(renamed) == {"hmdb51-all", "hmdb51"}
    with pytest.raises(ValueError, match="was trained on hmdb51,? "):
        pretrain(config(shard_dirs, tmp_path / "e", [("hmdb51", {"init": str(renamed)})]), log=lambda m: None)
    # a card naming one dataset as a string, not a list: refused, not read as a set of its letters
    (tmp_path / "mine.pt.json").write_text(json.dumps({"trained_on": "ucf101"}))
    with pytest.raises(ValueError, match=r"expected a JSON object \{"):
        check_init("ucf101", {"ucf101"}, w)


def test_weights_trained_on_another_dataset_of_the_run_are_refused_for_every_expert(shard_dirs, tmp_path):
    """Kinetics-400 weights as the HMDB51 expert's init, in a run with Kinetics-400: the Kinetics teacher
    reads the HMDB51 student's features, so all of Kinetics-400's labels would reach the run."""
    weights = tmp_path / "r2plus1d_18-91a641e6.pth"     # torchvision's file name: Kinetics-400
    weights.write_bytes(b"")
    cfg = config(shard_dirs, tmp_path / "run", [("hmdb51", {"init": str(weights)}), ("kinetics400", {})])
    with pytest.raises(ValueError, match=r"trained on kinetics400, a dataset of this run: as the hmdb51 expert's init "
                                         r"its features would carry all of kinetics400's labels"):
        pretrain(cfg, log=lambda m: None)
    assert not list((tmp_path / "run" / "experts").glob("*.pt"))       # before any expert
    check_init("hmdb51", {"hmdb51"}, weights, run={"ucf101", "ssv2"})  # a run without Kinetics-400: fine
    check_init("hmdb51", {"hmdb51"}, weights, allowed=True, run={"kinetics400"})   # the named override


def test_an_init_of_an_unknown_layout_is_refused_before_any_expert(shard_dirs, tmp_path):
    """The init of the last dataset is loaded up front: a layout load_weights does not know fails the
    run before the experts before it have trained (hours at real size), not when its turn comes."""
    w = tmp_path / "other.pt"
    torch.save({"model_state": build("tiny3d", 8).state_dict()}, w)   # a wrapper the loader does not know
    (tmp_path / "other.pt.json").write_text(json.dumps({"trained_on": []}))
    # one expert after another, as on a GPU: hmdb51's would be written before ssv2's init is read
    cfg = config(shard_dirs, tmp_path / "run", [("hmdb51", {}), ("ssv2", {"init": str(w)})], ["pretrain.workers=1"])
    with pytest.raises(ValueError, match="backbone weights are not in the checkpoint"):
        pretrain(cfg, log=lambda m: None)
    assert not list((tmp_path / "run" / "experts").glob("*.pt"))
