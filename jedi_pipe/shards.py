"""The shard format: names, sample layout, tar + DALI index writing, manifest and card reading.

This module is the one source of truth for the format described in shards/README.md; the
writer (make_shards.py) and the loaders use its names and never spell them again.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import InputError, MissingError

FORMAT_VERSION = 1
ROLES = ("labeled", "unlabeled", "test")
ROLE_PREFIX = {"labeled": "train-labeled", "unlabeled": "train-unlabeled", "test": "test"}
CLIP_EXTS = ("webm", "avi", "mp4")   # VP9 / MJPEG / H.264; see transcode.CODECS
META_EXT = "meta.i32"                # little-endian int32 [label, frames, height, width, sample_id]
META_FIELDS = ("label", "frames", "height", "width", "sample_id")
MANIFEST = "manifest.parquet"
CARD = "dataset.json"
ERRORS = "errors.jsonl"
UNLABELED = -1
MTIME = 946684800                    # fixed member mtime (2000-01-01) so equal inputs give equal tars

_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def shard_name(role: str, index: int) -> str:
    return f"{ROLE_PREFIX[role]}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    return tar_name + ".idx"


def make_key(video_id: str) -> str:
    """A key unique in the dataset made only of [A-Za-z0-9_-]: readable stem + 8 hex of SHA-1.

    Dots are what webdataset and DALI split keys at, so they (and every other odd character)
    become underscores; the hash keeps ids that sanitise alike apart.
    """
    stem = _KEY_BAD.sub("_", video_id).strip("_")[:80] or "video"
    return f"{stem}-{hashlib.sha1(video_id.encode()).hexdigest()[:8]}"


def order_key(seed: int, key: str) -> str:
    """Seeded hash that orders samples of a role: classes mix along the shard, reproducibly."""
    return hashlib.sha1(f"{seed}:{key}".encode()).hexdigest()


def encode_meta(label: int, frames: int, height: int, width: int, sample_id: int) -> bytes:
    return np.array([label, frames, height, width, sample_id], dtype="<i4").tobytes()


def decode_meta(data: bytes) -> dict:
    return dict(zip(META_FIELDS, np.frombuffer(data, dtype="<i4").tolist()))


def sample_members(key: str, clip_ext: str, clip: bytes, meta: dict, label: int,
                   frames: int, height: int, width: int, sample_id: int) -> list[tuple[str, bytes]]:
    """The tar members of one sample, sorted by name. `meta` is the json component."""
    members = {
        f"{key}.{clip_ext}": clip,
        f"{key}.cls": str(label).encode(),
        f"{key}.json": json.dumps(meta, sort_keys=True).encode(),
        f"{key}.{META_EXT}": encode_meta(label, frames, height, width, sample_id),
    }
    return sorted(members.items())


class ShardWriter:
    """Writes one tar and its DALI index; the tar shows up under its final name only when done.

    Members get fixed mtime/owner/mode, so equal samples give byte-identical tars. The index
    (DALI `v1.2`: per sample a line of `ext offset size name` groups) is written from the
    offsets we know while writing, instead of re-reading the tar as `wds2idx` does.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".partial")
        self.tar = tarfile.open(self.tmp, "w", format=tarfile.GNU_FORMAT)
        self.index_lines: list[str] = []
        self.count = 0

    def write(self, members: list[tuple[str, bytes]]) -> None:
        parts = []
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self.tar.addfile(info, io.BytesIO(data))
            # After addfile the stream sits past the data padded to 512: the data began there.
            start = self.tar.offset - ((len(data) + 511) // 512) * 512
            ext = name.split(".", 1)[1]
            parts.append(f"{ext} {start} {len(data)} {name}")
        self.index_lines.append(" ".join(parts))
        self.count += 1

    def close(self) -> None:
        self.tar.close()
        idx = index_name(str(self.path))
        with open(idx + ".partial", "w") as f:
            f.write(f"v1.2 {len(self.index_lines)}\n" + "".join(ln + "\n" for ln in self.index_lines))
            f.flush()
            os.fsync(f.fileno())
        os.replace(idx + ".partial", idx)
        with open(self.tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(self.tmp, self.path)   # last: a tar under its final name is complete

    def abort(self) -> None:
        self.tar.close()
        self.tmp.unlink(missing_ok=True)


def manifest_schema():
    """Columns of manifest.parquet (shards/README.md)."""
    import pyarrow as pa
    i32, i64, s = pa.int32(), pa.int64(), pa.string()
    return pa.schema([("sample_id", i64), ("key", s), ("shard", s), ("role", s), ("split", s),
                      ("label", i32), ("label_name", s), ("label_true", i32), ("video_id", s),
                      ("source", s), ("frames", i32), ("fps", pa.float64()), ("width", i32),
                      ("height", i32), ("bytes", i64), ("sha256", s)])


# ---------------------------------------------------------------------------- reading

@dataclass(frozen=True)
class ShardSet:
    """A written dataset folder: its card, and its tars and index files per role."""
    root: Path
    card: dict

    @property
    def name(self) -> str:
        return self.card["name"]

    @property
    def classes(self) -> list[str]:
        return self.card["classes"]

    @property
    def clip_ext(self) -> str:
        return self.card["encoding"]["ext"]

    def tars(self, role: str) -> list[Path]:
        return [self.root / n for n in self.card["shards"][role]]

    def indexes(self, role: str) -> list[Path]:
        return [Path(index_name(str(t))) for t in self.tars(role)]

    def count(self, role: str) -> int:
        return self.card["counts"][role]

    def manifest(self, columns: list[str] | None = None):
        import pyarrow.parquet as pq
        return pq.read_table(self.root / MANIFEST, columns=columns)


def open_shards(root: str | Path) -> ShardSet:
    root = Path(root)
    card_path = root / CARD
    if not card_path.is_file():
        raise MissingError(f"{root} is not a shard folder: no {CARD} (run `jedi-pipe shard` first)")
    card = json.loads(card_path.read_text())
    if card.get("format_version") != FORMAT_VERSION:
        raise InputError(f"{card_path}: shard format {card.get('format_version')}, this jedi-pipe reads {FORMAT_VERSION}")
    return ShardSet(root, card)


def iter_tar_samples(path: str | Path):
    """Samples of one tar as dicts {'__key__': key, ext: bytes}, in file order (no webdataset)."""
    sample, key = {}, None
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, ext = m.name.split(".", 1)
            if k != key and sample:
                yield sample
                sample = {}
            key = k
            sample["__key__"] = k
            sample[ext] = tar.extractfile(m).read()
    if sample:
        yield sample
