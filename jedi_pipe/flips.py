"""Mirror classes: the class a horizontally flipped clip shows, for datasets whose labels say a direction.

A mirrored clip of "Pushing something from left to right" shows "Pushing something from right to
left", so a training flip must swap the label with its partner. The pairs are given, never guessed
from names: Something-Something-v2's are in jedi_pipe/ssv2.yaml (preprocess/ssv2.yaml links there),
which the shard stage reads for ssv2 with or without --recipe; a recipe may give other ones. A class
whose name holds a direction word and that is in no complete pair is never flipped.

The shard stage writes the result for the dataset's classes into the card ("flips",
shards/README.md); loaders/clip.flip_map turns the card's entry into a per-class lookup.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError

log = logging.getLogger(__name__)

PACKAGED = {"ssv2": Path(__file__).resolve().parent / "ssv2.yaml"}   # datasets that come with a flip map
RECIPE_KEYS = ("flip_pairs", "direction_words")                     # the recipe keys read here


@dataclass(frozen=True)
class FlipRule:
    pairs: tuple[tuple[str, str], ...]   # (class, the class of its mirror image)
    words: tuple[str, ...]               # words that give a class a direction (whole words, any case)
    source: str = field(compare=False)   # where the rule was read, for messages

    def directional(self, name: str) -> bool:
        return any(re.search(rf"\b{re.escape(w)}\b", name, re.IGNORECASE) for w in self.words)


def read_rule(data: dict, source: str, base: FlipRule | None = None) -> FlipRule | None:
    """The rule of a recipe's `flip_pairs` and `direction_words`; a key it leaves out comes from
    `base` (empty without one). None when neither the recipe nor `base` gives any."""
    if not any(k in data for k in RECIPE_KEYS):
        return base
    pairs = data.get("flip_pairs", base.pairs if base else [])
    words = data.get("direction_words", base.words if base else [])
    if not isinstance(pairs, (list, tuple)) or not all(
            isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(c, str) and c for c in p) and p[0] != p[1]
            for p in pairs):
        raise InputError(f"{source}: flip_pairs must be a list of [class, mirror class] pairs of two different "
                         f"class names, got {pairs!r:.200}")
    named = [c for p in pairs for c in p]
    twice = sorted({c for c in named if named.count(c) > 1})
    if twice:
        raise InputError(f"{source}: flip_pairs names {twice[0]!r} in two pairs; a class has one mirror class")
    if not isinstance(words, (list, tuple)) or not all(isinstance(w, str) and w.strip() for w in words):
        raise InputError(f"{source}: direction_words must be a list of words, got {words!r:.200}")
    return FlipRule(tuple((a, b) for a, b in pairs), tuple(words), source)


def packaged_rule(dataset: str) -> FlipRule | None:
    """The flip map that ships with the package for `dataset` (ssv2), or None."""
    import yaml
    path = PACKAGED.get(dataset)
    return read_rule(yaml.safe_load(path.read_text()) or {}, str(path)) if path else None


def card_flips(classes: list[str], rule: FlipRule | None) -> dict | None:
    """The card's "flips" entry: the rule's pairs with both classes present, and the classes never
    flipped (in no such pair, and with a direction word or a partner that is absent). None: no rule."""
    if rule is None:
        return None
    present = set(classes)
    pairs = [[a, b] for a, b in rule.pairs if a in present and b in present]
    paired = {c for p in pairs for c in p}
    in_rule = {c for p in rule.pairs for c in p}
    never = [c for c in classes if c not in paired and (c in in_rule or rule.directional(c))]
    return {"pairs": pairs, "never": never}


def report(classes: list[str], rule: FlipRule | None, what: str) -> list[tuple[int, str]]:
    """(log level, line) pairs saying which of the rule's pairs `what` (a label file, a dataset)
    holds among its class names, which classes are never flipped, and pairs half present."""
    flips = card_flips(classes, rule)
    if flips is None:
        return []
    present = set(classes)
    lines = [(logging.INFO, f"{what}: {len(flips['pairs'])} mirror pair(s) of {rule.source} among its "
                            f"{len(classes)} class names; a training flip swaps their labels")]
    lines += [(logging.INFO, f"  {a} <-> {b}") for a, b in flips["pairs"]]
    lines += [(logging.INFO, f"  never flipped (a direction, no partner): {c}") for c in flips["never"]]
    lines += [(logging.WARNING, f"{what}: {a!r} is in a pair of {rule.source} but {b!r} is not among the class "
                                f"names, so {a!r} is never flipped; is either name misspelt?")
              for pair in rule.pairs for a, b in (pair, pair[::-1]) if a in present and b not in present]
    return lines


def log_report(classes: list[str], rule: FlipRule | None, what: str) -> None:
    for level, line in report(classes, rule, what):
        log.log(level, "%s", line)


_warned: set[str] = set()   # folders already warned about, once per process


def flips_of_card(card: dict, where: str) -> dict | None:
    """A card's "flips" entry. A card written before the entry existed gets the packaged map of its
    dataset (the same pairs a new shard run would record), with one warning per folder."""
    if "flips" in card:
        return card["flips"]
    rule = packaged_rule(card.get("dataset", ""))
    if rule is not None and where not in _warned:
        _warned.add(where)
        log.warning("%s: the card has no flip map (written before cards held one); using the pairs of %s. "
                    "Running the `jedi-pipe shard` command that wrote it again records them (only its "
                    "dataset.json changes)", where, rule.source)
    return card_flips(card["classes"], rule)
