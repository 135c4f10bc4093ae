"""The learning benchmark: expert vs single-dataset EMA and FixMatch baselines vs JEDI vs oracle, over seeds.

    python bench/learning.py --seeds 3                     # the real-like table of docs/method.md
    python bench/learning.py --seeds 1 --set jedi.steps=600 --out /tmp/lb   # an ablation
    python bench/learning.py --videos-per-class 40 --out /tmp/lb40          # equal sizes
    python bench/learning.py --look different --out /tmp/lbdiff              # look-different
    python bench/learning.py --labeled-fraction 0.3 --set pretrain.epochs=35 --out /tmp/lb30
    python bench/learning.py --data-seed 1 --oracle-epochs 0 --out /tmp/lbval   # validation: choose here
    python bench/learning.py --report OUT1 OUT2 ... [--oracle-from OUT] [--val-only]   # --json runs of one data, one table
    python bench/learning.py --data-only --videos-seed 11 --videos-per-class 80 --val-per-class 40 --oracle-epochs 0 --out /tmp/draw
    python bench/learning.py --report OUT1 OUT2 ... --val-only --rescore-on /tmp/draw/data   # a larger validation set

The synthetic datasets of the demo (generated once, seed 0) are sharded once, with the demo's
15 % labels (DEMO_SHARD) and a val role of --val-per-class training videos per class, and re-split (no
transcode: `jedi-pipe split --labeled-fraction 1.0`) into the oracle's shards, where every
training clip but the same val ones is labeled (since 2026-12-01: every one outside the val clips'
groups; same clips, same val and test sets). Per
training seed, with `train/demo.yaml` and the given --set overrides:

    expert   the demo's experts, trained on each dataset's labeled clips only
    ema      each expert fine-tuned with its own EMA teacher on its own unlabeled clips (same
             steps, batches, losses and weights as JEDI; the lr and warm-up validation chose for
             it, BASELINE_LR and BASELINE_WARMUP, every weight at that lr, unless --set moves
             every run; note that on JEDI's runs jedi.lr is the teacher heads' lr and the
             students' is jedi.lr x jedi.student_lr_scale): what semi-supervision alone gives
    fixmatch each expert with FixMatch on its own unlabeled clips (weak -> strong view, hard, 0.95)
    jedi, jedi+views   JEDI students and teachers, one view / weak and strong views (the demo's):
             what the other datasets add on top
    oracle   an expert trained on all training labels (--oracle-epochs passes over them)

Prints mean ± std (population std over seeds) of top-1 per dataset and the mean over datasets,
twice: on val, the table to compare settings and ablations by, and on test, the one to report
(evaluated once per run, at its end), then the paired gaps by seed. --json also writes every
number. Runs that exist are reused when they were made with the same settings (other settings are
refused by name: delete --out to redo). --val-per-class 0 drops the val role
(then there is only test). --data-seed N draws the benchmark afresh (same classes and motions,
other looks and videos): a second check that a choice holds beyond one draw of the data.
--videos-seed N draws other videos of the same-looking datasets, and --rescore-on DATA scores
every run's final checkpoint again on such a draw (its val and test roles pooled: clips no run has
seen), a validation set several times the val role's size, to choose by where val's 5 videos per
class cannot tell settings apart (the step-30 table stays on the val role).
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import time
from pathlib import Path

import yaml

from jedi_pipe import shards as shardfmt
from jedi_pipe import synth, trainer
from jedi_pipe.config import ConfigError, load_config
from jedi_pipe.demo import DEMO_CONFIG, DEMO_DATASETS, DEMO_SHARD, DEMO_VIDEOS_PER_CLASS
from jedi_pipe.errors import script_main
from jedi_pipe.make_shards import make_shards
from jedi_pipe.resplit import split_shards



def make_data(root: Path, videos_per_class: dict, labeled_fraction: float, val_per_class: int,
              data_seed: int = 0, oracle: bool = True, look: str = "alike", videos_seed: int | None = None) -> None:
    """videos_per_class: {dataset: number} (synth draws each dataset from a random stream of its
    own, so a dataset's videos are the same whatever the others' numbers). look, videos_seed: synth's."""
    sources = synth.generate(root / "sources", datasets=DEMO_DATASETS, seed=data_seed,
                             videos_per_class=videos_per_class, look=look, videos_seed=videos_seed)
    for name in DEMO_DATASETS:
        make_shards(name, sources[name], root / "shards" / name, seed=data_seed,
                    **{**DEMO_SHARD, "labeled_fraction": labeled_fraction, "val_per_class": val_per_class})
        if oracle:   # every training clip labeled but the same val ones: a re-split, no transcode
            split_shards(root / "shards" / name, root / "shards-all" / name, labeled_fraction=1.0,
                         val_per_class=val_per_class, seed=data_seed)


