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

FORMAT_VERSION = 2                   # 2: keys name nothing, withheld.parquet, val role
ROLES = ("labeled", "unlabeled", "val", "test")   # also the order of sample ids
TRAIN_ROLES = ("labeled", "unlabeled", "val")     # drawn from the source's training split
ROLE_PREFIX = {"labeled": "train-labeled", "unlabeled": "train-unlabeled", "val": "val", "test": "test"}
CLIP_EXTS = ("webm", "avi", "mp4")   # VP9 / MJPEG / H.264; see transcode.CODECS
META_EXT = "meta.i32"                # little-endian int32 [label, frames, height, width, sample_id]
META_FIELDS = ("label", "frames", "height", "width", "sample_id")
MANIFEST = "manifest.parquet"
WITHHELD = "withheld.parquet"        # what identifies each unlabeled sample; no model reads it
CARD = "dataset.json"
ERRORS = "errors.jsonl"
MISSING = "missing.jsonl"            # videos a split file names that are not on disk
JOB = ".job.json"                    # a shard or split run's settings, written first; the card is written last
UNLABELED = -1
MTIME = 946684800                    # fixed member mtime (2000-01-01) so equal inputs give equal tars

_KEY_BAD = re.compile(r"[^A-Za-z0-9_-]+")


def shard_name(role: str, index: int) -> str:
    return f"{ROLE_PREFIX[role]}-{index:06d}.tar"


def index_name(tar_name: str) -> str:
    return tar_name + ".idx"


def make_key(name: str, sample_id: int) -> str:
    """`<dataset>-<sample id>`: unique in the dataset, only [A-Za-z0-9_-], and naming nothing
    about the video (real video ids and file names contain the class).

    Dots are what webdataset and DALI split keys at, so they (and every other odd character of
    the dataset name) become underscores.
    """
    return f"{_KEY_BAD.sub('_', name).strip('_') or 'data'}-{sample_id:07d}"


def order_key(seed: int, video_id: str) -> str:
    """Seeded hash that orders samples of a role: classes mix along the shard, reproducibly."""
    return hashlib.sha1(f"{seed}:{video_id}".encode()).hexdigest()


def encode_meta(label: int, frames: int, height: int, width: int, sample_id: int) -> bytes:
    return np.array([label, frames, height, width, sample_id], dtype="<i4").tobytes()


def decode_meta(data: bytes) -> dict:
    return dict(zip(META_FIELDS, np.frombuffer(data, dtype="<i4").tolist()))


def sample_json(key: str, role: str, dataset: str, frames: int, fps: float, width: int, height: int,
                video_id: str, split: str, label: int, label_name: str) -> dict:
    """The `.json` member. An unlabeled sample's names nothing that identifies its video or class
    (no video id, source, split, label): those live in withheld.parquet only."""
    meta = {"key": key, "role": role, "dataset": dataset, "frames": frames, "fps": fps,
            "width": width, "height": height}
    if role != "unlabeled":
        meta.update(video_id=video_id, split=split, label=label, label_name=label_name)
    return meta


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
            ext = member_key_ext(name)[1]
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
                      ("label", i32), ("label_name", s), ("video_id", s), ("source", s),
                      ("frames", i32), ("fps", pa.float64()), ("width", i32), ("height", i32),
                      ("bytes", i64), ("sha256", s)])


def withheld_schema():
    """Columns of withheld.parquet: what the manifest leaves out of every unlabeled row."""
    import pyarrow as pa
    return pa.schema([("sample_id", pa.int64()), ("key", pa.string()), ("video_id", pa.string()),
                      ("source", pa.string()), ("label", pa.int32()), ("label_name", pa.string())])


