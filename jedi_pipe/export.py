"""`jedi-pipe export`: one model of a run as one self-contained file; `load_model` reads it back.

The file is a PyTorch exported program (`torch.export`, a `.pt2` archive): the graph and the
weights that inference needs and nothing else (no optimizer, no other dataset's head). Plain
PyTorch loads it without jedi-pipe installed:

    import torch
    model = torch.export.load("model.pt2").module()    # normalised clips [B, 3, T, S, S] -> logits [B, C]

Next to the program the archive holds `jedi_pipe.json` (MODEL_CARD below): class names, the clip
(frames, stride, size, mean/std), the evaluation views (windows x crops), the shard encoding (codec, fps, short
side, seconds kept) that `jedi-pipe predict` re-applies to raw videos so that they are sampled as
the model was trained and tested, with the ffmpeg command it amounts to (`transcode`), and the
data the weights learnt from (`trained_on`: per dataset, its labeled selection, source split and
counts per role). Plain PyTorch reads it with `torch.export.load(path,
extra_files={"jedi_pipe.json": ""})`.
"""
from __future__ import annotations

import json
import logging
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import InputError, MissingError, first_line
from .loaders.clip import ClipSpec
from .transcode import CODECS, EncodeSettings, ffmpeg_args

MODEL_CARD = "jedi_pipe.json"      # the archive's extra file with what inference needs besides the graph
FORMAT = "jedi-pipe model 1"
WHICH = ("student", "student_avg", "student_ema", "teacher", "expert")


class TeacherNet(nn.Module):
    """Teacher T_i as a plain module: its head over the concatenated features of every backbone."""

    def __init__(self, backbones: list[nn.Module], head: nn.Linear):
        super().__init__()
        self.backbones = nn.ModuleList(backbones)
        self.head = head

    def forward(self, x):
        return self.head(torch.cat([b.features(x) for b in self.backbones], dim=1))


def run_config(run):
    """The resolved config saved in a run folder, its `out` pointing at the folder (runs may move)."""
    import yaml

    from .config import load_config
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise MissingError(f"{run} is not a run folder: no config.yaml (written by `jedi-pipe pretrain/train`)")
    data = yaml.safe_load(path.read_text())
    data["out"] = str(run)
    return load_config(data=data)


def inference_module(run, dataset: str, which: str = "student") -> nn.Module:
    """The eval-mode module that scores `dataset` as `jedi-pipe eval` does for `which`.

    expert: experts/<dataset>.pt; student: S_i of checkpoint.pt; student_avg: its weight average
    (jedi.student_avg); student_ema: the student of the teachers' moving average (jedi.teacher_ema),
    results.json's fair pair for the teacher; teacher: T_i, which needs every backbone (with
    teacher_ema, the moving average's, as scored in training).
    """
    from .jedi import EMABaseline, FixMatchBaseline
    from .trainer import expert_path, load_expert, load_joint
    if which not in WHICH:
        raise InputError(f"--which must be one of {', '.join(WHICH)}, got {which!r}")
    cfg = run_config(run)
    names = [d.name for d in cfg.datasets]
    if dataset not in names:
        raise InputError(f"{run}: no dataset {dataset!r} in this run; it has {', '.join(names)}")
    for n in names if which != "expert" else [dataset]:
        if not expert_path(cfg, n).is_file():
            raise MissingError(f"{expert_path(cfg, n)} does not exist: run `jedi-pipe pretrain` first")
    if which == "expert":
        return load_expert(cfg, dataset, "cpu").eval()
    if which == "student_avg" and not cfg.jedi.student_avg:
        raise InputError(f"{run} keeps no average of its students (jedi.student_avg is 0); export --which student")
    ckpt = Path(run) / "checkpoint.pt"
    if not ckpt.is_file():
        raise MissingError(f"{ckpt} does not exist: the run has no joint model yet "
                                f"(run `jedi-pipe train`, or export --which expert)")
    jedi = load_joint(cfg, {n: load_expert(cfg, n, "cpu") for n in names}, ckpt, "cpu").eval()
    if which == "student":
        return jedi.students[dataset]
    if which == "student_avg":
        return jedi.students_avg[dataset]
    if which == "student_ema":
        if getattr(jedi, "ema_students", None) is None:
            raise InputError(f"{run} keeps no moving average of its students (jedi.teacher_ema is 0); "
                             f"export --which student")
        return jedi.ema_students[dataset]
    if isinstance(jedi, EMABaseline):       # the baseline's teacher is the student's own average
        return jedi.teachers[dataset]
    if isinstance(jedi, FixMatchBaseline):  # FixMatch's teacher is the student itself
        return jedi.students[dataset]
    ema = bool(jedi.config.teacher_ema)
    heads = jedi.ema_teachers if ema else jedi.teachers
    return TeacherNet(jedi.backbones_for(dataset, ema), heads[dataset]).eval()


