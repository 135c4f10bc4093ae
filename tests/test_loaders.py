"""Loaders: DALI (CPU path here) and the torch fallback on tiny shards written in tmp_path."""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import random
import subprocess
import sys

import pytest
import torch

from jedi_pipe.errors import InputError
from jedi_pipe.loaders import ClipSpec, make_eval_loader, make_loaders, resolve_backend
from jedi_pipe.loaders import dali as D   # imports nvidia.dali only inside its functions
from jedi_pipe.loaders import torch as TL
from jedi_pipe.loaders.clip import view_starts
from jedi_pipe.shards import open_shards

# Only the DALI tests need DALI: the torch fallback's tests run (with DALI hidden) on any machine.
needs_dali = pytest.mark.skipif(importlib.util.find_spec("nvidia") is None
                                or importlib.util.find_spec("nvidia.dali") is None, reason="nvidia-dali is not installed")
CLIP = dict(frames=8, stride=2, size=32)
BACKENDS = [pytest.param("dali", marks=needs_dali), "torch"]


def hide_dali(monkeypatch):
    """This process as on a machine without DALI: `import nvidia.dali` (and its submodules) fails."""
    for name in [m for m in sys.modules if m == "nvidia.dali" or m.startswith("nvidia.dali.")] + ["nvidia.dali"]:
        monkeypatch.setitem(sys.modules, name, None)   # None in sys.modules: the import raises ImportError
    with pytest.raises(ImportError):
        import nvidia.dali  # noqa: F401


@pytest.fixture(autouse=True)
def torch_backend_without_dali(request, monkeypatch):
    """Every test of the torch backend runs with DALI hidden: the fallback must not need it."""
    callspec = getattr(request.node, "callspec", None)
    if callspec and callspec.params.get("backend") == "torch":
        hide_dali(monkeypatch)
# (lavfi pattern, size, seconds): landscape, portrait and square frames; 0.3 s is 4 frames at
# 12 fps, shorter than the 15-frame window of CLIP; testsrc2's 3 s (36 frames) is the one clip that
# moves and holds two windows apart (the window-placement checks need it: rgbtestsrc and smptebars
# are long but still)
VIDEOS = [("testsrc", "64x48", 0.3), ("mandelbrot", "48x64", 1.0), ("rgbtestsrc", "64x64", 2.0),
          ("smptebars", "80x60", 1.5), ("testsrc2", "64x64", 3.0), ("testsrc", "64x64", 0.3)]
