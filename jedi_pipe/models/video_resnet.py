"""r3d_18 and r2plus1d_18 (Tran et al., 2018), state_dict-compatible with torchvision.

Module names follow torchvision.models.video.VideoResNet exactly (``stem``, ``layer1..4`` of
BasicBlocks with ``conv1``/``conv2``/``downsample``, classifier ``fc``), so torchvision's
published Kinetics-400 files (r3d_18-b3b3357e.pth, r2plus1d_18-91a641e6.pth) load by name.
The classifier is registered as ``fc`` only; ``head`` is an alias of it (never a second
registration, which would duplicate the weights in the state_dict).
"""

from __future__ import annotations

from torch import nn

from .registry import register_model, run_stages


def _conv3d(cin, cout, mid, stride=1):
    return nn.Conv3d(cin, cout, 3, stride, 1, bias=False)


def _conv2plus1d(cin, cout, mid, stride=1):
    # spatial then temporal; `mid` keeps the parameter count equal to the 3x3x3 conv's
    return nn.Sequential(
        nn.Conv3d(cin, mid, (1, 3, 3), (1, stride, stride), (0, 1, 1), bias=False),
        nn.BatchNorm3d(mid),
        nn.ReLU(inplace=True),
        nn.Conv3d(mid, cout, (3, 1, 1), (stride, 1, 1), (1, 0, 0), bias=False),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, conv, stride=1):
        super().__init__()
        mid = (cin * cout * 27) // (cin * 9 + 3 * cout)  # computed once per block, as torchvision
        self.conv1 = nn.Sequential(conv(cin, cout, mid, stride), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))
        self.conv2 = nn.Sequential(conv(cout, cout, mid), nn.BatchNorm3d(cout))
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv3d(cin, cout, 1, stride, bias=False), nn.BatchNorm3d(cout))

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        return self.relu(self.conv2(self.conv1(x)) + shortcut)


class VideoResNet(nn.Module):
    grad_checkpointing = False   # registry.run_stages: recompute stem and layer1..4 in backward
    def __init__(self, num_classes: int, stem: nn.Module, conv, depths=(2, 2, 2, 2)):
        super().__init__()
        self.stem = stem
        cin = 64
        for i, (cout, depth) in enumerate(zip((64, 128, 256, 512), depths)):
            stride = 1 if i == 0 else 2
            blocks = [BasicBlock(cin if j == 0 else cout, cout, conv, stride if j == 0 else 1) for j in range(depth)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.num_features = 512
        self.fc = nn.Linear(512, num_classes)
        self._init_weights()

    # `head` is the contract's name for the classifier; it aliases torchvision's `fc`
    @property
    def head(self) -> nn.Linear:
        return self.fc

    def __setattr__(self, name, value):
        # nn.Module.__setattr__ would register a replacement head as a new `head` submodule
        # (and the property would keep returning the old fc), so route it to `fc`
        super().__setattr__("fc" if name == "head" else name, value)

    def _init_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def feature_stages(self) -> list[nn.Module]:
        return [self.stem, self.layer1, self.layer2, self.layer3, self.layer4]

    def features(self, x):
        return self.avgpool(run_stages(self.feature_stages(), x, self.grad_checkpointing)).flatten(1)

    def forward(self, x):
        return self.fc(self.features(x))


# torchvision's Kinetics-400 weights (r3d_18-b3b3357e.pth, r2plus1d_18-91a641e6.pth) were trained on
# 16-frame clips at 15 fps, resized to 128x171 and cropped to 112, normalised with Kinetics' mean/std


@register_model
def r3d_18(num_classes: int, **kw) -> VideoResNet:
    stem = nn.Sequential(
        nn.Conv3d(3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True)
    )
    return VideoResNet(num_classes, stem, _conv3d, **kw)


@register_model
def r2plus1d_18(num_classes: int, **kw) -> VideoResNet:
    stem = nn.Sequential(
        nn.Conv3d(3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(45), nn.ReLU(inplace=True),
        nn.Conv3d(45, 64, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True),
    )
    return VideoResNet(num_classes, stem, _conv2plus1d, **kw)