def config(data: Path, shards: str, out: Path, seed: int, overrides) -> object:
    d = yaml.safe_load(DEMO_CONFIG.read_text())
    # the final evaluation, and one at step EARLY_STEP: how far the joint step first knocks the experts
    # absolute: --report --rescore-on reads these configs again, from whatever directory it runs in
    d.update(out=str(out.absolute()), seed=seed, eval_every=10**9, eval_first=EARLY_STEP)
    for ds in d["datasets"]:
        ds["shards"] = str((data / shards / ds["name"]).absolute())
    return load_config(data=d, overrides=list(overrides))


# The joint-phase runs per seed: name -> (overrides, under --set's, and the rows it scores). Each
# starts from the same experts and runs the same steps and batches. Baselines, each dataset alone:
# "ema", each expert fine-tuned with its own EMA teacher on its own unlabeled clips; "fixmatch",
# its own weak-view prediction, hard, kept above FIXMATCH_THRESHOLD, as the strong view's target.
# "jedi": JEDI with one view of the unlabeled clips; "jedi+views" (the demo's default): with the
# teachers' targets from weak views and the students trained on strong ones.
EARLY_STEP = 30
FIXMATCH_THRESHOLD = 0.95    # FixMatch's own default
# Each method at the joint lr and warm-up validation chose for it (a fresh draw, --rescore-on;
# docs/method.md): JEDI's students 0.01 with 60 warm-up steps, its teacher heads 4x from step 60
# (train/demo.yaml), the baselines 0.01 with 20 (against 0.005 and against 60 steps: ties for
# FixMatch, lower for EMA)
BASELINE_LR, BASELINE_WARMUP = 0.01, 20
# every baseline weight is a student's: one lr for all, not the demo's faster teacher heads
_BASELINE_SCHEDULE = [f"jedi.lr={BASELINE_LR}", f"jedi.warmup_steps={BASELINE_WARMUP}", "jedi.student_lr_scale=1"]
RUNS = {
    "ema": (["jedi.teachers=ema", "jedi.views=false", *_BASELINE_SCHEDULE], ("student",)),
    "fixmatch": (["jedi.teachers=fixmatch", "jedi.views=true", f"jedi.threshold={FIXMATCH_THRESHOLD}",
                  *_BASELINE_SCHEDULE], ("student",)),
    "jedi": (["jedi.views=false"], ("student", "teacher")),
    "jedi+views": (["jedi.views=true"], ("student", "teacher")),     # train/demo.yaml's setting
}


def without_test_scores(line: str) -> str:
    """A log line with its test scores taken out, for --val-only (choose a setting without reading test):
    the joint run's final test line, and the experts' and the oracle's test top-1."""
    if line.startswith("test evaluation"):
        return line.split(":", 1)[0] + ": not shown (--val-only)"
    return re.sub(r"test top-1 [0-9.]+( top-5 [0-9.]+)?", "test: not shown (--val-only)", line)


def run_rows(run: str, kinds) -> dict[str, str]:
    """{row name: score kind} of one run's scores: its students (and teachers), the students of the
    moving average the teachers are scored from (student_ema, the fair pair) and the students' slow
    weight average (student_avg, jedi.student_avg), where `kinds` holds them."""
    rows = {f"{run} {who}": who for who in RUNS[run][1]}
    rows.update({f"{run} {label}": kind for kind, label in (("student_ema", "student (avg)"),
                                                            ("student_avg", "student (slow avg)")) if kind in kinds})
    return rows


