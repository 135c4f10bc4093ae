"""Pictures of a run folder: written by hand with the trainer's own writers, at three stages."""
from __future__ import annotations

import sys

import pytest
import torch
from click.testing import CliRunner

from jedi_pipe import trainer
from jedi_pipe.cli import main
from jedi_pipe.config import load_config
from jedi_pipe.plots import MISSING_MATPLOTLIB, read_run, write_plots

NAMES = {"hmdb51": 8, "ssv2": 5}          # dataset -> number of classes
EXPERT_TOP1 = {"hmdb51": 30.0, "ssv2": 40.0}


def make_run(root, stage: str):
    """A run folder as the trainer leaves it after `stage`: experts | midrun | finished."""
    cfg = load_config(data={"name": "tiny", "out": str(root), "seed": 0,
                            "datasets": [{"name": n, "shards": f"shards/{n}", "model": "tiny3d"} for n in NAMES]})
    out = trainer.prepare_run(cfg)
    for n, k in NAMES.items():
        torch.save({"arch": "tiny3d", "num_classes": k, "classes": [f"c{i}" for i in range(k)], "model": {},
                    "test": {"top1": EXPERT_TOP1[n], "top5": 90.0, "n": 40}, "config": cfg.to_dict()},
                   trainer.expert_path(cfg, n))
    # an expert of another dataset still training: its checkpoint is no expert yet
    torch.save({"model": {}, "step": 2, "config": cfg.to_dict()}, trainer.resume_path(cfg, "ucf101"))
    if stage == "experts":
        return out
    last = 40 if stage == "finished" else 25
    for step in range(10, last + 1, 10):
        trainer.append_jsonl(out / "metrics.jsonl", [
            {"step": step, "dataset": n, "lr": 0.01, "loss": 9.0 - step / 10, "clips_per_s": 50.0, "input_wait": 0.1,
             "sup_student": 2.0 - step / 40, "sup_teacher": 2.1 - step / 40, "distill": 0.05 + step / 1000,
             "mask_rate": 0.0, "teacher_conf": 0.4 + step / 200, "pseudo_label_acc": 0.2 + step / 100}
            for n in NAMES])
        if step % 20 == 0:
            trainer.append_jsonl(out / "metrics.jsonl", [{"step": step, "eval": {
                n: {kind: {"top1": EXPERT_TOP1[n] + step / 4 + d, "top5": 95.0, "n": 40}
                    for kind, d in (("student", 0.0), ("teacher", 2.0))} for n in NAMES}}])
    if stage == "finished":
        trainer.write_results(out, results_of({n: k for n, k in NAMES.items()}))
    else:   # killed mid-write: the last line is cut short
        with open(out / "metrics.jsonl", "a") as f:
            f.write('{"step": 30, "dataset": "hmd')
    return out


def results_of(classes: dict, seed: int = 0) -> dict:
    """A results.json record as the trainer writes it, scored from random predictions (40 clips a class)."""
    g = torch.Generator().manual_seed(seed)
    res = {"datasets": {}, "classes": {n: [f"class_{i}" for i in range(k)] for n, k in classes.items()},
           "views": {"temporal": 1, "spatial": 3}}
    for n, k in classes.items():
        y = torch.arange(k).repeat_interleave(40)
        res["datasets"][n] = {}
        for kind, sharp in (("expert", 1.0), ("student", 2.0), ("teacher", 3.0)):
            logits = torch.randn(len(y), k, generator=g) + sharp * torch.nn.functional.one_hot(y, k)
            res["datasets"][n][kind] = trainer.score_probs(logits.softmax(-1), y)
    return res


def assert_png(path, min_w=600, min_h=400):
    image = pytest.importorskip("matplotlib.image")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = image.imread(path)
    h, w = img.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    assert img[..., :3].std() > 0.05          # not a blank canvas


