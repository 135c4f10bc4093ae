"""One flat model registry, one constructor, and the one place that loads weights.

Contract of every registered model (JEDI's teachers depend on it):
  - input ``[B, C, T, H, W]`` float, normalized (the loaders use Kinetics-400's mean and std);
  - ``features(x) -> [B, num_features]``: penultimate features after global pooling;
  - ``head``: ``nn.Linear(num_features, num_classes)``;
  - ``forward(x) == head(features(x))``;
  - ``feature_stages()``: the modules ``features`` runs in order before pooling (jedi_pipe.plan measures
    them one by one); ``grad_checkpointing``: when True (and gradients are on), ``features``
    keeps only the stages' inputs and recomputes each stage in the backward pass (:func:`run_stages`).
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch import nn

from ..errors import InputError, first_line

log = logging.getLogger(__name__)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn):
    """Decorator over ``fn(num_classes, **kw)``; the model's name is the function's."""
    if fn.__name__ in _REGISTRY:
        raise ValueError(f"model {fn.__name__!r} is registered twice")
    _REGISTRY[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def build(name: str, num_classes: int, weights: str | os.PathLike | None = None, **kw) -> nn.Module:
    """Build registered model ``name``; ``kw`` go to the model (e.g. ``width`` for tiny3d).

    ``weights``: optional checkpoint path, loaded with :func:`load_weights` (a head with a
    different class count is skipped, so Kinetics weights can start a 51-class model).
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    model = _REGISTRY[name](num_classes=num_classes, **kw)
    if weights is not None:
        load_weights(model, weights)
    return model


def run_stages(stages, x, checkpoint: bool):
    """``x`` through ``stages`` in order; with ``checkpoint`` (and grad on), activation checkpointing.

    Checkpointed, a stage keeps only its input for the backward pass and runs again there, so a
    backbone's saved activations shrink to its stage boundaries plus one stage at a time. The
    recomputation must not change BatchNorm's state: its running statistics would move twice per
    step (fairscale's ``patch_batchnorm`` fixes the same thing), and a BatchNorm that normalises
    with chosen rows (jedi's ``stat_rows``) must see the rows it saw in the forward pass.
    """
    if not (checkpoint and torch.is_grad_enabled()):
        for stage in stages:
            x = stage(x)
        return x
    from torch.utils.checkpoint import checkpoint as ckpt
    for stage in stages:
        x = ckpt(_StageRun(stage), x, use_reentrant=False)
    return x


class _StageRun:
    """One checkpointed call of a stage: the first call is the forward, a second the recompute."""

    def __init__(self, stage: nn.Module):
        self.stage, self.calls = stage, 0
        self.bns = [m for m in stage.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        # rows a row-selecting BatchNorm uses now; they are reset once the forward is over
        self.rows = [(bn, bn.stat_rows) for bn in self.bns if hasattr(bn, "stat_rows")]

    def __call__(self, x):
        self.calls += 1
        if self.calls == 1:
            return self.stage(x)
        buffers = [(b, b.clone()) for bn in self.bns for b in bn.buffers()]
        now = [(bn, bn.stat_rows) for bn, _ in self.rows]
        for bn, rows in self.rows:
            bn.stat_rows = rows
        try:
            return self.stage(x)
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for bn, rows in now:
                bn.stat_rows = rows


class LoadResult(NamedTuple):
    missing: list[str]
    unexpected: list[str]


def _head_prefix(keys) -> str | None:
    # torchvision calls the classifier `fc`; our own models call it `head`
    for prefix in ("head.", "fc."):
        if f"{prefix}weight" in keys:
            return prefix
    return None


def load_weights(model: nn.Module, path: str | os.PathLike | Mapping) -> LoadResult:
    """Load a checkpoint into ``model`` by name, non-strictly, and report what did not match.

    Accepts a path or an already loaded mapping; a plain state_dict, or a dict holding it under
    ``state_dict`` or ``model`` (our trainer's checkpoints, most others); a DDP ``module.``
    prefix is stripped; ``fc.*`` and ``head.*`` are mapped onto whichever the model uses.
    A classifier whose shape differs (other class count) is skipped and its keys come back in
    ``missing``. Any other shape mismatch is an error: it means a different architecture.
    """
    if isinstance(path, Mapping):
        sd = path
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:   # torch and pickle raise several kinds, with pages of advice, for a file that is not one
            raise InputError(f"{path}: not a weights file torch can load ({type(e).__name__}: {first_line(e)})") from None
    for wrapper in ("state_dict", "model"):
        if wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
            break
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}

    own = model.state_dict()
    src_head, dst_head = _head_prefix(sd), _head_prefix(own)
    if src_head and dst_head and src_head != dst_head:
        sd = {(dst_head + k[len(src_head):] if k.startswith(src_head) else k): v for k, v in sd.items()}

    # same feature width, other class count: a head for another label set, skip it
    src_w = sd.get(f"{dst_head}weight") if dst_head else None
    if src_w is not None:
        dst_w = own[f"{dst_head}weight"]
        if src_w.shape[1:] == dst_w.shape[1:] and len(src_w) != len(dst_w):
            warnings.warn(f"load_weights: head skipped: checkpoint has {len(src_w)} classes, "
                          f"model has {len(dst_w)}", stacklevel=2)
            sd = {k: v for k, v in sd.items() if not k.startswith(dst_head)}

    bad = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
           for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise ValueError(f"load_weights: shape mismatch (another architecture?): {'; '.join(bad[:5])}")

    # A backbone weight the file lacks means a layout this loader does not know (another wrapper or
    # prefix): the expert would silently start from random weights. Only the head may be missing.
    lost = [k for k in own if k not in sd and not (dst_head and k.startswith(dst_head))
            and not k.endswith("num_batches_tracked")]
    if lost:
        raise InputError(f"load_weights: {len(lost)} of the model's backbone weights are not in the checkpoint "
                         f"(e.g. {lost[0]}; it has {', '.join(list(sd)[:3]) or 'nothing'}, ...): another "
                         f"architecture, or a layout with another prefix")
    result = model.load_state_dict(sd, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        log.warning("load_weights: %d missing keys %s, %d unexpected keys %s",
                    len(missing), missing[:8], len(unexpected), unexpected[:8])
    return LoadResult(missing, unexpected)