def run_seed(data: Path, out: Path, seed: int, overrides, oracle_epochs: int, log, runs=tuple(RUNS)) -> dict:
    """{"test": {row: {dataset: top1}}, "val": ...} for one training seed ("val" when there is one)."""
    expert_cfg = config(data, "shards", out / "experts", seed, overrides)
    trainer.pretrain(expert_cfg, log=log)
    results = {}
    for run in runs:   # every run reuses the same experts (same signature), in a run folder of its own
        extra, _ = RUNS[run]
        (out / run).mkdir(parents=True, exist_ok=True)
        if not (out / run / "experts").exists():
            (out / run / "experts").symlink_to((out / "experts" / "experts").resolve())
        results[run] = _results(config(data, "shards", out / run, seed, [*extra, *overrides]), log)
    oracle_cfg = config(data, "shards-all", out / "oracle", seed, [*overrides, f"pretrain.epochs={oracle_epochs}"])
    oracle = trainer.pretrain(oracle_cfg, log=log) if oracle_epochs else None
    any_run = results[runs[0]]
    row, val = {}, {}
    for split in ("test", "val"):
        if split == "val" and "val" not in any_run:
            continue
        cells = row if split == "test" else val
        per_ds = lambda r: r["datasets"] if split == "test" else r["val"]   # noqa: E731
        for n in per_ds(any_run):
            cells.setdefault("expert", {})[n] = per_ds(any_run)[n]["expert"]["top1"]
            for run, r in results.items():
                for name, kind in run_rows(run, per_ds(r)[n]).items():
                    cells.setdefault(name, {})[n] = per_ds(r)[n][kind]["top1"]
            if oracle is not None:
                cells.setdefault("oracle", {})[n] = (oracle[n] if split == "test" else _expert_val(oracle_cfg, n))["top1"]
    early = {}   # val top-1 at step EARLY_STEP, next to the experts' val
    if val:
        early["expert"] = val["expert"]
        for run in runs:
            scores = _eval_at(out / run, EARLY_STEP)
            for who in RUNS[run][1] if scores else ():
                early[f"{run} {who}"] = {n: scores[n][who]["top1"] for n in scores}
            if scores and all("student_avg" in scores[n] for n in scores):
                early[f"{run} student (slow avg)"] = {n: scores[n]["student_avg"]["top1"] for n in scores}
    return {"test": row, **({"val": val, "early": early} if val else {})}


def _eval_at(run: Path, step: int) -> dict | None:
    """The val evaluation a run's metrics.jsonl holds for `step`, if any."""
    from jedi_pipe.records import EvalRecord, parse_line
    for line in (run / "metrics.jsonl").read_text().splitlines():
        r = parse_line(line)
        if isinstance(r, EvalRecord) and r.step == step and r.split == "val":
            return r.scores
    return None


def _results(cfg, log) -> dict:
    """The run's results.json, trained first when missing. A finished run is reused only when it was
    made with these settings: another --set into the same --out must not print the old numbers."""
    path, saved = Path(cfg.out) / "results.json", Path(cfg.out) / "config.yaml"
    if saved.is_file():   # finished or killed: either is reused only with these settings
        trainer.check_same_run(yaml.safe_load(saved.read_text()), cfg, f"the run {cfg.out}",
                               "delete it (or --out) to run it again")
    if not path.is_file():
        trainer.train(cfg, resume=True, log=log)   # a killed run goes on from its checkpoint
    return json.loads(path.read_text())


def _expert_val(cfg, name: str) -> dict:
    import torch
    return torch.load(trainer.expert_path(cfg, name), map_location="cpu", weights_only=False)["val"]


def rescore_seed(seed_dir: Path, draw: Path) -> dict:
    """{row: {dataset: top1}} of every finished run in `seed_dir` (and their experts) on `draw`, a
    data folder of other videos of the runs' datasets: its val and test roles pooled, by clip (a
    role only where every dataset has one). Rows are named as in run_seed. Cached per run folder in
    rescore.json, by the draw's path, and reused while the draw's data.json and the checkpoint are
    the ones scored."""
    made = json.loads((draw / "data.json").read_text())
    rows = {}
    for run in RUNS:
        run_dir = seed_dir / run
        if not (run_dir / "results.json").is_file():   # finished: a mid-run checkpoint.pt is not the run's end
            continue
        cache = run_dir / "rescore.json"
        stored = json.loads(cache.read_text()) if cache.is_file() else {}
        entry = {"data": made, "checkpoint_mtime_ns": (run_dir / "checkpoint.pt").stat().st_mtime_ns}
        key = str(draw.resolve())
        if {k: stored.get(key, {}).get(k) for k in entry} != entry:
            stored[key] = {**entry, "scores": _rescore_run(run_dir, draw)}
            cache.write_text(json.dumps(stored, indent=1))
        scores = stored[key]["scores"]
        rows.setdefault("expert", scores["expert"])
        rows.update({name: scores[kind] for name, kind in run_rows(run, scores).items()})
    return rows


