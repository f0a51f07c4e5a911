"""models: ImageNet weight remapping, BoneAgeNet shapes and sex input, self-describing checkpoints."""

from __future__ import annotations

import pytest
import timm
import torch

from boneage_core.models import (
    BoneAgeNet,
    ModelSpec,
    SexBound,
    build_model,
    freeze_blocks,
    imagenet_weights_path,
    load_checkpoint,
    remap_lukemelas_state_dict,
    save_checkpoint,
)
from boneage_core.preprocess import PreprocessSpec
from boneage_core.stages import DEFAULT_SCHEME

BACKBONE = "tf_efficientnet_lite0"


@pytest.fixture(scope="module")
def lukemelas_state() -> dict:
    path = imagenet_weights_path(BACKBONE)
    assert path.is_file(), path
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def reference_timm():
    return timm.create_model(BACKBONE, pretrained=False)


def _spec(task: str = "regression", size: int = 64) -> ModelSpec:
    n = 1 if task == "regression" else DEFAULT_SCHEME.n_classes
    return ModelSpec(task=task, backbone=BACKBONE, n_outputs=n, sex_embedding_dim=4,
                     preprocess=PreprocessSpec(image_size=size), age_mean=120.0, age_std=40.0)


def test_remap_is_complete_and_strict(lukemelas_state, reference_timm):
    remapped = remap_lukemelas_state_dict(lukemelas_state, reference_timm)
    target = reference_timm.state_dict()
    assert len(remapped) == len(lukemelas_state)  # every source key placed, none merged
    assert set(remapped) == set(target)  # every timm key covered
    for key, value in remapped.items():
        assert value.shape == target[key].shape, key
    result = reference_timm.load_state_dict(remapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys


def test_pretrained_backbone_holds_the_source_tensors(lukemelas_state):
    net = build_model(_spec(), pretrained=True)
    bb = net.backbone.state_dict()
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
    fresh = build_model(_spec(), pretrained=False).backbone.state_dict()
    assert not torch.equal(fresh["conv_stem.weight"], lukemelas_state["_conv_stem.weight"])


def test_pretrained_reference_classifies_like_imagenet(lukemelas_state):
    """The remapped network keeps the source classifier: logits equal the source _fc applied to features."""
    model = timm.create_model(BACKBONE, pretrained=False)
    model.load_state_dict(remap_lukemelas_state_dict(lukemelas_state, model), strict=True)
    model.eval()
    x = torch.rand(1, 3, 64, 64)
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


@pytest.mark.parametrize("task,shape", [("regression", (3,)), ("classification", (3, 5))])
def test_forward_shapes(task, shape):
    torch.manual_seed(0)
    net = build_model(_spec(task)).eval()
    with torch.no_grad():
        out = net(torch.rand(3, 1, 64, 64), torch.tensor([0, 1, 1]))
    assert out.shape == shape and torch.isfinite(out).all()
    bound = SexBound(net, torch.tensor([1]))
    with torch.no_grad():
        wrapped = bound(torch.rand(2, 1, 64, 64))
    assert wrapped.shape == ((2, 1) if task == "regression" else (2, 5))


def test_bad_task_is_refused():
    with pytest.raises(ValueError, match="task"):
        BoneAgeNet(ModelSpec(task="segmentation"))


def test_sex_input_changes_the_output():
    torch.manual_seed(0)
    net = build_model(_spec()).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        female = net(x, torch.zeros(2))
        male = net(x, torch.ones(2))
        female_again = net(x, torch.zeros(2))
    assert torch.equal(female, female_again)
    assert not torch.allclose(female, male)


def test_freeze_blocks():
    net = build_model(_spec())
    freeze_blocks(net, 2)
    assert not any(p.requires_grad for p in net.backbone.conv_stem.parameters())
    assert not any(p.requires_grad for p in net.backbone.blocks[1].parameters())
    assert all(p.requires_grad for p in net.backbone.blocks[2].parameters())
    assert all(p.requires_grad for p in net.head.parameters())


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    net = build_model(_spec("classification")).eval()
    path = tmp_path / "model.pt"
    save_checkpoint(path, net, config={"epochs": 3}, extra={"val_score": 0.5})
    loaded, meta = load_checkpoint(path)
    assert not loaded.training
    x, m = torch.rand(2, 1, 64, 64), torch.tensor([0, 1])
    with torch.no_grad():
        a, b = net(x, m), loaded(x, m)
    torch.testing.assert_close(b, a, rtol=2e-2, atol=2e-2)  # weights stored in fp16
    for key, value in net.state_dict().items():
        expected = value.half().float() if value.is_floating_point() else value
        assert torch.equal(loaded.state_dict()[key], expected), key
    spec = meta["spec"]
    assert spec["backbone"] == BACKBONE and spec["task"] == "classification" and spec["n_outputs"] == 5
    assert spec["preprocess"] == PreprocessSpec(image_size=64).to_dict()
    assert spec["age_scaling"] == {"mean": 120.0, "std": 40.0}
    assert spec["stage_scheme"] == DEFAULT_SCHEME.to_dict()
    assert isinstance(meta["git_commit"], str) and meta["git_commit"]
    assert meta["config"] == {"epochs": 3} and meta["extra"] == {"val_score": 0.5}
    assert ModelSpec.from_dict(spec) == net.spec


def test_load_refuses_foreign_file(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a bone-age checkpoint"):
        load_checkpoint(path)