# How a clip reaches the model, for users without jedi-pipe (README, "Use a trained model").
PREPROCESS = ("video re-encoded by the card's transcode command (IN: the video, OUT: the clip; the lossy encode "
              "is part of what the model saw): resampled to encoding.fps and cut to its first encoding.max_seconds, "
              "frames deinterlaced, made square-pixelled, centre-cropped "
              "to at most 4:1, short side to encoding.short_side; then to clip.size; clip.frames frames every "
              "clip.stride; views windows spread evenly over the clip (one: centred), crops S x S crops along "
              "the long side (one: centred); RGB scaled to 0-1, minus clip.mean, over clip.std; [B, 3, T, S, S]; "
              "views x crops probabilities averaged")


def settings_of(encoding: dict) -> EncodeSettings:
    """A card's encoding (with its filter chain and whatever else it records) as EncodeSettings."""
    return EncodeSettings(**{k: encoding[k] for k in ("codec", "fps", "short_side", "max_seconds")})


def trained_on(cfg, name: str) -> dict | None:
    """What a model learnt from dataset `name`: its shards' labeled selection, source split and
    counts per role, as its expert saved them when it trained (an expert from before that: the
    shard folder the config points at now; None when that is gone too)."""
    from .shards import CARD, data_record, open_shards
    from .trainer import expert_path
    saved = torch.load(expert_path(cfg, name), map_location="cpu", weights_only=False, mmap=True).get("shards")
    if saved is not None:
        return saved
    d = next(d for d in cfg.datasets if d.name == name)
    return data_record(open_shards(d.shards).card) if (Path(d.shards) / CARD).is_file() else None


def model_card(run, dataset: str, which: str) -> dict:
    """What inference needs besides the weights (classes, clip, views, the shards' encoding), and where
    the model came from (run, step, its test scores when the run finished).

    The classes and encoding are the expert's, saved when it was trained: a config whose shards
    moved or changed since cannot put other names on its outputs (refused when they differ)."""
    from .shards import CARD, open_shards
    from .trainer import clip_spec, expert_path
    cfg = run_config(run)
    d = next(d for d in cfg.datasets if d.name == dataset)
    expert = torch.load(expert_path(cfg, dataset), map_location="cpu", weights_only=False, mmap=True)   # no copy
    classes = expert["classes"]
    ss = open_shards(d.shards) if (Path(d.shards) / CARD).is_file() else None
    if ss is not None and ss.classes != classes:
        raise InputError(f"{d.shards}: its classes are not the {len(classes)} that {dataset}'s models were trained "
                         f"on (the config's shards changed since); point the run's config.yaml at the shards it "
                         f"trained on")
    if "encoding" in expert:
        enc = expert["encoding"]
    elif ss is not None:   # an expert from before it kept its encoding
        enc = ss.card["encoding"]
    else:
        raise MissingError(f"{d.shards} is not a shard folder, and {expert_path(cfg, dataset)} predates experts "
                           f"that keep their shards' encoding; point the run's config.yaml at its shards")
    archs = [x.model for x in cfg.datasets] if which == "teacher" and cfg.jedi.teachers == "joint" else [d.model]
    clip = {k: v for k, v in asdict(clip_spec(cfg)).items() if k not in ("area", "ratio", "interp")}   # training-only
    step, test = None, expert["test"] if which == "expert" else None
    if which != "expert":
        step = torch.load(Path(run) / "checkpoint.pt", map_location="cpu", weights_only=False, mmap=True)["step"]
        results = Path(run) / "results.json"
        if results.is_file():   # a finished run's final scores, when they are of this checkpoint's step
            saved = json.loads(results.read_text())
            if saved.get("step", step) == step:   # (older results.json name no step)
                test = saved["datasets"][dataset].get(which)
    # chain: the shards' ffmpeg filters (transcode.FILTER_CHAIN). The command is today's, which
    # `predict` runs too (on a file of several video streams, of the main one: transcode.main_video_stream);
    # an older chain gave the same clips of the sources its changes do not touch (transcode.FILTER_CHAINS)
    encoding = {**{k: enc[k] for k in ("codec", "fps", "short_side", "max_seconds")}, "chain": enc.get("chain", 1)}
    command = ffmpeg_args("IN", f"OUT.{CODECS[encoding['codec']][0]}", settings_of(encoding))
    # the data the weights saw: its own dataset's for an expert, every dataset's for a joint model
    seen = [dataset] if which == "expert" else [x.name for x in cfg.datasets]
    return {"format": FORMAT, "dataset": dataset, "which": which, "archs": archs, "classes": classes,
            "clip": clip, "views": cfg.clip.eval_views, "crops": cfg.clip.eval_crops,
            "encoding": encoding, "transcode": shlex.join(["ffmpeg", *command[1:]]),
            "preprocess": PREPROCESS, "trained_on": {n: trained_on(cfg, n) for n in seen},
            "teacher": ("the moving average's" if cfg.jedi.teacher_ema else "live") if which == "teacher" else None,
            "step": step, "test": {k: test[k] for k in ("top1", "top5")} if test else None,
            "run": str(Path(run).resolve()), "tool": f"jedi-pipe {__version__}"}