def _rescore_run(run_dir: Path, draw: Path) -> dict:
    """{kind: {dataset: top1}} of one run's final checkpoint and experts on the draw's val + test clips."""
    d = yaml.safe_load((run_dir / "config.yaml").read_text())
    d["out"] = str(run_dir)   # its experts are run_dir/experts, wherever the run was started from
    cfg = load_config(data=d)
    sets, roles = draw_sets(d, draw, run_dir)
    device = trainer.pick_device(cfg)
    experts = {n: trainer.load_expert(cfg, n, device).eval() for n in sets}
    model = trainer.load_joint(cfg, experts, run_dir / "checkpoint.pt", device)
    return pool_roles([trainer.evaluate_jedi(model, cfg, sets, device, role, experts=experts) for role in roles])


def draw_sets(d: dict, draw: Path, run_dir: Path) -> tuple[dict, list[str]]:
    """The shard sets of a draw for a run's config `d` (its datasets read from draw/shards/<name>), each
    checked to hold the run's classes in the same order, and the roles every one of them has there."""
    moved = {**d, "datasets": [{**ds, "shards": str(draw / "shards" / ds["name"])} for ds in d["datasets"]]}
    sets = trainer.open_all(load_config(data=moved))
    for ds in d["datasets"]:   # the same classes in the same order, or the scores mean nothing
        if sets[ds["name"]].classes != shardfmt.open_shards(ds["shards"]).classes:
            raise SystemExit(f"{draw}: {ds['name']}'s classes differ from those {run_dir} was trained on")
    return sets, [r for r in ("val", "test") if all(ss.count(r) for ss in sets.values())]


def pool_roles(per_role: list[dict]) -> dict:
    """{kind: {dataset: top1}} over several roles' {dataset: {kind: score record}}, clip by clip."""
    hits: dict = {}   # {kind: {dataset: (clips right, clips)}}
    for scores in per_role:
        for n, kinds in scores.items():
            for kind, r in kinds.items():
                right, clips = hits.setdefault(kind, {}).get(n, (0, 0))
                hits[kind][n] = (right + round(r["top1"] * r["n"] / 100), clips + r["n"])
    return {kind: {n: round(100 * right / clips, 2) for n, (right, clips) in per_ds.items()}
            for kind, per_ds in hits.items()}


def table(per_seed: list[dict]) -> str:
    names = list(per_seed[0]["expert"])

    def cell(values):
        mean = statistics.fmean(values)
        return f"{mean:.1f} ± {statistics.pstdev(values):.1f}" if len(values) > 1 else f"{mean:.1f}"

    lines = ["| | " + " | ".join(names) + " | mean |", "| --- |" + " --- |" * (len(names) + 1)]
    for r in per_seed[0]:
        cells = [cell([s[r][n] for s in per_seed]) for n in names]
        cells.append(cell([statistics.fmean(s[r].values()) for s in per_seed]))
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


GAPS = (("jedi student", "expert"), ("jedi teacher", "jedi student"), ("jedi student", "ema student"),
        ("jedi student", "fixmatch student"), ("jedi+views student", "jedi student"),
        ("jedi+views student", "fixmatch student"), ("jedi+views student", "ema student"),
        ("jedi+views teacher", "jedi+views student"),
        # teachers scored from the moving average (teacher_ema): against that average's students, the fair pair
        ("jedi teacher", "jedi student (avg)"), ("jedi+views teacher", "jedi+views student (avg)"),
        # jedi.student_avg: the students' weight averages, against each other and against the live students
        ("jedi+views student (slow avg)", "fixmatch student (slow avg)"),
        ("jedi+views student (slow avg)", "ema student (slow avg)"),
        ("jedi+views student (slow avg)", "jedi+views student"), ("jedi+views teacher", "jedi+views student (slow avg)"))


