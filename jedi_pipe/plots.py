"""Pictures of a run folder: curves.png (accuracy and losses over steps), results.png (bars) and
confusion.png (a finished run's mistakes per dataset: the matrix, or the most confused pairs).

Works on a finished run (results.json) and on one still training: the expert numbers and the
number of classes then come from experts/<dataset>.pt, student and teacher from the latest
evaluation line of metrics.jsonl. Needs matplotlib (`pip install "jedi-pipe[plots]"`).
"""
from __future__ import annotations

import json
from pathlib import Path

from .errors import InputError, MissingError, UnavailableError
from .records import confused_pairs, read_metrics

MISSING_MATPLOTLIB = 'pictures need matplotlib: pip install "jedi-pipe[plots]"'

# One colour per model, the same in both pictures.
COLORS = {"expert": "black", "student": "tab:blue", "teacher": "tab:orange", "student_ema": "tab:purple",
          "student_avg": "tab:cyan"}
# student_ema: the students of the teachers' moving average (jedi.teacher_ema), the teachers' fair pair;
# student_avg: the students' weight average (jedi.student_avg); each drawn when the run scores it
CURVE_KINDS = ("student", "teacher", "student_ema", "student_avg")
LABELS = {"expert": "expert", "student": "student (JEDI)", "teacher": "teacher (JEDI)",
          "student_ema": "student of the teachers' moving average", "student_avg": "students' weight average"}
LOSS_COLORS = {"sup_student": "tab:blue", "sup_teacher": "tab:orange", "distill": "tab:purple",
               "mutual": "tab:pink", "distill_heads": "tab:brown"}
LOSS_LABELS = {"sup_student": "student CE (labeled)", "sup_teacher": "teacher CE (labeled)",
               "distill": "distillation T->S (unlabeled)", "mutual": "distillation S->T (unlabeled)",
               "distill_heads": "distillation avg T->T heads (unlabeled)"}
# metrics.jsonl fields that are fractions of the teacher's behaviour on unlabeled training clips
PSEUDO = {"pseudo_label_acc": ("pseudo-label accuracy", "tab:green"),
          "teacher_conf": ("teacher confidence", "tab:olive"),
          "mask_rate": ("masked out by threshold", "tab:gray")}


def write_plots(run_dir) -> list[Path]:
    """Write curves.png, results.png and confusion.png into `run_dir`; returns the paths written.

    Raises MissingError when `run_dir` holds none of metrics.jsonl, results.json, experts/*.pt,
    and UnavailableError (with the install command) when matplotlib is missing.
    """
    run = Path(run_dir)
    if not run.is_dir():
        raise MissingError(f"{run} is not a folder")
    data = read_run(run)
    if not (data["steps"] or data["evals"] or data["results"] or data["experts"]):
        raise MissingError(f"{run} is not a run folder: it has no metrics.jsonl, results.json or experts/*.pt")
    try:
        # Figure + FigureCanvasAgg rather than pyplot: renders with Agg without switching the
        # backend of a caller's session (a notebook keeps its inline plots).
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise UnavailableError(MISSING_MATPLOTLIB) from None

    def new_figure(**kw):
        fig = Figure(**kw)
        FigureCanvasAgg(fig)
        return fig

    written = []
    if data["steps"] or data["evals"]:
        written.append(_save(_curves(new_figure, data), run / "curves.png"))
    if data["results"] or data["experts"]:
        written.append(_save(_bars(new_figure, data), run / "results.png"))
    if data["classes"] and any("confusion" in k for kinds in data["results"].values() for k in kinds.values()):
        written.append(_save(_confusion(new_figure, data), run / "confusion.png"))
    return written


def draw(run_dir, log=print) -> list[Path]:
    """write_plots for callers that finish a run (CLI, demo): without matplotlib, say so and go on."""
    try:
        written = write_plots(run_dir)
    except UnavailableError as e:     # only matplotlib's absence raises it
        log(f"no pictures: {e}")
        return []
    log("pictures: " + ", ".join(str(p) for p in written))
    return written


