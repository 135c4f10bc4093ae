"""JEDI: joint expert distillation across datasets (arXiv 2308.04934). Pure tensor code.

For N datasets, student i is ``S_i = h_i(f_i(x))`` (a registered model: ``f_i`` = its
``features``, ``h_i`` = its ``head``); teacher i is ``T_i(x) = g_i([f_1(x); ...; f_N(x)])``, a
linear head over the concatenated penultimate features of all students. Students and teachers
train together: supervised CE of S_i and T_i on labeled clips of dataset i, and distillation
of T_i (stop-gradient) into S_i on unlabeled clips of dataset i.

Batches are typed by role: labeled clips travel with labels, unlabeled clips are passed as
clips only (``forward(labeled, unlabeled)``), so an unlabeled label cannot reach a loss.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# the choices of the method's string options (JEDIConfig checks them, for the library and the YAML alike)
TEACHER_INITS = ("block", "probe")
BN_STATS = ("own", "batch", "source")
STRONG_STATS = ("shared", "split")


@dataclass
class JEDIConfig:
    """The method's knobs, one default each. The trainer's YAML section `jedi:` is this class plus
    the schedule (config.JediCfg extends it), so library and CLI run the same method by default."""
    temperature: float = 1.0  # tau of the soft targets; the KL term is scaled by tau^2
    threshold: float = 0.0  # unlabeled clip is masked when the teacher's max prob (at tau=1) is below; 0 keeps all
    hard: bool = False  # distill argmax pseudo-labels with CE instead of soft targets (tau unused)
    w_sup_student: float = 1.0  # weight of CE(S_i, y) on labeled clips
    w_sup_teacher: float = 1.0  # weight of CE(T_i, y) on labeled clips
    w_distill: float = 1.0  # weight of the T_i -> S_i distillation on unlabeled clips
    distill_rampup: int = 0  # joint steps over which w_distill (not w_distill_heads) rises from ~0 to its value (mean teacher's ramp,
    #                          exp(-5 (1 - t/T)^2)): early targets on strong views knock the live students far
    #                          below their experts at full lr (docs/method.md); 0: full weight from the start
    detach_teacher_features: bool = False  # ablation: teacher losses stop at the features, train g_i only
    teacher_warmup: int = 0  # joint steps at the start in which the teacher losses train the teacher heads only (as
    #                          detach_teacher_features): the heads' off-block weights, zero at the block init, settle
    #                          before their gradients reach the other datasets' backbones (trainer sets heads_only)
    teacher_init: str = "block"  # "block": g_i = h_i on f_i's block (T_i == S_i at start); "probe": fit g_i
    #                              with fit_teacher_heads_probe() on labeled features before training
    w_mutual: float = 0.0  # weight of the reverse term: the student's prediction (stop-gradient) distilled
    #                        into the teacher on the same unlabeled clips (deep mutual learning); 0, the
    #                        abstract's formulation, won on val with views (0.5 had won on test before; docs/method.md)
    w_distill_heads: float = 0.0  # weight of the same distillation into the live teacher heads alone: the teacher's
    #                               target (the moving average's, from the weak view) taught to the heads on the
    #                               unlabeled clips' features, detached, so the heads learn from the unlabeled clips as
    #                               the students' heads do and no backbone is pulled twice (needs teacher_ema; chosen
    #                               on a fresh draw of the benchmark, docs/method.md)
    teacher_ema: float = 0.0  # > 0: the teachers' predictions (distillation targets and test scores) come from an
    #                           exponential moving average of the joint model, this decay per step (mean teacher);
    #                           the live teacher heads still train on CE (and w_mutual, w_distill_heads when on).
    #                           0: the live heads
    bn_stats: str = "source"  # BatchNorm statistics of each backbone: "batch", over all clips of the step (every
    #                          dataset's); "own", over its own dataset's clips only, applied to all, as its expert
    #                          saw them; "source", each dataset's clips normalised with that dataset's statistics
    #                          (SourceBatchNorm: every backbone keeps running statistics per dataset, train and
    #                          test alike). Which wins: docs/method.md
    strong_stats: str = "shared"  # views with bn_stats "source": "shared", a student's strong views are normalised
    #                               with its labeled clips and enter its running statistics; "split", each
    #                               dataset's strong views are normalised by their own batch statistics and
    #                               never enter running statistics, which then are those of clean clips only

    def __post_init__(self):
        # each message starts with the key, so the config check can name it as `jedi.<key>`
        if self.bn_stats not in BN_STATS:
            raise ValueError(f"bn_stats: one of {', '.join(BN_STATS)}, got {self.bn_stats!r}")
        if self.strong_stats not in STRONG_STATS:
            raise ValueError(f"strong_stats: one of {', '.join(STRONG_STATS)}, got {self.strong_stats!r}")
        if self.strong_stats == "split" and self.bn_stats != "source":
            raise ValueError(f"strong_stats: split keeps statistics per source (bn_stats: source), not with "
                             f"bn_stats {self.bn_stats!r}")
        if self.teacher_init not in TEACHER_INITS:
            raise ValueError(f"teacher_init: one of {', '.join(TEACHER_INITS)}, got {self.teacher_init!r}")
        for name in ("w_sup_student", "w_sup_teacher", "w_distill", "w_mutual", "w_distill_heads"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):   # nan fails every comparison
                raise ValueError(f"{name}: a loss weight, finite and >= 0, got {getattr(self, name)}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature: must be finite and > 0, got {self.temperature}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold: a probability in [0, 1], got {self.threshold}")
        if self.distill_rampup < 0:
            raise ValueError(f"distill_rampup: a number of steps >= 0, got {self.distill_rampup}")
        if self.teacher_warmup < 0:
            raise ValueError(f"teacher_warmup: a number of steps >= 0, got {self.teacher_warmup}")
        if not 0.0 <= self.teacher_ema < 1.0:
            raise ValueError(f"teacher_ema: a decay in [0, 1), got {self.teacher_ema}")


def check_joint_options(cfg: JEDIConfig) -> None:
    """The rules of the options that only JEDI's own teacher heads read (the baselines drop them,
    trainer.loss_config): checked by JEDI and by the config for `teachers: joint`."""
    if cfg.w_distill_heads and not cfg.teacher_ema:
        raise ValueError("w_distill_heads: needs teacher_ema > 0 (the target must come from the moving average; "
                         "a head distilled from itself gets no gradient), or set w_distill_heads: 0")
    if cfg.w_distill_heads and cfg.w_mutual:
        raise ValueError("w_distill_heads: not with w_mutual, which reads the same live teacher logits of the "
                         "unlabeled clips and would then train the teacher heads only too; set one of them to 0")


class Logits(NamedTuple):
    student: Tensor  # [B, C_i]  S_i(x)
    teacher: Tensor  # [B, C_i]  T_i(x), the live teacher head (trained by CE, and w_mutual or w_distill_heads when on)
    teacher_ema: Tensor | None = None  # [B, C_i]  T_i of the moving average (teacher_ema > 0), no gradient

    @property
    def target(self) -> Tensor:
        """The teacher's prediction: what the student is distilled from, and what is scored."""
        return self.teacher if self.teacher_ema is None else self.teacher_ema