def gaps(per_seed: list[dict]) -> str:
    """The demo's claims as paired differences by seed: mean over datasets, then per dataset."""
    names = list(per_seed[0]["expert"])
    lines = []
    # rows merged in by --report carry a " [overrides]" tag: the same gaps within each tag, baselines untagged
    tags = [""] + sorted({r[r.index(" ["):] for r in per_seed[0] if " [" in r})
    baselines = ("expert", "ema student", "fixmatch student", "ema student (slow avg)", "fixmatch student (slow avg)")
    # a tagged run's own baseline where it has one, else the first run's
    pairs = [(a + tag, b + tag if b not in baselines or b + tag in per_seed[0] else b)
             for tag in tags for a, b in GAPS]
    # and what a --report is for: each tagged row against the same row of the first run (untagged)
    pairs += [(r, r[:r.index(" [")]) for r in per_seed[0] if " [" in r]
    for a, b in [(a, b) for a, b in pairs if a in per_seed[0] and b in per_seed[0]]:
        by_seed = [statistics.fmean(s[a][n] - s[b][n] for n in names) for s in per_seed]
        per_ds = ", ".join(f"{n} {statistics.fmean(s[a][n] - s[b][n] for s in per_seed):+.1f}" for n in names)
        spread = f" ± {statistics.pstdev(by_seed):.1f}" if len(by_seed) > 1 else ""
        lines.append(f"{a} - {b}: mean {statistics.fmean(by_seed):+.1f}{spread} "
                     f"(seeds: {', '.join(f'{g:+.1f}' for g in by_seed)}); by dataset: {per_ds}")
    if "oracle" in per_seed[0]:   # how much of the expert -> oracle gap each row closes, on the mean over datasets
        mean = lambda s, r: statistics.fmean(s[r].values())   # noqa: E731
        gap = statistics.fmean(mean(s, "oracle") - mean(s, "expert") for s in per_seed)
        closed = [f"{r} {100 * statistics.fmean(mean(s, r) - mean(s, 'expert') for s in per_seed) / gap:.0f} %"
                  if gap else f"{r} n/a" for r in per_seed[0] if r not in ("expert", "oracle")]
        lines.append(f"share of the expert -> oracle gap closed (mean over seeds of the mean over datasets, gap "
                     f"{gap:.1f} points): " + ", ".join(closed))
    return "\n".join(lines) + "\n"


def print_tables(per_seed: list[dict], overrides, test: bool = True) -> None:
    if not test and "val" not in per_seed[0]:
        raise SystemExit("--val-only: these runs have no val role (made with --val-per-class 0); nothing to print")
    if "val" in per_seed[0]:
        print(f"\nval top-1 (%), compare settings by this one; mean ± std over {len(per_seed)} seeds; "
              f"overrides: {overrides or 'none'}\n")
        print(table([s["val"] for s in per_seed]))
        print(gaps([s["val"] for s in per_seed]))
        print(f"\nval top-1 (%) at joint step {EARLY_STEP}: how far the joint phase first moves the students\n")
        print(table([s["early"] for s in per_seed]))
    if not test:
        return
    print(f"\ntest top-1 (%), report this one; mean ± std over {len(per_seed)} seeds; "
          f"overrides: {overrides or 'none'}\n")
    print(table([s["test"] for s in per_seed]))
    print(gaps([s["test"] for s in per_seed]))


def _tag(other: dict, first: dict) -> str:
    """The suffix of another run's rows in a merged table: its overrides, unless they are the first's
    (a run of the defaults next to a first one with overrides: " [defaults]")."""
    if other["overrides"] == first["overrides"]:
        return ""
    if not other["overrides"]:
        return " [defaults]"
    return " [" + ", ".join(k.rsplit(".", 1)[-1] + "=" + v for k, v in (o.split("=", 1) for o in other["overrides"])) + "]"


