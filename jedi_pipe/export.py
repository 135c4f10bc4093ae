"""`jedi-pipe export`: one model of a run as one self-contained file; `load_model` reads it back.

The file is a PyTorch exported program (`torch.export`, a `.pt2` archive): the graph and the
weights that inference needs and nothing else (no optimizer, no other dataset's head). Plain
PyTorch loads it without jedi-pipe installed:

    import torch
    model = torch.export.load("model.pt2").module()    # normalised clips [B, 3, T, S, S] -> logits [B, C]

Next to the program the archive holds `jedi_pipe.json` (MODEL_CARD below): class names, the clip
(frames, stride, size, mean/std), the evaluation views (windows x crops), and the shard encoding (codec, fps, short
side, seconds kept) that `jedi-pipe predict` re-applies to raw videos so that they are sampled as
the model was trained and tested. Plain PyTorch reads it with `torch.export.load(path,
extra_files={"jedi_pipe.json": ""})`.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .errors import InputError, MissingError
from .loaders.clip import ClipSpec

MODEL_CARD = "jedi_pipe.json"      # the archive's extra file with what inference needs besides the graph
FORMAT = "jedi-pipe model 1"
WHICH = ("student", "student_avg", "teacher", "expert")


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
    (jedi.student_avg); teacher: T_i, which needs every backbone (with teacher_ema, the moving
    average's, as scored in training).
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
    if isinstance(jedi, EMABaseline):       # the baseline's teacher is the student's own average
        return jedi.teachers[dataset]
    if isinstance(jedi, FixMatchBaseline):  # FixMatch's teacher is the student itself
        return jedi.students[dataset]
    ema = bool(jedi.config.teacher_ema)
    heads = jedi.ema_teachers if ema else jedi.teachers
    return TeacherNet(jedi.backbones_for(dataset, ema), heads[dataset]).eval()


def model_card(run, dataset: str, which: str) -> dict:
    """What inference needs besides the weights: classes, clip, views, the shards' encoding."""
    from .shards import open_shards
    from .trainer import clip_spec
    cfg = run_config(run)
    d = next(d for d in cfg.datasets if d.name == dataset)
    ss = open_shards(d.shards)
    enc = ss.card["encoding"]
    archs = [x.model for x in cfg.datasets] if which == "teacher" and cfg.jedi.teachers == "joint" else [d.model]
    clip = {k: v for k, v in asdict(clip_spec(cfg)).items() if k not in ("area", "ratio", "interp")}   # training-only
    return {"format": FORMAT, "dataset": dataset, "which": which, "archs": archs, "classes": ss.classes,
            "clip": clip, "views": cfg.clip.eval_views, "crops": cfg.clip.eval_crops,
            "encoding": {k: enc[k] for k in ("codec", "fps", "short_side", "max_seconds")},
            "run": str(Path(run).resolve()), "tool": f"jedi-pipe {__version__}"}


def export_model(run, dataset: str, which: str = "student", out="model.pt2") -> Path:
    """Write one model of a run (see the module docstring); returns the file written."""
    module = inference_module(run, dataset, which)
    card = model_card(run, dataset, which)
    c = card["clip"]
    example = torch.zeros(2, 3, c["frames"], c["size"], c["size"])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with torch.no_grad():
        program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    out = Path(out)
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
    try:
        with open(path, "rb") as f:
            program = torch.export.load(f, extra_files=extra)
    except Exception as e:   # torch raises several kinds for a file that is not an archive
        raise InputError(f"{path} is not a model written by `jedi-pipe export` ({type(e).__name__}: {e})") from None
    if not extra[MODEL_CARD]:
        raise InputError(f"{path} is an exported PyTorch program without {MODEL_CARD}: not written by `jedi-pipe export`")
    card = json.loads(extra[MODEL_CARD])
    if card.get("format") != FORMAT:
        raise InputError(f"{path}: model format {card.get('format')!r}, this jedi-pipe reads {FORMAT!r}")
    return Model(program.module(), card)
