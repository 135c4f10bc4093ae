"""The README's ```bash blocks, as written: every `jedi-pipe` line parses with the real click CLI,
every file of this repository it names exists, and the blocks that can run here run.

Block by block (README order; BLOCKS below names each by its first command), what is done and why:
  quickstart demo    parsed: `pip install` needs the network, and `jedi-pipe demo` takes 4 minutes
                     (tests/test_demo.py runs the demo, --quick); the extra it installs exists.
  quickstart tests   parsed: `pip install` again; the tests it runs are this suite.
  shard real data    parsed, and each line run with its `--root` (a real download under /data) moved to
                     an absent folder: the recipe is read and cast by the real `shard`, which then
                     stops at the missing root, before any work.
  split              run as written (2 s), in a folder holding `shards/ucf101` (tiny synthetic shards) and
                     `ucf101_1percent.txt` (one training video per class), as the README assumes.
  export + predict   run as written (slow: 40 s, a tiny run is trained), in a folder holding
                     `jedi-demo/run` and `jedi-demo/shards/hmdb51` (a tiny finished run in the demo's
                     layout) and `video1.avi`, `video2.mp4`.
A bash block the test does not know fails it: a new block must be sorted into one of these.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from jedi_pipe.cli import main

ROOT = Path(__file__).resolve().parents[1]
PARSED, RUN = "parsed", "run"
BLOCKS = {   # first command of the block -> what the test does with it
    'pip install "torch==2.13.0" -e ".[plots]" && jedi-pipe demo': PARSED,
    'pip install "torch==2.13.0" -e ".[test]" && python -m pytest -q': PARSED,
    "jedi-pipe shard --dataset hmdb51": PARSED,
    "jedi-pipe split shards/ucf101": RUN,
    "jedi-pipe export jedi-demo/run": RUN,
}
REPO_DIRS = ("preprocess", "train", "examples", "bench", "docs", "jedi_pipe", "tests")   # inputs, never outputs


def readme_bash_blocks() -> list[str]:
    return re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def kind(block: str) -> str:
    found = [k for first, k in BLOCKS.items() if block.lstrip().startswith(first)]
    assert len(found) == 1, f"a README bash block this test does not know; sort it into BLOCKS:\n{block}"
    return found[0]


def commands(block: str) -> list[list[str]]:
    """The block's simple commands as argument lists: comments dropped, `&&` chains split."""
    out = []
    for line in block.splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            out.append(words[:cut])
            words = words[cut + 1:]
    return out


def parse_cli(args: list[str]) -> click.Context:
    """`jedi-pipe ARGS` parsed by the real CLI, through its groups, without running anything: click
    raises UsageError for an unknown command or option, a bad value or a missing required one."""
    cmd, ctx = main, click.Context(main, info_name="jedi-pipe")
    while isinstance(cmd, click.Group):
        name, cmd, args = cmd.resolve_command(ctx, list(args))   # UsageError: no such command
        if not isinstance(cmd, click.Group):
            return cmd.make_context(name, args, parent=ctx)
        ctx = click.Context(cmd, info_name=name, parent=ctx)


def test_every_bash_block_is_known_and_its_commands_parse():
    blocks = readme_bash_blocks()
    assert sorted(kind(b) for b in blocks) == sorted(BLOCKS.values())   # each known block once
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    jedi_lines = 0
    for block in blocks:
        for words in commands(block):
            if words[0] == "jedi-pipe":
                parse_cli(words[1:])
                jedi_lines += 1
            elif words[:2] == ["pip", "install"]:
                for spec in words[2:]:
                    m = re.fullmatch(r"\.\[(\w+)\]", spec)
                    assert not spec.startswith(".") or (m and m.group(1) in extras), f"no extra {spec}"
            else:
                assert words[:3] == ["python", "-m", "pytest"], f"a command this test does not check: {words}"
            for w in words:   # the repository files a line reads (recipes, configs) are there
                if w.split("/")[0] in REPO_DIRS:
                    assert (ROOT / w).exists(), f"README names {w}, which this repository lacks"
    assert jedi_lines >= 10


def test_parse_cli_has_teeth():
    with pytest.raises(click.UsageError):
        parse_cli(["shard", "--dataset", "hmdb51", "--colour", "red"])
    with pytest.raises(click.UsageError):
        parse_cli(["export", "runs/x"])           # --dataset missing
    with pytest.raises(click.BadParameter):
        parse_cli(["shard", "--dataset", "x", "--fps", "fast"])
    with pytest.raises(click.UsageError, match="No such command"):
        parse_cli(["shardd", "--dataset", "x"])
    assert parse_cli(["bench", "loader", "--shards", str(ROOT / "shards")]).info_name == "loader"   # a group in a group


def test_shard_lines_read_their_recipe_and_stop_at_the_missing_root(tmp_path):
    block = next(b for b in readme_bash_blocks() if b.startswith("jedi-pipe shard"))
    lines = commands(block)
    assert len(lines) == 5
    cwd = os.getcwd()
    os.chdir(ROOT)   # the recipes' paths are relative to the checkout, as the README is read in it
    try:
        for words in lines:
            i = words.index("--root") + 1
            absent = tmp_path / Path(words[i]).name
            args = words[1:i] + [str(absent)] + words[i + 1:] + ["--out", str(tmp_path / "out")]
            r = CliRunner().invoke(main, args)
            assert r.exit_code == 2, r.output
            assert r.stderr.strip().splitlines()[-1] == f"error: dataset root {absent} does not exist or is not a folder", r.output
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "out").exists()