def report(outs: list[Path], oracle_from: Path | None = None, test: bool = True, rescore_on: Path | None = None) -> None:
    """The tables of several --json runs on the same data and seeds as one: the first run's rows as
    they are, the others' joint-phase rows named with their overrides (their experts are the same;
    a run with the first's overrides adds its rows as they are, one of the defaults beside a first
    run with overrides is tagged [defaults], and a name taken twice is refused).
    `oracle_from`: a run on the same data and seeds whose oracle rows to use (the oracle has no
    joint phase and epochs of its own, so any run's serves, whatever its experts; its other rows are
    left out). Same data: both runs record the same data options (learning.json's "data"), or,
    where one does not (runs from before it was recorded), both have the same experts."""
    def same_experts(mine: dict, theirs: dict, split: str, who) -> dict:
        if theirs.get(split, {}).get("expert") != mine[split].get("expert"):
            raise SystemExit(f"{who}: the runs' experts differ ({split}); not the same data and seeds")
        return theirs[split]

    def same_data(other: dict, who) -> bool:
        """Whether both record their data (then it must be the same) and their seeds match."""
        if len(other["seeds"]) != len(first["seeds"]):
            raise SystemExit(f"{who}: {len(other['seeds'])} seeds, not {len(first['seeds'])} as {outs[0]}")
        by_data = "data" in first and "data" in other
        if by_data and data_options(first["data"]) != data_options(other["data"]):
            raise SystemExit(f"{who}: other data ({other['data']}, not {first['data']})")
        return by_data

    first, *others = [json.loads((o / "learning.json").read_text()) for o in outs]
    per_seed = first["seeds"]
    for out, other in zip(outs[1:], others):
        same_data(other, out)
    if oracle_from is not None:
        donor_run = json.loads((oracle_from / "learning.json").read_text())
        by_data = same_data(donor_run, oracle_from)
        for mine, theirs in zip(per_seed, donor_run["seeds"], strict=True):
            for split in set(mine) & {"test", "val"}:
                rows = theirs.get(split, {}) if by_data else same_experts(mine, theirs, split, oracle_from)
                if "oracle" not in rows:
                    raise SystemExit(f"{oracle_from}: no oracle rows (run with --oracle-epochs > 0)")
                mine[split]["oracle"] = rows["oracle"]
    for other in others:
        tag = _tag(other, first)
        for mine, theirs in zip(per_seed, other["seeds"], strict=True):
            for split in theirs:
                rows = same_experts(mine, theirs, split, outs)
                new = {r + tag: v for r, v in rows.items() if r not in ("expert", "oracle")}
                if set(new) & set(mine[split]):
                    raise SystemExit(f"{outs}: rows {sorted(set(new) & set(mine[split]))} come from two runs")
                mine[split].update(new)
    print_tables(per_seed, [first["overrides"], *[o["overrides"] for o in others]], test)
    if rescore_on is not None:
        print_rescored(outs, rescore_on)


def data_options(recorded: dict) -> dict:
    """A data folder's options as data.json (or a run's learning.json) records them; folders made
    before --look existed are alike."""
    return {"look": "alike", **recorded}


