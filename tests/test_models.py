"""The model contract over every registered model, and torchvision weight compatibility."""

import math

import pytest
import torch
from torch import nn

from jedi_pipe.models import build, list_models, load_weights

# torchvision (the model that published r3d_18 / r2plus1d_18 Kinetics-400 weights) cannot be
# installed here: only CUDA wheels exist for it, and they fail to load next to the CPU torch. So the
# weights' layout is derived below from torchvision's architecture rules (torchvision/models/video/
# resnet.py, VideoResNet), written out independently of jedi_pipe's implementation: every state_dict
# entry a torchvision model has, with its shape, and the stride and padding of every convolution
# (the shapes alone would not show a weight applied with the wrong stride).
#   stem: r3d conv 3->64 (3,7,7) s(1,2,2) p(1,3,3), BN; r(2+1)d conv 3->45 (1,7,7) s(1,2,2) p(0,3,3),
#         BN, conv 45->64 (3,1,1) s1 p(1,0,0), BN (ReLUs hold no entries)
#   layer1..4: 64, 128, 256, 512 planes, 2 BasicBlocks, the first of layers 2-4 with stride 2;
#   block: conv1 = [conv(in, planes, stride), BN], conv2 = [conv(planes, planes), BN],
#          downsample = [Conv3d 1x1x1 stride (s,s,s), BN] when stride != 1 or in != planes;
#   conv(in, out, s): r3d one (3,3,3) conv, padding 1; r(2+1)d [(1,3,3) conv to mid, BN(mid), ReLU,
#          (3,1,1) conv to out] with mid = in*out*27 // (in*9 + 3*out) of the block's in and planes;
#   fc: Linear(512, classes). BatchNorm: weight, bias, running_mean, running_var, num_batches_tracked.


def torchvision_layout(arch: str, classes: int) -> dict:
    """state_dict key -> (shape, stride, padding) of a torchvision video ResNet-18; BN and fc
    entries with stride and padding None."""
    entries = {}

    def conv(key, cin, cout, k, stride, pad):
        entries[key + ".weight"] = ((cout, cin, *k), stride, pad)

    def bn(key, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            entries[f"{key}.{p}"] = ((c,), None, None)
        entries[f"{key}.num_batches_tracked"] = ((), None, None)

    def block_conv(key, cin, cout, mid, s):
        if arch == "r3d_18":
            conv(key, cin, cout, (3, 3, 3), (s, s, s), (1, 1, 1))
        else:
            conv(key + ".0", cin, mid, (1, 3, 3), (1, s, s), (0, 1, 1))
            bn(key + ".1", mid)
            conv(key + ".3", mid, cout, (3, 1, 1), (s, 1, 1), (1, 0, 0))

    if arch == "r3d_18":
        conv("stem.0", 3, 64, (3, 7, 7), (1, 2, 2), (1, 3, 3))
        bn("stem.1", 64)
    else:
        conv("stem.0", 3, 45, (1, 7, 7), (1, 2, 2), (0, 3, 3))
        bn("stem.1", 45)
        conv("stem.3", 45, 64, (3, 1, 1), (1, 1, 1), (1, 0, 0))
        bn("stem.4", 64)
    cin = 64
    for layer, planes in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            s = 2 if layer > 1 and j == 0 else 1
            key, mid = f"layer{layer}.{j}", cin * planes * 27 // (cin * 9 + 3 * planes)
            block_conv(key + ".conv1.0", cin, planes, mid, s)
            bn(key + ".conv1.1", planes)
            block_conv(key + ".conv2.0", planes, planes, mid, 1)
            bn(key + ".conv2.1", planes)
            if s != 1 or cin != planes:
                conv(key + ".downsample.0", cin, planes, (1, 1, 1), (s, s, s), (0, 0, 0))
                bn(key + ".downsample.1", planes)
            cin = planes
    entries["fc.weight"] = ((classes, 512), None, None)
    entries["fc.bias"] = ((classes,), None, None)
    return entries


TORCHVISION = ("r3d_18", "r2plus1d_18")


@pytest.fixture(scope="module")
def kinetics_models():
    # building a 33M-parameter model takes a moment; build each once per module
    return {name: build(name, 400) for name in TORCHVISION}


@pytest.fixture(scope="module")
def kinetics_state_dicts(kinetics_models):
    return {name: m.state_dict() for name, m in kinetics_models.items()}


@pytest.mark.parametrize("name", list_models())
def test_model_contract(name):
    model = build(name, num_classes=5)
    x = torch.randn(2, 3, 4, 32, 32)
    feats = model.features(x)
    assert feats.shape == (2, model.num_features)
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (model.num_features, 5)
    assert model(x).shape == (2, 5)
    model.eval()  # no dropout / batch statistics: forward must equal head(features)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.head(model.features(x)))


def test_registry_errors():
    with pytest.raises(ValueError, match="tiny3d"):
        build("no_such_model", 3)
    assert build("tiny3d", 3, width=8).num_features == 32


@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_layout(name, kinetics_models, kinetics_state_dicts):
    """Every entry of torchvision's state_dict, no other, with its shape; every conv's stride/padding."""
    expected = torchvision_layout(name, 400)
    sd = kinetics_state_dicts[name]
    assert {k: tuple(v.shape) for k, v in sd.items()} == {k: shape for k, (shape, _, _) in expected.items()}
    model = kinetics_models[name]
    convs = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Conv3d)}
    assert set(convs) == {k for k, (_, stride, _) in expected.items() if stride is not None}
    for key, m in convs.items():
        assert (m.stride, m.padding, m.bias) == (*expected[key][1:], None), key
    assert not any(k.startswith("head.") for k in sd)  # `head` aliases `fc`, never a second copy


