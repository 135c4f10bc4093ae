"""The `jedi-pipe` command: parse, call one library function, print. Nothing else lives here."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from . import __version__
from .flips import RECIPE_KEYS as FLIP_RECIPE_KEYS   # recipe-only keys (no flags): the flip map


def fail(msg: str):
    """One clear sentence on stderr and a non-zero exit, no traceback."""
    click.echo(f"error: {msg}", err=True)
    sys.exit(2)


def interrupted(what_next: str):
    """Ctrl-C: what is kept and what to run next, and the shell's exit status for SIGINT (130)."""
    click.echo(f"interrupted. {what_next}", err=True)
    sys.exit(130)


class _Group(click.Group):
    def invoke(self, ctx):
        # Ctrl-C where a command does not say more (while it imports or loads): one line and 130, not
        # click's "Aborted!" and exit 1
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            interrupted("Nothing of this command was finished; rerun it")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="jedi-pipe")
def main():
    """jedi-pipe: multi-dataset semi-supervised video action recognition (JEDI).

    \b
    Stages:  synth -> shard -> (inspect) -> pretrain -> train -> eval -> export -> predict
    Start with `jedi-pipe demo`, which runs synth to train (and the pictures) on generated data;
    its run folder is then ready for eval, export and predict.
    """


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder to write the datasets into (one sub-folder each).")
@click.option("--datasets", default="hmdb51,ucf101,kinetics400,ssv2", show_default=True, help="Comma-separated subset of hmdb51,ucf101,kinetics400,ssv2.")
@click.option("--videos-per-class", default=30, show_default=True, type=click.IntRange(2, None), help="Videos generated per class.")
@click.option("--seed", default=0, show_default=True, type=int,
              help="Same seed, same videos. The seed also draws each dataset's look (palette, places).")
@click.option("--videos-seed", default=None, type=int,
              help="Other videos of the same-looking datasets: the looks stay --seed's, the videos and files "
                   "come from this seed (a fresh validation set for models trained on --seed's videos).")
@click.option("--workers", default=None, type=click.IntRange(1, None), help="Processes (default: all cores).")
@click.option("--kinetics-layout", type=click.Choice(["flat", "per_class"]), default="flat", show_default=True,
              help="Kinetics videos flat in train/ val/ (CVDF copy) or in per-class folders (MMAction2).")
@click.option("--look", type=click.Choice(["alike", "different"]), default="alike", show_default=True,
              help="alike: looks moderately apart, motion primitives shared, so what one dataset teaches helps "
                   "the others by construction. different: looks far apart (dark grayscale hmdb51, bright "
                   "ucf101 with big actors, green textured kinetics400 with tiny ones, sepia close-up ssv2; "
                   "other frame sizes and fps) and motions mostly each dataset's own (at most 2 classes of a "
                   "dataset share a primitive with another dataset); same layouts, codecs and class names.")
@click.option("--overwrite", is_flag=True, help="Replace datasets an earlier synth generated under --out with other settings (one with the same settings is kept as it is; a folder synth did not make is never touched).")
def synth(out, datasets, videos_per_class, seed, videos_seed, workers, kinetics_layout, look, overwrite):
    """Generate synthetic videos in the real on-disk layouts and codecs of the four datasets.

    The datasets differ in label space and look (background, colour, size, speed, camera
    motion). With --look alike (the default) they share motion primitives, so what one teaches
    helps the others; with --look different they look far apart and share few, so transfer
    between them is not built in.

    Example:

    \b
    jedi-pipe synth --out data/synth --videos-per-class 10
    """
    from . import synth as synth_mod
    can_be_folder(out, "--out")
    names = [d.strip() for d in datasets.split(",") if d.strip()]
    unknown = sorted(set(names) - set(synth_mod.DATASETS))
    if unknown or not names:
        fail(f"unknown dataset(s) {', '.join(unknown) or repr(datasets)}; choose from {', '.join(synth_mod.DATASETS)}")
    # a second synth into the same folders with other settings would leave the first one's files beside
    # its own (a `--dataset folder` shard would take them all): generate refuses, or replaces with --overwrite
    # what synth made (never a folder it did not make), and keeps a folder made with the same settings
    t0 = time.time()
    try:
        with _bar("synth", None) as bar:
            roots = _run_guarded(lambda: synth_mod.generate(
                out, datasets=names, videos_per_class=videos_per_class, seed=seed, workers=workers,
                kinetics_layout=kinetics_layout, progress=bar.update, look=look, videos_seed=videos_seed,
                overwrite=overwrite, log=click.echo))
    except KeyboardInterrupt:
        interrupted("Rerun the same command: the datasets cut short are generated again")
    for name, root in roots.items():
        click.echo(f"{name:12s} {root}")
    click.echo(f"synth: {len(roots)} datasets in {time.time() - t0:.1f}s")


