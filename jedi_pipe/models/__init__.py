"""Video backbones behind one registry: ``build(name, num_classes, **kw)``, ``list_models()``.

Every model has ``features(x) -> [B, num_features]``, a linear ``head``, ``num_features``,
``forward(x) == head(features(x))``, ``feature_stages()`` and ``grad_checkpointing``.
"""

from .registry import LoadResult, build, list_models, load_weights, register_model

# importing the modules registers their models
from . import tiny3d, video_resnet, x3d  # noqa: E402,F401  isort: skip

__all__ = ["LoadResult", "build", "list_models", "load_weights", "register_model"]
