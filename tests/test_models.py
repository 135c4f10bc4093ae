"""The model contract over every registered model, and torchvision weight compatibility."""

import pytest
import torch
from torch import nn

from jedi_pipe.models import build, list_models, load_weights

# Counts read off torchvision/models/video/resnet.py: each BatchNorm3d gives 5 entries
# (weight, bias, running_mean, running_var, num_batches_tracked), each bias-free conv 1, fc 2.
#   r3d_18: stem 1+5, BasicBlock 2x(1+5), downsample +6 in layer2..4: 6 + 24 + 3*30 + 2 = 122
#   r2plus1d_18: stem 2x(1+5), (2+1)D conv = 1+5+1, block 2x(7+5): 12 + 48 + 3*54 + 2 = 224
# Parameter counts (400 classes) are torchvision's published `num_params` of the weights.
TORCHVISION = {
    "r3d_18": dict(entries=122, params=33_371_472, keys={
        "stem.0.weight": (64, 3, 3, 7, 7),
        "layer1.0.conv1.0.weight": (64, 64, 3, 3, 3),
        "layer2.0.downsample.0.weight": (128, 64, 1, 1, 1),
        "layer4.1.conv2.1.running_var": (512,),
        "fc.weight": (400, 512),
    }),
    "r2plus1d_18": dict(entries=224, params=31_505_325, keys={
        "stem.0.weight": (45, 3, 1, 7, 7),
        "stem.3.weight": (64, 45, 3, 1, 1),
        "layer1.0.conv1.0.0.weight": (144, 64, 1, 3, 3),
        "layer1.0.conv1.0.1.num_batches_tracked": (),
        "layer1.0.conv1.0.3.weight": (64, 144, 3, 1, 1),
        "layer2.0.conv2.0.0.weight": (230, 128, 1, 3, 3),
        "layer2.0.downsample.1.running_mean": (128,),
        "fc.bias": (400,),
    }),
}


@pytest.fixture(scope="module")
def kinetics_state_dicts():
    # building a 33M-parameter model takes a moment; build each once per module
    return {name: build(name, 400).state_dict() for name in TORCHVISION}


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


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_key_names(name, kinetics_state_dicts):
    expected = TORCHVISION[name]
    sd = kinetics_state_dicts[name]
    assert len(sd) == expected["entries"]
    for key, shape in expected["keys"].items():
        assert tuple(sd[key].shape) == shape, key
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(v.numel() for k, v in sd.items() if not k.endswith(buffers)) == expected["params"]
    assert not any(k.startswith("head.") for k in sd)  # `head` aliases `fc`, never a second copy


@pytest.mark.parametrize("name", list(TORCHVISION))
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