@main.command()
@click.option("--dataset", required=True, help="hmdb51 | ucf101 | kinetics400 | ssv2 | folder")
@click.option("--root", default=None, type=click.Path(), help="Where the dataset was unpacked (split files and videos are searched for under it) [default: data/<dataset> (data/sthv2 or data/ssv2 for ssv2), else $JEDI_PIPE_DATA/<dataset>].")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder [default: shards/<name>, --name being --dataset unless given].")
@click.option("--name", default=None, help="Dataset name in the card (default: --dataset; useful with `folder`).")
@click.option("--split", default=1, show_default=True, type=int, help="Official split 1|2|3 (hmdb51, ucf101).")
@click.option("--labeled-fraction", type=float, default=None, help="Fraction of each class's training videos that keep their label [default: 0.1].")
@click.option("--labeled-per-class", type=int, default=None, help="Instead: this many labeled videos per class.")
@click.option("--val-per-class", type=int, default=None, help="Also hold out this many labeled training videos per class as the val role (val-*.tar), for every choice made during development.")
@click.option("--val-fraction", type=float, default=None, help="Instead: this fraction of each class's training videos as val.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the labeled selection and shard order.")
@click.option("--workers", default=None, type=click.IntRange(1, None), help="Transcoding processes (default: all cores); with --executor ray and no --ray-address, the local Ray's CPUs.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: transcode on this machine; ray: one Ray task per shard (pip install \"jedi-pipe[ray]\"), same output.")
@click.option("--ray-address", default=None, help="With --executor ray: the cluster to join (`auto` = the one `ray start` runs here) [default: start a local Ray].")
@click.option("--codec", type=click.Choice(["vp9", "mjpeg", "h264"]), default="vp9", show_default=True,
              help="vp9 decodes on DALI's CPU and GPU paths; h264 only on the GPU; mjpeg is large but cheap to decode.")