def test_the_layout_rules_are_the_ones_torchvision_states():
    # the derived layout against the few facts torchvision documents about these models in prose:
    # R(2+1)D's (2+1)D convs keep the parameter count of the 3D conv they replace (midplanes), and
    # the two networks differ in the stem and block convs only
    r3d, r21d = torchvision_layout("r3d_18", 400), torchvision_layout("r2plus1d_18", 400)
    numel = lambda layout, prefix: sum(math.prod(shape) for k, (shape, stride, _) in layout.items()
                                       if k.startswith(prefix) and stride is not None)
    # (mid comes from the block's in and planes, also for conv2, so the first blocks of layers 2-4
    # keep the count in conv1 only: torchvision computes it once per block)
    for block in ("layer1.0.conv1.0", "layer2.0.conv1.0", "layer3.1.conv2.0", "layer4.1.conv1.0"):
        assert abs(numel(r21d, block) - numel(r3d, block)) / numel(r3d, block) < 0.01, block
    differ = {k.split(".conv")[0].split(".")[0] for k in set(r3d) ^ set(r21d)}
    assert differ == {"stem", "layer1", "layer2", "layer3", "layer4"}
    assert {k for k in r3d if k.startswith(("fc.", "layer2.0.downsample"))} == \
           {k for k in r21d if k.startswith(("fc.", "layer2.0.downsample"))}


@pytest.mark.parametrize("name", TORCHVISION)
def test_state_dict_roundtrip(name, kinetics_state_dicts, tmp_path):
    path = tmp_path / f"{name}.pth"
    torch.save(kinetics_state_dicts[name], path)
    model = build(name, 400)
    missing, unexpected = load_weights(model, path)
    assert missing == [] and unexpected == []
    torch.testing.assert_close(model.head.weight, kinetics_state_dicts[name]["fc.weight"])


def test_mismatched_head_is_skipped_and_reported(kinetics_state_dicts, tmp_path):
    path = tmp_path / "r3d_18-kinetics.pth"
    torch.save({"model": kinetics_state_dicts["r3d_18"], "step": 7}, path)  # trainer-style wrapper
    with pytest.warns(UserWarning, match="head skipped: checkpoint has 400 classes, model has 51"):
        model = build("r3d_18", 51, weights=path)
    torch.testing.assert_close(model.stem[0].weight, kinetics_state_dicts["r3d_18"]["stem.0.weight"])
    with pytest.warns(UserWarning):
        missing, unexpected = load_weights(build("r3d_18", 51), path)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and unexpected == []


def test_fc_and_head_keys_map_both_ways(tmp_path):
    tiny = build("tiny3d", 4, width=8)
    torchvision_style = {("fc." + k[5:] if k.startswith("head.") else k): v.clone()
                         for k, v in tiny.state_dict().items()}
    torch.save({"state_dict": torchvision_style}, tmp_path / "tiny.pth")
    fresh = build("tiny3d", 4, width=8)
    assert load_weights(fresh, tmp_path / "tiny.pth") == ([], [])
    torch.testing.assert_close(fresh.head.weight, tiny.head.weight)

    resnet = build("r3d_18", 3)
    ours = {("head." + k[3:] if k.startswith("fc.") else k): v for k, v in resnet.state_dict().items()}
    ours = {"module." + k: v for k, v in ours.items()}  # saved from a DDP wrapper
    assert load_weights(build("r3d_18", 3), ours) == ([], [])


def test_head_alias_and_other_mismatches():
    model = build("r3d_18", 3)
    new_head = nn.Linear(512, 7)
    model.head = new_head  # replacing the head replaces torchvision's fc, not a second module
    assert model.fc is new_head and model.head is new_head
    assert not any(k.startswith("head.") for k in model.state_dict())
    sd = build("tiny3d", 3, width=8).state_dict()
    with pytest.raises(ValueError, match="shape mismatch"):
        load_weights(build("tiny3d", 3, width=16), sd)
    missing, unexpected = load_weights(build("tiny3d", 3, width=8), {**sd, "extra.weight": torch.zeros(1)})
    assert missing == [] and unexpected == ["extra.weight"]


def test_a_checkpoint_of_an_unknown_layout_is_refused_not_ignored():
    """A wrapper or prefix the loader does not know matched no backbone weight: before, it warned and the
    expert trained from random weights; now it is refused, naming what the file holds."""
    from jedi_pipe.errors import InputError
    sd = build("tiny3d", 3, width=8).state_dict()
    for layout in ({"model_state": sd}, {"backbone." + k: v for k, v in sd.items()}):
        with pytest.raises(InputError, match="backbone weights are not in the checkpoint"):
            load_weights(build("tiny3d", 3, width=8), layout)