@dataclass
class StepOutput:
    labeled: dict[str, Logits] = field(default_factory=dict)  # per dataset, rows of the labeled clips
    unlabeled: dict[str, Logits] = field(default_factory=dict)  # per dataset, rows of the unlabeled clips


class JEDI(nn.Module):
    """N students (one per dataset, any registered architectures) and their N teacher heads."""

    def __init__(self, students: Sequence[tuple[str, nn.Module]] | Mapping[str, nn.Module],
                 config: JEDIConfig | None = None):
        super().__init__()
        students = list(students.items()) if isinstance(students, Mapping) else list(students)
        if not students:
            raise ValueError("JEDI needs at least one (dataset name, model) pair")
        names = [name for name, _ in students]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        for name, model in students:
            if not (hasattr(model, "features") and isinstance(getattr(model, "head", None), nn.Linear)
                    and hasattr(model, "num_features")):
                raise TypeError(f"student {name!r} must follow the model contract "
                                "(features(x), a linear `head`, `num_features`); build it with jedi_pipe.models.build")
        self.config = config or JEDIConfig()
        check_joint_options(self.config)
        self.names = names
        self.heads_only = False     # teacher losses stop at the features (teacher_warmup; the trainer sets it per step)
        self.students = nn.ModuleDict(students)
        # column block of f_i inside the teachers' input [f_1; ...; f_N]
        self.feature_slices: dict[str, slice] = {}
        start = 0
        for name, model in students:
            self.feature_slices[name] = slice(start, start + model.num_features)
            start += model.num_features
        self.teacher_dim = start
        # BatchNorm layers that take their statistics from their own dataset's rows of the step
        self.own_stats_bns = {name: own_stats_batchnorm(model) if self.config.bn_stats == "own" else []
                              for name, model in students}
        self.source_bns = {name: source_batchnorm(model, names.index(name), len(names))
                           if self.config.bn_stats == "source" else [] for name, model in students}
        self.teachers = nn.ModuleDict({name: nn.Linear(start, m.head.out_features) for name, m in students})
        # "probe" also starts here: the block init is a warm start that the probe then refines
        self.init_teachers_block()
        if self.config.teacher_ema:
            # the slow copy of students and teachers; never trained, moved by update_ema()
            self.ema_students = copy.deepcopy(self.students).requires_grad_(False).eval()
            self.ema_teachers = copy.deepcopy(self.teachers).requires_grad_(False).eval()
            self.ema_source_bns = {name: [m for m in self.ema_students[name].modules() if isinstance(m, SourceBatchNorm)]
                                   for name in names}

    def train(self, mode: bool = True) -> JEDI:
        super().train(mode)
        if self.config.teacher_ema:   # the average runs on its running BN statistics, which it carries
            self.ema_students.eval()
            self.ema_teachers.eval()
        return self

    @torch.no_grad()
    def reset_ema(self) -> None:
        """The average restarts at the live model (after the probe has moved the teacher heads)."""
        if self.config.teacher_ema:
            self.ema_students.load_state_dict(self.students.state_dict())
            self.ema_teachers.load_state_dict(self.teachers.state_dict())

    def update_ema(self) -> None:
        """After each optimizer step: average <- decay * average + (1 - decay) * live."""
        if self.config.teacher_ema:
            ema_update(self.ema_students, self.students, self.config.teacher_ema)
            ema_update(self.ema_teachers, self.teachers, self.config.teacher_ema)

    @classmethod
    def from_experts(cls, experts: Mapping[str, nn.Module], config: JEDIConfig | None = None,
                     copy_experts: bool = True) -> JEDI:
        """Students start as the per-dataset experts; copies by default, so the experts stay
        intact for reporting the expert baseline."""
        return cls([(n, copy.deepcopy(m) if copy_experts else m) for n, m in experts.items()], config)

    @torch.no_grad()
    def init_teachers_block(self) -> None:
        """g_i <- h_i on f_i's column block, zeros elsewhere: T_i(x) == S_i(x).

        Note the zero blocks: at this point T_i does not depend on f_j (j != i), so the very
        first teacher gradient reaches only f_i; once g_i's off-block weights move (one
        optimizer step), teacher losses reach every backbone.
        """
        for name in self.names:
            g, h = self.teachers[name], self.students[name].head
            g.weight.zero_()
            g.weight[:, self.feature_slices[name]] = h.weight
            if h.bias is not None:
                g.bias.copy_(h.bias)
            else:
                g.bias.zero_()

    def teacher_features(self, x: Tensor, dataset: str) -> Tensor:
        """[f_1(x); ...; f_N(x)] of clips `x` of `dataset`: teacher `dataset`'s input, [B, teacher_dim]
        (e.g. for the probe), each backbone normalising them as the joint step does that dataset's
        rows (with bn_stats "source", by `dataset`'s statistics)."""
        parts = [("labeled", dataset, x)]
        return torch.cat([self._features(n, x, parts) for n in self.names], dim=1)

    def source_parts(self, parts: list, offset: int = 0, strong: bool = False) -> list[tuple[int, slice]]:
        """(dataset index, rows) of every part of a batch, from row `offset` on: what a SourceBatchNorm normalises by.
        ``strong``: the unlabeled parts are strong views; with strong_stats "split" they get index N + i
        (batch statistics of their own, no running statistics: SourceBatchNorm._stats)."""
        out, start, n = [], 0, len(self.names)
        split = strong and self.config.strong_stats == "split"
        for role, name, clips in parts:
            stop = start + clips.shape[0]
            if stop > offset:
                index = self.names.index(name) + (n if split and role == "unlabeled" else 0)
                out.append((index, slice(max(start, offset) - offset, stop - offset)))
            start = stop
        return out

    @torch.no_grad()
    def backbones_for(self, dataset: str, ema: bool = False) -> list[nn.Module]:
        """Every backbone as teacher `dataset` sees it, as plain eval-mode modules (for export): with
        bn_stats "source", copies whose running statistics are those of `dataset`'s clips."""
        students = self.ema_students if ema else self.students
        if self.config.bn_stats != "source":
            return [students[n] for n in self.names]
        out, i = [], self.names.index(dataset)
        for n in self.names:
            m = copy.deepcopy(students[n]).eval()
            for bn in m.modules():
                if isinstance(bn, SourceBatchNorm):
                    bn.use_source(i)
            out.append(m)
        return out

    def forward(self, labeled: Mapping[str, Tensor], unlabeled: Mapping[str, Tensor] | None = None,
                unlabeled_weak: Mapping[str, Tensor] | None = None) -> StepOutput:
        """Student and teacher logits for every dataset's clips, every backbone run ONCE.

        ``labeled`` / ``unlabeled``: dataset name -> clips ``[B, C, T, H, W]`` (any subset of the
        datasets; for evaluation pass the test clips as ``labeled``). All clips of the step go
        through each backbone as one batch (so they must share C, T, H, W); the rows are then
        split back per dataset and role. ``unlabeled_weak`` (views; needs teacher_ema): weak views
        of the unlabeled clips, row for row, which then are the strong ones: the moving average's
        targets come from the weak views, the students learn on the strong ones.
        """
        if unlabeled_weak is not None and not self.config.teacher_ema:
            raise ValueError("weak views need teacher_ema > 0: the targets come from the moving average")
        parts = [("labeled", n, x) for n, x in labeled.items()]
        parts += [("unlabeled", n, x) for n, x in (unlabeled or {}).items()]
        if not parts:
            raise ValueError("forward needs at least one batch of clips")
        for role, name, x in parts:
            if name not in self.students:
                raise KeyError(f"{role} clips for unknown dataset {name!r}; JEDI datasets: {self.names}")
            if x.dim() != 5:
                raise ValueError(f"{role} clips of {name!r} must be [B, C, T, H, W], got shape {tuple(x.shape)}")
        shapes = {tuple(x.shape[1:]) for _, _, x in parts}
        if len(shapes) > 1:
            got = ", ".join(f"{name}/{role}: {tuple(x.shape[1:])}" for role, name, x in parts)
            raise ValueError("all clips of a JEDI step run through every backbone as one batch, so they must "
                             f"share [C, T, H, W]; got {got}. Use one clip length and crop size for all datasets.")

        x = torch.cat([x for _, _, x in parts]) if len(parts) > 1 else parts[0][2]
        feats = [self._features(n, x, parts, strong=unlabeled_weak is not None) for n in self.names]
        teacher_in = torch.cat(feats, dim=1)
        if self.config.detach_teacher_features or self.heads_only:
            teacher_in = teacher_in.detach()

        ema_from = x.shape[0]      # rows from here on also get the average's teacher (teacher_ema > 0)
        if self.config.teacher_ema:
            # training: only the unlabeled rows (a suffix of x) need it, as targets; evaluation: every row
            ema_from = sum(c.shape[0] for role, _, c in parts if role == "labeled") if self.training else 0
            ema_in = self.ema_features(x, parts, ema_from, unlabeled_weak if self.training else None)

        out, start = StepOutput(), 0
        for role, name, clips in parts:
            rows = slice(start, start + clips.shape[0])
            start = rows.stop
            student = self.students[name].head(feats[self.names.index(name)][rows])
            teacher_ema = None
            if rows.start >= ema_from:
                with torch.no_grad():
                    teacher_ema = self.ema_teachers[name](ema_in[rows.start - ema_from:rows.stop - ema_from])
            getattr(out, role)[name] = Logits(student, self.teacher_head(name, role, teacher_in[rows]), teacher_ema)
        return out

    def teacher_head(self, name: str, role: str, teacher_in: Tensor) -> Tensor:
        """The live teacher T_name on rows of [f_1; ...; f_N]; on unlabeled rows with w_distill_heads, on the
        features detached: that term then trains the head alone."""
        if role == "unlabeled" and self.config.w_distill_heads:
            teacher_in = teacher_in.detach()
        return self.teachers[name](teacher_in)

    @torch.no_grad()
    def ema_features(self, x: Tensor, parts: list, ema_from: int, unlabeled_weak=None) -> Tensor:
        """[f_1; ...; f_N] of the moving average over rows ema_from.. of x (the unlabeled suffix in
        training), or over those rows' weak views; each dataset's rows by its own statistics."""
        x_t = x[ema_from:]
        if unlabeled_weak:   # the same rows, weak views
            x_t = torch.cat([unlabeled_weak[n] for role, n, _ in parts if role == "unlabeled"])
        with _source_rows(self.ema_source_bns if self.config.bn_stats == "source" else {},
                          self.source_parts(parts, ema_from)):
            return torch.cat([self.ema_students[n].features(x_t) for n in self.names], dim=1)

    def _features(self, name: str, x: Tensor, parts: list, strong: bool = False) -> Tensor:
        """f_name(x); with bn_stats "own", its BatchNorm statistics come from the rows of dataset `name`;
        with "source", each dataset's rows by that dataset's (``strong``: the unlabeled rows are strong views)."""
        if self.source_bns[name]:
            with _source_rows({name: self.source_bns[name]}, self.source_parts(parts, strong=strong)):
                return self.students[name].features(x)
        bns = self.own_stats_bns[name]
        if not (bns and self.training):
            return self.students[name].features(x)
        rows, start = [], 0
        for _, n, clips in parts:
            if n == name:
                rows.append(torch.arange(start, start + clips.shape[0], device=x.device))
            start += clips.shape[0]
        own = torch.cat(rows) if rows else None     # no clips of its own this step: the whole batch
        for bn in bns:
            bn.stat_rows = own
        try:
            return self.students[name].features(x)
        finally:
            for bn in bns:
                bn.stat_rows = None


