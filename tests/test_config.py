"""The training config: validated on load, errors name the key, --set overrides typed."""
from __future__ import annotations

from pathlib import Path

import pytest

from jedi_pipe.config import ConfigError, load_config

BASE = {"name": "t", "out": "runs/t", "datasets": [{"name": "a", "shards": "shards/a"}]}


def test_defaults_fill_everything_not_required():
    cfg = load_config(data=dict(BASE))
    assert cfg.clip.frames == 8 and cfg.jedi.unlabeled_ratio == 2 and cfg.loader == "auto"
    assert cfg.datasets[0].model == "tiny3d" and cfg.datasets[0].flip is True


@pytest.mark.parametrize("data, key", [
    ({**BASE, "jedi": {"lr": 0.1, "lrr": 1}}, "jedi.lrr"),
    ({**BASE, "clip": {"frames": "8"}}, "clip.frames"),
    ({**BASE, "jedi": {"hard": 1}}, "jedi.hard"),
    ({"name": "t", "out": "o"}, "datasets"),
    ({**BASE, "datasets": [{"name": "a"}]}, "datasets[0].shards"),
    ({**BASE, "loader": "nvdec"}, "loader"),
    ({**BASE, "jedi": {"steps": -1}}, "jedi.steps"),
    ({**BASE, "jedi": {"strong_stats": "apart"}}, "jedi.strong_stats"),
    ({**BASE, "jedi": {"distill_rampup": -5}}, "jedi.distill_rampup"),
    # values that passed the type check and crashed later (a ZeroDivisionError, a DALI ValueError)
    ({**BASE, "clip": {"size": -3}}, "clip.size: at least 8"),
    ({**BASE, "clip": {"size": 4}}, "clip.size: at least 8"),   # under the loaders' least size
    ({**BASE, "jedi": {"w_distill": -1}}, "jedi.w_distill: a loss weight"),
    ({**BASE, "jedi": {"w_sup_student": float("nan")}}, "jedi.w_sup_student: a loss weight, finite"),
    ({**BASE, "jedi": {"temperature": float("inf")}}, "jedi.temperature: must be finite"),
    ({**BASE, "jedi": {"lr": float("inf")}}, "jedi.lr: a positive number"),
    ({**BASE, "jedi": {"weight_decay": float("nan")}}, "jedi.weight_decay: a finite number"),
    ({**BASE, "jedi": {"ema_decay": 1.5}}, "jedi.ema_decay: a decay in"),
    ({**BASE, "threads": -1}, "threads: at least 0"),
    ({**BASE, "strong": {"area": [0.1]}}, "strong.area: a range"),
    ({**BASE, "strong": {"area": ["a", "b"]}}, "strong.area: expected a list of numbers"),
    ({**BASE, "clip": {"frames": 0}}, "clip.frames: at least 1"),
    ({**BASE, "pretrain": {"batch_size": 0}}, "pretrain.batch_size: at least 1"),
    ({**BASE, "pretrain": {"lr": -1}}, "pretrain.lr: a positive number"),
    ({**BASE, "jedi": {"lr": 0}}, "jedi.lr: a positive number"),
    ({**BASE, "jedi": {"batch_size": 0}}, "jedi.batch_size: at least 1"),
    ({**BASE, "eval_batch_size": 0}, "eval_batch_size: at least 1"),
    ({**BASE, "checkpoint_every": 0}, "checkpoint_every: at least 1"),
])
def test_bad_keys_and_types_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(data=data)


def test_an_epochs_override_decides_the_joint_length_over_a_configs_steps():
    assert load_config("train/demo.yaml").jedi.steps == 300
    assert load_config("train/demo.yaml", ["jedi.epochs=2"]).jedi.steps == 0      # epochs decide
    both = load_config("train/demo.yaml", ["jedi.epochs=2", "jedi.steps=7"]).jedi
    assert (both.epochs, both.steps) == (2, 7)


