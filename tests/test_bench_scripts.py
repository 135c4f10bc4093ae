"""The bench scripts meet bad input as the CLI does: one `error:` line and exit status 2, before any
work, never a traceback."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.parametrize("argv, error", [
    (["scale_step.py", "--config", "nowhere.yaml"], "error: cannot read config nowhere.yaml"),        # script_main
    (["bn_shift.py", "nowhere"], "error: cannot read config nowhere/config.yaml"),
    (["step.py", "profile", "--shards", "nowhere", "--steps", "2"], "error: nowhere/hmdb51 is not a shard folder"),
    (["step.py", "profile", "--shards", "nowhere", "--steps", "0"], "--steps must be at least 1"),     # argparse
    (["split_speed.py", "--rounds", "0"], "--rounds at least 1"),
    (["shard_throughput.py", "--videos", "0"], "--videos, --workers and --rounds must be at least 1"),
    (["loader.py", "run", "--shards", ".", "--rounds", "0"], "'--rounds': 0 is not in the range x>=1"),  # click
    (["early_draw.py", "nowhere", "--draw", "nowhere"], "error: no finished jedi+views run under nowhere"),
])
def test_bad_input_is_one_line(argv, error, tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / argv[0]), *argv[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert error in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not any(tmp_path.iterdir())          # nothing made


def test_step_demo_refuses_a_used_folder(tmp_path):
    """`step.py demo` times a fresh demo: over a used folder the demo reuses its work and the phases lie."""
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "sources").mkdir()
    proc = subprocess.run([sys.executable, str(BENCH / "step.py"), "demo", "--out", str(tmp_path / "used")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not empty" in proc.stderr


def test_loader_make_data_never_mixes_sizes(tmp_path):
    """bench/loader.py make-data into a DIR made with other sizes: refused (the old sources would be
    sharded beside the new), or made again from scratch with --overwrite."""
    def make(*args):
        return subprocess.run([sys.executable, str(BENCH / "loader.py"), "make-data", str(tmp_path / "d"),
                               "--classes", "2", "--workers", "1", *args], capture_output=True, text=True, timeout=300)
    assert make("--videos", "3").returncode == 0
    refused = make("--videos", "2")
    assert refused.returncode == 2 and "holds sources of other sizes" in refused.stderr, refused.stderr
    assert len(list((tmp_path / "d" / "source").rglob("*.avi"))) == 6
    assert make("--videos", "2", "--overwrite").returncode == 0
    assert len(list((tmp_path / "d" / "source").rglob("*.avi"))) == 4
    # a DIR made before the sizes were recorded: its sizes are unknown, so it is not vouched for
    (tmp_path / "d" / "source" / ".sizes.json").unlink()
    unknown = make("--videos", "2")
    assert unknown.returncode == 2 and "unknown: made before sizes were recorded" in unknown.stderr
    assert "Usage:" not in unknown.stderr                             # one line (script_main), not click's usage
