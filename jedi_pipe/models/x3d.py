"""x3d_s: an X3D-S style network (Feichtenhofer, 2020); efficient, ~3.8M parameters.

Faithful in spirit (stem 1x3x3 + depthwise 5x1x1, inverted bottlenecks with expansion 2.25
and depthwise 3x3x3, SE on every other block, swish, widths 24/48/96/192, depths 3/5/11/7,
conv5 + 2048-d projection head); parameter names do not follow any published weights.
"""

from __future__ import annotations

from torch import nn

from .registry import register_model, run_stages


def _bn(c):
    return nn.BatchNorm3d(c)


class SqueezeExcite(nn.Module):
    def __init__(self, c, ratio=0.0625):
        super().__init__()
        r = max(8, int(c * ratio + 4) // 8 * 8)  # round to a multiple of 8, as X3D does
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool3d(1), nn.Conv3d(c, r, 1), nn.ReLU(inplace=True), nn.Conv3d(r, c, 1), nn.Sigmoid()
        )

    def forward(self, x):
        return x * self.gate(x)


class X3DBlock(nn.Module):
    def __init__(self, cin, cout, inner, stride, se):
        super().__init__()
        self.a = nn.Sequential(nn.Conv3d(cin, inner, 1, bias=False), _bn(inner), nn.ReLU(inplace=True))
        self.b = nn.Sequential(
            nn.Conv3d(inner, inner, 3, (1, stride, stride), 1, groups=inner, bias=False),
            _bn(inner),
            SqueezeExcite(inner) if se else nn.Identity(),
            nn.SiLU(inplace=True),
        )
        self.c = nn.Sequential(nn.Conv3d(inner, cout, 1, bias=False), _bn(cout))
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv3d(cin, cout, 1, (1, stride, stride), bias=False), _bn(cout))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return self.relu(self.c(self.b(self.a(x))) + shortcut)


class X3D(nn.Module):
    grad_checkpointing = False   # registry.run_stages: recompute the stem, each stage and conv5 in backward
    def __init__(self, num_classes: int, widths=(24, 48, 96, 192), depths=(3, 5, 11, 7), expansion=2.25,
                 se: bool = True, num_features: int = 2048, drop_rate: float = 0.5):
        super().__init__()
        w0 = widths[0]
        self.stem = nn.Sequential(
            nn.Conv3d(3, w0, (1, 3, 3), (1, 2, 2), (0, 1, 1), bias=False),
            nn.Conv3d(w0, w0, (5, 1, 1), 1, (2, 0, 0), groups=w0, bias=False),
            _bn(w0),
            nn.ReLU(inplace=True),
        )
        stages, cin = [], w0
        for cout, depth in zip(widths, depths):
            inner = int(cout * expansion)
            stages.append(nn.Sequential(*[
                X3DBlock(cin if j == 0 else cout, cout, inner, 2 if j == 0 else 1, se and j % 2 == 0)
                for j in range(depth)
            ]))
            cin = cout
        self.stages = nn.Sequential(*stages)
        c5 = int(widths[-1] * expansion)
        self.conv5 = nn.Sequential(nn.Conv3d(cin, c5, 1, bias=False), _bn(c5), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool3d(1)
        # dropout sits inside features() so forward == head(features) holds in training too
        self.lin5 = nn.Sequential(nn.Linear(c5, num_features, bias=False), nn.ReLU(inplace=True), nn.Dropout(drop_rate))
        self.num_features = num_features
        self.head = nn.Linear(num_features, num_classes)

    def feature_stages(self) -> list[nn.Module]:
        return [self.stem, *self.stages, self.conv5]

    def features(self, x):
        x = run_stages(self.feature_stages(), x, self.grad_checkpointing)
        return self.lin5(self.pool(x).flatten(1))

    def forward(self, x):
        return self.head(self.features(x))


# X3D-S is meant for 13 frames sampled with stride 6 from 30 fps video (5 fps), 160 px crops
@register_model
def x3d_s(num_classes: int, **kw) -> X3D:
    return X3D(num_classes, **kw)