def test_cli_plots_a_finished_run(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run", "finished")
    r = CliRunner().invoke(main, ["plot", str(run)])
    assert r.exit_code == 0, r.output
    assert r.output.split() == [str(run / "curves.png"), str(run / "results.png"), str(run / "confusion.png")]
    assert_png(run / "curves.png", min_w=1000, min_h=600)    # 3 rows x (2 datasets + mean)
    assert_png(run / "results.png")
    assert_png(run / "confusion.png")
    assert not list(run.glob("*.partial.png"))


def test_a_run_in_progress_uses_the_experts_and_the_latest_evaluation(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run", "midrun")
    data = read_run(run)
    assert not data["finished"] and data["names"] == list(NAMES)
    assert {n: e["num_classes"] for n, e in data["experts"].items()} == NAMES
    assert [s for s, _ in data["evals"]] == [20]
    assert [r.step for r in data["steps"]["hmdb51"]] == [10, 20]      # the cut line is skipped
    assert write_plots(run) == [run / "curves.png", run / "results.png"]
    assert_png(run / "curves.png")
    assert_png(run / "results.png")


def test_experts_only_gives_the_bars_alone(tmp_path):
    pytest.importorskip("matplotlib")
    run = make_run(tmp_path / "run", "experts")
    assert write_plots(run) == [run / "results.png"]
    assert_png(run / "results.png", min_w=400, min_h=300)


def test_not_a_run_folder_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    r = CliRunner().invoke(main, ["plot", str(tmp_path)])
    assert r.exit_code == 2 and "is not a run folder" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["plot", str(tmp_path / "missing")])
    assert r.exit_code == 2 and "is not a folder" in r.output


def test_missing_matplotlib_says_how_to_install(tmp_path, monkeypatch):
    run = make_run(tmp_path / "run", "experts")
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)      # `import` now raises ImportError
    r = CliRunner().invoke(main, ["plot", str(run)])
    assert r.exit_code == 2 and MISSING_MATPLOTLIB in r.output and "Traceback" not in r.output
    assert not (run / "results.png").exists()


def test_help():
    r = CliRunner().invoke(main, ["plot", "--help"])
    assert r.exit_code == 0 and "results.png" in r.output and "jedi-pipe[plots]" in r.output


