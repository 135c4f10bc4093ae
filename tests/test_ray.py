"""`jedi-pipe shard --executor ray`: the same bytes as the local executor, resume, and the install hint.

The Ray runs are slow (starting Ray alone takes ~10 s on 2 cores): run them with
`pytest -m slow tests/test_ray.py`. They are skipped where Ray is not installed; the checks that
need no Ray run by default.
"""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from jedi_pipe import make_shards as ms
from jedi_pipe import shards
from jedi_pipe.cli import main

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='needs ray: pip install "jedi-pipe[ray]"')
OPTS = dict(fps=8.0, short_side=32, max_seconds=2.0, labeled_fraction=0.25, shard_max_count=5, workers=2)
FLAGS = ["--fps", "8", "--short-side", "32", "--max-seconds", "2", "--labeled-fraction", "0.25",
         "--shard-max-count", "5", "--workers", "2"]


def tree(out: Path) -> dict[str, bytes]:
    """Every file of a finished shard folder, by name (the run's bookkeeping excluded)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.is_file() and not p.name.startswith(".")}


def assert_same_folder(got: Path, want: Path) -> None:
    g, w = tree(got), tree(want)
    assert sorted(g) == sorted(w)
    assert any(n.endswith(".tar") for n in w) and any(n.endswith(".tar.idx") for n in w)
    for name in w:
        assert g[name] == w[name], name      # tars, .idx, manifest.parquet, dataset.json, errors.jsonl
    assert shards.open_shards(got).manifest().to_pylist() == shards.open_shards(want).manifest().to_pylist()


@pytest.fixture(scope="module")
def synth_hmdb(tmp_path_factory) -> Path:
    from jedi_pipe import synth
    base = tmp_path_factory.mktemp("ray-synth")
    return synth.generate(base, datasets=["hmdb51"], videos_per_class=3, seed=0, workers=2)["hmdb51"]


@pytest.fixture(scope="module")
def local_ref(synth_hmdb, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ray-ref") / "local"
    s = ms.make_shards("hmdb51", synth_hmdb, out, **OPTS)
    assert s.transcoded == sum(s.counts.values()) > 0
    return out


# ----------------------------------------------------------------------------- without Ray

def test_executor_ray_without_ray_installed_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)    # `import ray` now raises ImportError
    result = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(tmp_path),
                                       "--out", str(tmp_path / "o"), "--executor", "ray"])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and 'pip install "jedi-pipe[ray]"' in lines[0]
    assert not (tmp_path / "o").exists()             # refused before anything was written
    with pytest.raises(ms.ShardError, match=r'pip install "jedi-pipe\[ray\]"'):
        ms.make_shards("hmdb51", tmp_path, tmp_path / "o", executor="ray")


def test_ray_address_needs_the_ray_executor(tmp_path):
    result = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(tmp_path),
                                       "--ray-address", "auto"])
    assert result.exit_code == 2 and result.output.strip() == "error: --ray-address is only used with --executor ray"


def test_a_task_that_cannot_see_the_output_folder_says_so(tmp_path):
    from jedi_pipe.ray_executor import _shard_task
    from jedi_pipe.shard_jobs import ShardJob
    with pytest.raises(ms.ShardError, match="not visible on Ray node .*every node mounts at the same path"):
        _shard_task(ShardJob(tmp_path / "elsewhere", "test-000000.tar", [], None, "hmdb51", []))


# ----------------------------------------------------------------------------- with Ray

@needs_ray
def test_an_address_nobody_listens_on_is_one_sentence(synth_hmdb, tmp_path):
    result = CliRunner().invoke(main, ["shard", "--dataset", "hmdb51", "--root", str(synth_hmdb), "--out",
                                       str(tmp_path / "o"), *FLAGS, "--executor", "ray", "--ray-address", "127.0.0.1:1"])
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert result.output.startswith("error: cannot reach the Ray cluster at 127.0.0.1:1") and "ray start --head" in result.output


@needs_ray
@pytest.mark.slow
def test_cli_starts_its_own_ray_and_resolves_relative_paths(synth_hmdb, local_ref, tmp_path):
    # relative --root and --out, from a working directory the Ray workers do not share
    (tmp_path / "data").symlink_to(synth_hmdb)
    proc = subprocess.run([sys.executable, "-m", "jedi_pipe.cli", "shard", "--dataset", "hmdb51",
                           "--root", "data", "--out", "ray", *FLAGS, "--executor", "ray"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert_same_folder(tmp_path / "ray", local_ref)


@pytest.fixture(scope="module")
def ray_session():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False)   # "local": never a cluster left running here
    yield ray
    ray.shutdown()


@needs_ray
@pytest.mark.slow
def test_ray_executor_writes_the_same_bytes_as_the_local_one(ray_session, synth_hmdb, local_ref, tmp_path):
    s = ms.make_shards("hmdb51", synth_hmdb, tmp_path / "ray", executor="ray", **OPTS)
    assert ray_session.is_initialized()              # it used the session it found, and left it running
    assert s.transcoded == sum(s.counts.values()) and s.failures == 0
    assert_same_folder(tmp_path / "ray", local_ref)
    again = ms.make_shards("hmdb51", synth_hmdb, tmp_path / "ray", executor="ray", **OPTS)
    assert again.already_complete and again.transcoded == 0


@needs_ray
@pytest.mark.slow
def test_ray_resumes_a_local_run_redoing_only_the_unfinished_shards(ray_session, synth_hmdb, local_ref,
                                                                   tmp_path, monkeypatch):
    out = tmp_path / "o"

    def interrupted(*a, **k):   # every shard written, the run stopped before the manifest
        raise KeyboardInterrupt

    monkeypatch.setattr(ms, "_finalize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ms.make_shards("hmdb51", synth_hmdb, out, **OPTS)
    monkeypatch.undo()
    # one shard as if the kill had come while it was written: its part and tar are not there
    lost = "train-unlabeled-000000.tar"
    (out / ms.PARTS / (lost + ".json")).unlink()
    (out / lost).unlink()
    kept = {t.name: t.stat().st_mtime_ns for t in out.glob("*.tar")}

    s = ms.make_shards("hmdb51", synth_hmdb, out, executor="ray", **OPTS)
    assert s.transcoded == sum(1 for r in shards.open_shards(local_ref).manifest().to_pylist() if r["shard"] == lost)
    assert {n: (out / n).stat().st_mtime_ns for n in kept} == kept     # finished shards were not rewritten
    assert_same_folder(out, local_ref)