def test_split_strong_stats_need_jedi_views():
    ok = {"views": True, "teacher_ema": 0.9, "bn_stats": "source", "strong_stats": "split"}
    assert load_config(data={**BASE, "jedi": ok}).jedi.strong_stats == "split"
    for bad in ({**ok, "views": False}, {**ok, "teachers": "fixmatch"}):
        with pytest.raises(ConfigError, match="jedi.strong_stats"):
            load_config(data={**BASE, "jedi": bad})


def test_overrides_are_typed_and_dotted():
    cfg = load_config(data=dict(BASE), overrides=["jedi.lr=0.5", "datasets.0.model=r3d_18", "jedi.hard=true",
                                                  "pretrain.epochs=3"])
    assert cfg.jedi.lr == 0.5 and cfg.datasets[0].model == "r3d_18" and cfg.jedi.hard is True
    assert cfg.pretrain.epochs == 3
    with pytest.raises(ConfigError, match="pretrain.epochs"):
        load_config(data=dict(BASE), overrides=["pretrain.epochs=three"])
    # one override as a plain string (natural in a notebook) is that override, not its letters
    assert load_config(data=dict(BASE), overrides="jedi.lr=0.25").jedi.lr == 0.25
    with pytest.raises(ConfigError, match="not both"):
        load_config("train/demo.yaml", data=dict(BASE))


def test_shipped_configs_load():
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    for name in ("demo.yaml", "jedi.yaml"):
        cfg = load_config(root / "train" / name)
        assert len(cfg.datasets) == 4
        if name == "jedi.yaml":   # ssv2 flips, its left/right classes swapping (loaders/clip.py flip_map)
            assert next(d for d in cfg.datasets if d.name == "ssv2").flip is True


def test_an_older_saved_config_gets_the_new_keys_at_their_old_behaviour():
    """Resume compares the checkpoint's saved config with today's: keys added since (views,
    teacher_warmup, strong, eval_first, clip.interp) take their defaults, which are the behaviour
    before they existed; a setting that really differs still differs."""
    from jedi_pipe.config import load_config, with_new_keys
    now = load_config("train/demo.yaml", ["jedi.views=false"]).to_dict()
    saved = {k: v for k, v in now.items() if k not in ("strong", "eval_first")}
    saved["jedi"] = {k: v for k, v in now["jedi"].items() if k not in ("views", "teacher_warmup")}
    saved["clip"] = {k: v for k, v in now["clip"].items() if k != "interp"}
    saved["datasets"] = [{k: v for k, v in d.items() if k != "init_trained_on_ok"} for d in now["datasets"]]
    assert saved != now and with_new_keys(saved) == now
    from jedi_pipe.trainer import expert_signature    # reusing an older expert compares the same way
    assert expert_signature(saved, "hmdb51") == expert_signature(now, "hmdb51")
    assert with_new_keys(saved) != load_config("train/demo.yaml").to_dict()   # the demo now has views: true


@pytest.mark.parametrize("override, words", [
    ("datasets.3.model=x", "datasets.3: an index from 0 to 0"),
    ("datasets.x.model=x", "datasets.x: an index from 0 to 0"),
    ("jedi.lr=[1", "not a YAML value"),
    ("name.x=1", "name is a value, not a section"),
])
def test_a_bad_set_is_one_sentence_naming_it(override, words):
    import copy
    import re
    with pytest.raises(ConfigError, match=re.escape(f"--set {override}: ") + ".*" + re.escape(words)):
        load_config(data=copy.deepcopy(BASE), overrides=[override])
    assert load_config(data=copy.deepcopy(BASE), overrides=["datasets.0.model=r3d_18"]).datasets[0].model == "r3d_18"


