"""`jedi-pipe demo --quick` end to end through the real CLI: every output exists and parses."""
from __future__ import annotations

import json
import subprocess
import sys


def test_demo_quick(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "jedi_pipe.cli", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| mean |" in proc.stdout and "Outputs:" in proc.stdout
    run = out / "run"
    results = json.loads((run / "results.json").read_text())
    assert set(results["datasets"]) == {"hmdb51", "ucf101", "kinetics400", "ssv2"}
    for kinds in results["datasets"].values():
        assert set(kinds) == {"expert", "student", "teacher"}
    assert (run / "results.md").read_text().count("|") > 20
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    for name in results["datasets"]:
        assert (out / "shards" / name / "manifest.parquet").is_file()
        assert (run / "experts" / f"{name}.pt").is_file()
    for png in ("curves.png", "results.png"):    # matplotlib is in the test extra
        assert (run / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
