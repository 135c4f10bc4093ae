"""The README's Python code and examples/ run as written, on tiny data."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jedi_pipe.shards import open_shards

ROOT = Path(__file__).resolve().parents[1]


def run_python(args, cwd, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}      # this checkout's jedi_pipe, whatever is installed
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_example_trains_r3d_18_on_the_labeled_role_and_tests_it(shard_dirs, tmp_path):
    proc = run_python([str(ROOT / "examples" / "train_classifier.py"), "--shards", str(shard_dirs["ucf101"]),
                       "--model", "r3d_18", "--steps", "2", "--batch-size", "4", "--frames", "4", "--stride", "1",
                       "--size", "32", "--threads", "1"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ss = open_shards(shard_dirs["ucf101"])
    assert re.search(r"^step 1: loss \d+\.\d{3}$", proc.stdout, re.M), proc.stdout
    m = re.search(r"^test top-1 (\d+\.\d)% on (\d+) clips \((\d+) classes\)$", proc.stdout, re.M)
    assert m, proc.stdout
    assert int(m.group(2)) == ss.count("test") and int(m.group(3)) == len(ss.classes)


def readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.mark.slow
def test_readme_python_blocks_run_as_written(tmp_path):
    """Every ```python block of the README, in order, in one fresh folder (the API example writes the
    model file that the plain-PyTorch block loads)."""
    blocks = readme_python_blocks()
    assert len(blocks) >= 2
    for k, code in enumerate(blocks):
        path = tmp_path / f"readme_{k}.py"
        path.write_text(code)
        proc = run_python([str(path)], cwd=tmp_path, timeout=1500)
        assert proc.returncode == 0, f"README python block {k} failed:\n{code}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "runs" / "api" / "results.json").is_file() and (tmp_path / "hmdb51.pt2").is_file()
    assert (tmp_path / "runs" / "api" / "confusion.png").is_file()


def test_readme_python_blocks_are_whole_programs():
    """The fast half of the check above: each block compiles and imports what it uses."""
    for code in readme_python_blocks():
        compile(code, "README.md", "exec")
        for name in set(re.findall(r"\b(jedi_pipe|torch|Path)[.(]", code)):
            assert re.search(rf"^(import {name}|from \S+ import .*\b{name}\b)", code, re.M), name