def export_model(run, dataset: str, which: str = "student", out="model.pt2", overwrite: bool = False) -> Path:
    """Write one model of a run (see the module docstring); returns the file written. An existing
    `out` is refused unless `overwrite`."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; pass --overwrite to replace it, or choose another --out")
    module = inference_module(run, dataset, which)
    card = model_card(run, dataset, which)
    c = card["clip"]
    example = torch.zeros(2, 3, c["frames"], c["size"], c["size"])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        width = module(example).shape[-1]
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    if width != len(card["classes"]):   # a guard for the names: they must fit the outputs
        raise InputError(f"{run}: the {which} of {dataset} gives {width} outputs for {len(card['classes'])} classes")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "wb") as f:     # a file object: torch.export wants a .pt2 name otherwise
        torch.export.save(program, f, extra_files={MODEL_CARD: json.dumps(card)})
    tmp.replace(out)
    return out


@dataclass
class Model:
    """An exported model: `module` maps normalised clips [B, 3, T, S, S] to logits [B, C]."""
    module: nn.Module
    card: dict

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]

    @property
    def clip(self) -> ClipSpec:
        return ClipSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in self.card["clip"].items()})

    @property
    def views(self) -> int:
        """Temporal windows per video (the run's clip.eval_views)."""
        return self.card["views"]

    @property
    def crops(self) -> int:
        """Spatial crops per window (the run's clip.eval_crops)."""
        return self.card["crops"]

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities of clips [B, 3, T, S, S], or of views [B, V, 3, T, S, S] averaged."""
        if x.dim() == 6:
            B, V = x.shape[:2]
            return self.module(x.flatten(0, 1)).float().softmax(-1).view(B, V, -1).mean(1)
        return self.module(x).float().softmax(-1)


def load_model(path) -> Model:
    """An exported model file (`jedi-pipe export`) as a Model; one sentence when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise MissingError(f"model file {path} does not exist")
    extra = {MODEL_CARD: ""}
    torch_log = logging.getLogger("torch.export")   # it logs a page of traceback before it fails on another kind of file
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        with open(path, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
    except Exception as e:   # torch raises several kinds for a file that is not an archive
        if _is_training_checkpoint(path):
            raise InputError(f"{path} is a training checkpoint (an expert or checkpoint.pt), not a model file; "
                             f"write one with `jedi-pipe export RUN --dataset NAME`") from None
        raise InputError(f"{path} is not a model written by `jedi-pipe export` ({type(e).__name__}: "
                         f"{first_line(e)})") from None
    finally:
        torch_log.setLevel(level)
    if not extra[MODEL_CARD]:
        raise InputError(f"{path} is an exported PyTorch program without {MODEL_CARD}: not written by `jedi-pipe export`")
    card = json.loads(extra[MODEL_CARD])
    if card.get("format") != FORMAT:
        raise InputError(f"{path}: model format {card.get('format')!r}, this jedi-pipe reads {FORMAT!r}")
    return Model(program.module(), card)


def _is_training_checkpoint(path: Path) -> bool:
    """A torch.save archive (a zip with data.pkl), as experts/<name>.pt and checkpoint.pt are."""
    import zipfile
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/data.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False