@click.option("--fps", default=12.0, show_default=True, type=float, help="Output frame rate.")
@click.option("--short-side", default=128, show_default=True, type=int, help="Output short side in pixels (the long side keeps the aspect, up to 4:1: wider sources are centre-cropped).")
@click.option("--max-seconds", default=10.0, show_default=True, type=float, help="Keep at most this many seconds of each video.")
@click.option("--shard-max-count", default=1000, show_default=True, type=int, help="Samples per tar at most.")
@click.option("--max-failures", default=0.05, show_default=True, type=float, help="Fraction of videos allowed to fail before the run exits non-zero.")
@click.option("--max-missing", default=0.3, show_default=True, type=float, help="Fraction of the videos the split files name that may be absent from disk (missing.jsonl; real Kinetics downloads miss a few percent) before the run stops, as --root is then likely the wrong folder.")
@click.option("--min-frames", default=1, show_default=True, type=click.IntRange(1, None), help="Skip clips with fewer frames (after --fps); truncated files keep what decodes.")
@click.option("--timeout", "timeout_s", default=600.0, show_default=True, type=float, help="Seconds one ffmpeg transcode may take before its video is recorded as failed.")
@click.option("--videos", default=None, type=click.Path(), help="Folder of the videos, when not under --root (without --root, the split files are searched for under it unless --annotations is given).")
@click.option("--annotations", default=None, type=click.Path(), help="Folder of the split/annotation files, when not under --root.")
@click.option("--recipe", default=None, type=click.Path(dir_okay=False), help="YAML of defaults for these options (preprocess/<dataset>.yaml); flags given here win.")
@click.option("--overwrite", is_flag=True, help="Replace shards made earlier with other settings.")
@click.pass_context
def shard(ctx, dataset, root, out, recipe, **opts):
    """Decode, transcode and write one dataset as WebDataset tar shards (shards/README.md).

    Writes train-labeled / train-unlabeled / [val] / test tars with DALI index files,
    manifest.parquet, withheld.parquet (the unlabeled samples' ids and labels, for measuring
    pseudo-labels only), dataset.json, errors.jsonl and missing.jsonl. Interrupted runs resume;
    a finished run is a no-op.

    Example:

    \b
    jedi-pipe shard --dataset hmdb51 --root /data/hmdb51 --recipe preprocess/hmdb51.yaml
    """
    from .make_shards import ShardError, make_shards, read_recipe
    _log_to_stderr()   # the ssv2 adapter's flip pairs, found in labels.json
    if recipe:
        params = {p.name: p for p in ctx.command.params}
        flagged = {k: v for k, v in opts.items() if ctx.get_parameter_source(k) != click.core.ParameterSource.DEFAULT}
        try:   # a flag wins, over its alternative too
            values = read_recipe(recipe, dataset, **flagged)
        except ShardError as e:
            fail(str(e))
        for key, value in values.items():
            if key in flagged:
                continue
            if key in FLIP_RECIPE_KEYS:
                opts[key] = value
                continue
            whole = isinstance(params[key].type, click.types.IntParamType)
            if whole and isinstance(value, float) and not value.is_integer():   # click's int() would cut it
                fail(f"recipe {recipe}: {key}: {value} is not an integer")
            if isinstance(value, bool) and params[key].type is not click.BOOL:   # click would take true for 1
                fail(f"recipe {recipe}: {key}: {value} is not a number or a name")
            try:   # recipe values pass the same type checks as flags
                opts[key] = params[key].type_cast_value(ctx, value)
            except click.BadParameter as e:
                fail(f"recipe {recipe}: {key}: {e.message}")
    try:
        s = make_shards(dataset, root, out, **opts)
    except ShardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        interrupted("Rerun the same command to resume")
    if s.already_complete:
        click.echo(f"{s.out}: already complete with these settings (the same videos, labels and roles); "
                   f"nothing to do (--overwrite writes it again)")
    counts = ", ".join(f"{r} {n}" for r, n in s.counts.items())
    click.echo(f"{s.out}{'' if s.already_complete else f' (from {s.root})'}: {counts}; "
               f"failures {s.failures} (errors.jsonl); "
               f"missing {s.missing} (missing.jsonl); "
               f"{s.bytes / 1e6:.1f} MB; {s.transcoded} clips in {s.seconds:.1f}s ({s.clips_per_s:.1f} clips/s)")
    _warn(s.warnings)


def _warn(lines: list[str]) -> None:
    for line in lines:
        click.echo(f"warning: {line}", err=True)


class _EchoHandler(logging.Handler):
    """Log records as plain lines on stderr; click.echo finds the stderr of the moment (CliRunner swaps it)."""

    def emit(self, record):
        click.echo(self.format(record), err=True)


def _log_to_stderr():
    """The library's INFO lines (e.g. the ssv2 adapter's flip pairs) on stderr while this command runs."""
    log = logging.getLogger("jedi_pipe")
    if not any(isinstance(h, _EchoHandler) for h in log.handlers):
        log.addHandler(_EchoHandler())
    log.setLevel(logging.INFO)