# ---------------------------------------------------------------------------- reading

def read_run(run: Path) -> dict:
    """Everything the pictures show, from the files a run folder has at any point of training.

    Returns {"name", "names" (datasets in run order), "steps" {dataset: [StepRecord]},
    "evals" [(step, {dataset: {kind: {top1, top5}}})], "results" (results.json's datasets or None),
    "classes" {dataset: class names} (results.json),
    "experts" {dataset: {"top1", "num_classes"}}, "finished" (bool)}.
    """
    name = run.name
    config = run / "config.yaml"
    if config.is_file():
        import yaml
        try:
            name = (yaml.safe_load(config.read_text()) or {}).get("name") or name
        except yaml.YAMLError:
            pass
    steps, evals = {}, {}
    step_records, eval_records = read_metrics(run / "metrics.jsonl")
    for rec in eval_records:
        evals[rec.step] = rec.scores          # a repeated step keeps its last line
    for rec in step_records:
        steps.setdefault(rec.dataset, {})[rec.step] = rec
    steps = {n: [by_step[s] for s in sorted(by_step)] for n, by_step in steps.items()}
    results, classes = None, {}
    if (run / "results.json").is_file():
        try:
            saved = json.loads((run / "results.json").read_text())
            results, classes = saved["datasets"], saved.get("classes", {})   # runs before per-class results lack it
        except (json.JSONDecodeError, KeyError):
            raise InputError(f"{run / 'results.json'} is not a results file (expected {{\"datasets\": ...}})") from None
    experts = {}
    for path in sorted((run / "experts").glob("*.pt")):
        if path.name.endswith(".resume.pt"):   # an expert still training (trainer.resume_path): not one yet
            continue
        ck = _load_expert_summary(path)
        if ck is not None:
            experts[path.stem] = ck
    names = list(results or {})
    for n in [*(evals[max(evals)] if evals else {}), *steps, *experts]:
        if n not in names:
            names.append(n)
    # the curves' role: val when every shard folder has one (trainer), and then test is read once, at the end
    split = eval_records[-1].split if eval_records else "test"
    return {"name": name, "run": run, "names": names, "steps": steps, "split": split,
            "evals": sorted(evals.items()), "results": results, "classes": classes, "experts": experts,
            "finished": results is not None}


def _load_expert_summary(path: Path) -> dict | None:
    import torch
    try:   # mmap: only the small entries are read, not the weights
        ck = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    except Exception:   # noqa: BLE001 - a half-written or foreign file is left out of the pictures
        return None
    return {"top1": ck["test"]["top1"], "val_top1": (ck.get("val") or {}).get("top1"),
            "num_classes": ck.get("num_classes")}


def _chance(data: dict, n: str) -> float | None:
    k = data["experts"].get(n, {}).get("num_classes")
    return 100.0 / k if k else None


def _expert_top1(data: dict, n: str, split: str) -> float | None:
    e = data["experts"].get(n, {})
    return e.get("val_top1") if split == "val" else e.get("top1")


def _final(data: dict) -> tuple[dict, str, str]:
    """{dataset: {kind: top1}} for the bars, where the numbers come from, and their role (test,
    or val for a run in progress that evaluates on val): experts of the same role only."""
    if data["results"]:
        return ({n: {k: v["top1"] for k, v in kinds.items()} for n, kinds in data["results"].items()},
                "final evaluation (results.json)", "test")
    split = data["split"] if data["evals"] else "test"
    table = {n: {"expert": top1} for n in data["experts"] if (top1 := _expert_top1(data, n, split)) is not None}
    if data["evals"]:
        step, ev = data["evals"][-1]
        for n, kinds in ev.items():
            table.setdefault(n, {}).update({k: v["top1"] for k, v in kinds.items()})
        return table, f"run in progress: student and teacher at step {step}", split
    return table, "experts only: JEDI training has not evaluated yet", split


# ---------------------------------------------------------------------------- curves.png