def test_an_error_names_the_file_or_the_set_at_fault(tmp_path):
    import yaml
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, "jedi": {"lr": -1.0}}))
    with pytest.raises(ConfigError, match=r"^" + str(path) + r": jedi\.lr: a positive number"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"^" + str(path) + r": jedi\.lr: "):   # a --set elsewhere is not at fault
        load_config(path, ["clip.size=16"])
    assert load_config(path, ["jedi.lr=0.1"]).jedi.lr == 0.1                  # a --set may mend the file
    with pytest.raises(ConfigError, match=r"^--set jedi\.nope=1: jedi\.nope: unknown key"):   # both at fault
        load_config(path, ["jedi.nope=1"])
    path.write_text(yaml.safe_dump(BASE))
    with pytest.raises(ConfigError, match=r"^--set jedi\.nope=1: jedi\.nope: unknown key"):
        load_config(path, ["clip.size=16", "jedi.nope=1"])
    with pytest.raises(ConfigError, match=r"^cannot read config " + str(tmp_path / "none.yaml") + r": No such file"):
        load_config(tmp_path / "none.yaml")
    data = dict(BASE)
    load_config(data=data, overrides=["jedi.lr=0.5"])
    assert "jedi" not in data                                                 # the caller's mapping is not changed


def test_an_unknown_model_is_refused_when_the_config_loads():
    """Not when its expert is built, after the experts before it have trained (hours at real size)."""
    with pytest.raises(ConfigError, match=r"datasets.3.model: 'r2plus1d' is not a registered model; registered: "
                                          r"r2plus1d_18, r3d_18"):
        load_config(Path(__file__).resolve().parents[1] / "train" / "jedi.yaml", ["datasets.3.model=r2plus1d"])


def test_numbers_in_scientific_notation_and_names_that_yaml_reads_otherwise():
    # YAML 1.1 reads 1e-3 (no dot) as a string; a user writes learning rates so
    cfg = load_config(data={**BASE, "pretrain": {"lr": "4e-2"}}, overrides=["jedi.lr=1e-3", "jedi.warmup_steps=1e2"])
    assert (cfg.jedi.lr, cfg.pretrain.lr, cfg.jedi.warmup_steps) == (1e-3, 4e-2, 100)
    with pytest.raises(ConfigError, match="clip.frames: expected int"):   # a quoted "8" stays a string
        load_config(data={**BASE, "clip": {"frames": "8"}})
    with pytest.raises(ConfigError, match=r"--set name=off: name: expected a name, got False \(bool\).* quote it"):
        load_config(data=BASE, overrides=["name=off"])
    # the hint's --set key is one that --set reads (datasets.0.name, not datasets[0].name)
    with pytest.raises(ConfigError, match=r"--set datasets.0.name='\"...\"'"):
        load_config(data=BASE, overrides=["datasets.0.name=off"])
    assert load_config(data=BASE, overrides=['datasets.0.name="off"']).datasets[0].name == "off"
    assert load_config(data=BASE, overrides=["strong.area=[8e-2, 1.0]"]).strong.area == (0.08, 1.0)


def test_the_error_blames_the_override_whose_whole_key_it_names():
    # jedi.w_distill is a prefix of jedi.w_distill_heads: the heads' rule broke by teacher_ema=0, not w_distill
    with pytest.raises(ConfigError, match=r"^--set jedi.w_distill_heads=1: jedi.w_distill_heads: needs teacher_ema"):
        load_config(data=BASE, overrides=["jedi.w_distill=2", "jedi.w_distill_heads=1", "jedi.teacher_ema=0"])


def test_a_joint_batch_that_does_not_split_is_refused_before_any_expert(tmp_path):
    from jedi_pipe.errors import InputError
    from jedi_pipe.trainer import pretrain, train
    cfg = load_config(data={**BASE, "out": str(tmp_path / "run")}, overrides=["jedi.batch_size=8",
                                                                             "jedi.micro_batch_size=3"])
    for phase in (pretrain, train):   # the shards do not even exist: nothing ran
        with pytest.raises(InputError, match="jedi.micro_batch_size: 3 does not divide the 8"):
            phase(cfg, log=None)
    assert not (tmp_path / "run").exists()
