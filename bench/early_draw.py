"""Step-30 readings of bench/learning.py's runs on a larger draw: how far the joint phase first
moves the students, on more clips than the val role's 5 videos per class.

    python bench/learning.py --data-only --videos-seed 11 --videos-per-class 80 --val-per-class 40 \
        --oracle-epochs 0 --look different --out /tmp/dr-diff                  # the draw, once
    python bench/early_draw.py /tmp/r3-diff --draw /tmp/dr-diff/data [--run jedi+views]

For each seed folder of a bench/learning.py --out, its run is trained again from its experts up to
learning.py's EARLY_STEP in a scratch folder: the same config, seed and threads, so the same
weights, which is checked: the run's val reading at that step must equal the one its metrics.jsonl
holds. At that evaluation, with the BatchNorm statistics it recomputes (jedi.precise_bn), the
students, teachers and experts are also scored on the draw's val and test clips pooled (clips no
run has seen; learning.py's pool_roles). Prints mean ± std over seeds and students - experts by seed.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import yaml
from learning import EARLY_STEP, _eval_at, draw_sets, pool_roles, table

from jedi_pipe import shards as shardfmt
from jedi_pipe import trainer
from jedi_pipe.config import load_config
from jedi_pipe.errors import InputError, script_main


class _Reached(Exception):
    """The re-run got to its first evaluation (EARLY_STEP) and was scored: stop it there."""


def early_scores(run_dir: Path, draw: Path, scratch: Path) -> tuple[dict, dict]:
    """({kind: {dataset: top1}} on the draw, {dataset: {kind: top1}} on val) of `run_dir` at EARLY_STEP."""
    d = yaml.safe_load((run_dir / "config.yaml").read_text())
    if d.get("eval_first") != EARLY_STEP:
        raise InputError(f"{run_dir}: not a bench/learning.py run (eval_first is not {EARLY_STEP})")
    d["out"] = str(scratch)
    cfg = load_config(data=d)
    scratch.mkdir(parents=True)
    (scratch / "experts").symlink_to((run_dir / "experts").resolve())
    on_draw, roles = draw_sets(d, draw, run_dir)
    device = trainer.pick_device(cfg)
    expert_models = {n: trainer.load_expert(cfg, n, device).eval() for n in on_draw}
    evaluate_jedi, got = trainer.evaluate_jedi, {}

    def scored_on_the_draw_too(model, cfg, sets, device, role="test", experts=None):
        scores = evaluate_jedi(model, cfg, sets, device, role, experts)
        got["val"] = trainer.summary(scores)
        got["draw"] = pool_roles([evaluate_jedi(model, cfg, on_draw, device, r, experts=expert_models)
                                  for r in roles])
        raise _Reached

    trainer.evaluate_jedi = scored_on_the_draw_too
    try:
        trainer.train(cfg, log=None)
    except _Reached:
        pass
    finally:
        trainer.evaluate_jedi = evaluate_jedi
    if "draw" not in got:
        raise InputError(f"{run_dir}: the re-run ended without an evaluation at step {EARLY_STEP}")
    return got["draw"], got["val"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="a bench/learning.py --out (seed0/, seed1/, ... inside)")
    ap.add_argument("--draw", type=Path, required=True, help="the data folder of a --data-only draw")
    ap.add_argument("--run", default="jedi+views", help="which run of each seed (default: jedi+views)")
    args = ap.parse_args()
    seeds = sorted(p for p in args.out.glob("seed*") if (p / args.run / "metrics.jsonl").is_file())
    if not seeds:
        raise InputError(f"no finished {args.run} run under {args.out}")
    per_seed = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed_dir in seeds:
            draw, val = early_scores(seed_dir / args.run, args.draw, Path(tmp) / seed_dir.name)
            logged = _eval_at(seed_dir / args.run, EARLY_STEP)
            same = all(val[n][k]["top1"] == logged[n][k]["top1"] for n in logged for k in logged[n])
            if not same:
                raise InputError(f"{seed_dir / args.run}: the re-run's val reading at step {EARLY_STEP} differs from "
                                 f"the run's own (other threads or code?): {val} against {logged}")
            print(f"{seed_dir.name}: re-run to step {EARLY_STEP}, its val reading the run's own", flush=True)
            per_seed.append(draw)
    names = list(per_seed[0]["expert"])
    print(f"\ntop-1 (%) at joint step {EARLY_STEP} on {args.draw} (val + test pooled), {args.run}, "
          f"mean ± std over {len(per_seed)} seeds\n")
    kinds = [k for k in ("expert", "student", "teacher", "student_avg") if k in per_seed[0]]
    print(table([{k: s[k] for k in kinds} for s in per_seed]), end="")
    by_seed = [statistics.fmean(s["student"][n] - s["expert"][n] for n in names) for s in per_seed]
    clips = {n: sum(shardfmt.open_shards(args.draw / "shards" / n).count(r) for r in ("val", "test")) for n in names}
    print(f"\nstudent - expert: mean {statistics.fmean(by_seed):+.1f} ± {statistics.pstdev(by_seed):.1f} "
          f"(seeds: {', '.join(f'{g:+.1f}' for g in by_seed)}); clips scored: "
          + ", ".join(f"{n} {c}" for n, c in clips.items()))


if __name__ == "__main__":
    script_main(main)