def _curves(new_figure, data: dict):
    names = data["names"]
    has_pseudo = any(rec.value(k) is not None for recs in data["steps"].values() for rec in recs for k in PSEUDO)
    rows = 2 + has_pseudo
    cols = len(names) + (len(names) > 1)        # last column: all datasets together
    # at least 7.2 in wide: one dataset's column alone would cut the title
    fig = new_figure(figsize=(max(7.2, 3.6 * cols), 3.0 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    split = data["split"]   # the curves' role; the experts' line is of the same role
    experts = {n: _expert_top1(data, n, split) for n in names}
    last_step = max([s for s, _ in data["evals"]] + [r.step for recs in data["steps"].values() for r in recs])

    for col, n in enumerate(names):
        _accuracy_panel(axes[0, col], n, [(s, ev[n]) for s, ev in data["evals"] if n in ev],
                        experts[n], _chance(data, n), split)
        _loss_panel(axes[1, col], n, data["steps"].get(n, []))
        if has_pseudo:
            _pseudo_panel(axes[2, col], n, data["steps"].get(n, []), _chance(data, n))
    if cols > len(names):
        _mean_column(axes[:, -1], data, names, experts, has_pseudo, split)
    for ax in axes.flat:
        ax.set_xlim(0, last_step * 1.04 or 1)     # room for a point on the last step
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    state = "finished" if data["finished"] else f"in progress, step {last_step}"
    fig.suptitle(f"JEDI run '{data['name']}' ({state}): {split} top-1 and training losses over steps",
                 fontsize=13, weight="bold")
    return fig


def _accuracy_panel(ax, n, evals, expert, chance, split):
    for kind in CURVE_KINDS:
        _top1_curve(ax, kind, [(s, e[kind]["top1"]) for s, e in evals if kind in e])
    if expert is not None:
        ax.axhline(expert, color=COLORS["expert"], ls="--", lw=1.2, label=f"expert ({expert:.1f})")
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1.2, label=f"chance ({chance:.1f})")
    ax.set_title(f"{n}: {split} top-1")
    _finish_accuracy(ax, "no evaluation logged yet", split)


def _top1_curve(ax, kind, pts):
    # teacher squares under student dots: equal values still show both
    if pts:
        teacher = kind == "teacher"
        ax.plot(*zip(*pts), marker="s" if teacher else "o", ms=5 if teacher else 3.5, zorder=2 if teacher else 3,
                color=COLORS[kind], label=LABELS[kind],
                gid="curve")


def _line(ax, x, y, **kw):
    """A training curve; dots while it has few points (one logged step is a dot, not nothing)."""
    ax.plot(x, y, lw=1.2, marker="o" if len(x) <= 30 else None, ms=3, **kw)


def _finish_accuracy(ax, empty_note, split):
    # the y range holds every curve and reference line with a margin (axhline does not count)
    ys = [y for line in ax.lines for y in line.get_ydata()]
    ax.set_ylim(0, min(105.0, max(ys, default=10.0) * 1.12 + 1))
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.legend(fontsize=7, loc="best")
    if not any(line.get_gid() == "curve" for line in ax.lines):
        _note(ax, empty_note)


def _note(ax, text):
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=9, color="0.4")


def _series(recs, key):
    pts = [(r.step, r.value(key)) for r in recs if r.value(key) is not None]
    return tuple(zip(*pts)) if pts else None


def _loss_panel(ax, n, recs):
    for key, color in LOSS_COLORS.items():
        xy = _series(recs, key)
        if xy:
            _line(ax, *xy, color=color, label=LOSS_LABELS[key])
    ax.set_title(f"{n}: losses")
    ax.set_ylabel("loss (log scale)")
    if ax.lines:
        # log scale where every value is positive; a zero (a term off until a step) would vanish there
        if all(min(line.get_ydata()) > 0 for line in ax.lines):
            ax.set_yscale("log")
        else:
            ax.set_yscale("symlog", linthresh=1e-2)
            ax.set_ylabel("loss (log scale above 0.01)")
        ax.legend(fontsize=7, loc="best")
    else:
        _note(ax, "no training step logged yet")