@main.command()
@click.argument("shard_dir", metavar="SHARD_DIR|MODEL", type=click.Path(exists=True))
@click.option("--preview", default=None, type=click.Path(dir_okay=False), help="Also write a contact-sheet PNG of a few decoded clips here.")
@click.option("--json", "as_json", is_flag=True, help="Print the check as one JSON object.")
def inspect(shard_dir, preview, as_json):
    """Show a shard folder's card and check every tar against manifest.parquet (counts, sha256);
    or show a model file's card (`jedi-pipe export`): classes, clip, input recipe, where it came from.
    Exits 1 when the check finds a problem (2: unusable input).

    Example:

    \b
    jedi-pipe inspect shards/hmdb51 --preview hmdb51.png
    jedi-pipe inspect hmdb51.pt2
    """
    from . import shards
    from .errors import JediPipeError
    from .inspect_shards import contact_sheet, verify_shards
    if Path(shard_dir).is_file():
        if preview:
            fail("--preview draws a shard folder's clips; a model file has none")
        _inspect_model(shard_dir, as_json)
        return
    if (Path(shard_dir) / "config.yaml").is_file() and not (Path(shard_dir) / shards.CARD).is_file():
        fail(f"{shard_dir} is a run folder, not a shard folder: its results are in results.md; `jedi-pipe plot "
             f"{shard_dir}` draws them, and `jedi-pipe export {shard_dir} --dataset NAME` writes a model file "
             f"that inspect reads")
    try:
        ss = shards.open_shards(shard_dir)
    except (JediPipeError, ValueError) as e:   # ValueError: a dataset.json that is not JSON
        fail(str(e))
    report = verify_shards(shard_dir)
    if as_json:
        click.echo(json.dumps({"card": ss.card, **report}))
    else:
        c = ss.card
        click.echo(f"{c['name']} ({c['dataset']}, {c['source_split']}): {c['num_classes']} classes, "
                   f"{c['encoding']['codec']} {c['encoding']['short_side']}px {c['encoding']['fps']}fps")
        click.echo("  " + ", ".join(f"{r}: {c['counts'][r]} in {len(c['shards'][r])} tar(s)" for r in c["counts"]))
        click.echo(f"  labeled selection: {_selection_said(c['selection'])}; failures: {c['failures']}; "
                   f"missing: {c.get('missing', 0)}; {c['bytes'] / 1e6:.1f} MB")
        _echo_flips(ss)
        click.echo(f"  check: {report['samples_checked']} samples read, "
                   + ("all match the manifest" if report["ok"] else f"{len(report['problems'])} problem(s):"))
        for p in report["problems"][:20]:
            click.echo(f"    {p}")
    if preview:
        can_be_folder(Path(preview).parent, "--preview's folder")
        try:
            click.echo(f"  preview: {contact_sheet(shard_dir, preview)}")
        except JediPipeError as e:
            fail(str(e))
    if not report["ok"]:
        sys.exit(1)


def _inspect_model(path, as_json: bool) -> None:
    from .export import load_model
    from .transcode import FILTER_CHAIN, FILTER_CHAINS
    card = _run_guarded(lambda: load_model(path)).card
    if as_json:
        click.echo(json.dumps(card))
        return
    c, e = card["clip"], card["encoding"]
    test = card.get("test")
    click.echo(f"{path}: {card['which']} of {card['dataset']} ({' + '.join(card['archs'])}), "
               f"{len(card['classes'])} classes" + (f"; test top-1 {test['top1']:.1f}, top-5 {test['top5']:.1f}"
                                                    if test else ""))
    click.echo(f"  input: [B, 3, {c['frames']}, {c['size']}, {c['size']}] (frames every {c['stride']} at "
               f"{e['fps']:g} fps, first {e['max_seconds']:g} s), mean {list(c['mean'])}, std {list(c['std'])} on 0-1 RGB; "
               f"{card['views']} window(s) x {card['crops']} crop(s) averaged")
    if card.get("preprocess"):
        click.echo(f"  recipe: {card['preprocess']}")
    if card.get("transcode"):
        click.echo(f"  transcode: {card['transcode']}")
        chain = e.get("chain", 1)
        if chain != FILTER_CHAIN:
            since = "; ".join(why for n, why in FILTER_CHAINS.items() if n > chain)
            click.echo(f"  (its shards were made with filter chain {chain}, before: {since}; the same clips of the "
                       f"sources these do not touch)")
    for name, seen in (card.get("trained_on") or {}).items():
        if seen is None:
            click.echo(f"  trained on {name} (its shard folder was gone at export)")
            continue
        click.echo(f"  trained on {name}: {seen['classes']} classes, {seen.get('source_split')}, labeled by "
                   f"{_selection_said(seen.get('selection'))}; "
                   + ", ".join(f"{n} {role}" for role, n in seen["counts"].items()))
    click.echo(f"  from {card['run']}" + (f", step {card['step']}" if card.get("step") is not None else "")
               + (f", {card['teacher']} teacher" if card.get("teacher") else "") + f"; {card['tool']}")
    click.echo("  classes: " + ", ".join(card["classes"]))


def _selection_said(sel: dict) -> str:
    """A card's selection record in words: `fraction 0.1 (seed 0), val 5 per class; split from hmdb51 (...)`."""
    if not isinstance(sel, dict):
        return str(sel)
    said = f"{sel.get('rule')} {sel.get('value')} (seed {sel.get('seed')})"
    val = sel.get("val")
    if val and val.get("value"):
        said += f", val {val['value']} per class" if val.get("rule") == "per_class" else f", val {val.get('rule')} {val.get('value')}"
    else:
        said += ", no val"
    src = sel.get("split_from")
    if src:   # the folder it was split from, by its own rule (not the whole history)
        first = dict(src.get("selection") or {}, split_from=None)
        said += f"; split from {src.get('name')} ({_selection_said(first)})"
    return said