class EMABaseline(nn.Module):
    """The single-dataset semi-supervised baseline (mean teacher): each student distilled from an
    exponential moving average of itself, on its own dataset's clips only. Same interface, losses
    and budget as JEDI, so the gap JEDI - EMABaseline is what the other datasets contribute.

    ``teacher`` logits come from the EMA copies (eval mode, no gradient): the teacher CE term
    of ``jedi_losses`` is logged but trains nothing. Call ``update_ema()`` after each step.
    """

    def __init__(self, students: Mapping[str, nn.Module], config: JEDIConfig | None = None, decay: float = 0.95):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.config, self.decay = config or JEDIConfig(), decay
        self.names = list(students)
        self.students = nn.ModuleDict(students)
        self.teachers = nn.ModuleDict({n: copy.deepcopy(m).requires_grad_(False).eval() for n, m in students.items()})

    def train(self, mode: bool = True) -> EMABaseline:
        super().train(mode)
        self.teachers.eval()   # running BN statistics, which the EMA carries
        return self

    @classmethod
    def from_experts(cls, experts: Mapping[str, nn.Module], config: JEDIConfig | None = None,
                     decay: float = 0.95) -> EMABaseline:
        return cls({n: copy.deepcopy(m) for n, m in experts.items()}, config, decay)

    def forward(self, labeled: Mapping[str, Tensor], unlabeled: Mapping[str, Tensor] | None = None,
                unlabeled_weak: Mapping[str, Tensor] | None = None) -> StepOutput:
        """``unlabeled_weak`` (views): weak views of the unlabeled clips, which then are the strong
        ones: the EMA teacher sees the weak views, the student the strong ones."""
        unlabeled, weak = unlabeled or {}, unlabeled_weak or {}
        out = StepOutput()
        for name in self.names:
            parts = [(role, x) for role, x in (("labeled", labeled.get(name)), ("unlabeled", unlabeled.get(name)))
                     if x is not None]
            if not parts:
                continue
            x = torch.cat([x for _, x in parts])
            student = self.students[name](x)
            with torch.no_grad():
                teacher = self.teachers[name](torch.cat([weak.get(name, x) if role == "unlabeled" else x
                                                         for role, x in parts]))
            start = 0
            for role, clips in parts:
                rows = slice(start, start + clips.shape[0])
                start = rows.stop
                getattr(out, role)[name] = Logits(student[rows], teacher[rows])
        return out

    def update_ema(self) -> None:
        """After each optimizer step: each teacher <- decay * teacher + (1 - decay) * its student."""
        for name in self.names:
            ema_update(self.teachers[name], self.students[name], self.decay)


