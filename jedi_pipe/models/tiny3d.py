"""tiny3d: a small (2+1)D CNN that trains on CPU, for tests and the synthetic demo."""

from __future__ import annotations

from torch import nn

from .registry import register_model, run_stages


def _conv_bn_relu(cin, cout, kernel, stride):
    padding = tuple(k // 2 for k in kernel)
    return [nn.Conv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _block(cin, cout, stride):
    # (2+1)D factorisation: spatial 1x3x3 then temporal 3x1x1, far cheaper than 3x3x3
    return nn.Sequential(
        *_conv_bn_relu(cin, cout, (1, 3, 3), (1, stride, stride)),
        *_conv_bn_relu(cout, cout, (3, 1, 1), (stride, 1, 1)),
    )


class Tiny3D(nn.Module):
    grad_checkpointing = False   # registry.run_stages: recompute the stem and each block in backward
    def __init__(self, num_classes: int, width: int = 32, in_chans: int = 3):
        super().__init__()
        w = width
        self.stem = nn.Sequential(*_conv_bn_relu(in_chans, w, (1, 3, 3), (1, 2, 2)))
        self.blocks = nn.Sequential(_block(w, 2 * w, 2), _block(2 * w, 4 * w, 2), _block(4 * w, 4 * w, 1))
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.num_features = 4 * w
        self.head = nn.Linear(self.num_features, num_classes)

    def feature_stages(self) -> list[nn.Module]:
        return [self.stem, *self.blocks]

    def features(self, x):
        return self.pool(run_stages(self.feature_stages(), x, self.grad_checkpointing)).flatten(1)

    def forward(self, x):
        return self.head(self.features(x))


@register_model
def tiny3d(num_classes: int, width: int = 32, **kw) -> Tiny3D:
    return Tiny3D(num_classes, width=width, **kw)


# Half the channels (about a quarter of tiny3d's compute): the demo's backbone, where a JEDI step
# runs every backbone over every dataset's clips on two CPU cores (bench/step.py).
@register_model
def tiny3d_s(num_classes: int, width: int = 16, **kw) -> Tiny3D:
    return Tiny3D(num_classes, width=width, **kw)
