"""The records a run folder holds, written by the trainer and read by whoever draws or prints them.

Data flows one way: trainer -> these records -> pictures (plots.py) and tables (results.md, the CLI).
Nothing here imports torch, but for the optional TensorBoard logger.

metrics.jsonl, one JSON object a line:
    StepRecord  every LOG_EVERY joint steps, one per dataset: step, dataset, lr (the students'; the
                teacher heads' is lr / jedi.student_lr_scale from jedi.teacher_lr_from on), loss (the weighted
                total of all datasets), clips_per_s, input_wait (fraction of step time spent waiting
                for data), and the method's terms for that dataset (`terms`: sup_student,
                sup_teacher, distill, mutual, distill_heads, pseudo_label_acc, teacher_conf, mask_rate, ...)
    EvalRecord  at every evaluation: step, split (val or test), and {dataset: {kind: {top1, top5, n}}} (kind: student, teacher,
                student_ema and student_avg as in results.json)

results.json (`run_results` in trainer.py):
    {"datasets": {dataset: {kind: Scores}},      kind: expert, student, teacher (and student_ema: the moving
                                                 average's student, when the teachers are scored from it;
                                                 student_avg: the students' weight average, jedi.student_avg)
     "classes":  {dataset: [class name, ...]},    the indices of per_class and confusion
     "views":    {"temporal": windows, "spatial": crops},
     "step":     the joint step scored (the checkpoint's; absent for experts alone and in runs before 2026-12-01),
     "val":      {dataset: {kind: {top1, top5, n}}}   only when every shard folder has a val role: the
                                                 numbers to choose by (kind: expert when its checkpoint has it)}
    Scores: top1, top5 (%), n (test clips), per_class (top-1 % by class index; null: no test clip),
            confusion ([true, predicted, clips] for every non-zero cell).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UnavailableError

KINDS = ("expert", "student", "teacher")
# Kinds a run may add, one line each under the headline table. student_ema: the fair pair of teachers
# scored from their moving average (jedi.teacher_ema); student_avg: the students' weight average.
EXTRA_KINDS = {"student_ema": "Students of the teachers' moving average (jedi.teacher_ema)",
               "student_avg": "Students' weight average (jedi.student_avg)"}


@dataclass
class StepRecord:
    step: int
    dataset: str
    lr: float
    loss: float
    clips_per_s: float
    input_wait: float
    terms: dict = field(default_factory=dict)     # the method's per-dataset terms (see the module docstring)

    def line(self) -> dict:
        return {"step": self.step, "dataset": self.dataset, "lr": self.lr, "loss": self.loss,
                "clips_per_s": self.clips_per_s, "input_wait": self.input_wait, **self.terms}

    def value(self, name: str) -> float | None:
        """A logged quantity by name: a field (loss, lr, ...) or one of the terms; None when not logged."""
        return getattr(self, name) if name in ("lr", "loss", "clips_per_s", "input_wait") else self.terms.get(name)


@dataclass
class EvalRecord:
    step: int
    scores: dict        # {dataset: {kind: {top1, top5, n}}}
    split: str = "test"  # the role evaluated: val when every shard folder has one, else test

    def line(self) -> dict:
        return {"step": self.step, "split": self.split, "eval": self.scores}


def parse_line(text: str) -> StepRecord | EvalRecord | None:
    """One metrics.jsonl line as its record; None for a line cut short by a kill mid-write."""
    try:
        d = json.loads(text)
    except json.JSONDecodeError:
        return None
    if "eval" in d:
        return EvalRecord(d["step"], d["eval"], d.get("split", "test"))
    fixed = {k: d.pop(k) for k in ("step", "dataset", "lr", "loss", "clips_per_s", "input_wait")}
    nan = float("nan")   # written as null (a diverged run's loss): strict JSON readers take no NaN
    fixed.update({k: nan for k in ("lr", "loss", "clips_per_s", "input_wait") if fixed[k] is None})
    return StepRecord(**fixed, terms={k: nan if v is None else v for k, v in d.items()})


def read_metrics(path) -> tuple[list[StepRecord], list[EvalRecord]]:
    """The step and evaluation records of a metrics.jsonl, in file order (missing file: none)."""
    steps, evals = [], []
    path = Path(path)
    if path.is_file():
        for ln in path.read_text().splitlines():
            rec = parse_line(ln) if ln.strip() else None
            if isinstance(rec, StepRecord):
                steps.append(rec)
            elif rec is not None:
                evals.append(rec)
    return steps, evals


def _finite(value):
    """value with every NaN or infinity in it as None (JSON null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def append_records(path, records) -> None:
    with open(path, "a") as f:
        for r in records:   # strict JSON, one object a line (jq and other readers refuse NaN)
            f.write(json.dumps(_finite(r.line()), allow_nan=False) + "\n")


class MetricsLog:
    """metrics.jsonl, the source of truth, and with `tensorboard=True` the same scalars as TensorBoard
    events in <run>/tensorboard (pip install "jedi-pipe[tensorboard]"; `tensorboard --logdir <run>`).

    Tags: `<dataset>/<quantity>` for step records (loss, lr, clips_per_s, input_wait, the terms),
    `<dataset>/<split>_top1/<kind>` and `<dataset>/<split>_top5/<kind>` for evaluations (split: val or test). `resume_step`: the
    events after it are dropped, as _truncate_metrics drops the lines.
    """

    def __init__(self, run, tensorboard: bool = False, resume_step: int | None = None):
        self.path = Path(run) / "metrics.jsonl"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UnavailableError('logger: tensorboard needs the tensorboard package: '
                                   'pip install "jedi-pipe[tensorboard]"') from None
            logdir = Path(run) / "tensorboard"
            if resume_step is None and logdir.exists():     # a fresh run, as metrics.jsonl starts anew
                import shutil
                shutil.rmtree(logdir)
            self.writer = SummaryWriter(str(logdir), purge_step=None if resume_step is None else resume_step + 1)

    def write(self, records) -> None:
        append_records(self.path, records)
        if self.writer is None:
            return
        for r in records:
            if isinstance(r, StepRecord):
                for name, value in r.line().items():
                    if name not in ("step", "dataset") and value is not None:
                        self.writer.add_scalar(f"{r.dataset}/{name}", value, r.step)
            else:
                for n, kinds in r.scores.items():
                    for kind, v in kinds.items():
                        self.writer.add_scalar(f"{n}/{r.split}_top1/{kind}", v["top1"], r.step)
                        self.writer.add_scalar(f"{n}/{r.split}_top5/{kind}", v["top5"], r.step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def headline(score: dict) -> dict:
    """One scores record without its per-class parts: top1, top5, n."""
    return {m: score[m] for m in ("top1", "top5", "n")}


def summary(scores: dict) -> dict:
    """{dataset: {kind: Scores}} without the per-class parts, as an EvalRecord holds them."""
    return {n: {k: headline(v) for k, v in kinds.items()} for n, kinds in scores.items()}


def write_results(out: Path, results: dict) -> None:
    """results.json and results.md (headline table, then per-class tables and most confused pairs)."""
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(results_table(results) + "".join(per_class_table(results, n)
                                                                     for n in results["datasets"]))


def confused_pairs(record: dict, classes: list[str], k: int = 10) -> list[tuple[str, str, int, int]]:
    """The k most frequent mistakes of one scores record: (true class, predicted class, clips, clips of the class)."""
    support = {}
    for t, _, c in record["confusion"]:
        support[t] = support.get(t, 0) + c
    wrong = sorted((c, t, q) for t, q, c in record["confusion"] if t != q)[::-1][:k]
    return [(classes[t], classes[q], c, support[t]) for c, t, q in wrong]


def per_class_table(results: dict, name: str) -> str:
    """results.md's section of one dataset: top-1 per class and kind, and the most confused pairs."""
    r, classes = results["datasets"][name], results.get("classes", {}).get(name)
    kinds = [k for k in KINDS if k in r and "per_class" in r[k]]
    if not (kinds and classes):
        return ""
    support = [0] * len(classes)
    for t, _, c in r[kinds[0]]["confusion"]:
        support[t] += c
    v = results.get("views", {"temporal": 1, "spatial": 1})
    lines = [f"\n## {name}: top-1 per class (%), {r[kinds[0]]['n']} test clips, "
             f"{v['temporal']} x {v['spatial']} views\n", "| class | clips | " + " | ".join(kinds) + " |",
             "| --- | --- |" + " --- |" * len(kinds)]
    for i, c in enumerate(classes):
        cells = ["" if r[k]["per_class"][i] is None else f"{r[k]['per_class'][i]:.1f}" for k in kinds]
        lines.append(f"| {c} | {support[i]} | " + " | ".join(cells) + " |")
    kind = kinds[-1]
    pairs = confused_pairs(r[kind], classes)
    if pairs:
        lines.append(f"\nMost confused ({kind}, true -> predicted): "
                     + "; ".join(f"{t} -> {q} {c}/{n}" for t, q, c, n in pairs))
    return "\n".join(lines) + "\n"


def results_table(results: dict) -> str:
    """The headline table of results.md (and of `jedi-pipe train`): top-1/top-5 per dataset and kind."""
    lines = ["| dataset | expert top-1 | student top-1 (Δ) | teacher top-1 (Δ) | expert top-5 | student top-5 | teacher top-5 |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    rows = results["datasets"]
    for n, r in rows.items():
        e, s, t = r["expert"], r["student"], r["teacher"]
        lines.append(f"| {n} | {e['top1']:.1f} | {s['top1']:.1f} ({s['top1'] - e['top1']:+.1f}) | "
                     f"{t['top1']:.1f} ({t['top1'] - e['top1']:+.1f}) | {e['top5']:.1f} | {s['top5']:.1f} | {t['top5']:.1f} |")
    mean = {k: sum(r[k]["top1"] for r in rows.values()) / len(rows) for k in KINDS}
    lines.append(f"| mean | {mean['expert']:.1f} | {mean['student']:.1f} ({mean['student'] - mean['expert']:+.1f}) | "
                 f"{mean['teacher']:.1f} ({mean['teacher'] - mean['expert']:+.1f}) | | | |")
    for kind, title in EXTRA_KINDS.items():
        if all(kind in r for r in rows.values()):
            delta = {n: r[kind]["top1"] - r["expert"]["top1"] for n, r in rows.items()}
            lines.append(f"\n{title}, top-1 (Δ expert): "
                         + ", ".join(f"{n} {rows[n][kind]['top1']:.1f} ({d:+.1f})" for n, d in delta.items())
                         + f"; mean {sum(r[kind]['top1'] for r in rows.values()) / len(rows):.1f}"
                         + f" ({sum(delta.values()) / len(delta):+.1f})")
    return "\n".join(lines) + "\n"