class FixMatchBaseline(nn.Module):
    """The single-dataset FixMatch baseline: each student's own prediction on the weak view of an
    unlabeled clip (no gradient) is the target for its prediction on the strong view; with
    ``hard`` and ``threshold`` (trainer.loss_config) this is FixMatch's loss. Each dataset
    alone, same interface, steps and batches as JEDI. ``teacher`` logits are the student's own,
    detached: the teacher terms train nothing.
    """

    def __init__(self, students: Mapping[str, nn.Module], config: JEDIConfig | None = None):
        super().__init__()
        self.config, self.names = config or JEDIConfig(), list(students)
        self.students = nn.ModuleDict(students)

    @classmethod
    def from_experts(cls, experts: Mapping[str, nn.Module], config: JEDIConfig | None = None) -> FixMatchBaseline:
        return cls({n: copy.deepcopy(m) for n, m in experts.items()}, config)

    def forward(self, labeled: Mapping[str, Tensor], unlabeled: Mapping[str, Tensor] | None = None,
                unlabeled_weak: Mapping[str, Tensor] | None = None) -> StepOutput:
        """``unlabeled``: the strong views; ``unlabeled_weak``: the weak views of the same clips,
        where the targets come from (None: the targets come from the same clips)."""
        unlabeled, weak = unlabeled or {}, unlabeled_weak or {}
        out = StepOutput()
        for name in self.names:
            parts = [(role, x) for role, x in (("labeled", labeled.get(name)), ("unlabeled", unlabeled.get(name)),
                                              ("weak", weak.get(name))) if x is not None]
            if not parts:
                continue
            # one batch, as FixMatch does: BatchNorm sees labeled, weak and strong clips together
            logits = self.students[name](torch.cat([x for _, x in parts]))
            rows = dict(zip([r for r, _ in parts], logits.split([x.shape[0] for _, x in parts])))
            if "labeled" in rows:
                out.labeled[name] = Logits(rows["labeled"], rows["labeled"].detach())
            if "unlabeled" in rows:
                out.unlabeled[name] = Logits(rows["unlabeled"], rows.get("weak", rows["unlabeled"]).detach())
        return out

    def update_ema(self) -> None:
        pass