def print_rescored(outs: list[Path], draw: Path) -> None:
    """The val table again, every run scored on `draw` (rescore_seed), rows merged as report does."""
    made = data_options(json.loads((draw / "data.json").read_text()))
    runs = [json.loads((o / "learning.json").read_text()) for o in outs]
    for out, run in zip(outs, runs):
        if "data" not in run:
            raise SystemExit(f"{out}: its learning.json records no data options; --rescore-on cannot check the draw")
        trained = data_options(run["data"])
        # another data seed or look redraws the datasets' looks (the runs read at chance there); the
        # runs' own videos seed draws their own videos again
        own_videos = trained.get("videos_seed", trained["data_seed"])
        if (made.get("videos_seed") in (None, own_videos)
                or any(made[k] != trained[k] for k in ("data_seed", "look"))):
            raise SystemExit(f"--rescore-on {draw}: not other videos of {out}'s datasets (make it with "
                             f"--videos-seed other than {own_videos}, --data-seed {trained['data_seed']} and "
                             f"--look {trained['look']}; it holds {made})")
    per_seed = []
    for k in range(len(runs[0]["seeds"])):
        merged = {}
        for out, run in zip(outs, runs):
            rows = rescore_seed(out / f"seed{k}", draw)
            if not rows:
                raise SystemExit(f"{out / f'seed{k}'}: no finished run (results.json) to score on {draw}")
            if merged.setdefault("expert", rows["expert"]) != rows["expert"]:
                raise SystemExit(f"{outs}: the runs' experts differ on {draw}; not the same experts")
            new = {r + _tag(run, runs[0]): v for r, v in rows.items() if r != "expert"}
            if set(new) & set(merged):
                raise SystemExit(f"{outs}: rows {sorted(set(new) & set(merged))} come from two runs")
            merged.update(new)
        per_seed.append(merged)
    print(f"\nval top-1 (%) on a fresh draw ({draw}: videos seed {made.get('videos_seed')}, its val and test "
          f"roles pooled, clips no run has seen); mean ± std over {len(per_seed)} seeds\n")
    print(table(per_seed))
    print(gaps(per_seed))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3, help="training seeds 0..S-1")
    ap.add_argument("--out", type=Path, default=Path("bench-learning"), help="data and runs go here")
    ap.add_argument("--videos-per-class", action="append", default=[], metavar="N|DATASET=N",
                    help="videos per class: N for every dataset or DATASET=N for one, on top of the demo's "
                         f"{DEMO_VIDEOS_PER_CLASS} (e.g. 60 for equal sizes; a fresh --out per value)")
    ap.add_argument("--labeled-fraction", type=float, default=DEMO_SHARD["labeled_fraction"],
                    help="fraction of each dataset's training videos that keep their labels (a fresh --out per value)")
    ap.add_argument("--val-per-class", type=int, default=5,
                    help="training videos per class held out as the val role (a fresh --out per value; 0: none)")
    ap.add_argument("--oracle-epochs", type=int, default=40,
                    help="passes of the oracle over all training labels (0: no oracle, no all-labels shards; 40 "
                         "chosen on val over 20, docs/method.md)")
    ap.add_argument("--data-seed", type=int, default=0,
                    help="seed of the synthetic data: 0 is the demo's data; another seed draws the benchmark "
                         "afresh (same classes and motions, other looks and videos; a fresh --out per value)")
    ap.add_argument("--videos-seed", type=int, default=None,
                    help="other videos of the same-looking datasets (the looks stay --data-seed's): a fresh "
                         "draw to score runs on with --rescore-on (a fresh --out per value)")
    ap.add_argument("--look", choices=synth.LOOKS, default="alike",
                    help="synth's datasets: alike (shared motions, the demo's data) or different (far-apart "
                         "looks, motions mostly their own: `jedi-pipe synth --help`; a fresh --out per value)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (e.g. jedi.steps=600)")
    ap.add_argument("--data", type=Path, default=None,
                    help="reuse the data folder of an earlier run (OUT/data of it), made with the same data options")
    ap.add_argument("--runs", default=",".join(RUNS),
                    help=f"joint-phase runs per seed, comma-separated, from {', '.join(RUNS)} (the experts always run)")
    ap.add_argument("--json", action="store_true", help="also write OUT/learning.json")
    ap.add_argument("--report", type=Path, nargs="+", metavar="OUT",
                    help="run nothing: print the tables of these --json runs (same data and seeds) as one, the "
                         "first's rows as they are, the others' joint-phase rows tagged with their overrides")
    ap.add_argument("--oracle-from", type=Path, metavar="OUT",
                    help="with --report: a --json run on the same data and seeds whose oracle rows to use")
    ap.add_argument("--val-only", action="store_true",
                    help="print the val tables only, and no test score in the log either: to choose a "
                         "setting without reading test (the run folders still keep test, for the report after)")
    ap.add_argument("--rescore-on", type=Path, metavar="DATA",
                    help="with --report: also score every run's final checkpoint on DATA, a data folder of "
                         "other videos of the runs' datasets (made with --data-only --videos-seed), its val and "
                         "test roles pooled: a larger validation set (cached in each run folder's rescore.json)")
    ap.add_argument("--data-only", action="store_true",
                    help="make the data folder (OUT/data) and stop: e.g. a fresh draw for --rescore-on")
    args = ap.parse_args()

    def refuse(msg):   # a value or a combination the run cannot use: one line, not the usage's dozen
        ap.exit(2, f"{ap.prog}: error: {msg}\n")
    if (args.oracle_from or args.rescore_on) and not args.report:
        refuse("--oracle-from and --rescore-on go with --report")
    if args.report:
        defaults, report_only = vars(ap.parse_args([])), {"report", "oracle_from", "val_only", "rescore_on"}
        if any(v != defaults[k] for k, v in vars(args).items() if k not in report_only):
            refuse("--report prints saved runs: the options that run training do not apply to it")
        if args.rescore_on is not None and not (args.rescore_on / "data.json").is_file():
            refuse(f"--rescore-on {args.rescore_on}: not a data folder of bench/learning.py (no data.json)")
        for o in [*args.report, *([args.oracle_from] if args.oracle_from else [])]:
            if not (o / "learning.json").is_file():
                refuse(f"{o}: not a --json run of bench/learning.py (no learning.json)")
        return report(args.report, args.oracle_from, test=not args.val_only, rescore_on=args.rescore_on)
    if args.seeds < 1:
        refuse("--seeds must be at least 1")
    for flag, ok, need in (("--oracle-epochs", args.oracle_epochs >= 0, "0 (no oracle) or more"),
                           ("--val-per-class", args.val_per_class >= 0, "0 (no val role) or more"),
                           ("--labeled-fraction", 0 < args.labeled_fraction <= 1, "in (0, 1]")):
        if not ok:
            refuse(f"{flag} must be {need}")
    if args.val_only and args.val_per_class == 0:   # refused before the runs, not after them
        refuse("--val-only needs a val role: --val-per-class must be above 0")
    per_run = {"seed", "out", "eval_every", "eval_first"}   # set here, per seed and run
    if any(o.split("=", 1)[0].strip() in per_run for o in args.overrides):
        refuse(f"--set cannot move {', '.join(sorted(per_run))}: the script sets them per seed and run (--seeds, --out)")
    runs = tuple(r for r in args.runs.split(",") if r)
    if not runs or any(r not in RUNS for r in runs):
        refuse(f"--runs {args.runs!r}: choose from {', '.join(RUNS)}")
    try:   # every run's settings, refused now rather than after minutes of data and experts
        for extra in [[], *(RUNS[r][0] for r in runs), [f"pretrain.epochs={args.oracle_epochs}"]]:
            config(args.out / "data", "shards", args.out, 0, [*extra, *args.overrides])
    except ConfigError as e:
        refuse(str(e))

    t0 = time.time()

    def log(m):
        print(f"[{time.time() - t0:6.0f}s] {without_test_scores(m) if args.val_only else m}", flush=True)

    vpc = dict(DEMO_VIDEOS_PER_CLASS)
    for item in args.videos_per_class:
        name, _, n = item.rpartition("=")
        if (name and name not in DEMO_DATASETS) or not n.isdigit() or int(n) < 2:
            refuse(f"--videos-per-class {item!r}: expected N or DATASET=N with N >= 2 and DATASET one of "
                   f"{', '.join(DEMO_DATASETS)}")
        vpc.update({name: int(n)} if name else dict.fromkeys(DEMO_DATASETS, int(n)))
    log(f"data: videos per class {vpc}, {args.labeled_fraction:.0%} labeled, {args.val_per_class} val per class, "
        f"data seed {args.data_seed}, look {args.look}"
        + (f", videos seed {args.videos_seed}" if args.videos_seed is not None else "")
        + f", into {args.data or args.out / 'data'}")
    data = args.data or args.out / "data"
    made = {"videos_per_class": vpc, "labeled_fraction": args.labeled_fraction, "val_per_class": args.val_per_class,
            "data_seed": args.data_seed, "oracle": args.oracle_epochs > 0, "look": args.look,
            **({"videos_seed": args.videos_seed} if args.videos_seed is not None else {})}
    # the data the runs under --out were trained on: a run reused on rebuilt data of other options
    # would print the old data's numbers as the new's (each run's own check sees only the shards'
    # path); checked before minutes of data, and only while runs are there
    identity = {k: v for k, v in made.items() if k != "oracle"}
    runs_on = args.out / "runs-data.json"
    if (not args.data_only and runs_on.is_file() and any(args.out.glob("seed*"))
            and data_options(json.loads(runs_on.read_text())) != identity):
        refuse(f"the runs under {args.out} were made on other data ({json.loads(runs_on.read_text())}); "
               f"delete {args.out}/seed* (or choose another --out) to run on {identity}")
    mark = data / "data.json"
    stored = data_options(json.loads(mark.read_text())) if mark.is_file() else None
    if stored is not None and stored in (made, {**made, "oracle": True}):
        log(f"data: reusing {data}")
    elif stored is not None or args.data:
        refuse(f"{data} holds other data ({stored or 'none made here'}); this run needs {made}")
    else:
        make_data(data, vpc, args.labeled_fraction, args.val_per_class, args.data_seed,
                  oracle=args.oracle_epochs > 0, look=args.look, videos_seed=args.videos_seed)
        mark.write_text(json.dumps(made))
    if args.data_only:
        return log("done: data only")
    runs_on.parent.mkdir(parents=True, exist_ok=True)
    runs_on.write_text(json.dumps(identity))
    per_seed = []
    for seed in range(args.seeds):
        log(f"seed {seed}")
        per_seed.append(run_seed(data, args.out / f"seed{seed}", seed, args.overrides,
                                 args.oracle_epochs, log, runs))
    print_tables(per_seed, args.overrides, test=not args.val_only)
    if args.json:
        # the data's identity (what made it; the oracle rows aside): --report --oracle-from matches runs by it
        (args.out / "learning.json").write_text(json.dumps({"overrides": args.overrides, "data": identity,
                                                            "seeds": per_seed}, indent=1))
    log("done")


if __name__ == "__main__":
    script_main(main)