def _pseudo_panel(ax, n, recs, chance):
    for key, (label, color) in PSEUDO.items():
        xy = _series(recs, key)
        if xy:
            _line(ax, xy[0], [100 * v for v in xy[1]], color=color, label=label)
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1.2, label=f"chance ({chance:.1f})")
    ax.set_title(f"{n}: teacher on unlabeled train clips", fontsize=10)
    ax.set_ylabel("% of the batch")
    ax.set_ylim(-2, 102)
    ax.legend(fontsize=7, loc="best")


def _mean_column(axes, data, names, experts, has_pseudo, split):
    """Averages over the datasets: top-1 (of `split`), the summed loss, pseudo-label accuracy."""
    ax = axes[0]
    for kind in CURVE_KINDS:
        _top1_curve(ax, kind, [(s, sum(ev[n][kind]["top1"] for n in names) / len(names)) for s, ev in data["evals"]
                               if all(n in ev and kind in ev[n] for n in names)])
    if all(experts[n] is not None for n in names):
        m = sum(experts[n] for n in names) / len(names)
        ax.axhline(m, color=COLORS["expert"], ls="--", lw=1.2, label=f"expert ({m:.1f})")
    chances = [_chance(data, n) for n in names]
    chance = sum(chances) / len(chances) if all(c is not None for c in chances) else None
    if chance is not None:
        ax.axhline(chance, color="grey", ls=":", lw=1.2, label=f"chance ({chance:.1f})")
    ax.set_title(f"mean over datasets: {split} top-1")
    _finish_accuracy(ax, "no evaluation logged yet", split)

    ax = axes[1]
    # `loss` is the weighted total over all datasets: the same number on every dataset's line
    xy = _series(data["steps"].get(names[0], []) or next(iter(data["steps"].values()), []), "loss")
    if xy:
        _line(ax, *xy, color="black", label="total (weighted sum)")
        ax.legend(fontsize=7, loc="best")
    else:
        _note(ax, "no training step logged yet")
    ax.set_title("all datasets: total loss")
    ax.set_ylabel("loss")

    if has_pseudo:
        ax = axes[2]
        by_step = {}
        for n in names:
            for r in data["steps"].get(n, []):
                if r.value("pseudo_label_acc") is not None:
                    by_step.setdefault(r.step, []).append(100 * r.value("pseudo_label_acc"))
        if by_step:
            steps = sorted(by_step)
            _line(ax, steps, [sum(by_step[s]) / len(by_step[s]) for s in steps], color=PSEUDO["pseudo_label_acc"][1],
                  label="pseudo-label accuracy")
            if chance is not None:
                ax.axhline(chance, color="grey", ls=":", lw=1.2, label=f"chance ({chance:.1f})")
            ax.legend(fontsize=7, loc="best")
        ax.set_title("mean over datasets: pseudo-labels", fontsize=10)
        ax.set_ylabel("% of the batch")
        ax.set_ylim(-2, 102)


# ---------------------------------------------------------------------------- results.png

