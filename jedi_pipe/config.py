"""Training config: plain dataclasses with a default and a comment for every value.

The method's knobs are jedi.JEDIConfig's (JediCfg extends it), so a library user and a YAML
config get the same defaults (this module therefore imports torch, through jedi.py). A YAML file
is validated on load against these classes: an unknown key or a value of the wrong type is an
error that names the key. `--set a.b=value` overrides are parsed as YAML scalars
and checked the same way. The resolved config is saved in the run folder and in checkpoints.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError
from .jedi import JEDIConfig, check_joint_options
from .loaders.clip import TRAIN_INTERP, StrongAug


class ConfigError(InputError):
    """A config that cannot be used; the message names the key."""


def check_at_least(cfg, **least) -> None:
    """ValueError naming the first field of `cfg` under its least allowed value (a count, a size, a
    step) or not finite (nan passes every comparison)."""
    for key, low in least.items():
        if not math.isfinite(getattr(cfg, key)):
            raise ValueError(f"{key}: a finite number, got {getattr(cfg, key)!r}")
        if getattr(cfg, key) < low:
            raise ValueError(f"{key}: at least {low}, got {getattr(cfg, key)!r}")


def check_positive(cfg, *keys) -> None:
    """ValueError naming the first of `keys` of `cfg` that is not a finite number above 0 (a learning rate)."""
    for key in keys:
        if not (math.isfinite(getattr(cfg, key)) and getattr(cfg, key) > 0):
            raise ValueError(f"{key}: a positive number (finite), got {getattr(cfg, key)!r}")


@dataclass
class DatasetCfg:
    name: str                     # dataset name (results, checkpoints and logs use it)
    shards: str                   # shard folder written by `jedi-pipe shard`
    model: str = "tiny3d"         # registered model (jedi_pipe.models.list_models())
    flip: bool = True             # horizontal flip in training; ssv2's left/right classes swap with it (loaders/clip.py flip_map)
    init: str = ""                # optional weights file for the backbone (e.g. torchvision's r3d_18 .pth)
    init_trained_on_ok: bool = False   # allow this dataset's init though trained on a dataset of the run (refused by default: weights_guard.py)


@dataclass
class ClipCfg:
    frames: int = 8               # T, frames per clip
    stride: int = 1               # temporal stride between sampled frames
    size: int = 32                # crop size in pixels (H = W)
    interp: str = "linear"        # training crops' resampling: linear (chosen on val), or nearest (the DALI CPU
    #                               path's fast one; loaders/clip.py TRAIN_INTERP); evaluation resizes linearly
    eval_views: int = 1           # temporal windows averaged per test clip
    eval_crops: int = 1           # spatial crops across the long side per window (3: the standard 3-crop test)

    def __post_init__(self):
        if self.interp not in TRAIN_INTERP:
            raise ValueError(f"interp: one of {', '.join(TRAIN_INTERP)}, got {self.interp!r}")
        check_at_least(self, frames=1, stride=1, size=8, eval_views=1, eval_crops=1)


@dataclass
class PretrainCfg:
    epochs: int = 30              # passes over each dataset's labeled clips
    lr: float = 0.01              # peak learning rate (SGD, momentum 0.9, cosine decay)
    batch_size: int = 16          # labeled clips per step
    weight_decay: float = 5e-4
    warmup_steps: int = 20        # linear warm-up at the start
    workers: int = 0              # experts trained at once on the CPU, each in its own process with torch_threads / workers
    #                               threads (outside torchrun; trainer.pretrain). 0: one per torch thread. 1: in turn

    def __post_init__(self):
        check_at_least(self, epochs=0, batch_size=1, weight_decay=0, warmup_steps=0, workers=0)
        check_positive(self, "lr")


@dataclass
class JediCfg(JEDIConfig):
    """The joint phase: the method's knobs (jedi.JEDIConfig: losses, weights, teachers; one default
    each, defined there) and, added here, the schedule, the batch and the memory settings."""
    epochs: int = 20              # epochs of the joint phase; an epoch = one pass over the labeled clips
    steps: int = 0                # > 0: the joint phase's length in steps, whatever the data sizes (epochs unused);
    #                               one budget for every dataset size (docs/method.md). 0: epochs x steps per epoch.
    #                               A --set jedi.epochs=N without jedi.steps sets steps to 0 (load_config)
    lr: float = 0.005             # peak learning rate (the students': x student_lr_scale). The library's default
    #                               predates the choice on a fresh draw (JEDI: students at 0.01 after a 60-step
    #                               warm-up with faster teacher heads; baselines 0.01 after 20): train/demo.yaml and
    #                               train/jedi.yaml set those, and configs from before keep their meaning
    student_lr_scale: float = 1.0  # the students (backbones and heads), started from trained experts, learn at
    #                                lr x this; the teacher heads, new, at lr (baselines: every weight is a student's)
    teacher_lr_from: int = 0      # with student_lr_scale < 1: before this step the teacher heads learn at the students'
    #                               lr too, from it on at lr; faster heads from step 0 knock the students below their
    #                               experts early on look-different data (docs/method.md). 0: at lr from the start
    batch_size: int = 16          # labeled clips per dataset per step
    unlabeled_ratio: int = 2      # unlabeled clips per labeled clip, per dataset and step
    teachers: str = "joint"       # joint: JEDI; baselines, each dataset alone: ema (each student's own moving
    #                               average), fixmatch (its own weak-view prediction, hard and thresholded)
    views: bool = False           # unlabeled clips in two views (loader `strong:` settings): teachers' targets from
    #                               the weak view, students trained on the strong one; joint teachers need teacher_ema
    ema_decay: float = 0.95       # teachers: ema only; per step
    weight_decay: float = 5e-4
    warmup_steps: int = 20
    student_avg: float = 0.0      # > 0: a moving average of the students' weights at this decay per step (Polyak
    #                               averaging, as FixMatch evaluates its model), scored as `student_avg`: at its
    #                               experts early, where the live students dip (docs/method.md, Step 30). 0: none
    precise_bn: int = 0           # > 0: each evaluation before the last scores the students with BatchNorm statistics
    #                               recomputed at their current weights over this many training batches (PreciseBN);
    #                               the run goes on from its own, and the checkpoints keep those. Why: early on the
    #                               running statistics lag weights that move fast (docs/method.md, Step 30). 0: off
    micro_batch_size: int = 0     # labeled clips per dataset in one micro-batch (with unlabeled_ratio times as many
    #                               unlabeled ones): each GPU's step runs in equal parts of the step's mix of datasets
    #                               and roles, gradients accumulated: the same loss, a fraction of the activation
    #                               memory; BatchNorm normalises per part (trainer.joint_step). 0: the whole step
    grad_checkpointing: bool = False  # keep only the backbones' stage inputs and recompute each stage in the
    #                                   backward pass: about a third more compute, far less activation memory

    def __post_init__(self):
        super().__post_init__()
        check_at_least(self, epochs=0, batch_size=1, unlabeled_ratio=0, weight_decay=0, warmup_steps=0)
        check_positive(self, "lr")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay: a decay in [0, 1), got {self.ema_decay}")
        if self.steps < 0:
            raise ValueError(f"steps: a number of joint steps >= 0 (0: epochs decide), got {self.steps}")
        if self.teachers not in ("joint", "ema", "fixmatch"):
            raise ValueError(f"teachers: joint, ema or fixmatch, got {self.teachers!r}")
        if self.views and not self.unlabeled_ratio:
            raise ValueError("views: the views are of unlabeled clips; set unlabeled_ratio > 0")
        if self.strong_stats == "split" and not (self.views and self.teachers == "joint"):
            raise ValueError("strong_stats: split is about the students' strong views in JEDI; it needs views: true "
                             "and teachers: joint")
        if self.teachers == "joint":
            check_joint_options(self)
        if self.views and self.teachers == "joint" and not self.teacher_ema:
            raise ValueError("views: the teachers' weak-view targets come from their moving average; set teacher_ema > 0")
        if not 0.0 <= self.student_avg < 1.0:
            raise ValueError(f"student_avg: a decay in [0, 1), got {self.student_avg}")
        if not 0.0 < self.student_lr_scale <= 1.0:
            raise ValueError(f"student_lr_scale: a fraction of lr in (0, 1], got {self.student_lr_scale}")
        if self.teacher_lr_from < 0:
            raise ValueError(f"teacher_lr_from: a step >= 0, got {self.teacher_lr_from}")
        if self.precise_bn < 0:
            raise ValueError(f"precise_bn: a number of batches >= 0 (0: off), got {self.precise_bn}")
        if self.micro_batch_size < 0:
            raise ValueError(f"micro_batch_size: 0 (the whole step) or more, got {self.micro_batch_size}")


@dataclass
class Config:
    name: str                                   # run name
    out: str                                    # run folder (experts/, checkpoints, metrics, results)
    datasets: list[DatasetCfg]                  # one entry per dataset
    seed: int = 0                               # seeds model init, sampling and augmentation
    clip: ClipCfg = field(default_factory=ClipCfg)
    pretrain: PretrainCfg = field(default_factory=PretrainCfg)
    jedi: JediCfg = field(default_factory=JediCfg)
    strong: StrongAug = field(default_factory=StrongAug)   # the strong view of unlabeled clips (jedi.views); its
    #                                                        fields and defaults: loaders/clip.py StrongAug
    loader: str = "auto"                        # auto | dali | torch
    device: str = "auto"                        # auto | cpu | cuda
    threads: int = 2                            # loader threads per dataset pipeline (0: the torch loader reads in
    #                                             the training process; DALI takes at least 1)
    torch_threads: int = 0                      # torch's intra-op threads on the CPU (0: every core this process may
    #                                             use, shared among torchrun's local processes; trainer.cpu_threads)
    eval_batch_size: int = 32
    eval_every: int = 0                         # steps between test evaluations during training (0: epoch ends)
    eval_first: int = 0                         # one more evaluation at this step (0: none): how far the joint step
    #                                             first moves the students from their experts
    checkpoint_every: int = 50                  # steps between checkpoints of the joint phase (and at its end) and of
    #                                             each expert (experts/<name>.resume.pt until it is written)
    compile: bool = False                       # torch.compile the joint step of train (the experts and evaluations run eagerly)
    logger: str = "jsonl"                       # jsonl: metrics.jsonl; tensorboard: also TensorBoard events (pip install "jedi-pipe[tensorboard]")
    bf16: bool = True                           # autocast to bfloat16 on the GPU (the CPU always runs fp32)

    def __post_init__(self):
        for key, allowed in (("loader", ("auto", "dali", "torch")), ("device", ("auto", "cpu", "cuda")),
                             ("logger", ("jsonl", "tensorboard"))):
            if getattr(self, key) not in allowed:
                raise ConfigError(f"{key}: must be one of {', '.join(allowed)}, got {getattr(self, key)!r}")
        try:
            check_at_least(self, eval_batch_size=1, checkpoint_every=1, eval_every=0, eval_first=0, torch_threads=0,
                           threads=0)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not self.datasets:
            raise ConfigError("datasets: at least one dataset is needed")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ConfigError(f"datasets: names must be unique, got {names}")
        from .models import list_models   # (registered by then: models imports every built-in one)
        for i, d in enumerate(self.datasets):   # here, not when the expert is built after the others trained
            if d.model not in list_models():
                raise ConfigError(f"datasets.{i}.model: {d.model!r} is not a registered model; "
                                  f"registered: {', '.join(list_models())}")

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def with_new_keys(saved: dict) -> dict:
    """A config saved by an older version, with the keys added since at their defaults (each
    new key's default is the behaviour before it existed), so a resume compares like with like."""
    sections = {"clip": ClipCfg(), "pretrain": PretrainCfg(), "jedi": JediCfg(), "strong": StrongAug()}
    out = dict(saved)
    entry = {f.name: f.default for f in dataclasses.fields(DatasetCfg) if f.default is not dataclasses.MISSING}
    out["datasets"] = [{**entry, **d} for d in saved.get("datasets", [])]
    for f in dataclasses.fields(Config):
        if f.name in sections:
            out[f.name] = {**_plain(dataclasses.asdict(sections[f.name])), **saved.get(f.name, {})}
        elif f.name not in out and f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _plain(value):
    """Tuples as lists, all the way down: what YAML and JSON write back as they were read."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _build(cls, data, where: str):
    """Instantiate dataclass `cls` from a mapping, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, unknown[0])}: unknown key (known: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{_join(where, missing[0])}: required key is missing")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:   # a value check of the class itself; its message starts with the key
        raise ConfigError(_join(where, str(e))) from None


def _coerce(tp, value, where):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is tuple:   # numbers: ranges (low, high) and per-channel values
        if isinstance(value, (list, tuple)):
            value = [float(v) if isinstance(v, str) and SCIENTIFIC.fullmatch(v.strip()) else v for v in value]
        if not isinstance(value, (list, tuple)) or not value or \
                not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            raise ConfigError(f"{where}: expected a list of numbers, got {value!r}")
        return tuple(value)
    if tp in (int, float) and isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
        # YAML 1.1 reads 1e-3 (no dot) as a string: a number written so is still a number
        number = float(value)
        if tp is float:
            return number
        if number.is_integer():
            return int(number)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (bool, int, float, datetime.date)):   # YAML read `off`, `2024-01-01`, ...
        key = re.sub(r"\[(\d+)\]", r".\1", where)   # datasets[0].name is --set datasets.0.name
        raise ConfigError(f"{where}: expected a name, got {value!r} ({type(value).__name__}): YAML reads unquoted "
                          f"off, yes, numbers and dates as other types; quote it (\"...\" in a file, "
                          f"--set {key}='\"...\"')")
    if tp is bool and not isinstance(value, bool) or tp is not bool and isinstance(value, bool) \
            or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
    return value


SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")   # 1e-3, 4E2, 2.5e-4


def _join(where, key):
    return f"{where}.{key}" if where else key


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """`a.b=value` strings applied to the raw mapping; values parsed as YAML scalars."""
    import yaml
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--set {item}: {raw!r} is not a YAML value (quote strings with : or [ in them)") from None
        node, parts = data, key.split(".")
        for depth, p in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[:depth + 1])
            if isinstance(node, list):     # datasets.N: an index into the list
                if not (p.isdigit() and int(p) < len(node)):
                    raise ConfigError(f"--set {item}: {where}: an index from 0 to {len(node) - 1} is needed")
                if last:
                    node[int(p)] = value
                else:
                    node = node[int(p)]
            elif isinstance(node, dict):
                if last:
                    node[p] = value
                else:
                    node = node.setdefault(p, {})
            else:
                raise ConfigError(f"--set {item}: {'.'.join(parts[:depth])} is a value, not a section")
    return data


def load_config(path=None, overrides: list[str] = (), data: dict | None = None) -> Config:
    """A validated Config from a YAML file `path` (or from `data`, the same mapping), with `overrides`
    as `--set` takes them ("jedi.steps=50"; dotted keys, typed as the defaults). Raises ConfigError
    (one sentence naming the file or override) for an unreadable file, an unknown key or a bad value."""
    import yaml
    if path is None and data is None:
        raise ConfigError("load_config needs a YAML path or data (a mapping)")
    if path is not None and data is not None:
        raise ConfigError("load_config takes a YAML path or data (a mapping), not both")
    if isinstance(overrides, str):   # one override, "jedi.steps=50", is not its letters
        overrides = [overrides]
    if data is None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as e:
            raise ConfigError(f"cannot read config {path}: {e.strerror}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path} is not valid YAML: {e}") from None
    given = list(overrides)
    keys = {o.split("=", 1)[0].strip() for o in given}
    extra = ["jedi.steps=0"] if "jedi.epochs" in keys and "jedi.steps" not in keys else []
    # (an epochs override decides the length, even over a config's steps)
    merged = apply_overrides(copy.deepcopy(data), given + extra)
    try:
        return _build(Config, merged, "")
    except ConfigError as e:   # blame the --set whose key it names, else the file when it fails alone
        in_file = (lambda err: f"{path}: {err}") if path is not None else str   # noqa: E731
        # the override whose key the error names: the whole key, then a ":" or a "." (not jedi.w_distill for jedi.w_distill_heads)
        culprit = next((o for o in given if re.match(re.escape(o.split("=", 1)[0].strip()) + r"[:.\[]", str(e))), None)
        if culprit is not None:
            raise ConfigError(f"--set {culprit}: {e}") from None
        if not given:
            raise ConfigError(in_file(e)) from None
        try:
            _build(Config, data, "")
        except ConfigError as file_error:   # the file is at fault: its own error, whatever the --set did
            raise ConfigError(in_file(file_error)) from None
        raise ConfigError(f"{e} (after --set {' '.join(given)})") from None


def save_config(cfg: Config, path) -> None:
    import yaml
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