def distill_loss(student_logits: Tensor, teacher_logits: Tensor, cfg: JEDIConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher -> student on unlabeled clips. Returns (loss, mask_rate, mean teacher confidence).

    The loss is averaged over ALL unlabeled clips (masked ones count as zero, as in FixMatch),
    so its scale does not jump when few clips pass the threshold.
    """
    t = teacher_logits.detach().float()  # stop-gradient: the target never trains the teacher
    s = student_logits.float()
    conf = t.softmax(-1).amax(-1)
    keep = (conf >= cfg.threshold).float()
    if cfg.hard:
        per_clip = F.cross_entropy(s, t.argmax(-1), reduction="none")
    else:
        tau = cfg.temperature
        log_p_t = F.log_softmax(t / tau, dim=-1)
        per_clip = (log_p_t.exp() * (log_p_t - F.log_softmax(s / tau, dim=-1))).sum(-1) * tau**2
    return (per_clip * keep).mean(), 1.0 - keep.mean(), conf.mean()


def jedi_losses(out: StepOutput, labels: Mapping[str, Tensor], cfg: JEDIConfig) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss of one step, and per-dataset detached scalars for logging.

    ``labels``: dataset name -> class indices ``[B]`` for exactly the datasets in ``out.labeled``.
    Log keys: ``{name}/sup_student``, ``{name}/sup_teacher``, ``{name}/distill``,
    ``{name}/mask_rate`` (fraction of unlabeled clips masked out), ``{name}/teacher_conf``,
    ``{name}/distill_heads`` and ``{name}/mutual`` (when on), and ``total``. Values are 0-dim tensors
    on the logits' device: no host sync here.
    """
    if set(labels) != set(out.labeled):
        raise ValueError(f"labels given for {sorted(labels)} but labeled clips for {sorted(out.labeled)}")
    terms: list[Tensor] = []
    logs: dict[str, Tensor] = {}
    for name, (s, t, _) in out.labeled.items():
        y = labels[name]
        if y.shape != s.shape[:1]:
            raise ValueError(f"labels of {name!r}: expected shape {tuple(s.shape[:1])}, got {tuple(y.shape)}")
        # float(): under autocast the logits may be half precision; CE wants full precision
        ce_s, ce_t = F.cross_entropy(s.float(), y), F.cross_entropy(t.float(), y)
        terms += [cfg.w_sup_student * ce_s, cfg.w_sup_teacher * ce_t]
        logs[f"{name}/sup_student"], logs[f"{name}/sup_teacher"] = ce_s.detach(), ce_t.detach()
    for name, logits in out.unlabeled.items():
        s, t = logits.student, logits.teacher
        loss, mask_rate, conf = distill_loss(s, logits.target, cfg)
        terms.append(cfg.w_distill * loss)
        logs[f"{name}/distill"], logs[f"{name}/mask_rate"], logs[f"{name}/teacher_conf"] = (
            loss.detach(), mask_rate, conf)
        if cfg.w_distill_heads:   # the same target teaches the live teacher head (its features detached in forward)
            heads, _, _ = distill_loss(t, logits.target, cfg)
            terms.append(cfg.w_distill_heads * heads)
            logs[f"{name}/distill_heads"] = heads.detach()
        if cfg.w_mutual:   # the same loss the other way round: the student's prediction teaches the teacher
            back, _, _ = distill_loss(t, s, dataclasses.replace(cfg, threshold=0.0))
            terms.append(cfg.w_mutual * back)
            logs[f"{name}/mutual"] = back.detach()
    if not terms:
        raise ValueError("no labeled or unlabeled outputs to compute a loss on")
    total = torch.stack(terms).sum()
    logs["total"] = total.detach()
    return total, logs


def fit_teacher_heads_probe(jedi: JEDI, feats_per_dataset: Mapping[str, Tensor],
                            labels_per_dataset: Mapping[str, Tensor], steps: int = 300, lr: float = 1e-2,
                            weight_decay: float = 1e-4) -> dict[str, Tensor]:
    """``teacher_init="probe"``: fit each g_i by full-batch logistic regression (Adam).

    ``feats_per_dataset[i]``: ``jedi.teacher_features(x, name_i)`` of dataset i's labeled clips,
    ``[M_i, teacher_dim]``, computed beforehand (eval mode, no grad); ``labels_per_dataset[i]``:
    ``[M_i]``. Starts from the current g_i (the block init, i.e. the expert), touches nothing
    else. Returns the final training loss per dataset.
    """
    final = {}
    for name, feats in feats_per_dataset.items():
        g, y = jedi.teachers[name], labels_per_dataset[name]
        if feats.shape != (y.shape[0], jedi.teacher_dim):
            raise ValueError(f"probe features of {name!r}: expected [{y.shape[0]}, {jedi.teacher_dim}], "
                             f"got {list(feats.shape)}")
        feats = feats.detach().to(g.weight)
        y = y.to(g.weight.device)
        # optimise copies, so the module's .grad fields and autograd graph stay untouched
        w = g.weight.detach().clone().requires_grad_()
        b = g.bias.detach().clone().requires_grad_()
        opt = torch.optim.Adam([w, b], lr=lr, weight_decay=weight_decay)
        with torch.enable_grad():
            for _ in range(steps):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(F.linear(feats, w, b), y)
                loss.backward()
                opt.step()
        with torch.no_grad():
            g.weight.copy_(w)
            g.bias.copy_(b)
            final[name] = F.cross_entropy(F.linear(feats, w, b), y)
    return final


class OwnStatsBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm that, in training, normalises every row with the mean and variance of the rows
    in ``stat_rows`` (and tracks those in its running statistics); plain BatchNorm when
    ``stat_rows`` is None or in eval mode. Same parameters and buffers, so the same state_dict.

    Why: a JEDI backbone runs over the clips of every dataset at once. With statistics of the
    whole mixed batch its own dataset's clips are normalised differently from how its expert saw
    them, and the expert's accuracy collapses (docs/method.md: Kinetics-400's 55.5 -> 15.6 % from
    the running statistics alone). With its own dataset's statistics the student starts exactly
    as its expert, and the other datasets' clips are normalised as at test time.
    """

    stat_rows: Tensor | None = None

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.stat_rows is None:
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        sub = x[self.stat_rows].float()
        mean, var = sub.mean(dims), sub.var(dims, unbiased=False)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                n = sub.numel() / sub.shape[1]
                self.running_mean.lerp_(mean, factor)
                self.running_var.lerp_(var * (n / max(n - 1.0, 1.0)), factor)
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x.float() - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def own_stats_batchnorm(model: nn.Module) -> list[OwnStatsBatchNorm]:
    """Swap every BatchNorm in `model` for an OwnStatsBatchNorm holding the same parameters and
    buffers (in place); returns them in module order."""
    swapped = []
    for parent in list(model.modules()):
        for child_name, bn in list(parent.named_children()):
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not isinstance(bn, OwnStatsBatchNorm):
                new = OwnStatsBatchNorm(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
                if bn.affine:
                    new.weight, new.bias = bn.weight, bn.bias
                if bn.track_running_stats:
                    new.running_mean, new.running_var = bn.running_mean, bn.running_var
                    new.num_batches_tracked = bn.num_batches_tracked
                new.train(bn.training)
                setattr(parent, child_name, new)
                swapped.append(new)
    return swapped


class SourceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm with statistics per source dataset (bn_stats "source"): each row is normalised
    with the mean and variance of its own dataset's rows (training) or that dataset's running
    statistics (eval). Its own dataset's statistics stay in ``running_mean``/``running_var`` (so a
    student alone is a plain model); the other datasets' in ``source_mean``/``source_var`` [N, C].
    ``stat_rows``: [(dataset index, rows)] of the batch; None: plain BatchNorm (own statistics).

    Why: backbone j runs over every dataset's clips for the teachers. Normalising dataset i's clips
    with dataset i's statistics keeps student j's own clips exactly as its expert saw them (no
    BatchNorm shock) and presents the other datasets' clips to j standardised, whatever they look like.
    """

    stat_rows: list | None = None

    def __init__(self, num_features: int, own: int, sources: int, **kw):
        super().__init__(num_features, **kw)
        self.own = own
        self.register_buffer("source_mean", torch.zeros(sources, num_features))
        self.register_buffer("source_var", torch.ones(sources, num_features))

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def _stats(self, source: int) -> tuple[Tensor | None, Tensor | None]:
        """Running statistics of dataset `source`; None for an index past the datasets (strong views,
        strong_stats "split"): normalised by their batch statistics, tracked nowhere."""
        if source == self.own:
            return self.running_mean, self.running_var
        if source >= self.source_mean.shape[0]:
            return None, None
        return self.source_mean[source], self.source_var[source]

    def forward(self, x: Tensor) -> Tensor:
        if self.stat_rows is None:
            return super().forward(x)
        groups: dict[int, list[slice]] = {}
        for source, rows in self.stat_rows:
            groups.setdefault(source, []).append(rows)
        out: list[tuple[int, Tensor]] = []
        for source, rows in groups.items():
            xs = torch.cat([x[r] for r in rows]) if len(rows) > 1 else x[rows[0]]
            mean, var = self._stats(source)     # views: F.batch_norm updates them in place in training
            ys = F.batch_norm(xs, mean, var, self.weight, self.bias, self.training or mean is None,
                              self.momentum or 0.1, self.eps)
            out += zip([r.start for r in rows], ys.split([r.stop - r.start for r in rows]))
        return torch.cat([y for _, y in sorted(out, key=lambda t: t[0])])

    @torch.no_grad()
    def use_source(self, source: int) -> None:
        """From now on, plain BatchNorm with dataset `source`'s running statistics (for export)."""
        mean, var = self._stats(source)
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)