# ---- the blocks that run as written

def run_block(block: str, cwd: Path) -> list[str]:
    """Each line of the block in bash, in `cwd`, with `jedi-pipe` being this checkout's CLI; their stdouts."""
    bin_dir = cwd / ".bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "jedi-pipe").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m jedi_pipe.cli "$@"\n')
    (bin_dir / "jedi-pipe").chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    outputs = []
    for line in block.strip().splitlines():
        proc = subprocess.run(["bash", "-e", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"README line failed:\n{line}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
        outputs.append(proc.stdout)
    return outputs


def test_split_block_runs_as_written(tmp_path):
    from jedi_pipe import synth
    from jedi_pipe.make_shards import make_shards
    from jedi_pipe.shards import open_shards

    from .conftest import SHARD_OPTS
    block = next(b for b in readme_bash_blocks() if b.startswith("jedi-pipe split"))
    # 12 videos a class: 3 UCF101 groups, 2 of them training, so val has a group no listed video is in
    # (the session's 4-video classes train on one group, which the listed video takes)
    src = synth.generate(tmp_path / "synth", datasets=("ucf101",), videos_per_class=12, workers=2)["ucf101"]
    make_shards("ucf101", src, tmp_path / "shards" / "ucf101", **SHARD_OPTS)
    rows = [r for r in open_shards(tmp_path / "shards" / "ucf101").full_rows() if r["role"] != "test"]
    first = {}
    for r in sorted(rows, key=lambda r: r["video_id"]):
        first.setdefault(r["label"], r["video_id"])
    (tmp_path / "ucf101_1percent.txt").write_text("".join(v + "\n" for v in first.values()))
    run_block(block, tmp_path)
    one = open_shards(tmp_path / "shards" / "ucf101-1pct")
    assert one.count("labeled") == len(first) and one.count("val") > 0
    everything = open_shards(tmp_path / "shards" / "ucf101-all")
    assert everything.count("val") == one.count("val")
    # the oracle labels every video but val and the rest of a val video's UCF101 group
    from jedi_pipe.datasets import source_group
    rows = everything.full_rows()
    group = lambda r: (r["label"], source_group("ucf101", r["video_id"], everything.classes[r["label"]]))  # noqa: E731
    val_groups = {group(r) for r in rows if r["role"] == "val"}
    assert all(group(r) in val_groups for r in rows if r["role"] == "unlabeled")


@pytest.mark.slow
def test_export_and_predict_block_runs_as_written(shard_dirs, synth_root, tmp_path):
    from test_trainer import tiny_config

    from jedi_pipe.shards import open_shards
    from jedi_pipe.trainer import train
    from jedi_pipe.transcode import ffmpeg_exe
    block = next(b for b in readme_bash_blocks() if b.startswith("jedi-pipe export"))
    demo = tmp_path / "jedi-demo"
    (demo / "shards").mkdir(parents=True)
    for name in ("hmdb51", "ssv2"):
        shutil.copytree(shard_dirs[name], demo / "shards" / name)
    # the tests' tiny two-dataset run (test_trainer's), in the demo's layout
    _, cfg = tiny_config({n: demo / "shards" / n for n in ("hmdb51", "ssv2")}, demo / "run",
                         ["jedi.epochs=1", "checkpoint_every=100"])
    train(cfg, log=lambda m: None)
    avis = sorted((synth_root / "hmdb51").rglob("*.avi"))
    shutil.copy(avis[0], tmp_path / "video1.avi")
    subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-i", str(avis[1]), "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", str(tmp_path / "video2.mp4")], check=True)
    _, videos, shard = run_block(block, tmp_path)
    assert (tmp_path / "demo-hmdb51.pt2").is_file()
    classes = open_shards(demo / "shards" / "hmdb51").classes
    assert "video1.avi" in videos and "video2.mp4" in videos, videos
    assert sum(c in videos for c in classes) >= 2, videos   # top classes named
    assert len([ln for ln in shard.splitlines() if ln.strip()]) >= open_shards(demo / "shards" / "hmdb51").count("test")


def every_command(group=main, prefix=()):
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from every_command(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def test_every_command_help_has_an_example_that_parses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # paths the examples name as inputs (a run folder, a video) made here
    for name, cmd in every_command():
        text = cmd.help or ""
        assert "Example:" in text, f"`jedi-pipe {' '.join(name)} --help` has no example"
        lines = [ln.strip() for ln in text.split("Example:", 1)[1].splitlines() if ln.strip().startswith("jedi-pipe ")]
        assert lines, name
        for line in lines:
            words = shlex.split(line)
            assert tuple(words[1:1 + len(name)]) == name, line
            for w in words[1 + len(name):]:
                if w.startswith("/"):   # an absolute path (shard's --root /data/...): never made outside tmp_path
                    continue
                if not w.startswith("-") and "/" in w or w.endswith((".mp4", ".avi", ".pt2")):
                    target = tmp_path / w
                    if not (ROOT / w).exists():   # repository files (configs, recipes) are read from ROOT
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.mkdir(exist_ok=True) if "." not in target.name else target.write_bytes(b"")
            rest = words[1 + len(name):]
            args = list(name) + [str(ROOT / w) if "/" in w and (ROOT / w).exists() else w for w in rest]
            parse_cli(args)   # UsageError: an unknown option, a missing required one, a bad value
