"""The CLI as a user meets it: --help everywhere, inspect with a preview PNG, clear errors."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from jedi_pipe.cli import main


@pytest.mark.parametrize("cmd", [[], ["synth"], ["shard"], ["inspect"], ["pretrain"], ["train"], ["eval"],
                                 ["demo"], ["bench", "loader"]])
def test_help(cmd):
    r = CliRunner().invoke(main, cmd + ["--help"])
    assert r.exit_code == 0 and "Usage:" in r.output and len(r.output) > 200


def test_inspect_checks_and_previews(shard_dirs, tmp_path):
    png = tmp_path / "sheet.png"
    r = CliRunner().invoke(main, ["inspect", str(shard_dirs["ssv2"]), "--preview", str(png)])
    assert r.exit_code == 0, r.output
    assert "all match the manifest" in r.output and "labeled" in r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_inspect_reports_a_tampered_tar(shard_dirs, tmp_path):
    import shutil
    d = tmp_path / "copy"
    shutil.copytree(shard_dirs["hmdb51"], d)
    tar = sorted(d.glob("test-*.tar"))[0]
    first = (d / (tar.name + ".idx")).read_text().splitlines()[1].split()
    webm = first.index("webm")
    offset, size = int(first[webm + 1]), int(first[webm + 2])   # the first clip's bytes, from the index
    data = bytearray(tar.read_bytes())
    data[offset + size // 2] ^= 0xFF
    tar.write_bytes(bytes(data))
    r = CliRunner().invoke(main, ["inspect", str(d)])
    assert r.exit_code != 0 and "problem" in r.output


def test_train_with_a_bad_config_is_one_sentence(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("name: x\nout: o\ndatasets: [{name: a, shards: s}]\njedi: {lrate: 1}\n")
    r = CliRunner().invoke(main, ["train", "--config", str(conf)])
    assert r.exit_code == 2 and "jedi.lrate" in r.output and "Traceback" not in r.output
