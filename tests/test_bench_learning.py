"""bench/learning.py --report: several --json runs on the same data and seeds merged into one table,
the paired gaps computed within each run's tag, and --val-only printing nothing of test."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "learning.py"
_spec = importlib.util.spec_from_file_location("bench_learning", SCRIPT)
learning = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(learning)
DATASETS = ("hmdb51", "ucf101")


def split_rows(rows: dict, shift: float) -> dict:
    """{row: {dataset: top1}}: each dataset's score is the row's value + shift (+ 10 for ucf101)."""
    return {r: {n: v + shift + 10 * i for i, n in enumerate(DATASETS)} for r, v in rows.items()}


def write_run(out: Path, overrides: list[str], rows: list[dict], experts=(40.0, 42.0), val=True, data=None) -> Path:
    """A learning.json of two seeds: rows[seed] holds the joint-phase rows; the experts per seed;
    `data`: the data options it records (None: none, as runs before they were recorded)."""
    seeds = []
    for joint, expert in zip(rows, experts, strict=True):
        cells = {"expert": expert, **joint}
        seeds.append({"test": split_rows(cells, 1.0)})
        if val:
            seeds[-1].update(val=split_rows(cells, 0.0), early=split_rows({"expert": expert}, 0.0))
    out.mkdir(parents=True)
    (out / "learning.json").write_text(json.dumps({"overrides": overrides, "seeds": seeds,
                                                   **({"data": data} if data else {})}))
    return out


def run_main(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """bench/learning.py ARGS in this process: (exit code, stdout, stderr or the SystemExit message)."""
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), *map(str, args)])
    try:
        learning.main()
        code, message = 0, ""
    except SystemExit as e:
        code, message = (e.code, "") if isinstance(e.code, int) else (1, str(e.code))
    out, err = capsys.readouterr()
    return code, out, err + message


def run_report(monkeypatch, capsys, *args):
    return run_main(monkeypatch, capsys, "--report", *args)


def test_report_tags_the_second_run_and_pairs_gaps_within_the_tag(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", [], [{"fixmatch student": 50.0, "jedi+views student": 55.0},
                                             {"fixmatch student": 52.0, "jedi+views student": 60.0}])
    other = write_run(tmp_path / "thr", ["jedi.threshold=0.5"],
                      [{"jedi+views student": 58.0, "jedi+views teacher": 59.0, "jedi+views student (avg)": 58.0},
                       {"jedi+views student": 61.0, "jedi+views teacher": 60.0, "jedi+views student (avg)": 59.0}])
    oracle = write_run(tmp_path / "oracle", [], [{"oracle": 90.0}, {"oracle": 92.0}])
    code, out, err = run_report(monkeypatch, capsys, base, other, "--oracle-from", oracle)
    assert code == 0, err
    assert "| jedi+views student [threshold=0.5] |" in out
    # the tagged students against the untagged baseline: seeds 58 - 50 = +8 and 61 - 52 = +9
    assert "jedi+views student [threshold=0.5] - fixmatch student: mean +8.5 ± 0.5 (seeds: +8.0, +9.0)" in out
    # teachers against their own run's students, not the first run's: +1 and -1
    assert "jedi+views teacher [threshold=0.5] - jedi+views student [threshold=0.5]: mean +0.0 ± 1.0" in out
    # and against the students of the moving average they are scored from (the fair pair): +1 and +1
    assert "jedi+views teacher [threshold=0.5] - jedi+views student (avg) [threshold=0.5]: mean +1.0 ± 0.0" in out
    # the setting itself: the tagged row against the same row of the first run, seeds 58 - 55 and 61 - 60
    assert "jedi+views student [threshold=0.5] - jedi+views student: mean +2.0 ± 1.0 (seeds: +3.0, +1.0)" in out
    # the untagged run's own gap, seeds +5 and +8
    assert "jedi+views student - fixmatch student: mean +6.5 ± 1.5" in out
    # share of the expert -> oracle gap (mean over seeds: expert 41, oracle 91, gap 50): students (55+60)/2 - 41
    assert "jedi+views student 33 %" in out
    assert out.count("top-1 (%), report this one") == 1


def test_report_pairs_a_tagged_run_with_its_own_baseline_and_tags_the_defaults(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", ["jedi.steps=600"], [{"ema student": 50.0, "jedi student": 55.0},
                                                             {"ema student": 52.0, "jedi student": 60.0}])
    other = write_run(tmp_path / "short", [], [{"ema student": 40.0, "jedi student": 44.0},
                                               {"ema student": 41.0, "jedi student": 42.0}])
    code, out, err = run_report(monkeypatch, capsys, base, other)
    assert code == 0, err
    # the run of the defaults is named, not taken for the first run's setting
    assert "| jedi student [defaults] |" in out and "| ema student [defaults] |" in out
    # and its students are paired with its own baseline (+4, +1), not the first run's (-6, -10)
    assert "jedi student [defaults] - ema student [defaults]: mean +2.5 ± 1.5 (seeds: +4.0, +1.0)" in out
    assert "jedi student [defaults] - ema student:" not in out


def test_report_refuses_other_seed_counts_and_other_data(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", [], [{"jedi student": 55.0}, {"jedi student": 60.0}],
                     data={"data_seed": 0, "val_per_class": 5})
    one = write_run(tmp_path / "one", ["jedi.lr=0.02"], [{"jedi student": 55.0}], experts=(40.0,),
                    data={"data_seed": 0, "val_per_class": 5})
    code, _, err = run_report(monkeypatch, capsys, base, one)
    assert code != 0 and "1 seeds, not 2" in err and "Traceback" not in err
    no_val = write_run(tmp_path / "no-val", ["jedi.lr=0.02"], [{"jedi student": 1.0}] * 2,
                       data={"data_seed": 0, "val_per_class": 0})
    code, _, err = run_report(monkeypatch, capsys, base, no_val)
    assert code != 0 and "other data" in err


def test_runs_are_not_reused_on_data_of_other_options(tmp_path, monkeypatch, capsys):
    """Data rebuilt with other options at the same path: the runs under --out are of the old data."""
    made = {"videos_per_class": dict(learning.DEMO_VIDEOS_PER_CLASS),
            "labeled_fraction": learning.DEMO_SHARD["labeled_fraction"], "val_per_class": 5, "data_seed": 1,
            "oracle": True, "look": "alike"}
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "data.json").write_text(json.dumps(made))
    (tmp_path / "out").mkdir()
    old = {k: v for k, v in made.items() if k != "oracle"} | {"data_seed": 0}
    (tmp_path / "out" / "runs-data.json").write_text(json.dumps(old))
    (tmp_path / "out" / "seed0").mkdir()
    monkeypatch.setattr(learning, "run_seed", lambda *a, **k: pytest.fail("ran on the old data's runs"))
    monkeypatch.setattr(learning, "make_data", lambda *a, **k: pytest.fail("made data before refusing"))
    args = ("--data-seed", "1", "--out", tmp_path / "out")
    code, _, err = run_main(monkeypatch, capsys, "--data", tmp_path / "data", *args)
    assert code == 2 and "were made on other data" in err and "'data_seed': 0" in err
    # refused before the data is made, too
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and "were made on other data" in err
    # as the message says: with the runs deleted, the new data's runs go ahead
    (tmp_path / "out" / "seed0").rmdir()
    monkeypatch.setattr(learning, "run_seed", lambda *a, **k: {"test": {}})
    monkeypatch.setattr(learning, "print_tables", lambda *a, **k: None)
    code, _, err = run_main(monkeypatch, capsys, "--data", tmp_path / "data", "--seeds", "1", *args)
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "runs-data.json").read_text())["data_seed"] == 1


def test_report_val_only_prints_no_test(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", [], [{"jedi+views student": 55.0}, {"jedi+views student": 60.0}])
    code, out, err = run_report(monkeypatch, capsys, base, "--val-only")
    assert code == 0, err
    assert "val top-1 (%), compare settings by this one" in out and "test top-1" not in out
    no_val = write_run(tmp_path / "no-val", [], [{"jedi+views student": 55.0}] * 2, val=False)
    code, out, err = run_report(monkeypatch, capsys, no_val, "--val-only")
    assert code != 0 and "no val role" in err and out == ""


def test_report_refuses_runs_with_other_experts_and_rows_taken_twice(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", [], [{"jedi+views student": 55.0}, {"jedi+views student": 60.0}])
    moved = write_run(tmp_path / "moved", ["jedi.lr=0.02"], [{"jedi+views student": 1.0}] * 2, experts=(40.0, 43.0))
    code, _, err = run_report(monkeypatch, capsys, base, moved)
    assert code != 0 and "experts differ" in err
    twice = write_run(tmp_path / "twice", [], [{"jedi+views student": 1.0}] * 2)
    code, _, err = run_report(monkeypatch, capsys, base, twice)
    assert code != 0 and "come from two runs" in err


def test_oracle_rows_come_from_a_run_on_the_same_data_whatever_its_experts(tmp_path, monkeypatch, capsys):
    # the oracle has no joint phase and epochs of its own: a run with other experts (another
    # pretrain.epochs) on data made with the same options lends its oracle rows; other data does not
    base = write_run(tmp_path / "base", [], [{"jedi+views student": 55.0}, {"jedi+views student": 60.0}],
                     data={"data_seed": 0, "look": "alike"})
    donor = write_run(tmp_path / "donor", [], [{"oracle": 90.0}, {"oracle": 92.0}], experts=(30.0, 31.0),
                      data={"data_seed": 0, "look": "alike"})
    code, out, err = run_report(monkeypatch, capsys, base, "--oracle-from", donor)
    assert code == 0, err
    assert "jedi+views student 33 %" in out   # (57.5 - 41) / (91 - 41)
    other = write_run(tmp_path / "other", [], [{"oracle": 90.0}, {"oracle": 92.0}],
                      data={"data_seed": 0, "look": "different"})
    code, _, err = run_report(monkeypatch, capsys, base, "--oracle-from", other)
    assert code != 0 and "other data" in err
    # a donor that does not record its data options: only with the same experts
    unsaid = write_run(tmp_path / "unsaid", [], [{"oracle": 90.0}, {"oracle": 92.0}], experts=(30.0, 31.0))
    code, _, err = run_report(monkeypatch, capsys, base, "--oracle-from", unsaid)
    assert code != 0 and "experts differ" in err


@pytest.mark.parametrize("args, error", [
    (["--oracle-from", "x"], "--oracle-from and --rescore-on go with --report"),
    (["--rescore-on", "x"], "--oracle-from and --rescore-on go with --report"),
    (["--report", "x", "--rescore-on", "nowhere"], "not a data folder of bench/learning.py"),
    (["--report", "x", "--set", "jedi.threshold=0.5"], "the options that run training do not apply"),
    (["--val-only", "--val-per-class", "0", "--out", "never-made"], "--val-only needs a val role"),
    (["--report", "nowhere"], "nowhere: not a --json run of bench/learning.py"),
    # refused before the data is made (minutes of synth and shards), not when the first run starts
    (["--set", "jedi.nope=1", "--out", "never-made"], "jedi.nope: unknown key"),
    (["--set", "jedi.teacher_ema=0", "--out", "never-made"], "jedi.w_distill_heads: needs teacher_ema > 0"),
    (["--oracle-epochs", "-1", "--out", "never-made"], "--oracle-epochs must be 0 (no oracle) or more"),
    (["--labeled-fraction", "2", "--out", "never-made"], "--labeled-fraction must be in (0, 1]"),
    # every "seed" would be one run, its std 0
    (["--set", "seed=7", "--out", "never-made"], "--set cannot move eval_every, eval_first, out, seed"),
])
def test_options_that_do_not_go_together_are_refused(args, error, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(learning, "make_data", lambda *a, **k: pytest.fail("the data was made before the refusal"))
    code, _, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and error in err and "usage:" not in err     # one line, not the usage's dozen
    assert not (tmp_path / "never-made").exists()


def test_a_finished_run_is_reused_only_with_its_own_settings(tmp_path, monkeypatch):
    """Another --set into the same --out must not print the old run's numbers as the new setting's."""
    from jedi_pipe import trainer
    from jedi_pipe.errors import InputError
    cfg = learning.config(tmp_path / "data", "shards", tmp_path / "run", 0, ["jedi.lr=0.04"])
    trainer.prepare_run(cfg)
    (tmp_path / "run" / "results.json").write_text(json.dumps({"datasets": {"hmdb51": {}}}))
    monkeypatch.setattr(trainer, "train", lambda *a, **k: pytest.fail("a finished run was trained again"))
    assert learning._results(cfg, print) == {"datasets": {"hmdb51": {}}}
    # where it ran is no setting: torch threads may differ
    same = learning.config(tmp_path / "data", "shards", tmp_path / "run", 0, ["jedi.lr=0.04", "torch_threads=1"])
    assert learning._results(same, print) == {"datasets": {"hmdb51": {}}}
    other = learning.config(tmp_path / "data", "shards", tmp_path / "run", 0, ["jedi.lr=0.02"])
    with pytest.raises(InputError, match=r"the run .*run was made with other settings \(jedi.lr differ\); delete it"):
        learning._results(other, print)
    # an unfinished run (killed: a checkpoint, no results.json) goes on from its checkpoint
    (tmp_path / "run" / "results.json").unlink()
    asked = []
    monkeypatch.setattr(trainer, "train", lambda cfg, log, **kw: asked.append(kw) or
                        (tmp_path / "run" / "results.json").write_text('{"datasets": {}}'))
    assert learning._results(cfg, print) == {"datasets": {}} and asked == [{"resume": True}]


def test_rescore_pools_a_real_checkpoint_over_the_draws_val_and_test(shard_dirs, tmp_path, monkeypatch):
    # a tiny run, rescored on a "draw" made of its own clips re-split with a val role (same test
    # role): the pooled scores must be the val and test scores together, the test part being the
    # run's own results.json, for experts, students and teachers alike. The plumbing: roles, kinds,
    # classes, cache. Its tiny models score alike on both roles (chance), so every val clip is scored
    # right here, by a wrapper around the real evaluation: a pool that dropped val would then show.
    # (The clip-weighted arithmetic is test_pool_roles_counts_clips_not_roles's.)
    import torch
    from jedi_pipe import trainer
    from jedi_pipe.config import load_config
    from jedi_pipe.resplit import split_shards
    from test_trainer import tiny_config
    run_dir = tmp_path / "out" / "seed0" / "jedi+views"
    data, cfg = tiny_config(shard_dirs, run_dir, ["jedi.steps=2", "jedi.views=false"])
    trainer.pretrain(cfg, log=lambda m: None)
    results = trainer.train(cfg, log=lambda m: None)
    real_evaluate = trainer.evaluate_jedi

    def val_all_right(*args, **kw):
        scores = real_evaluate(*args, **kw)
        if (args[4] if len(args) > 4 else kw.get("role")) == "val":
            for kinds in scores.values():
                for record in kinds.values():
                    record["top1"] = 100.0
        return scores

    monkeypatch.setattr(trainer, "evaluate_jedi", val_all_right)
    draw = tmp_path / "draw"
    for name in ("hmdb51", "ssv2"):
        split_shards(shard_dirs[name], draw / "shards" / name, labeled_fraction=0.5, val_per_class=1)
    (draw / "data.json").write_text(json.dumps({"data_seed": 0, "videos_seed": 11}))
    rows = learning.rescore_seed(tmp_path / "out" / "seed0", draw)

    on_draw = load_config(data={**data, "datasets": [{**d, "shards": str(draw / "shards" / d["name"])}
                                                     for d in data["datasets"]]})
    cpu = torch.device("cpu")
    experts = {n: trainer.load_expert(cfg, n, cpu).eval() for n in ("hmdb51", "ssv2")}
    joint = trainer.load_joint(cfg, experts, run_dir / "checkpoint.pt", cpu)
    val = trainer.evaluate_jedi(joint, on_draw, trainer.open_all(on_draw), cpu, "val", experts=experts)
    for name, test in results["datasets"].items():
        for kind, row in (("expert", "expert"), ("student", "jedi+views student"), ("teacher", "jedi+views teacher")):
            v, t = val[name][kind], test[kind]
            right = round(v["top1"] * v["n"] / 100) + round(t["top1"] * t["n"] / 100)
            assert v["n"] > 0 and v["top1"] == 100.0 and t["top1"] < 100.0
            assert rows[row][name] == round(100 * right / (v["n"] + t["n"]), 2), (name, kind)
    cache = run_dir / "rescore.json"
    assert json.loads(cache.read_text())[str(draw.resolve())]["scores"]["student"] == rows["jedi+views student"]
    # cached while draw and checkpoint stay; a new draw.json (another draw in the same folder) scores again
    cache.write_text(cache.read_text().replace('"student": {', '"student": {"planted": 1.0, ', 1))
    assert "planted" in learning.rescore_seed(tmp_path / "out" / "seed0", draw)["jedi+views student"]
    (draw / "data.json").write_text(json.dumps({"data_seed": 0, "videos_seed": 12}))
    assert learning.rescore_seed(tmp_path / "out" / "seed0", draw) == rows
    # a draw whose classes are not the run's is refused, not scored
    (draw / "shards" / "ssv2").rename(tmp_path / "ssv2-moved")
    (draw / "shards" / "ssv2").symlink_to(shard_dirs["ucf101"])
    (draw / "data.json").write_text(json.dumps({"data_seed": 0, "videos_seed": 13}))
    with pytest.raises(SystemExit, match="ssv2's classes differ"):
        learning.rescore_seed(tmp_path / "out" / "seed0", draw)


def test_pool_roles_counts_clips_not_roles():
    # val 2 of 4 clips right, test 3 of 12: 5 of 16 = 31.25 %, not the roles' mean (37.5 %)
    val = {"a": {"student": {"top1": 50.0, "n": 4}}}
    test = {"a": {"student": {"top1": 25.0, "n": 12}}}
    assert learning.pool_roles([val, test]) == {"student": {"a": 31.25}}
    # a rounded percentage of 7 clips (3 of 7 = 42.86 %) counts back to whole clips
    assert learning.pool_roles([{"a": {"t": {"top1": 42.86, "n": 7}}}, {"a": {"t": {"top1": 0.0, "n": 3}}}]) \
        == {"t": {"a": 30.0}}


def test_rescore_prints_the_runs_merged_and_paired(tmp_path, monkeypatch, capsys):
    base = write_run(tmp_path / "base", [], [{"fixmatch student": 50.0}, {"fixmatch student": 52.0}],
                     data={"data_seed": 0, "look": "alike"})
    other = write_run(tmp_path / "wu", ["jedi.warmup_steps=60"], [{"jedi+views student": 58.0}] * 2,
                      data={"data_seed": 0, "look": "alike"})
    draw = tmp_path / "draw"
    draw.mkdir()
    (draw / "data.json").write_text(json.dumps({"data_seed": 0, "look": "alike", "videos_seed": 11}))
    scored = {"base": {"expert": {"hmdb51": 40.0}, "fixmatch student": {"hmdb51": 50.0}},
              "wu": {"expert": {"hmdb51": 40.0}, "jedi+views student": {"hmdb51": 57.0}}}
    monkeypatch.setattr(learning, "rescore_seed", lambda seed_dir, d: scored[seed_dir.parent.name])
    code, out, err = run_report(monkeypatch, capsys, base, other, "--val-only", "--rescore-on", draw)
    assert code == 0, err
    fresh = out[out.index("on a fresh draw"):]
    assert "| jedi+views student [warmup_steps=60] | 57.0 ± 0.0 | 57.0 ± 0.0 |" in fresh
    assert "jedi+views student [warmup_steps=60] - fixmatch student: mean +7.0 ± 0.0" in fresh
    scored["wu"]["expert"] = {"hmdb51": 41.0}     # other experts: not runs to pair
    code, _, err = run_report(monkeypatch, capsys, base, other, "--val-only", "--rescore-on", draw)
    assert code == 1 and "experts differ" in err


def test_rescore_refuses_a_draw_of_other_looks(tmp_path, monkeypatch, capsys):
    # another --data-seed redraws the datasets' looks, where models read at chance: not a validation set
    base = write_run(tmp_path / "base", [], [{"jedi+views student": 55.0}, {"jedi+views student": 60.0}],
                     data={"data_seed": 0, "look": "alike"})
    for name, made in (("redrawn", {"data_seed": 11, "look": "alike"}),
                       ("own-videos", {"data_seed": 0, "look": "alike", "videos_seed": 0}),
                       ("other-look", {"data_seed": 0, "look": "different", "videos_seed": 11}),
                       ("other-seed", {"data_seed": 1, "look": "alike", "videos_seed": 11})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.json").write_text(json.dumps(made))
        code, _, err = run_report(monkeypatch, capsys, base, "--val-only", "--rescore-on", tmp_path / name)
        assert code == 1 and "not other videos of" in err, name


def test_val_only_keeps_test_scores_out_of_the_log():
    # the trainer's and pretraining's own lines, as they log them (trainer.train, trainer.pretrain)
    hide = learning.without_test_scores
    final = "test evaluation (once, at the end): hmdb51 student 45.8, ucf101 student 80.1"
    assert hide(final) == "test evaluation (once, at the end): not shown (--val-only)"
    assert hide("expert hmdb51: exists (/x/experts/hmdb51.pt), test top-1 37.4") == \
        "expert hmdb51: exists (/x/experts/hmdb51.pt), test: not shown (--val-only)"
    assert hide("expert ucf101: 400 steps in 61s, test top-1 59.7 top-5 93.1") == \
        "expert ucf101: 400 steps in 61s, test: not shown (--val-only)"
    assert hide("JEDI: 4 datasets, 300 steps (jedi.steps)") == "JEDI: 4 datasets, 300 steps (jedi.steps)"


def test_data_recorded_before_look_existed_counts_as_alike(tmp_path, monkeypatch, capsys):
    # runs and draws made before --look existed record no look: they are alike, so such a run is
    # rescored on an alike draw of other videos and refused on a look-different one
    old = write_run(tmp_path / "old", [], [{"jedi+views student": 55.0}, {"jedi+views student": 60.0}],
                    data={"data_seed": 0})
    monkeypatch.setattr(learning, "rescore_seed",
                        lambda seed_dir, d: {"expert": {"hmdb51": 40.0}, "jedi+views student": {"hmdb51": 57.0}})
    for name, made, ok in (("old-draw", {"data_seed": 0, "videos_seed": 11}, True),
                           ("alike", {"data_seed": 0, "look": "alike", "videos_seed": 11}, True),
                           ("different", {"data_seed": 0, "look": "different", "videos_seed": 11}, False)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.json").write_text(json.dumps(made))
        code, _, err = run_report(monkeypatch, capsys, old, "--val-only", "--rescore-on", tmp_path / name)
        assert (code == 0) == ok and (ok or "not other videos of" in err), (name, err)


def test_baselines_train_every_weight_at_one_lr_whatever_the_demos_heads(tmp_path):
    """The demo's JEDI runs its teacher heads faster than its students (student_lr_scale,
    teacher_lr_from); the baselines have no teacher heads, so each runs every weight at its own
    BASELINE_LR (teacher_lr_from then changes nothing), and JEDI's runs keep the demo's schedule."""
    demo = learning.config(tmp_path, "shards", tmp_path / "out", 0, []).jedi
    assert demo.student_lr_scale < 1 and demo.teacher_lr_from > 0     # else this test shows nothing
    for run, (extra, _) in learning.RUNS.items():
        cfg = learning.config(tmp_path, "shards", tmp_path / run, 0, extra).jedi
        if cfg.teachers == "joint":
            assert (cfg.lr, cfg.student_lr_scale, cfg.teacher_lr_from) == (
                demo.lr, demo.student_lr_scale, demo.teacher_lr_from), run
        else:
            assert (cfg.lr, cfg.student_lr_scale) == (learning.BASELINE_LR, 1.0), run