MOVING_LONG = 30    # frames: only testsrc2's clips have more


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """A `folder` dataset: 3 classes x 6 videos -> shards (40 px short side, 12 fps, 3 per tar)."""
    from jedi_pipe.make_shards import make_shards
    from jedi_pipe.transcode import ffmpeg_exe
    root = tmp_path_factory.mktemp("folder_src")
    for c in range(3):
        for v, (pattern, size, secs) in enumerate(VIDEOS):
            path = root / f"class{c}" / f"v{v}.avi"
            path.parent.mkdir(exist_ok=True)
            subprocess.run([ffmpeg_exe(), "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                            f"{pattern}=size={size}:rate=25", "-t", str(secs), "-c:v", "mpeg4", str(path)], check=True)
    out = tmp_path_factory.mktemp("shards") / "folder"
    make_shards("folder", root, out, short_side=40, fps=12, workers=2, labeled_fraction=0.3,
                shard_max_count=3, progress=False)
    return {"root": root, "shards": out}


@pytest.fixture(scope="session")
def ssv2(tmp_path_factory):
    from jedi_pipe import synth
    from jedi_pipe.make_shards import make_shards
    src = tmp_path_factory.mktemp("ssv2_src")
    synth.generate(src, datasets=["ssv2"], videos_per_class=3, seed=0, workers=2)
    out = tmp_path_factory.mktemp("shards") / "ssv2"
    make_shards("ssv2", src / "ssv2", out, short_side=32, fps=8, max_seconds=3, workers=2,
                labeled_per_class=1, shard_max_count=7, progress=False)
    return out


def manifest(shards_dir, role=None) -> list[dict]:
    rows = open_shards(shards_dir).manifest().to_pylist()
    return [r for r in rows if role is None or r["role"] == role]


def eval_pass(shards_dir, backend, clip=CLIP, role="test", **kw) -> dict:
    """sample_id -> (x [V, C, T, H, W], y) over one evaluation pass."""
    out = {}
    for b in make_eval_loader(shards_dir, clip, batch_size=3, backend=backend, role=role, **kw):
        for x, y, i in zip(b["x"], b["y"].tolist(), b["id"].tolist()):
            assert i not in out, f"sample {i} seen twice"
            out[i] = (x, y)
    return out


def steps(loader, n) -> list[dict]:
    it = iter(loader)
    out = [next(it) for _ in range(n)]
    it.close()
    return out


@needs_dali
def test_cpu_path_is_chosen_and_logged(folder, caplog):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: the mixed path is chosen")
    D.say_decode_device.cache_clear()
    with caplog.at_level(logging.INFO, logger=D.__name__):
        assert D.decode_device() == ("cpu", None)
        batch = next(iter(make_eval_loader(folder["shards"], CLIP, backend="dali")))
    said = [r.getMessage() for r in caplog.records if "DALI loader" in r.getMessage()]
    assert len(said) == 1 and "CPU" in said[0]
    assert batch["x"].device.type == "cpu"


@needs_dali
def test_small_vp9_frames_decode_on_the_cpu_of_a_gpu_machine(folder, monkeypatch):
    # NVDEC refuses VP9 below 128x128 (seen on an H200): such shards keep DALI's CPU decoder and
    # hand the frames to the GPU; H.264 of the same size goes to NVDEC
    monkeypatch.setattr(D, "_gpu", lambda: 0)
    shards = open_shards(folder["shards"])
    assert shards.clip_ext == "webm" and max(D.smallest_frame(str(shards.root))) < 128
    assert D.decode_device(shards) == ("cpu", 0)
    monkeypatch.setattr(D, "NVDEC_MIN", {"webm": (16, 16)})
    D.smallest_frame.cache_clear()
    assert D.decode_device(shards) == ("mixed", 0)
    assert D.decode_device() == ("mixed", 0)


@needs_dali
@pytest.mark.parametrize("role", ["test", "unlabeled"])
def test_backends_agree(folder, role):
    """Same ids, labels, shapes, dtypes, and nearly the same pixels (same windows and crops)."""
    a, b = (eval_pass(folder["shards"], be, role=role, views=2) for be in ("dali", "torch"))
    assert sorted(a) == sorted(b) == sorted(r["sample_id"] for r in manifest(folder["shards"], role))
    for i in a:
        (xa, ya), (xb, yb) = a[i], b[i]
        assert xa.shape == xb.shape == (2, 3, 8, 32, 32) and xa.dtype == xb.dtype == torch.float32
        assert ya == yb
        # The decoders' YUV->RGB conversions differ in chroma only: compare luma, in grey levels.
        assert (luma(xa) - luma(xb)).abs().mean() < 3, f"sample {i}: DALI and torch pixels differ"
    # the two windows of a long moving clip lie apart, by more than twice the tolerance above: a
    # backend that put both at one start would fail the comparison
    long = [r["sample_id"] for r in manifest(folder["shards"], role) if r["frames"] > MOVING_LONG]
    assert long or role == "test"     # the folder's split puts every testsrc2 clip in the other roles
    for i in long:
        for x, _ in (a[i], b[i]):
            assert (luma(x[0]) - luma(x[1])).abs().mean() > 6, f"sample {i}: its two windows look alike"


@needs_dali
def test_spatial_crops_agree_and_move_along_the_long_side(folder):
    """crops=3: left, centre, right of the long side (top, centre, bottom of a portrait clip), the
    same on both backends; the centre crop is the single-crop view; square clips cannot move."""
    rows = {r["sample_id"]: r for r in manifest(folder["shards"], "test")}
    one = eval_pass(folder["shards"], "torch", views=2)
    clips = dict(_clips(folder["shards"]))
    a, b = (eval_pass(folder["shards"], be, views=2, crops=3) for be in ("dali", "torch"))
    assert sorted(a) == sorted(b) == sorted(rows)
    for i in a:
        (xa, _), (xb, _) = a[i], b[i]
        assert xa.shape == xb.shape == (6, 3, 8, 32, 32)              # 2 windows x 3 crops, windows outer
        assert (luma(xa) - luma(xb)).abs().mean() < 3, f"sample {i}: DALI and torch crops differ"
        assert torch.equal(xb[1], one[i][0][0]) and torch.equal(xb[4], one[i][0][1])
        square = rows[i]["width"] == rows[i]["height"]
        assert torch.equal(xb[0], xb[2]) == square, rows[i]
        if not square:   # the first crop is the resized frame's first 32 columns (landscape) or rows (portrait)
            first = view_starts(rows[i]["frames"], ClipSpec(**CLIP), 2)[0]
            frame = TL.resize_short(TL.to_tensor(TL.read_frames(clips[i], [first])), 32)[0]
            assert (luma_frame(xb[0][:, 0]) - luma_frame_raw(frame[:, :32, :32])).abs().mean() < 3
            assert (luma_frame(xb[2][:, 0]) - luma_frame_raw(frame[:, -32:, -32:])).abs().mean() < 3


def _clips(shards_dir):
    from jedi_pipe.shards import META_EXT, decode_meta, iter_tar_samples
    ss = open_shards(shards_dir)
    for tar in ss.tars("test"):
        for sample in iter_tar_samples(tar):
            yield decode_meta(sample[META_EXT])["sample_id"], sample[ss.clip_ext]


def luma_frame(x: torch.Tensor) -> torch.Tensor:
    """One normalised frame [C, H, W] -> 0-255 luma [H, W]."""
    return luma(x[:, None])[0]


def luma_frame_raw(x: torch.Tensor) -> torch.Tensor:
    """One 0-255 frame [C, H, W] -> luma [H, W]."""
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)


def luma(x: torch.Tensor) -> torch.Tensor:
    """Normalised [..., C, T, H, W] -> 0-255 luma [..., T, H, W]."""
    c = ClipSpec()
    rgb = x * torch.tensor(c.std).view(3, 1, 1, 1) * 255 + torch.tensor(c.mean).view(3, 1, 1, 1) * 255
    return (rgb * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_step_format(folder, ssv2, backend):
    loader = make_loaders([{"shards": folder["shards"]}, {"shards": ssv2}], CLIP, batch_size=4,
                          unlabeled_ratio=0.5, backend=backend, threads=1)
    (step,) = steps(loader, 1)
    assert set(step) == {"folder", "ssv2"}
    for name, b in step.items():
        # unlabeled clips come with their ids only, never with labels
        assert set(b) == {"x", "y", "id", "x_u", "id_u"}
        assert b["x"].shape == (4, 3, 8, 32, 32) and b["x_u"].shape == (2, 3, 8, 32, 32)
        assert b["x"].dtype == b["x_u"].dtype == torch.float32
        assert b["y"].dtype == b["id"].dtype == b["id_u"].dtype == torch.int64
        n_classes = len(open_shards(folder["shards"] if name == "folder" else ssv2).classes)
        assert 0 <= b["y"].min() and b["y"].max() < n_classes
    labeled = {r["sample_id"]: r["label"] for r in manifest(folder["shards"], "labeled")}
    assert all(labeled[i] == y for i, y in zip(step["folder"]["id"].tolist(), step["folder"]["y"].tolist()))
    assert set(step["folder"]["id_u"].tolist()) <= {r["sample_id"] for r in manifest(folder["shards"], "unlabeled")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlabeled_role_carries_no_labels(folder, backend):
    seen = eval_pass(folder["shards"], backend, role="unlabeled")
    assert seen and {y for _, y in seen.values()} == {-1}


@pytest.mark.parametrize("backend,world_size,threads",
                         [pytest.param("dali", 1, 1, marks=needs_dali), pytest.param("dali", 2, 1, marks=needs_dali),
                          ("torch", 1, 0), ("torch", 2, 2)])
def test_eval_visits_every_clip_once(folder, backend, world_size, threads):
    ids = []
    for rank in range(world_size):
        ids += list(eval_pass(folder["shards"], backend, rank=rank, world_size=world_size, threads=threads))
    assert sorted(ids) == sorted(r["sample_id"] for r in manifest(folder["shards"], "test"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_eval_with_more_ranks_than_clips(folder, backend):
    """A small val role under torchrun: the ranks beyond the clip count read nothing (DALI's reader
    refused to build with fewer samples than shards), and every clip is still read once."""
    n = open_shards(folder["shards"]).count("test")
    world = n + 2
    per_rank = [list(eval_pass(folder["shards"], backend, rank=r, world_size=world, threads=1)) for r in range(world)]
    assert [len(ids) for ids in per_rank] == [1] * n + [0, 0]
    assert sorted(i for ids in per_rank for i in ids) == sorted(r["sample_id"] for r in manifest(folder["shards"], "test"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_ranks_see_disjoint_training_clips(folder, backend):
    shards = open_shards(folder["shards"])
    n = shards.count("labeled") // 2
    seen = []
    for rank in range(2):
        loader = TL.TorchRoleLoader if backend == "torch" else D.DaliRoleLoader
        it = iter(loader(shards, "labeled", ClipSpec(**CLIP), 1, train=True, rank=rank, world_size=2,
                         threads=0 if backend == "torch" else 1))
        seen.append({next(it)["id"].item() for _ in range(3 * n)})   # three passes: wrapping stays in the share
        it.close()
    # disjoint shares that together hold every labeled clip
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == shards.count("labeled")


@pytest.mark.parametrize("backend", BACKENDS)
def test_training_is_seeded_differs_across_epochs_and_resumes(folder, backend):
    def make(seed):
        return make_loaders([{"shards": folder["shards"]}], CLIP, batch_size=2, unlabeled_ratio=1,
                            backend=backend, seed=seed, threads=1)
    loader = make(0)
    n = loader.steps_per_epoch
    assert n == math.ceil(open_shards(folder["shards"]).count("labeled") / 2)
    a, b, c = steps(loader, 2 * n), steps(make(0), 2 * n), steps(make(1), n)
    assert loader.state_dict() == {"epoch": 2, "step": 0, "threads": 1}
    x = [s["folder"]["x"] for s in a]
    assert all(torch.equal(p, q["folder"]["x"]) for p, q in zip(x, b))                  # reproducible
    assert not all(torch.equal(p, q) for p, q in zip(x[:n], x[n:]))                      # epochs differ
    assert not all(torch.equal(p, q["folder"]["x"]) for p, q in zip(x, c))              # seeds differ
    resumed = make(0)
    with pytest.raises(InputError, match="saved with threads=2"):   # other workers read other tars (torch)
        resumed.load_state_dict({"epoch": 1, "step": 1, "threads": 2})
    resumed.load_state_dict({"epoch": 1, "step": 1})                 # a state from before threads were kept
    (r,) = steps(resumed, 1)
    assert torch.equal(r["folder"]["x"], a[n + 1]["folder"]["x"])
    assert torch.equal(r["folder"]["id_u"], a[n + 1]["folder"]["id_u"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_blocks_read_every_unlabeled_clip_when_a_block_draws_fewer(folder, backend, monkeypatch):
    """A fresh reader starts at its shard's beginning: a block that draws fewer clips than the
    share holds once read the same first clips in every block (two thirds of Kinetics-400 never
    read at train/jedi.yaml's size). The share is now read in pieces, one a block in turn: at
    this size a shuffle buffer would hide the old fault, so the pieces themselves are checked."""
    from jedi_pipe.loaders import mixing
    monkeypatch.setattr(mixing, "MIN_STEPS_PER_BUILD", 1)   # one epoch a block: 3 steps, 3 unlabeled draws
    loader = make_loaders([{"shards": folder["shards"]}], CLIP, batch_size=2, unlabeled_ratio=0.5,
                          backend=backend, seed=0, threads=1)
    shards = open_shards(folder["shards"])
    spe, p = loader.steps_per_epoch, loader.pieces(shards, "unlabeled", 1)
    assert loader.epochs_per_build == 1 and p == math.ceil(shards.count("unlabeled") / spe) > 2
    batches = steps(loader, p * spe)
    blocks = [{i for s in batches[b * spe:(b + 1) * spe] for i in s["folder"]["id_u"].tolist()} for b in range(p)]
    assert all(not blocks[a] & blocks[b] for a in range(p) for b in range(a))   # each block its own piece
    assert set().union(*blocks) == {r["sample_id"] for r in manifest(folder["shards"], "unlabeled")}


def test_torch_loader_leaves_the_global_rng_alone(folder):
    """A DataLoader draws its base seed from torch's global generator unless given one; the
    model's dropout draws from it too, and a resumed run builds its loaders at other points than
    an unbroken run, so its dropout masks (and weights) would differ."""
    before = torch.get_rng_state()
    steps(make_loaders([{"shards": folder["shards"]}], CLIP, batch_size=2, unlabeled_ratio=1,
                       backend="torch", threads=0), 2)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("backend", BACKENDS)
def test_short_clip_is_edge_padded(folder, backend):
    """A 4-frame clip with a 15-frame window: frames 4, 6, ... repeat the last one, 3."""
    rows = [r for r in manifest(folder["shards"]) if r["frames"] < ClipSpec(**CLIP).span]
    assert rows, "the fixture must hold a clip shorter than the window"
    for role in {r["role"] for r in rows}:
        seen = eval_pass(folder["shards"], backend, role=role)
        for r in (r for r in rows if r["role"] == role):
            x = seen[r["sample_id"]][0][0]                       # [C, T, H, W], one view
            first_padded = math.ceil((r["frames"] - 1) / CLIP["stride"])
            assert all(torch.equal(x[:, t], x[:, first_padded]) for t in range(first_padded, CLIP["frames"]))
            assert not torch.equal(x[:, 0], x[:, first_padded])


@needs_dali
def test_flip_is_on_by_default_and_ssv2_graph_swaps_labels(folder, ssv2):
    datasets = [{"shards": folder["shards"]}, {"shards": ssv2}, {"shards": folder["shards"], "name": "mine", "flip": False}]
    loader = make_loaders(datasets, CLIP, backend="torch")
    assert [(name, flip) for name, _, flip in loader.datasets] == [("folder", True), ("ssv2", True), ("mine", False)]
    shards = open_shards(ssv2)
    with_flip = D.graph_operators(D.build_pipeline(shards, "labeled", ClipSpec(**CLIP), 2, train=True, flip=True))
    without = D.graph_operators(D.build_pipeline(shards, "labeled", ClipSpec(**CLIP), 2, train=True, flip=False))
    plain = D.graph_operators(D.build_pipeline(open_shards(folder["shards"]), "labeled", ClipSpec(**CLIP), 2,
                                               train=True, flip=True))
    assert "random__CoinFlip" in with_flip and "random__CoinFlip" not in without
    assert "LookupTable" in with_flip and "LookupTable" not in plain     # the label follows the mirror image


def test_flip_map_pairs_only_mirror_classes():
    from jedi_pipe.flips import card_flips, packaged_rule
    from jedi_pipe.loaders.clip import flip_map
    from jedi_pipe.shards import ShardSet
    classes = ["Pushing something from left to right", "Moving something up",
               "Turning the camera right while filming something",   # its partner is absent: never flipped
               "Pushing something from right to left",
               "Plugging something into something but pulling it right out as you remove your hand"]   # in no pair
    card = {"dataset": "ssv2", "classes": classes, "flips": card_flips(classes, packaged_rule("ssv2"))}
    fmap = flip_map(ShardSet(None, card))
    assert fmap == (3, 1, -1, 0, -1)     # (the card entry itself: tests/test_flips.py)
    # the card is the map: pairs it does not hold are not flipped, whatever the names say
    assert flip_map(ShardSet(None, {**card, "flips": {"pairs": [], "never": classes[:1]}})) == (-1, 1, 2, 3, 4)
    assert flip_map(ShardSet(None, {"dataset": "hmdb51", "classes": ["walk left"], "flips": None})) is None


def test_a_card_from_before_flip_maps(caplog):
    """An ssv2 card without `flips` gets the packaged map, with one warning naming the folder; another
    dataset's flips freely, as before."""
    from jedi_pipe.loaders.clip import flip_map
    from jedi_pipe.shards import ShardSet
    classes = ["Pushing something from right to left", "Moving something up", "Pushing something from left to right"]
    old = ShardSet("old/ssv2", {"dataset": "ssv2", "classes": classes})
    with caplog.at_level(logging.WARNING, logger="jedi_pipe"):
        assert flip_map(old) == flip_map(old) == (2, 1, 0)
    warnings = [r.getMessage() for r in caplog.records if "old/ssv2" in r.getMessage()]
    assert len(warnings) == 1 and "jedi-pipe shard" in warnings[0], warnings
    assert flip_map(ShardSet(None, {"dataset": "hmdb51", "classes": ["walk left"]})) is None


@pytest.fixture(scope="session")
def ssv2_other_map(tmp_path_factory, ssv2):
    """The ssv2 shards with another card map: "Moving something up" <-> "... down" paired, the
    Pushing pair not, so its two classes (a direction word, no pair) must never flip."""
    import shutil
    from jedi_pipe.flips import FlipRule, card_flips
    out = tmp_path_factory.mktemp("shards") / "ssv2_other_map"
    shutil.copytree(ssv2, out)
    card = json.loads((out / "dataset.json").read_text())
    rule = FlipRule((("Moving something up", "Moving something down"),), ("left", "right"), "test")
    card["flips"] = card_flips(card["classes"], rule)
    assert card["flips"]["never"] == ["Pushing something from left to right", "Pushing something from right to left"]
    (out / "dataset.json").write_text(json.dumps(card))
    return out


# Square crops of the whole short side, window at frame 0 (clips shorter than the window): a
# training clip is the evaluation clip or its mirror image, so each flip can be seen.
WHOLE = dict(frames=26, stride=1, size=32, area=(1.0, 1.0), ratio=(1.0, 1.0))


@pytest.mark.parametrize("card_map", ["packaged", "other"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ssv2_flips_take_the_mirror_class(ssv2, ssv2_other_map, backend, card_map):
    from jedi_pipe.loaders.clip import flip_map
    ssv2 = ssv2 if card_map == "packaged" else ssv2_other_map
    shards = open_shards(ssv2)
    fmap = flip_map(shards)
    truth = {r["sample_id"]: r["label"] for r in shards.full_rows()}    # unlabeled: the withheld label
    assert all(r["frames"] <= WHOLE["frames"] for r in manifest(ssv2))
    loader = D.DaliRoleLoader if backend == "dali" else TL.TorchRoleLoader
    for role in ("labeled", "unlabeled"):
        ref = {i: x[0] for i, (x, _) in eval_pass(ssv2, "torch", clip=WHOLE, role=role).items()}
        it = iter(loader(shards, role, ClipSpec(**WHOLE), 4, train=True, flip=True, seed=3, threads=1))
        mirrored = []
        for _ in range(shards.count(role) + 4):   # batches of 4: every clip about four times
            b = next(it)
            for x, y, i in zip(b["x"], b["y"].tolist(), b["id"].tolist()):
                same, mirror = (luma(x) - luma(ref[i])).abs().mean(), (luma(x) - luma(ref[i].flip(-1))).abs().mean()
                # DALI's crop falls back to the whole (non-square) frame, squeezed: close, not equal
                assert backend == "dali" or min(same, mirror) < 3, f"sample {i}: neither the clip nor its mirror"
                if abs(same - mirror) < 3 or min(same, mirror) > 8:   # too symmetric, or cropped too far
                    continue                                           # from the whole frame to judge
                flipped = bool(mirror < same)
                mirrored.append((flipped, truth[i]))
                if role == "unlabeled":
                    assert not flipped and y == -1, "unlabeled ssv2 clips are never flipped"
                else:
                    assert not (flipped and fmap[truth[i]] < 0), f"sample {i}: a class the map never flips"
                    assert y == (fmap[truth[i]] if flipped else truth[i]), (i, flipped, y, truth[i])
        if hasattr(it, "close"):
            it.close()
        if role == "labeled":   # both ways happen, a flipped clip of a paired class changed its label,
            assert any(f and fmap[t] != t for f, t in mirrored) and any(not f for f, _ in mirrored)
            # and, where the map has them, clips of never-flipped classes were judged
            assert card_map == "packaged" or any(fmap[t] < 0 for _, t in mirrored)


# Full-frame crops of square clips with the window at frame 0: training output == evaluation
# output exactly when flip is off, and == it or its mirror image when flip is on.
SQUARE = dict(frames=36, stride=1, size=40, area=(1.0, 1.0), ratio=(1.0, 1.0))


@needs_dali
@pytest.mark.parametrize("flip", [False, True])
def test_dali_flip_switch(folder, flip):
    shards = open_shards(folder["shards"])
    square = [r["sample_id"] for r in manifest(folder["shards"], "unlabeled") if r["width"] == r["height"]]
    assert square and all(r["frames"] <= SQUARE["frames"] for r in manifest(folder["shards"]))
    ref = {i: x[0] for i, (x, _) in eval_pass(folder["shards"], "dali", clip=SQUARE, role="unlabeled").items()}
    it = iter(D.DaliRoleLoader(shards, "unlabeled", ClipSpec(**SQUARE), 3, train=True, flip=flip, seed=1, threads=1))
    flipped = []
    for _ in range(2 * shards.count("unlabeled")):
        b = next(it)
        for x, i in zip(b["x"], b["id"].tolist()):
            if i in square:
                assert torch.equal(x, ref[i]) or (flip and torch.equal(x, ref[i].flip(-1)))
                flipped.append(not torch.equal(x, ref[i]))
    it.close()
    assert any(flipped) == flip


def test_torch_flip_switch():
    clip = ClipSpec(**SQUARE)
    x = torch.rand(clip.frames, 3, 40, 40) * 255
    ref = TL.eval_transform(x, clip)[0]     # the one centre crop
    outs = [TL.train_transform(x, clip, random.Random(k), flip=True) for k in range(16)]
    assert all(torch.equal(TL.train_transform(x, clip, random.Random(k), flip=False), ref) for k in range(16))
    assert all(torch.equal(o, ref) or torch.equal(o, ref.flip(-1)) for o in outs)
    assert any(torch.equal(o, ref.flip(-1)) for o in outs)


@needs_dali
@pytest.mark.parametrize("train", [True, False])
def test_dali_graph_has_no_python_on_the_decode_path(folder, train):
    pipe = D.build_pipeline(open_shards(folder["shards"]), "test", ClipSpec(**CLIP), 2, train=train, views=2)
    ops = D.check_graph(pipe)
    assert ops[0] == "readers__Webdataset" and "decoders__Video" in ops and "CropMirrorNormalize" in ops
    assert ("RandomResizedCrop" in ops) == train

    # the check catches a host-side input feeding the decoder
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def fed_from_python():
        return fn.decoders.video(fn.external_source(source=lambda: [], batch=True, dtype=types.UINT8), device="cpu")
    bad = fed_from_python()
    bad.build()
    with pytest.raises(AssertionError, match="ExternalSource"):
        D.check_graph(bad)


def test_up_front_errors(folder):
    with pytest.raises(ValueError, match="at least one"):
        make_loaders([{"shards": folder["shards"]}], CLIP, backend="torch", world_size=100)
    with pytest.raises(ValueError, match="unknown clip settings"):
        make_loaders([{"shards": folder["shards"]}], dict(CLIP, fps=3), backend="torch")
    with pytest.raises(ValueError, match="unique"):
        make_loaders([{"shards": folder["shards"]}] * 2, CLIP, backend="torch")
    with pytest.raises(ValueError, match="unknown loader backend"):
        make_eval_loader(folder["shards"], CLIP, backend="tensorflow")


@needs_dali
def test_bench_cli_json(folder):
    from click.testing import CliRunner
    from jedi_pipe.loaders.bench import bench_cli
    res = CliRunner().invoke(bench_cli, ["loader", "--shards", str(folder["shards"]), "--batch-size", "2",
                                         "--frames", "4", "--size", "32", "--threads", "1", "--clips", "4",
                                         "--vs-raw", str(folder["root"]), "--json"])
    assert res.exit_code == 0, res.output
    r = json.loads(res.output.strip().splitlines()[-1])
    assert r["loader"] == "dali" and r["clips"] == 4
    assert all(r[k] > 0 for k in ("clips_per_s", "frames_per_s", "vs_raw", "vs_decode"))
    assert set(r["decode_clips_per_s"]) == {"pyav", "dali"}


def test_bench_cli_bad_input_is_one_sentence(tmp_path):
    from click.testing import CliRunner
    from jedi_pipe.cli import main
    res = CliRunner().invoke(main, ["bench", "loader", "--shards", str(tmp_path)])
    assert res.exit_code == 2 and res.output.strip() == f"error: {tmp_path} is not a shard folder: no dataset.json " \
        "(run `jedi-pipe shard` first)", res.output



def test_without_dali_auto_falls_back_to_the_torch_loader(folder, monkeypatch, caplog):
    hide_dali(monkeypatch)
    with caplog.at_level(logging.INFO, logger="jedi_pipe.loaders"):
        assert resolve_backend("auto") == "torch"
    assert any("using the torch loader" in r.getMessage() for r in caplog.records)
    with pytest.raises(InputError, match="the DALI loader cannot run here"):
        resolve_backend("dali")
    # the whole loader API works: training steps and an evaluation pass, with the fallback's output
    loader = make_loaders([{"shards": folder["shards"]}], CLIP, batch_size=2, backend="auto", threads=0)
    assert loader.role_loader is TL.TorchRoleLoader
    (step,) = steps(loader, 1)
    assert step["folder"]["x"].shape == (2, 3, 8, 32, 32) and step["folder"]["x_u"].shape == (2, 3, 8, 32, 32)
    seen = eval_pass(folder["shards"], "auto", threads=0)
    assert sorted(seen) == sorted(r["sample_id"] for r in manifest(folder["shards"], "test"))


# ---------------------------------------------------------------------------- weak and strong views

# Short windows at stride 2 on 40x40 (square) clips of up to 36 frames: window starts vary, and a
# whole-frame square crop is the frame itself, so a strong view with every augmentation off is
# the weak view pixel for pixel exactly when both come from the same window of the same decode.
VIEW = dict(frames=4, stride=2, size=40, area=(1.0, 1.0), ratio=(1.0, 1.0))
OFF = dict(area=(1.0, 1.0), brightness=0.0, contrast=0.0, saturation=0.0, temporal_jitter=0, erase=0.0)


def view_pairs(shards_dir, backend, strong, batches=12, seed=5):
    """(id, weak [C, T, S, S], strong) of the square unlabeled clips over `batches` training batches."""
    from jedi_pipe.loaders.clip import StrongAug
    shards = open_shards(shards_dir)
    square = {r["sample_id"] for r in manifest(shards_dir, "unlabeled") if r["width"] == r["height"]}
    loader = D.DaliRoleLoader if backend == "dali" else TL.TorchRoleLoader
    it = iter(loader(shards, "unlabeled", ClipSpec(**VIEW), 3, train=True, flip=True, seed=seed,
                     threads=1, strong=StrongAug(**strong)))
    out = []
    for _ in range(batches):
        b = next(it)
        assert b["x_strong"].shape == b["x"].shape and b["x_strong"].dtype == torch.float32
        out += [(i, x, s) for i, x, s in zip(b["id"].tolist(), b["x"], b["x_strong"]) if i in square]
    it.close()
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_strong_view_is_cut_from_the_same_window_of_the_same_clip(folder, backend):
    rows = {r["sample_id"]: r for r in manifest(folder["shards"], "unlabeled")}
    pairs = view_pairs(folder["shards"], backend, OFF)
    # windows really vary (clips longer than the window), and flips happen: a strong view decoded
    # or flipped on its own would differ from its weak view
    long = [(i, x) for i, x, _ in pairs if rows[i]["frames"] > ClipSpec(**VIEW).span + 4]
    assert len({i for i, _ in long}) >= 2
    assert any(not torch.equal(x, y) for i, x in long for j, y in long if i == j)
    assert all(torch.equal(x, s) for _, x, s in pairs)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strong_view_augmentations_are_drawn_per_clip(folder, backend):
    from jedi_pipe.loaders.clip import jitter_order
    T = VIEW["frames"]
    # temporal jitter: the weak window shifted by -2..2 sampled frames, edge-padded
    shifts = []
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, temporal_jitter=2)):
        fits = [d for d in range(-2, 3) if torch.equal(s, x[:, jitter_order(T, d)])]
        assert fits, "the strong view is not a shifted weak window"
        shifts += fits if len(fits) == 1 else []
    assert len(set(shifts)) >= 3
    # cutout: one box, the same in every frame, filled with the mean colour (~0 once normalised)
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, erase=1.0)):
        box = (s - x).abs().amax(dim=(0, 1)) > 1e-3                      # [S, S]
        rows_, cols = box.any(1).nonzero(), box.any(0).nonzero()
        assert rows_.numel() and cols.numel()
        area = (rows_.max() - rows_.min() + 1) * (cols.max() - cols.min() + 1) / VIEW["size"] ** 2
        assert 0.005 < area <= 0.3
        inside = s[:, :, rows_.min():rows_.max() + 1, cols.min():cols.max() + 1]
        assert inside.abs().max() < 0.02                   # within a grey level (DALI fills uint8 frames)
    # brightness: one factor per clip in [0.6, 1.4], the same in every frame
    factors = []
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, brightness=0.4)):
        c = ClipSpec()
        to255 = lambda v: v * torch.tensor(c.std).view(3, 1, 1, 1) * 255 + torch.tensor(c.mean).view(3, 1, 1, 1) * 255
        w, st = to255(x), to255(s)
        ok = (w > 40) & (w < 150)                                         # away from 0 and from clipping
        per_frame = [(st[:, t][ok[:, t]] / w[:, t][ok[:, t]]).median().item() for t in range(T)]
        assert max(per_frame) - min(per_frame) < 0.03 and 0.58 < per_frame[0] < 1.42
        factors.append(per_frame[0])
    assert max(factors) - min(factors) > 0.2


def to255(x: torch.Tensor) -> torch.Tensor:
    """Normalised [C, T, H, W] -> 0-255 RGB."""
    c = ClipSpec()
    return x * torch.tensor(c.std).view(3, 1, 1, 1) * 255 + torch.tensor(c.mean).view(3, 1, 1, 1) * 255


@pytest.mark.parametrize("backend", BACKENDS)
def test_strong_view_contrast_saturation_and_crop_are_drawn_per_clip(folder, backend):
    T = VIEW["frames"]
    grey_of = lambda x: (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1)).sum(0, keepdim=True)
    # contrast: (x - 128) f + 128, one f per clip in [0.6, 1.4], the same in every frame
    factors = []
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, contrast=0.4)):
        w, st = to255(x), to255(s)
        ok = ((w - 128).abs() > 40) & (st > 3) & (st < 252)              # away from the centre and from clipping
        per_frame = [((st[:, t] - 128)[ok[:, t]] / (w[:, t] - 128)[ok[:, t]]).median().item() for t in range(T)]
        assert max(per_frame) - min(per_frame) < 0.03 and 0.58 < per_frame[0] < 1.42, per_frame
        factors.append(per_frame[0])
    assert max(factors) - min(factors) > 0.2
    # saturation: grey + (x - grey) f around each pixel's own grey, which stays; one f per clip in [0.6, 1.4]
    factors = []
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, saturation=0.4)):
        w, st = to255(x), to255(s)
        grey = grey_of(w)
        inside = ((st > 3) & (st < 252)).all(0, keepdim=True)             # no channel clipped
        assert (grey_of(st) - grey)[inside].abs().mean() < 1.5, "saturation moved the grey"
        ok = ((w - grey).abs() > 30) & inside
        per_frame = [((st[:, t] - grey[:, t])[ok[:, t]] / (w[:, t] - grey[:, t])[ok[:, t]]).median().item()
                     for t in range(T)]
        assert max(per_frame) - min(per_frame) < 0.05 and 0.55 < per_frame[0] < 1.45, per_frame
        factors.append(per_frame[0])
    assert max(factors) - min(factors) > 0.2
    # crop: a quarter of the frame's area, so the strong view is a 20 x 20 window of the (whole-frame)
    # weak view at twice the size; its 2 x 2 means match that window far better than the whole frame
    half = VIEW["size"] // 2
    best, whole = [], []
    for _, x, s in view_pairs(folder["shards"], backend, dict(OFF, area=(0.25, 0.25))):
        if x.std() < 0.1:                                                  # a still, flat frame: no window to find
            continue
        small = torch.nn.functional.avg_pool2d(luma(s), 2)                 # [T, 20, 20]
        lx = luma(x)
        errors = [(small - lx[:, i:i + half, j:j + half]).abs().mean().item()
                  for i in range(half + 1) for j in range(half + 1)]
        best.append(min(errors))
        whole.append((small - torch.nn.functional.avg_pool2d(lx, 2)).abs().mean().item())
    assert len(best) >= 5
    assert max(best) < 8 and sum(best) < 0.5 * sum(whole), (best, whole)   # measured: best <= 4.3, whole ~55


