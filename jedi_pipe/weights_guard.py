"""Which datasets an `init` weights file was trained on, and the rule that uses it.

JEDI's experts stand for "what the labeled part of a dataset teaches". Weights trained on all of
a dataset (torchvision's Kinetics-400 R3D/R(2+1)D/MC3, say) used as that dataset's expert init
bring all its labels into a run that claims to use 10 % of them, so the trainer refuses it. The
same holds for any other dataset's init in that run: every teacher reads every student's
features, so the Kinetics-400 teacher would read features trained on all of Kinetics-400's labels.

Where the datasets come from, first match wins:
  1. a card beside the file, `<file>.json`: {"trained_on": ["kinetics400", ...]} (dataset names as
     in shard cards; [] for weights trained on none of the run's datasets, e.g. ImageNet only);
  2. a jedi-pipe expert: the datasets of the config saved in it, all of them (on purpose more than
     the expert's own, whose labeled clips may not be this run's: a file named here is refused
     where it may not be needed, never accepted where it leaks), and its own shard card's name and
     dataset (a config may call a dataset anything: an oracle's "hmdb51-all" is hmdb51);
  3. torchvision's published video weights, by their file names (all Kinetics-400).
A file none of these describe is refused: its provenance is what the rule needs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from .errors import InputError, MissingError

OVERRIDE = "init_trained_on_ok"     # DatasetCfg key: this dataset's init may have been trained on a dataset of the run
# torchvision.models.video weight files: <arch>-<8 hex digits>.pth, every one trained on Kinetics-400
TORCHVISION_K400 = re.compile(r"^(r3d_18|mc3_18|r2plus1d_18|s3d|mvit_v[12]_[bs]|swin3d_[tsb](_1k|_22k)?)-[0-9a-f]{8}\.pth$")


def card_path(weights) -> Path:
    return Path(str(weights) + ".json")


def trained_on(weights) -> set[str] | None:
    """The datasets `weights` were trained on (see the module docstring); None when nothing says."""
    weights = Path(weights)
    card = card_path(weights)
    if card.is_file():
        try:
            names = json.loads(card.read_text())["trained_on"]
        except (json.JSONDecodeError, KeyError, TypeError):
            names = None
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)):   # "hmdb51" is no set of letters
            raise InputError(f"{card}: expected a JSON object {{\"trained_on\": [dataset, ...]}}")
        return set(names)
    if TORCHVISION_K400.match(weights.name):
        return {"kinetics400"}
    if weights.is_file():
        import torch
        try:   # mmap: the small config entry is read, not the weights; weights_only: nothing is executed
            ck = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        except Exception:   # noqa: BLE001 - not a torch file: nothing says; the loader reports it later
            return None
        if isinstance(ck, dict) and isinstance(ck.get("config"), dict) and "datasets" in ck["config"]:
            own = ck.get("shards") if isinstance(ck.get("shards"), dict) else {}
            return ({d["name"] for d in ck["config"]["datasets"]}
                    | {own[k] for k in ("name", "dataset") if isinstance(own.get(k), str)})
    return None


def check_init(dataset: str, aliases: set[str], weights, allowed: bool = False, run: set[str] = frozenset()) -> None:
    """Refuse `weights` as the init of `dataset`'s expert when they were trained on it or on another
    dataset of the run (or when nothing says what they were trained on). `aliases`: the dataset's
    other names (its shard card's); `run`: the names of the run's other datasets (and their cards')."""
    if not weights:
        return
    if not Path(weights).is_file():
        raise MissingError(f"init {weights} of {dataset}: no such file")
    if allowed:
        return
    seen = trained_on(weights)
    if seen is None:
        raise InputError(f"init {weights} of {dataset}: nothing says which datasets these weights were trained "
                         f"on; write {card_path(weights)} with {{\"trained_on\": [...]}} (the semi-supervised "
                         f"split is only honest when the init has not seen {dataset}'s labels)")
    both = seen & ({dataset} | set(aliases))
    if both:
        raise InputError(f"init {weights} was trained on {', '.join(sorted(both))}, so as the {dataset} expert's "
                         f"init it would bring all of {dataset}'s labels into a semi-supervised run; use other "
                         f"weights, or set datasets.N.{OVERRIDE}: true to allow it (e.g. a fully supervised baseline)")
    others = seen & set(run)
    if others:
        names = ", ".join(sorted(others))
        raise InputError(f"init {weights} was trained on {names}, a dataset of this run: as the {dataset} expert's "
                         f"init its features would carry all of {names}'s labels into the run (every teacher reads "
                         f"every student's features); use other weights, or set datasets.N.{OVERRIDE}: true on "
                         f"{dataset} to allow it")
