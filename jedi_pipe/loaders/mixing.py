"""Several datasets, one training step: a labeled and an unlabeled batch of every dataset.

Epochs and resume: every block of `epochs_per_build` epochs (at least MIN_STEPS_PER_BUILD steps,
so a tiny labeled set does not rebuild its pipelines every other step) reads every dataset
through fresh role loaders seeded with (seed, block, dataset, role, rank). A role is cut into
world_size x P reader shards, P the pieces a rank's share needs so that one block's draws cover
a piece (1 for the labeled roles, often more for a large unlabeled role), and rank r reads
reader shard (r * P + block) % (world_size * P). A fresh reader starts at its shard's beginning,
so without pieces a block that draws fewer clips than the share would read the same first clips
in every block and never the rest; with them, P blocks in turn read every clip. So batches
differ across epochs, are reproducible from the seed, every clip is read, and each rank sees a
different part of the data every block while ranks stay disjoint. `state_dict()` is {"epoch", "step"}, the
next step to deliver, and the loader's threads; `load_state_dict` (before iterating; same threads)
makes the iteration rebuild that block and skip the batches already delivered in it. Skipped
batches are decoded and dropped, with no model step: resuming costs at most one block of
loading, and gives exactly the batches of an unbroken run.
"""
from __future__ import annotations

import math

from ..errors import InputError
from ..shards import ShardSet
from .clip import ClipSpec, StrongAug, as_strong, derive_seed

MIN_STEPS_PER_BUILD = 50   # building a DALI pipeline and filling its shuffle buffer costs ~steps


class MultiDatasetLoader:
    """Endless iterator of training steps {dataset name: {"x", "y", "id", "x_u", "id_u"}}, with
    "x_us" (the strong view of x_u) when `strong` is given."""

    def __init__(self, datasets: list[tuple[str, ShardSet, bool]], clip: ClipSpec, batch_size: int,
                 unlabeled_ratio: float, role_loader, seed: int = 0, rank: int = 0, world_size: int = 1,
                 threads: int = 2, strong: StrongAug | dict | None = None):
        """`datasets`: (name, shard set, flip) triples; `role_loader`: DaliRoleLoader or TorchRoleLoader;
        `strong`: the unlabeled clips' strong view (clip.StrongAug or a dict of its fields), None for none."""
        self.strong = as_strong(strong)
        self.datasets, self.clip, self.batch_size = datasets, clip, batch_size
        self.unlabeled_batch = max(1, round(unlabeled_ratio * batch_size)) if unlabeled_ratio > 0 else 0
        self.role_loader, self.seed, self.threads = role_loader, seed, threads
        self.rank, self.world_size = rank, world_size
        for name, shards, _ in datasets:
            roles = ["labeled"] + (["unlabeled"] if self.unlabeled_batch else [])
            for role in roles:
                if shards.count(role) < world_size:
                    raise InputError(f"{name} ({shards.root}): {shards.count(role)} {role} clips for {world_size} "
                                     f"processes; every process needs at least one"
                                     + (" (or set unlabeled_ratio=0)" if role == "unlabeled" else ""))
        # One epoch = one pass over the largest labeled set; smaller ones wrap around.
        self.steps_per_epoch = max(math.ceil(s.count("labeled") / (world_size * batch_size)) for _, s, _ in datasets)
        self.epochs_per_build = math.ceil(MIN_STEPS_PER_BUILD / self.steps_per_epoch)
        self.epoch, self.step = 0, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "threads": self.threads}

    def load_state_dict(self, state: dict) -> None:
        # the torch loader's worker count decides which worker reads which tar, and so the batches
        if state.get("threads", self.threads) != self.threads:
            raise InputError(f"the loader state was saved with threads={state['threads']}, this loader has "
                             f"{self.threads}: the same batches need the same threads")
        self.epoch, self.step = state["epoch"], state["step"]

    def pieces(self, shards: ShardSet, role: str, batch: int) -> int:
        """How many pieces a rank's share of `role` is read in, one a block: enough that a block's
        draws (batch clips a step) cover its piece."""
        draws = self.epochs_per_build * self.steps_per_epoch * batch
        return max(1, math.ceil(shards.count(role) // self.world_size / draws))

    def _streams(self, block: int) -> dict:
        streams = {}
        for name, shards, flip in self.datasets:
            for role, b in (("labeled", self.batch_size), ("unlabeled", self.unlabeled_batch)):
                if b:
                    p = self.pieces(shards, role, b)
                    seed = derive_seed(self.seed, block, name, role, self.rank)
                    strong = {"strong": self.strong} if role == "unlabeled" and self.strong else {}
                    streams[name, role] = iter(self.role_loader(
                        shards, role, self.clip, b, train=True, flip=flip, seed=seed,
                        rank=(self.rank * p + block) % (self.world_size * p),
                        world_size=self.world_size * p, threads=self.threads, **strong))
        return streams

    def __iter__(self):
        spe, k = self.steps_per_epoch, self.epochs_per_build
        while True:
            block = self.epoch // k
            done = (self.epoch - block * k) * spe + self.step
            streams = self._streams(block)
            try:
                for _ in range(done):           # resume: fast-forward within the block
                    for s in streams.values():
                        next(s)
                for _ in range(done, k * spe):
                    batch = {}
                    for name, _, _ in self.datasets:
                        lab = next(streams[name, "labeled"])
                        batch[name] = {"x": lab["x"], "y": lab["y"], "id": lab["id"]}
                        if self.unlabeled_batch:   # unlabeled: clips and ids, never labels
                            unl = next(streams[name, "unlabeled"])
                            batch[name].update(x_u=unl["x"], id_u=unl["id"])
                            if self.strong:
                                batch[name]["x_us"] = unl["x_strong"]
                    # the state names the next step to deliver, so a checkpoint taken now resumes after it
                    self.step += 1
                    if self.step == spe:
                        self.epoch, self.step = self.epoch + 1, 0
                    yield batch
            finally:
                for s in streams.values():
                    s.close()