def _echo_flips(ss):
    """The mirror-class pairs that training flips use (the card's map: loaders/clip.py flip_map), for datasets with directions."""
    from .flips import flips_of_card
    flips = flips_of_card(ss.card, str(ss.root))
    if flips is None:
        return
    pairs, never = flips["pairs"], flips["never"]
    where = "the card" if "flips" in ss.card else "not in the card (written before it held one): the packaged map"
    click.echo(f"  flips ({where}): {len(pairs)} mirror pair(s) swap their labels, {len(never)} class(es) never flipped")
    for a, b in pairs:
        click.echo(f"    {a} <-> {b}")
    for a in never:
        click.echo(f"    never flipped: {a}")


def _config(path, overrides):
    from .config import ConfigError, load_config
    try:
        cfg = load_config(path, overrides)
    except ConfigError as e:   # it names the file or the --set at fault
        fail(str(e))
    can_be_folder(cfg.out, "out")
    return cfg


def can_be_folder(path, what: str) -> None:
    """Fail, naming `what`, when `path` cannot become a folder: it, or a folder above it, is a file."""
    for p in (Path(path).absolute(), *Path(path).absolute().parents):
        if p.exists():
            if not p.is_dir():
                fail(f"{what} {path}: {p} is a file, not a folder")
            return


_config_options = [
    click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Training config (YAML), e.g. train/demo.yaml."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value, dotted keys (jedi.lr=0.01, datasets.0.model=r3d_18); repeatable."),
]


def config_options(f):
    for opt in reversed(_config_options):
        f = opt(f)
    return f


@main.command()
@config_options
@click.option("--resume", is_flag=True, hidden=True, help="No effect: pretrain always keeps finished experts and resumes unfinished ones.")
def pretrain(config_path, overrides, resume):
    """Train one expert per dataset on its labeled shards only (<out>/experts/<dataset>.pt).

    Example:

    \b
    jedi-pipe pretrain --config train/demo.yaml --set pretrain.epochs=50
    """
    from .trainer import pretrain as run
    cfg = _config(config_path, overrides)
    try:
        _run_guarded(lambda: run(cfg, log=click.echo))
    except KeyboardInterrupt:
        interrupted(f"Rerun the same command: finished experts are kept, and the others go on from "
                    f"their last checkpoint (every {cfg.checkpoint_every} steps)")


@main.command()
@config_options
@click.option("--resume", is_flag=True, help="Continue from the run folder's checkpoint.pt (model, optimizer, step, RNG, loader position).")
@click.option("--overwrite", is_flag=True, help="Start again in a run folder that holds a checkpoint.pt, replacing the run "
              "(its experts/ stay: delete them to train new ones).")
def train(config_path, overrides, resume, overwrite):
    """Joint JEDI training from the experts (pretrained first when missing); writes results.json/.md.

    A run folder that holds a checkpoint is not started again unless asked: --resume goes on from it
    (a finished run is scored again), --overwrite replaces it. Example:

    \b
    jedi-pipe train --config train/jedi.yaml --set jedi.steps=600
    """
    from .plots import draw
    from .records import results_table
    from .trainer import train as run
    cfg = _config(config_path, overrides)
    ckpt = Path(cfg.out) / "checkpoint.pt"
    try:
        results = _run_guarded(lambda: run(cfg, resume=resume, overwrite=overwrite, log=click.echo))
    except KeyboardInterrupt:
        interrupted(f"The run's last checkpoint (every {cfg.checkpoint_every} steps) is in {ckpt} if "
                    f"one was written: rerun with --resume to go on from it")
    if _speaks_for_the_run():
        try:
            draw(cfg.out, click.echo)
            click.echo(results_table(results))
        except KeyboardInterrupt:
            interrupted(f"The run is finished: its results are in {cfg.out} (results.md); "
                        f"`jedi-pipe plot {cfg.out}` draws the pictures")
        click.echo(f"outputs in {cfg.out}")


@main.command(name="eval")
@config_options
@click.option("--checkpoint", default=None, type=click.Path(dir_okay=False), help="JEDI checkpoint [default: <out>/checkpoint.pt].")
@click.option("--role", default="test", show_default=True, type=click.Choice(["test", "val"]),
              help="The shards' role scored: val to compare settings by (choices are made there), test to report.")
