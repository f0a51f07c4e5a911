"""models: ModelSpec, the multi-head BoneAgeNet, freezing, create_model's three starting points, save/load."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from boneage_core.checkpoint import file_sha256, read_payload
from boneage_core.errors import ArtifactError
from boneage_core.heads import AGE, STAGE
from boneage_core.imagenet import imagenet_weights_path
from boneage_core.models import (INIT_IMAGENET, INIT_SCRATCH, TEXTURE_BLOCK, BoneAgeNet, HeadOutput, ModelSpec,
                                 count_parameters, create_model, freeze_blocks, load_model, parent_spec, save_model)
from boneage_core.preprocess import PreprocessSpec
from boneage_core.stages import DEFAULT_SCHEME, StageScheme

BACKBONE = "tf_efficientnet_lite0"
SIZE = 32


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():  # on the shared 2-core machine two intra-op threads contend and run ~10x slower
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _spec(heads=(AGE, STAGE), sex_dim: int = 4, **kwargs) -> ModelSpec:
    return ModelSpec(heads=heads, backbone=BACKBONE, sex_embedding_dim=sex_dim,
                     preprocess=PreprocessSpec(image_size=SIZE), age_mean=120.0, age_std=40.0, **kwargs)


def _net(seed: int = 0, **kwargs) -> BoneAgeNet:
    torch.manual_seed(seed)
    return create_model(_spec(**kwargs), INIT_SCRATCH)[0].eval()


def _inputs(b: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, SIZE, SIZE, generator=g), torch.tensor([0, 1, 1, 0][:b])


@pytest.fixture(scope="module")
def net() -> BoneAgeNet:
    return _net()


def _fp16(state: dict) -> dict:
    return {k: v.half().float() if v.is_floating_point() else v for k, v in state.items()}


def test_spec_round_trip_through_json():
    scheme = StageScheme(names=("a", "b", "c"), female_cutoffs=(50.0, 100.0), male_cutoffs=(60.0, 110.0))
    spec = ModelSpec(heads=(STAGE, AGE), backbone="tf_efficientnet_lite1", sex_embedding_dim=8,
                     preprocess=PreprocessSpec(image_size=96, low_percentile=1.0, high_percentile=99.0),
                     age_mean=127.5, age_std=41.25, scheme=scheme)
    data = json.loads(json.dumps(spec.to_dict()))
    assert data["heads"] == [STAGE, AGE] and data["age_scaling"] == {"mean": 127.5, "std": 41.25}
    assert ModelSpec.from_dict(data) == spec
    assert ModelSpec.from_dict(ModelSpec().to_dict()) == ModelSpec()


def test_spec_defaults():
    spec = ModelSpec()
    assert spec.heads == (AGE,) and spec.backbone == BACKBONE and spec.scheme == DEFAULT_SCHEME


@pytest.mark.parametrize("kwargs,match", [(dict(heads=(AGE, "segmentation")), "segmentation"),
                                          (dict(heads=("Age",)), "Age"),
                                          (dict(backbone="resnet50"), "resnet50")])
def test_spec_refuses_unknown_head_or_backbone(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelSpec(**kwargs)


def test_forward_gives_one_output_per_head(net):
    x, male = _inputs(3)
    with torch.no_grad():
        out = net(x, male)
    assert isinstance(out, dict) and list(out) == [AGE, STAGE]
    assert out[AGE].shape == (3, 1) and out[STAGE].shape == (3, DEFAULT_SCHEME.n_classes)
    assert all(torch.isfinite(v).all() for v in out.values())
    single = _net(heads=(STAGE,))
    with torch.no_grad():
        assert list(single(x, male)) == [STAGE]


def test_one_backbone_pass_serves_every_head(net):
    calls = []
    handle = net.backbone.conv_stem.register_forward_hook(lambda module, args, output: calls.append(output.shape))
    try:
        with torch.no_grad():
            net(*_inputs(2))
    finally:
        handle.remove()
    assert len(calls) == 1


def test_embed_is_the_timm_backbone_plus_texture_statistics(net):
    x, _ = _inputs(2)
    seen = {}
    handle = net.backbone.blocks[TEXTURE_BLOCK].register_forward_hook(lambda m, a, out: seen.setdefault("act", out))
    try:
        with torch.no_grad():
            pooled, texture = net.embed(x)
            timm_pooled = net.backbone(((x - net.mean) / net.std).expand(-1, 3, -1, -1))
    finally:
        handle.remove()
    torch.testing.assert_close(pooled, timm_pooled)  # the heads read exactly what timm's forward gives
    torch.testing.assert_close(net.features(x), pooled)
    untextured = net.embed(x, texture=False)
    torch.testing.assert_close(untextured[0], pooled)
    assert untextured[1] is None  # training and the heads skip the statistics
    act = seen["act"]
    assert texture.shape == (2, 2 * act.shape[1])
    torch.testing.assert_close(texture[:, :act.shape[1]], act.mean((2, 3)))
    torch.testing.assert_close(texture[:, act.shape[1]:], act.std((2, 3), correction=0))


def test_embed_goes_on_from_trunk_activations(net):
    x, _ = _inputs(2)
    with torch.no_grad():
        whole = net.embed(x)
        for n in (1, 3, TEXTURE_BLOCK + 1):
            pooled, texture = net.embed(net.trunk(x, n), from_block=n)
            torch.testing.assert_close(pooled, whole[0])
            if n <= TEXTURE_BLOCK:
                torch.testing.assert_close(texture, whole[1])
            else:
                assert texture is None


def test_sex_input_changes_the_output(net):
    x, _ = _inputs(2)
    with torch.no_grad():
        female = net(x, torch.zeros(2))
        male = net(x, torch.ones(2))
        female_again = net(x, torch.zeros(2, dtype=torch.long))
    for head in (AGE, STAGE):
        assert torch.equal(female[head], female_again[head])
        assert not torch.allclose(female[head], male[head]), head


def test_normalisation_comes_from_the_spec():
    """The network normalises with the spec's mean/std, so the same image under another spec reads differently."""
    a = _net(seed=3)
    torch.manual_seed(3)
    b = create_model(ModelSpec(heads=(AGE, STAGE), sex_embedding_dim=4, age_mean=120.0, age_std=40.0,
                               preprocess=PreprocessSpec(image_size=SIZE, mean=0.3, std=0.2)), INIT_SCRATCH)[0].eval()
    assert torch.equal(a.backbone.conv_stem.weight, b.backbone.conv_stem.weight)
    x, male = _inputs(2)
    with torch.no_grad():
        assert not torch.allclose(a(x, male)[AGE], b(x, male)[AGE])
        torch.testing.assert_close(a(x, male)[AGE], b((x - 0.5) / 0.5 * 0.2 + 0.3, male)[AGE], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("head,n", [(AGE, 1), (STAGE, 5)])
def test_head_output_binds_sex_and_head(net, head, n):
    x, _ = _inputs(2)
    bound = HeadOutput(net, torch.tensor([1]), head)
    with torch.no_grad():
        out = bound(x)
        full = net(x, torch.ones(2))[head]
    assert out.shape == (2, n)
    assert torch.equal(out, full)


def test_head_output_refuses_a_missing_head():
    age_only = _net(heads=(AGE,))
    with pytest.raises(ValueError, match="no 'stage' head"):
        HeadOutput(age_only, torch.tensor([0]), STAGE)


def test_cam_layers_are_backbone_stages_with_spatial_maps(net):
    seen = {}
    layers = {"age": net.cam_layer(AGE), "stage": net.cam_layer(STAGE), "last": net.backbone.conv_head}
    hooks = [layer.register_forward_hook(lambda m, i, o, key=key: seen.__setitem__(key, o.shape[-1]))
             for key, layer in layers.items()]
    with torch.no_grad():
        net(torch.rand(1, 1, 128, 128), torch.tensor([1]))
    for hook in hooks:
        hook.remove()
    assert seen["age"] == 128 // 16 and seen["stage"] == seen["last"] == 128 // 32


def _frozen_names(model: BoneAgeNet) -> set[str]:
    return {n for n, p in model.named_parameters() if not p.requires_grad}


def test_freeze_blocks_and_unfreeze():
    model = _net()
    n_all = count_parameters(model)
    assert count_parameters(model, trainable_only=True) == n_all
    freeze_blocks(model, 2)
    stem = {f"backbone.{n}" for n, _ in model.backbone.conv_stem.named_parameters(prefix="conv_stem")}
    stem |= {f"backbone.{n}" for n, _ in model.backbone.bn1.named_parameters(prefix="bn1")}
    blocks = {f"backbone.blocks.{n}" for n, _ in model.backbone.blocks[:2].named_parameters()}
    assert stem and blocks
    assert _frozen_names(model) == stem | blocks
    assert all(p.requires_grad for p in model.backbone.blocks[2].parameters())
    assert all(p.requires_grad for p in model.heads.parameters())
    assert all(p.requires_grad for p in model.sex_embedding.parameters())
    assert count_parameters(model, trainable_only=True) < n_all
    freeze_blocks(model, 1)  # a later phase freezes less: block 1 trains again
    assert all(p.requires_grad for p in model.backbone.blocks[1].parameters())
    assert not any(p.requires_grad for p in model.backbone.blocks[0].parameters())
    freeze_blocks(model, 0)
    assert _frozen_names(model) == set() and count_parameters(model, trainable_only=True) == n_all


def test_create_model_scratch():
    model, lineage = create_model(_spec(), INIT_SCRATCH)
    assert lineage == {"init_from": INIT_SCRATCH}
    assert isinstance(model, BoneAgeNet) and model.spec == _spec()


def test_create_model_imagenet_holds_the_source_tensors():
    model, lineage = create_model(_spec(), INIT_IMAGENET)
    assert lineage == {"init_from": INIT_IMAGENET}
    source = torch.load(imagenet_weights_path(BACKBONE), map_location="cpu", weights_only=True)
    bb = model.backbone.state_dict()
    assert torch.equal(bb["conv_stem.weight"], source["_conv_stem.weight"])
    assert torch.equal(bb["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    assert torch.equal(bb["conv_head.weight"], source["_conv_head.weight"])


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """An age-only checkpoint (what a previous run saved) and the network it was saved from."""
    path = tmp_path_factory.mktemp("parent") / "regressor.pt"
    model = _net(seed=1, heads=(AGE,))
    sha = save_model(path, model, {"lr": 0.01}, {"init_from": INIT_SCRATCH}, extra={"best_epoch": 1})
    return path, model, sha


def test_create_model_from_a_checkpoint_copies_matching_tensors(parent):
    path, source, sha = parent
    torch.manual_seed(7)
    child, lineage = create_model(_spec(heads=(AGE, STAGE)), str(path))
    torch.manual_seed(7)
    fresh = BoneAgeNet(_spec(heads=(AGE, STAGE)))  # what the child's weights were before loading
    expected = _fp16(source.state_dict())
    state = child.state_dict()
    for key, value in state.items():
        if key.startswith(("backbone.", "sex_embedding.", "heads.age.")):
            assert torch.equal(value, expected[key]), key
        else:
            assert key.startswith("heads.stage.") and torch.equal(value, fresh.state_dict()[key]), key
    assert not torch.equal(state["backbone.conv_stem.weight"], fresh.state_dict()["backbone.conv_stem.weight"])
    assert lineage["init_from"] == str(path) and lineage["parent_sha256"] == sha == file_sha256(path)
    assert lineage["parent_config"] == {"lr": 0.01} and lineage["parent_spec"]["heads"] == [AGE]
    assert lineage["parent_lineage"] == {"init_from": INIT_SCRATCH}


def test_a_checkpoint_of_another_backbone_is_refused_not_truncated(tmp_path):
    """Lite0's tensors are a subset of Lite1's by name and shape: a Lite1 parent must not become a truncated Lite0."""
    path = tmp_path / "lite1.pt"
    torch.manual_seed(2)
    lite1 = create_model(dataclasses.replace(_spec(), backbone="tf_efficientnet_lite1"), INIT_SCRATCH)[0]
    save_model(path, lite1, {}, {"init_from": INIT_SCRATCH})
    with pytest.raises(ArtifactError, match="tf_efficientnet_lite1.*--backbone tf_efficientnet_lite1"):
        create_model(_spec(), str(path))
    child, _ = create_model(dataclasses.replace(_spec(), backbone="tf_efficientnet_lite1"), str(path))
    assert torch.equal(child.state_dict()["backbone.conv_stem.weight"], _fp16(lite1.state_dict())["backbone.conv_stem.weight"])


def test_create_model_from_a_checkpoint_skips_mismatched_shapes(parent):
    path, source, _ = parent
    torch.manual_seed(8)
    child, _ = create_model(_spec(heads=(AGE,), sex_dim=8), str(path))  # other embedding, so other head inputs
    torch.manual_seed(8)
    fresh = BoneAgeNet(_spec(heads=(AGE,), sex_dim=8))
    expected = _fp16(source.state_dict())
    state = child.state_dict()
    assert torch.equal(state["backbone.conv_head.weight"], expected["backbone.conv_head.weight"])
    assert torch.equal(state["sex_embedding.weight"], fresh.state_dict()["sex_embedding.weight"])
    assert torch.equal(state["heads.age.0.weight"], fresh.state_dict()["heads.age.0.weight"])
    assert torch.equal(state["heads.age.3.weight"], expected["heads.age.3.weight"])  # (1, 256) matches


def test_create_model_from_a_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        create_model(_spec(), str(tmp_path / "nothing.pt"))


def test_save_and_load_round_trip(tmp_path):
    model = _net(seed=2)
    path = tmp_path / "multihead.pt"
    sha = save_model(path, model, {"epochs": 3}, {"init_from": INIT_SCRATCH}, extra={"val_score": 0.5})
    loaded, meta = load_model(path)
    assert not loaded.training and loaded.spec == model.spec
    assert meta["sha256"] == sha and "state_dict" not in meta
    assert meta["config"] == {"epochs": 3} and meta["extra"] == {"val_score": 0.5}
    assert meta["lineage"] == {"init_from": INIT_SCRATCH} and meta["spec"] == model.spec.to_dict()
    expected = _fp16(model.state_dict())
    for key, value in loaded.state_dict().items():
        assert value.dtype == model.state_dict()[key].dtype and torch.equal(value, expected[key]), key
    x, male = _inputs(2)
    with torch.no_grad():
        a, b = model(x, male), loaded(x, male)
    for head in (AGE, STAGE):
        torch.testing.assert_close(b[head], a[head], rtol=2e-2, atol=2e-2)  # weights stored in fp16


@pytest.mark.parametrize("name,heads", [("regressor.pt", (AGE,)), ("classifier.pt", (STAGE,))])
def test_format_1_models_load(format1_models, name, heads):
    model, meta = load_model(format1_models / name)
    assert model.spec.heads == heads and not model.training
    assert meta["sha256"] == file_sha256(format1_models / name)
    assert parent_spec(str(format1_models / name)) == model.spec
    with torch.no_grad():
        out = model(torch.full((1, 1, 64, 64), 0.5), torch.tensor([1]))
    assert list(out) == list(heads) and torch.isfinite(out[heads[0]]).all()


def test_parent_spec(parent):
    path, source, _ = parent
    assert parent_spec(INIT_IMAGENET) is None and parent_spec(INIT_SCRATCH) is None
    assert parent_spec(str(path)) == source.spec
    assert ModelSpec.from_dict(read_payload(path)["spec"]) == source.spec
