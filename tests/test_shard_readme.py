"""The two reading examples of shards/README.md run as written, on freshly written shards."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "shards" / "README.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def run_example(code: str, shard_dir: Path) -> dict:
    code = code.replace("shards/hmdb51/", f"{shard_dir}/")
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    return scope


def test_webdataset_example(shard_dirs):
    code = examples()[0]
    scope = run_example(code, shard_dirs["hmdb51"])
    assert isinstance(scope["clip_bytes"], bytes) and scope["clip_bytes"][:4] == b"\x1a\x45\xdf\xa3"  # EBML/WebM
    assert scope["label"] >= 0


def test_dali_example(shard_dirs):
    scope = run_example(examples()[1], shard_dirs["hmdb51"])
    import numpy as np
    frames = np.array(scope["frames"][0])
    assert frames.ndim == 4 and frames.shape[0] == 8 and frames.shape[-1] == 3
    # the labels are the test tar's own, in order, as int32 (not .cls's ASCII bytes)
    import tarfile
    with tarfile.open(shard_dirs["hmdb51"] / "test-000000.tar") as tar:
        cls = [int(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".cls")]
    labels = [np.array(scope["labels"][i]) for i in range(len(scope["labels"]))]
    assert all(x.dtype == np.int32 and x.shape == () for x in labels)
    assert [int(x) for x in labels] == cls[:len(labels)] and len(labels) == 4