def evaluate(config_path, overrides, checkpoint, role):
    """Evaluate experts, and the students and teachers of a JEDI checkpoint, on the test (or val) shards.

    Example:

    \b
    jedi-pipe eval --config train/jedi.yaml --checkpoint runs/jedi-4/checkpoint.pt
    """
    from .trainer import evaluate as run
    cfg = _config(config_path, overrides)
    results = _run_guarded(lambda: run(cfg, checkpoint=checkpoint, log=click.echo, role=role))
    if not _speaks_for_the_run():
        return
    for name, kinds in results["datasets"].items():
        clips = next(iter(kinds.values()))["n"]
        click.echo(f"{name:12s} " + "  ".join(f"{k} {v['top1']:.1f}/{v['top5']:.1f}" for k, v in kinds.items())
                   + f"  ({role}, {clips} clips; top-1/top-5 %)")


def _speaks_for_the_run() -> bool:
    """Under torchrun rank 0 prints and draws for the run; a single process always does (whatever RANK
    it may carry). Read from torchrun's variables: the process group is shut down by now."""
    return int(os.environ.get("WORLD_SIZE", 1)) <= 1 or int(os.environ.get("RANK", 0)) == 0


def _run_guarded(fn):
    """Expected failures (jedi_pipe.errors: bad config, missing data, ...) end with one sentence and exit 2.
    Anything else (out of memory, a shape bug, a DALI error) propagates with its traceback: it is a bug
    or a resource limit, and a one-line summary would hide where it happened."""
    from .errors import JediPipeError
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:    # started by torchrun
        return _run_as_rank(fn)
    try:
        return fn()
    except JediPipeError as e:
        fail(str(e))


def _run_as_rank(fn):
    """One process of a torchrun job: a failure names its rank and ends with a non-zero exit, which
    makes torchrun stop the other ranks (they would otherwise wait in their next collective)."""
    import torch.distributed as dist

    from . import distributed
    from .errors import JediPipeError
    # (no rank without RANK: a WORLD_SIZE set by hand, which distributed.init refuses by name)
    where = f"rank {os.environ['RANK']}/{os.environ['WORLD_SIZE']}: " if os.environ.get("RANK") else ""
    try:
        return fn()
    except dist.DistError:
        fail(f"{where}another process of this run failed or stopped (its message is above)")
    except JediPipeError as e:
        fail(f"{where}{e}")
    except Exception:
        click.echo(f"error: {where}unexpected failure, traceback below", err=True)
        raise
    finally:
        distributed.shutdown()


@main.command()
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Output folder [default: ./jedi-demo, or ./jedi-demo-quick with --quick].")
@click.option("--quick", is_flag=True, help="Fewer videos and epochs: a smoke run of every stage (about 1 CPU minute, against 8-14 for the full demo; bench/README.md).")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the synthetic data, the labeled selection and training.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a value of the demo's training config (train/demo.yaml).")
def demo(out, quick, seed, overrides):
    """The whole pipeline on built-in synthetic data, no download needed.

    synth -> shard -> inspect -> pretrain experts -> JEDI -> results table (expert vs student vs
    teacher per dataset). Rerunning reuses what is already done.

    Example:

    \b
    jedi-pipe demo --quick
    """
    from .demo import run_demo
    out = out or ("jedi-demo-quick" if quick else "jedi-demo")
    try:
        _run_guarded(lambda: run_demo(out, quick=quick, seed=seed, overrides=overrides, echo=click.echo))
    except KeyboardInterrupt:
        interrupted("Rerun the same command: the finished datasets, shards and experts are kept, and training "
                    "goes on from its last checkpoint")


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
def plot(run_dir):
    """Draw a run folder: curves.png (top-1 and losses over steps), results.png (bars), confusion.png.

    Works while training runs (experts/*.pt and metrics.jsonl) and after (results.json).
    Needs matplotlib: pip install "jedi-pipe[plots]".

    Example:

    \b
    jedi-pipe plot jedi-demo/run
    """
    from .plots import write_plots
    for path in _run_guarded(lambda: write_plots(run_dir)):
        click.echo(str(path))


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--dataset", required=True, help="Which dataset's classifier (a dataset name of the run).")
@click.option("--which", type=click.Choice(["student", "student_avg", "student_ema", "teacher", "expert"]), default="student",
              show_default=True,
              help="student: one backbone; student_avg: its weight average (runs with jedi.student_avg); student_ema: "
                   "the student of the teachers' moving average (jedi.teacher_ema); teacher: every backbone of the "
                   "run (usually the best); expert: before JEDI.")