@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_dataset_loader_gives_strong_views_of_unlabeled_clips_only(folder, ssv2, backend):
    datasets = [{"shards": folder["shards"]}, {"shards": ssv2}]
    (plain,) = steps(make_loaders(datasets, CLIP, batch_size=2, unlabeled_ratio=1, backend=backend, threads=1), 1)
    assert all(set(b) == {"x", "y", "id", "x_u", "id_u"} for b in plain.values())
    loader = make_loaders(datasets, CLIP, batch_size=2, unlabeled_ratio=1, backend=backend, threads=1,
                          strong={"erase": 1.0})
    (step,) = steps(loader, 1)
    for name, b in step.items():
        assert set(b) == {"x", "y", "id", "x_u", "id_u", "x_us"}
        assert b["x_us"].shape == b["x_u"].shape and b["x_us"].dtype == torch.float32
        assert all(not torch.equal(u, s) for u, s in zip(b["x_u"], b["x_us"]))
        # the labeled batch and the weak views are those of a loader without strong views
        assert all(torch.equal(b[k], plain[name][k]) for k in ("x", "y", "id", "x_u", "id_u"))


@needs_dali
def test_dali_graph_with_strong_views_has_no_python(folder):
    from jedi_pipe.loaders.clip import StrongAug
    pipe = D.build_pipeline(open_shards(folder["shards"]), "unlabeled", ClipSpec(**CLIP), 2, train=True,
                            strong=StrongAug())
    ops = D.check_graph(pipe)
    assert {"SequenceRearrange", "ColorTwist", "Erase"} <= set(ops) and ops.count("RandomResizedCrop") == 2
    assert ops.count("decoders__Video") == 1                       # one decode, two branches