def public_row(row: dict) -> tuple[dict, dict | None]:
    """A full sample row -> (its manifest row, its withheld row or None).

    `row` holds every manifest column with the true label, video id and source; for an
    unlabeled sample those three move to the withheld row and the manifest keeps blanks.
    """
    if row["role"] != "unlabeled":
        return row, None
    withheld = {k: row[k] for k in ("sample_id", "key", "video_id", "source", "label", "label_name")}
    return {**row, "label": UNLABELED, "label_name": "", "video_id": "", "source": ""}, withheld


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
        return self.card["counts"].get(role, 0)

    def manifest(self, columns: list[str] | None = None):
        import pyarrow.parquet as pq
        return pq.read_table(self.root / MANIFEST, columns=columns)

    def withheld(self, columns: list[str] | None = None):
        """The unlabeled samples' video ids, sources and true labels: for measuring pseudo-labels
        (and re-splitting) only; nothing that trains may read it."""
        import pyarrow.parquet as pq
        return pq.read_table(self.root / WITHHELD, columns=columns)

    def full_rows(self) -> list[dict]:
        """Every manifest row with the withheld video id, source and label put back: for
        re-splitting and for checks, never for a model."""
        hidden = {r["sample_id"]: r for r in self.withheld().to_pylist()}
        return [{**r, **hidden[r["sample_id"]]} if r["sample_id"] in hidden else r
                for r in self.manifest().to_pylist()]


def data_record(card: dict) -> dict:
    """What a model learnt from a shard folder, from its card: its name and dataset, class count,
    labeled selection, source split and clips per role (an expert saves it; the model card shows it)."""
    return {"name": card.get("name"), "dataset": card.get("dataset"), "classes": len(card["classes"]), "selection": card.get("selection"),
            "source_split": card.get("source_split"), "counts": card["counts"]}


def open_shards(root: str | Path) -> ShardSet:
    """The shard folder at `root` (its card read and checked): roles, tars, manifest, classes.
    MissingError when it is no finished shard folder, InputError when its card is unreadable or of
    another format version."""
    root = Path(root)
    card_path = root / CARD
    if not card_path.is_file():
        if (root / JOB).is_file():    # the card is written last: a run was cut short
            raise MissingError(f"{root} is not finished: an interrupted `jedi-pipe shard` or `split` ({JOB} is "
                               f"there, {CARD} is not); rerun the same command to finish it")
        raise MissingError(f"{root} is not a shard folder: no {CARD} (run `jedi-pipe shard` first)")
    try:
        card = json.loads(card_path.read_text())
    except ValueError as e:
        raise InputError(f"{card_path} is not valid JSON ({e}); write the folder again with "
                         f"`jedi-pipe shard --overwrite`") from None
    if not isinstance(card, dict) or card.get("format_version") != FORMAT_VERSION:
        version = card.get("format_version") if isinstance(card, dict) else None
        raise InputError(f"{card_path}: shard format {version}, this jedi-pipe reads "
                         f"{FORMAT_VERSION}; write the folder again with `jedi-pipe shard --overwrite`")
    return ShardSet(root, card)


def member_key_ext(name: str) -> tuple[str, str]:
    """A tar member's sample key and extension: "hmdb51-0000013.meta.i32" -> ("hmdb51-0000013", "meta.i32")."""
    key, _, ext = name.partition(".")
    return key, ext


def iter_tar_samples(path: str | Path):
    """Samples of one tar as dicts {'__key__': key, ext: bytes}, in file order (no webdataset)."""
    sample, key = {}, None
    with tarfile.open(path) as tar:
        for m in tar:
            if not m.isfile():
                continue
            k, ext = member_key_ext(m.name)
            if k != key and sample:
                yield sample
                sample = {}
            key = k
            sample["__key__"] = k
            sample[ext] = tar.extractfile(m).read()
    if sample:
        yield sample


def read_index(path: str | Path) -> dict[str, dict[str, tuple[int, int]]]:
    """A DALI `v1.2` index as {key: {ext: (offset, size)}}: where each member's bytes sit in the tar."""
    lines = Path(path).read_text().splitlines()
    if not lines or not lines[0].startswith("v1.2 "):
        raise InputError(f"{path} is not a DALI v1.2 index file")
    out = {}
    for line in lines[1:]:
        f = line.split()
        members = {}
        for i in range(0, len(f), 4):   # groups of: ext offset size name
            ext, offset, size, name = f[i:i + 4]
            members[ext] = (int(offset), int(size))
        out[member_key_ext(name)[0]] = members
    return out