@click.option("--out", default="model.pt2", show_default=True, type=click.Path(dir_okay=False),
              help="File to write (a torch.export archive; keep the .pt2 suffix for plain torch.export.load).")
@click.option("--overwrite", is_flag=True, help="Replace --out when it exists (refused otherwise).")
def export(run_dir, dataset, which, out, overwrite):
    """Write one model of a run as a self-contained file: weights, graph, class names, clip spec.

    \b
    Plain PyTorch, without jedi-pipe:
        import torch
        model = torch.export.load("model.pt2").module()   # clips [B,3,T,S,S] -> logits
    jedi-pipe: jedi_pipe.load_model("model.pt2"), or `jedi-pipe predict --model model.pt2 VIDEO...`.

    Example:

    \b
    jedi-pipe export jedi-demo/run --dataset hmdb51 --out hmdb51.pt2
    """
    from .export import export_model
    can_be_folder(Path(out).parent, "--out's folder")
    try:
        path = _run_guarded(lambda: export_model(run_dir, dataset, which, out, overwrite))
    except KeyboardInterrupt:
        interrupted(f"Nothing was written to {out}; rerun the same command")
    click.echo(f"{path}: {which} of {dataset} ({Path(path).stat().st_size / 1e6:.1f} MB); "
               f"`jedi-pipe inspect {path}` shows its card")


@main.command()
@click.option("--model", "model_path", required=True, type=click.Path(dir_okay=False), help="A file written by `jedi-pipe export`.")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--role", default="test", show_default=True, type=click.Choice(["labeled", "unlabeled", "val", "test"]),
              help="With a shard folder as input: the role to predict.")
@click.option("-k", "--top", "k", default=5, show_default=True, type=click.IntRange(1, None), help="Classes shown per video.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line (video or key, top classes with probabilities).")
def predict(model_path, inputs, role, k, as_json):
    """Top-k classes of videos (any format ffmpeg reads), or of a shard folder's clips.

    Videos are transcoded and sampled exactly as the model's shards were (fps, short side,
    frames, stride, views), so only their first encoding.max_seconds count (`jedi-pipe inspect
    MODEL` shows it). A video that cannot be decoded is named on stderr (with --json, as a
    {"video", "error"} line among the results) and the others are still predicted; the exit is
    non-zero only when none could be.

    Example:

    \b
    jedi-pipe predict --model hmdb51.pt2 clip.mp4 other.avi -k 3
    """
    from .export import load_model
    model = _run_guarded(lambda: load_model(model_path))   # Ctrl-C here: the group's line (nothing shown yet)
    try:
        ok, bad = _predict_each(model, inputs, role, k, as_json)
    except KeyboardInterrupt:
        interrupted("The lines above are whole predictions; rerun for the inputs not shown")
    if not ok:
        fail(f"no prediction: none of the {bad} input(s) could be decoded")


def _predict_each(model, inputs, role, k, as_json) -> tuple[int, int]:
    """predict's loop: each result shown as soon as it is made; returns (predicted, failed)."""
    from .prediction import predict_shards, predict_videos
    ok = bad = 0

    def show(r, name):
        if as_json:
            click.echo(json.dumps(r))
        else:
            click.echo(f"{name}: " + ", ".join(f"{t['class']} {t['prob']:.2f}" for t in r["top"]))

    for item in inputs:
        if (Path(item) / "dataset.json").is_file():
            results = predict_shards(model, item, role=role, k=k)
            while (r := _run_guarded(lambda: next(results, None))) is not None:   # shown as they come
                show(r, f"{item}/{r['key']}" + (f" [{r['label']}]" if r["label"] is not None else ""))
                ok += 1
            continue
        for r in predict_videos(model, [item], k=k):
            if "error" in r:
                if as_json:   # the stream stays one JSON object per input
                    click.echo(json.dumps(r))
                else:
                    click.echo(f"error: {item}: {r['error']}", err=True)
                bad += 1
            else:
                show(r, item)
                ok += 1
    return ok, bad