def test_strong_settings_are_checked():
    from jedi_pipe.loaders.clip import StrongAug, as_strong
    assert as_strong(None) is None and as_strong({"area": [0.2, 1.0]}) == StrongAug(area=(0.2, 1.0))
    with pytest.raises(ValueError, match="unknown strong augmentation settings"):
        as_strong({"hue": 0.1})
    with pytest.raises(ValueError, match=r"^brightness: in \[0, 1\]"):
        StrongAug(brightness=1.5)
    with pytest.raises(ValueError, match=r"^erase_area: a range"):
        StrongAug(erase_area=(0.3, 0.2))
    with pytest.raises(ValueError, match=r"^temporal_jitter: "):
        StrongAug(temporal_jitter=-1)
    # through a config, the error names the key in full
    from jedi_pipe.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=r"^--set strong\.contrast=2: strong\.contrast: in \[0, 1\] \(0: off\), got 2\.0$"):
        load_config("train/demo.yaml", ["strong.contrast=2"])
    for loader in (TL.TorchRoleLoader, D.DaliRoleLoader):
        with pytest.raises(ValueError, match="training loaders only"):
            loader(None, "test", ClipSpec(), 2, train=False, strong=StrongAug())


@needs_dali
def test_dali_training_crops_resample_as_clip_interp_says(folder):
    """DALI's training crop (loaders.dali.train_interp) on real decoded clips: a crop of the whole
    frame at its own size is the decoded frame exactly with nearest neighbour; resized, nearest
    takes whole source pixels and linear blends them."""
    import numpy as np
    from .conftest import dali_decoded_clips
    role = "unlabeled"
    ss, rows = open_shards(folder["shards"]), manifest(folder["shards"], role)
    # a window as long as every clip starts at frame 0 (clip.max_start), so it holds the frames
    # 0, 5, ..., 35 (edge-padded) that a plain decode of 36 frames holds
    window = dict(frames=8, stride=5, area=(1.0, 1.0), ratio=(1.0, 1.0))
    assert max(r["frames"] for r in rows) <= ClipSpec(**window).span == 36
    source = {i: f[::5].transpose(3, 0, 1, 2)     # [T, H, W, C] -> CFHW, as the pipeline gives
              for f, i in dali_decoded_clips([str(t) for t in ss.tars(role)], len(rows), frames=36)}

    def crops(**clip):   # sample_id -> uint8 CFHW training crop, no flip
        pipe = D.build_pipeline(ss, role, ClipSpec(**window, **clip), 4, train=True, flip=False)
        out = {}
        for _ in range(10 * len(rows)):
            x, _, ids = pipe.run()[:3]
            out.update({int(np.array(ids[k])): np.array(x[k]) for k in range(len(x))})
            if len(out) == len(rows):
                return out
        raise AssertionError(f"the training reader gave {len(out)} of {len(rows)} clips")

    def pixels(frame):   # the set of RGB triples of a [C, H, W] frame
        return set(map(tuple, frame.reshape(3, -1).T.tolist()))

    square = [r["sample_id"] for r in rows if r["width"] == r["height"] == 40]
    assert square, "the fixture must hold square clips at the crop size"
    same_size = crops(size=40, interp="nearest")
    for i in square:
        np.testing.assert_array_equal(same_size[i], source[i])
    near, lin = crops(size=32, interp="nearest"), crops(size=32, interp="linear")
    for i in square:   # DALI's nearest crop is the torch fallback's (crop_resize): the same source pixels
        whole = torch.from_numpy(source[i]).permute(1, 0, 2, 3).float()       # [T, C, H, W]
        ref = TL.crop_resize(whole, (0, 0, 40, 40), ClipSpec(**window, size=32, interp="nearest"))
        np.testing.assert_array_equal(near[i], ref.permute(1, 0, 2, 3).to(torch.uint8).numpy())
    for i in source:
        assert near[i].shape == lin[i].shape == (3, 8, 32, 32) and not np.array_equal(near[i], lin[i])
        assert all(pixels(near[i][:, t]) <= pixels(source[i][:, t]) for t in range(8))
        assert not all(pixels(lin[i][:, t]) <= pixels(source[i][:, t]) for t in range(8))