def test_confusion_shows_the_matrix_for_few_classes_and_the_worst_pairs_for_many(tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from jedi_pipe.plots import PAIRS, _confusion
    from jedi_pipe.records import confused_pairs

    def new_figure(**kw):
        fig = Figure(**kw)
        FigureCanvasAgg(fig)
        return fig

    res = results_of({"hmdb51": 8, "kinetics400": 400})
    data = {"name": "t", "names": ["hmdb51", "kinetics400"], "results": res["datasets"], "classes": res["classes"]}
    few, many = _confusion(new_figure, data).axes[:2]
    assert [t.get_text() for t in few.get_xticklabels()] == res["classes"]["hmdb51"]     # the whole grid, named
    pairs = confused_pairs(res["datasets"]["kinetics400"]["student"], res["classes"]["kinetics400"], PAIRS)
    labels = [t.get_text() for t in many.get_yticklabels()]
    assert len(labels) == PAIRS and labels[::-1] == [f"{t} -> {q}" for t, q, _, _ in pairs]   # largest on top
    counts = [c for _, _, c, _ in pairs]
    assert counts == sorted(counts, reverse=True) and all(t != q for t, q, _, _ in pairs)


def test_results_md_names_the_classes(tmp_path):
    res = results_of({"hmdb51": 8})
    trainer.write_results(tmp_path, res)
    md = (tmp_path / "results.md").read_text()
    r = res["datasets"]["hmdb51"]
    assert "## hmdb51: top-1 per class (%), 320 test clips, 1 x 3 views" in md
    row = next(ln for ln in md.splitlines() if ln.startswith("| class_3 |"))
    assert row == (f"| class_3 | 40 | {r['expert']['per_class'][3]:.1f} | {r['student']['per_class'][3]:.1f} | "
                   f"{r['teacher']['per_class'][3]:.1f} |")
    assert "Most confused (teacher, true -> predicted): class_" in md


def test_every_scored_kind_is_drawn_and_tabled(tmp_path):
    """A run that scores the teachers' moving average's students (student_ema) and the students' weight
    average (student_avg) shows both beside students and teachers: bars, curves and results.md's table."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from jedi_pipe import plots
    from jedi_pipe.records import results_table
    run = make_run(tmp_path / "run", "finished")
    results = results_of(NAMES)
    for n, kinds in results["datasets"].items():
        kinds["student_ema"] = {**kinds["student"], "top1": 61.0}
        kinds["student_avg"] = {**kinds["student"], "top1": 62.0}
    trainer.write_results(run, results)
    trainer.append_jsonl(run / "metrics.jsonl", [{"step": 50, "eval": {
        n: {kind: {"top1": 50.0, "top5": 95.0, "n": 40} for kind in plots.CURVE_KINDS} for n in NAMES}}])
    data = read_run(run)
    bars = plots._bars(Figure, data).axes[0]
    assert [t.get_text() for t in bars.get_legend().get_texts()][-2:] == \
        [plots.LABELS["student_ema"], plots.LABELS["student_avg"]]
    curves = plots._curves(Figure, data)
    top1 = [ax for ax in curves.axes if ax.get_title().endswith("test top-1")]
    assert len(top1) == len(NAMES) + 1
    for ax in top1:
        drawn = {line.get_label() for line in ax.lines if line.get_gid() == "curve"}
        assert drawn == {plots.LABELS[k] for k in plots.CURVE_KINDS}, ax.get_title()
    table = results_table(results)
    assert "teachers' moving average (jedi.teacher_ema), top-1 (Δ expert): hmdb51 61.0" in table
    assert "weight average (jedi.student_avg), top-1 (Δ expert): hmdb51 62.0" in table


def test_a_run_that_evaluates_on_val_says_val_and_draws_the_experts_val(tmp_path):
    """With a val role the curves are val (test is read once, at the end): their titles, and the
    experts' line and bars, must be val too, not the experts' test score beside val curves."""
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    from jedi_pipe import plots
    run = make_run(tmp_path / "run", "experts")
    cfg = load_config(run / "config.yaml")
    for n in NAMES:   # the experts' checkpoints carry their val score beside test
        ck = torch.load(trainer.expert_path(cfg, n), weights_only=False)
        torch.save({**ck, "val": {"top1": EXPERT_TOP1[n] - 7.0, "top5": 80.0, "n": 20}}, trainer.expert_path(cfg, n))
    trainer.append_jsonl(run / "metrics.jsonl", [{"step": 20, "split": "val", "eval": {
        n: {kind: {"top1": 50.0, "top5": 95.0, "n": 20} for kind in ("student", "teacher")} for n in NAMES}}])
    data = read_run(run)
    assert data["split"] == "val"
    table, _, split = plots._final(data)
    assert split == "val" and {n: table[n]["expert"] for n in NAMES} == {n: EXPERT_TOP1[n] - 7.0 for n in NAMES}
    fig = plots._curves(Figure, data)
    ax = fig.axes[0]
    assert ax.get_title() == "hmdb51: val top-1" and ax.get_ylabel() == "val top-1 (%)"
    assert f"expert ({EXPERT_TOP1['hmdb51'] - 7.0:.1f})" in [line.get_label() for line in ax.lines]
    assert "val top-1" in fig.get_suptitle()


def test_the_loss_panel_keeps_zero_values_in_sight():
    """A term that is 0 until some step (distill before its ramp) would vanish on a log axis."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jedi_pipe.plots import _loss_panel
    from jedi_pipe.records import StepRecord
    rec = lambda step, distill: StepRecord(step, "a", 0.01, 1.0, 10.0, 0.0, {"sup_student": 1.0, "distill": distill})  # noqa: E731
    for distill, scale in ((0.5, "log"), (0.0, "symlog")):
        fig, ax = plt.subplots()
        _loss_panel(ax, "a", [rec(1, distill), rec(2, 0.4)])
        assert ax.get_yscale() == scale
        assert len(ax.lines) >= 2
        plt.close(fig)