def source_batchnorm(model: nn.Module, own: int, sources: int) -> list[SourceBatchNorm]:
    """Swap every BatchNorm in `model` for a SourceBatchNorm (in place), the other datasets'
    statistics starting as its own; returns them in module order."""
    swapped = []
    for parent in list(model.modules()):
        for child_name, bn in list(parent.named_children()):
            if isinstance(bn, nn.modules.batchnorm._BatchNorm) and not isinstance(bn, SourceBatchNorm):
                new = SourceBatchNorm(bn.num_features, own, sources, eps=bn.eps, momentum=bn.momentum,
                                      affine=bn.affine, track_running_stats=True)
                new.load_state_dict(bn.state_dict(), strict=False)
                new.source_mean.copy_(bn.running_mean.expand_as(new.source_mean))
                new.source_var.copy_(bn.running_var.expand_as(new.source_var))
                new.train(bn.training)
                setattr(parent, child_name, new)
                swapped.append(new)
    return swapped


class _source_rows:
    """Within the block, the SourceBatchNorms of `bns` ({name: [bn]}) normalise by `parts`."""

    def __init__(self, bns: Mapping[str, list], parts: list):
        self.bns, self.parts = [bn for group in bns.values() for bn in group], parts

    def __enter__(self):
        for bn in self.bns:
            bn.stat_rows = self.parts

    def __exit__(self, *exc):
        for bn in self.bns:
            bn.stat_rows = None