def _bars(new_figure, data: dict):
    table, source, split = _final(data)
    names = [n for n in data["names"] if n in table]
    kinds = [k for k in ("expert", *CURVE_KINDS) if any(k in table[n] for n in names)]
    groups = names + (["mean"] if len(names) > 1 else [])
    rows = {n: table[n] for n in names}
    chance = {n: _chance(data, n) for n in names}
    if len(names) > 1:
        rows["mean"] = {k: sum(table[n][k] for n in names) / len(names) for k in kinds
                        if all(k in table[n] for n in names)}
        cs = list(chance.values())
        chance["mean"] = sum(cs) / len(cs) if all(c is not None for c in cs) else None

    fig = new_figure(figsize=(max(6.0, 1.6 + 1.9 * len(groups)), 4.8), layout="constrained")   # room for the legend
    ax = fig.subplots()
    width = 0.8 / len(kinds)
    top = 0.0
    for i, kind in enumerate(kinds):
        xs = [g + (i - (len(kinds) - 1) / 2) * width for g, name in enumerate(groups) if kind in rows[name]]
        ys = [rows[name][kind] for name in groups if kind in rows[name]]
        bars = ax.bar(xs, ys, width * 0.92, color=COLORS[kind] if kind != "expert" else "0.45", label=LABELS[kind])
        # a white box: a chance line through a value does not hide it
        ax.bar_label(bars, fmt="%.1f", fontsize=8, padding=2, zorder=4,
                     bbox=dict(facecolor="white", edgecolor="none", pad=0.5, alpha=0.85))
        top = max([top, *ys])
    chance_drawn = False
    for g, name in enumerate(groups):
        c = chance[name]
        if c is not None:
            ax.hlines(c, g - 0.45, g + 0.45, colors="crimson", linestyles=":", lw=1.8,
                      label=None if chance_drawn else "chance (100 / classes)")
            chance_drawn = True
            top = max(top, c)
    ax.set_xticks(range(len(groups)), groups)
    if len(names) > 1:
        ax.axvline(len(groups) - 1.5, color="0.7", lw=0.8)      # set the mean apart
    ax.set_ylabel(f"{split} top-1 (%)")
    ax.set_ylim(0, min(105.0, top * 1.15 + 3))
    ax.grid(axis="y", alpha=0.3)
    # under the axis: above the bars it could hide a value
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncols=3,
              frameon=False)
    ax.set_title(f"JEDI run '{data['name']}': {split} top-1 per dataset\n{source}", fontsize=11)
    return fig


# ---------------------------------------------------------------------------- confusion.png

GRID_MAX = 30      # up to this many classes the whole matrix is readable; beyond, the most confused pairs
PAIRS = 15         # pairs shown per dataset with many classes


def _confusion(new_figure, data: dict, kind: str = "student"):
    """Per dataset, `kind`'s test mistakes: the row-normalised matrix with class names (few classes),
    or the most confused (true -> predicted) pairs as bars (many: 51, 101, 174, 400 classes)."""
    names = [n for n in data["names"] if n in data["classes"] and "confusion" in data["results"][n].get(kind, {})]
    longest = max((len(c) for n in names for c in data["classes"][n]), default=10)   # names under the grid
    fig = new_figure(figsize=(6.4 * len(names), 5.4 + 0.07 * longest), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, n in zip(axes, names):
        rec, classes = data["results"][n][kind], data["classes"][n]
        C = len(classes)
        if C <= GRID_MAX:
            grid = [[0.0] * C for _ in range(C)]
            for t, q, c in rec["confusion"]:
                grid[t][q] += c
            rows = [[v / (sum(row) or 1) for v in row] for row in grid]
            im = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
            ax.set_xticks(range(C), classes, rotation=90, fontsize=7)
            ax.set_yticks(range(C), classes, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            fig.colorbar(im, ax=ax, shrink=0.7, label="fraction of the true class")
        else:
            pairs = confused_pairs(rec, classes, PAIRS)[::-1]      # largest on top
            ax.barh(range(len(pairs)), [c for _, _, c, _ in pairs], color=COLORS[kind])
            ax.set_yticks(range(len(pairs)), [f"{t} -> {q}" for t, q, _, _ in pairs], fontsize=8)
            for i, (_, _, c, m) in enumerate(pairs):
                ax.text(c, i, f" {c}/{m}", va="center", fontsize=7)
            ax.set_xlabel("test clips (of the true class's)")
            if not pairs:
                _note(ax, "no mistakes")
        ax.set_title(f"{n} ({C} classes): {kind} top-1 {rec['top1']:.1f}"
                     + ("" if C <= GRID_MAX else f"\n{PAIRS} most confused pairs, true -> predicted"), fontsize=10)
    fig.suptitle(f"JEDI run '{data['name']}': test confusions of the {kind}s", fontsize=12, weight="bold")
    return fig


def _save(fig, path: Path) -> Path:
    tmp = path.with_name(path.stem + ".partial.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)       # a reader never sees half a PNG
    return path