@main.command()
@click.argument("src", type=click.Path(file_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False), help="The new shard folder.")
@click.option("--labeled-fraction", type=float, default=None, help="Fraction of each class's training videos that keep their label (1.0: all but val and its source groups, the fully supervised oracle). [default: SRC's labeled rule]")
@click.option("--labeled-per-class", type=int, default=None, help="Instead: this many labeled videos per class.")
@click.option("--labeled-list", type=click.Path(dir_okay=False), default=None, help="Instead: a file of the labeled videos, one video id or source path per line (published few-label splits).")
@click.option("--val-per-class", type=int, default=None, help="Hold out this many labeled training videos per class as the val role (0: no val role). [default: SRC's val rule]")
@click.option("--val-fraction", type=float, default=None, help="Instead: this fraction of each class's training videos as val.")
@click.option("--seed", default=None, type=int, help="Seed of the selection and shard order. [default: SRC's seed, so a rule kept draws the same videos]")
@click.option("--overwrite", is_flag=True, help="Replace what an earlier split with other settings wrote to --out.")
def split(src, out, **opts):
    """Re-split shard folder SRC into --out with another labeled selection or val role.

    Copies clip bytes (checked by sha256) and reuses the test tars: nothing is decoded or
    encoded, so it takes seconds where a second transcode takes hours (bench/README.md).

    Example:

    \b
    jedi-pipe split shards/hmdb51 --out shards/hmdb51-val --labeled-fraction 0.1 --val-per-class 2
    """
    from .make_shards import ShardError
    from .resplit import split_shards
    try:
        s = split_shards(src, out, **opts)
    except ShardError as e:
        fail(str(e))
    except KeyboardInterrupt:
        interrupted(f"Rerun the same command to finish {out}")
    counts = ", ".join(f"{r} {n}" for r, n in s.counts.items())
    if s.already_complete:
        click.echo(f"{s.out}: already complete with these settings ({counts}); nothing to do")
    else:
        click.echo(f"{s.out}: {counts}; {s.bytes / 1e6:.1f} MB in {s.seconds:.1f}s (clip bytes copied, nothing transcoded)")
    _warn(s.warnings)


class _bar:
    """A tqdm bar on a terminal (nothing when output is piped), usable as a callback."""

    def __init__(self, desc, total):
        self.desc, self.total = desc, total

    def __enter__(self):
        from tqdm import tqdm
        self.bar = tqdm(total=self.total, desc=self.desc, unit="video", disable=None, leave=False)
        return self.bar

    def __exit__(self, *exc):
        self.bar.close()


@main.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Training config (YAML), e.g. train/jedi.yaml.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config value (jedi.micro_batch_size=2); repeatable.")
@click.option("--gpus", default=1, show_default=True, type=click.IntRange(1, None), help="GPUs the step is spread over (DDP).")
@click.option("--gpu-mem", default=80.0, show_default=True, type=click.FloatRange(1, None), help="Memory of one GPU, GB.")
@click.option("--tflops", default=989.0, show_default=True, type=click.FloatRange(1, None), help="Dense bf16 peak of one GPU, TFLOP/s (H100/H200 989, A100 312).")
@click.option("--utilisation", default=0.3, show_default=True, type=click.FloatRange(0.01, 1), help="Fraction of the peak assumed reached.")
def plan(config_path, overrides, gpus, gpu_mem, tflops, utilisation):
    """Memory and time model of the config's joint step: does it fit, how long, what input rate.

    Activations and FLOPs per clip are measured here on the CPU (seconds per model at small
    sizes; minutes for R(2+1)D-18 at 16x112^2 on a small CPU); the rest is arithmetic, written
    out in jedi_pipe/plan.py and docs/scale.md.

    Example:

    \b
    jedi-pipe plan --config train/jedi.yaml --gpus 8
    """
    from .plan import format_plan, plan as make_plan, shard_counts
    cfg = _config(config_path, overrides)

    def run():
        labeled, classes = shard_counts(cfg)   # first: a damaged shard folder is said before minutes of measuring
        archs = sorted({d.model for d in cfg.datasets})
        click.echo(f"measuring {', '.join(archs)} on the CPU at {cfg.clip.frames}x{cfg.clip.size}^2 "
                   f"(seconds for small models, minutes for R(2+1)D-18 at 16x112^2)...", err=True)
        return make_plan(cfg, gpus=gpus, gpu_mem_gb=gpu_mem, tflops=tflops, utilisation=utilisation,
                         labeled_counts=labeled, class_counts=classes)
    click.echo(format_plan(_run_guarded(run)))


def _attach_bench():
    from .loaders.bench import bench_cli
    main.add_command(bench_cli)


_attach_bench()

if __name__ == "__main__":
    main()