def add_students_avg(model: nn.Module, decay: float) -> None:
    """Give a joint model (JEDI or a baseline) `students_avg`, a copy of its students that
    `update_averages` moves towards them at `decay` per step: a submodule, so it is checkpointed and
    loaded with the rest; never trained."""
    model.students_avg = copy.deepcopy(model.students).requires_grad_(False)
    model.student_avg_decay = decay


def update_averages(model: nn.Module) -> None:
    """After each optimizer step: every moving average the model keeps (its own update_ema: the
    EMA baseline's teachers, teacher_ema's copies; and the students' average, add_students_avg)."""
    model.update_ema()
    if hasattr(model, "students_avg"):
        ema_update(model.students_avg, model.students, model.student_avg_decay)


@torch.no_grad()
def precise_bn(model: nn.Module, batches) -> dict[str, Tensor]:
    """PreciseBN (Wu & Johnson 2021; video codebases run it before each evaluation): the students'
    BatchNorm running statistics recomputed at the current weights, each the mean of its batch
    statistics over `batches`, tuples of the model's forward arguments run as a training step runs
    them (train mode: the same rows, sources and views), without gradients.

    Why: early in the joint phase the weights move faster than running statistics at momentum 0.1
    follow, so students scored on statistics gathered under older weights read far under what their
    weights do (docs/method.md, Step 30). Returns the students' buffers it replaced:
    ``model.students.load_state_dict(them, strict=False)`` puts them back, so training goes on as
    if nothing had run. The moving averages (teacher_ema, student_avg) are not touched.
    """
    before = {k: v.clone() for k, v in model.students.named_buffers()}
    bns = [m for m in model.students.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta, was_training = [m.momentum for m in bns], model.training
    model.train()
    try:
        for k, args in enumerate(batches):
            for m in bns:
                m.momentum = 1.0 / (k + 1)   # after batch k: the mean of batches 0..k (the first overwrites)
            model(*args)
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return before


@torch.no_grad()
def ema_update(teacher_model: nn.Module, student_model: nn.Module, decay: float) -> None:
    """teacher <- decay * teacher + (1 - decay) * student, parameters and float buffers (BN
    running stats) alike; integer buffers (num_batches_tracked) are copied."""
    teacher_sd = teacher_model.state_dict()
    for key, s in student_model.state_dict().items():
        t = teacher_sd[key]
        if t.is_floating_point():
            t.lerp_(s.to(t.dtype), 1.0 - decay)
        else:
            t.copy_(s)