def test_training_crops_resample_as_clip_interp_says():
    """Nearest neighbour takes whole source pixels; linear (the default) blends them; eval is linear."""
    x = torch.arange(2 * 3 * 20 * 20, dtype=torch.float32).view(2, 3, 20, 20) % 251
    box = (2, 3, 14, 14)    # enlarged 14 -> 32
    near = TL.crop_resize(x, box, ClipSpec(**CLIP, interp="nearest"))
    lin = TL.crop_resize(x, box, ClipSpec(**CLIP))
    assert near.shape == lin.shape == (2, 3, 32, 32) and not torch.equal(near, lin)
    crop = x[:, :, 2:16, 3:17]
    # nearest at pixel centres (DALI's INTERP_NN): output pixel k takes source pixel floor((k + 0.5) * 14 / 32)
    idx = ((torch.arange(32) + 0.5) * 14 / 32).floor().long()
    assert torch.equal(near, crop[:, :, idx][:, :, :, idx])
    assert not set(lin.unique().tolist()) <= set(crop.unique().tolist())   # linear blends: new values
    frames = torch.rand(8, 3, 40, 52) * 255     # evaluation resizes linearly whatever clip.interp says
    assert torch.equal(TL.eval_transform(frames, ClipSpec(**CLIP, interp="nearest")),
                       TL.eval_transform(frames, ClipSpec(**CLIP)))
    with pytest.raises(ValueError, match="interp must be one of"):
        ClipSpec(interp="cubic")


@pytest.mark.parametrize("kw, error", [
    ({"datasets": ["shards/hmdb51"]}, "datasets must be a non-empty list"),
    ({"datasets": []}, "datasets must be a non-empty list"),
    ({"batch_size": 0}, "batch_size must be an integer >= 1"),
    ({"world_size": 0}, "world_size must be an integer >= 1"),
    ({"rank": 2, "world_size": 2}, "rank must be below world_size"),
    ({"unlabeled_ratio": -1}, "unlabeled_ratio must be at least 0"),
])
def test_make_loaders_refuses_bad_arguments_by_name(kw, error):
    """Before any shard folder is opened: one sentence, not a KeyError or ZeroDivisionError deep inside."""
    args = {"datasets": [{"shards": "nowhere"}], **kw}
    with pytest.raises(InputError, match=error):
        make_loaders(args.pop("datasets"), **args)
