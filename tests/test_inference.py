"""inference: the one path from a gray image to combined, decoded head outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from boneage_core import inference
from boneage_core.heads import AGE, STAGE, combine, get_head
from boneage_core.inference import (CPU_INFERENCE_BATCH, GPU_INFERENCE_BATCH, TTA_SCALES, autocast, cpu_has_bf16,
                                    ensemble_outputs, image_gate_features, inference_batch, member_features,
                                    member_outputs, resolve_device, to_input, tta_views)
from boneage_core.models import INIT_SCRATCH, ModelSpec, create_model
from boneage_core.preprocess import PreprocessSpec, grey_entropy, input_grain, is_grainy, prepare, resize_to
from boneage_core.views import NO_TTA

SIZE = 32
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():  # on the shared 2-core machine two intra-op threads contend and run ~10x slower
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _net(heads=(AGE, STAGE), seed: int = 0):
    torch.manual_seed(seed)
    spec = ModelSpec(heads=heads, sex_embedding_dim=4, preprocess=PreprocessSpec(image_size=SIZE),
                     age_mean=120.0, age_std=40.0)
    return create_model(spec, INIT_SCRATCH)[0].eval()


@pytest.fixture(scope="module")
def net():
    return _net()


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randint(0, 256, (7, SIZE, SIZE), dtype=torch.uint8, generator=g),
            torch.tensor([0, 1, 1, 0, 1, 0, 0]))


def test_to_input():
    batch = torch.tensor([[[0, 255], [51, 128]], [[255, 0], [1, 2]]], dtype=torch.uint8)
    original = batch.clone()
    x = to_input(batch, CPU)
    assert x.shape == (2, 1, 2, 2) and x.dtype == torch.float32 and x.device.type == "cpu"
    assert x.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(x[:, 0], original.float() / 255.0, rtol=0, atol=0)
    assert x.min() == 0.0 and x.max() == 1.0
    assert torch.equal(batch, original)  # the cache is not modified


def test_tta_views():
    x = torch.rand(3, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    assert len(tta_views(x, NO_TTA)) == 1 and tta_views(x, NO_TTA)[0] is x
    views = tta_views(x)
    assert len(views) == len(TTA_SCALES) == 3 and TTA_SCALES[0] == 1.0
    assert views[0] is x
    assert all(v.shape == x.shape and v.dtype == x.dtype for v in views)
    assert not torch.allclose(views[1], x) and not torch.allclose(views[2], x)
    ones = torch.ones(1, 1, SIZE, SIZE)
    zoom_in, zoom_out = tta_views(ones)[1:]
    assert TTA_SCALES[2] > 1 > TTA_SCALES[1]
    assert zoom_out[0, 0, 0, 0] < 1 and zoom_out[0, 0, -1, -1] < 1  # zoom-out: borders partly empty
    assert zoom_out[0, 0, SIZE // 2, SIZE // 2] == pytest.approx(1.0)
    torch.testing.assert_close(zoom_in, ones)  # zoom-in samples inside the image only
    first, zoom_out_alone = tta_views(x, (1.0, 1.06))
    assert first is x
    torch.testing.assert_close(zoom_out_alone, views[2])  # a view set is a subset of the same views


def test_resolve_device_and_autocast(monkeypatch):
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert isinstance(cpu_has_bf16(), bool)
    for has_bf16 in (True, False):
        monkeypatch.setattr(inference, "cpu_has_bf16", lambda: has_bf16)
        with autocast(CPU):
            assert not torch.is_autocast_enabled("cpu")
        with autocast(CPU, cpu_bf16=True):  # emulated bf16 (AVX2 CPUs) would be ~17x slower: float32 there
            assert torch.is_autocast_enabled("cpu") == has_bf16


def test_member_outputs_are_decoded_views(net, images):
    x, male = images
    out = member_outputs(net, x, male, CPU, views=NO_TTA, batch_size=3)
    assert list(out) == [AGE, STAGE]
    assert len(out[AGE]) == len(out[STAGE]) == 1
    assert out[AGE][0].shape == (7,) and out[STAGE][0].shape == (7, 5)
    np.testing.assert_allclose(out[STAGE][0].sum(axis=1), 1.0, atol=1e-6)
    with torch.no_grad():
        raw = net(to_input(x, CPU), male)
    for head in (AGE, STAGE):
        np.testing.assert_allclose(out[head][0], get_head(head).decode(raw[head], net.spec), rtol=1e-5, atol=1e-5)
    tta = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=3)
    assert len(tta[AGE]) == len(tta[STAGE]) == 3
    assert all(v.shape == (7,) for v in tta[AGE]) and all(v.shape == (7, 5) for v in tta[STAGE])
    np.testing.assert_allclose(tta[AGE][0], out[AGE][0], rtol=0, atol=1e-5)
    assert not np.allclose(tta[AGE][1], tta[AGE][0])


def test_member_outputs_ignore_batch_size(net, images):
    x, male = images
    whole = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=64)
    pieces = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=2)  # 2 + 2 + 2 + 1
    for head in (AGE, STAGE):
        for a, b in zip(whole[head], pieces[head], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)


def test_cpu_inference_runs_in_small_batches_by_default(monkeypatch, net):
    assert inference_batch(CPU) == CPU_INFERENCE_BATCH < GPU_INFERENCE_BATCH == inference_batch(torch.device("cuda"))
    monkeypatch.setattr(inference, "CPU_INFERENCE_BATCH", 3)
    seen = []
    hook = net.backbone.conv_stem.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[0]))
    try:
        n = 8
        x, male = torch.zeros((n, SIZE, SIZE), dtype=torch.uint8), torch.zeros(n, dtype=torch.long)
        member_outputs(net, x, male, CPU)
        member_features(net, x, CPU)
    finally:
        hook.remove()
    assert seen == [3, 3, 2, 3, 3, 2]


def test_gate_features_come_from_the_same_pass_as_the_outputs(net, images):
    x, male = images
    collected = []
    member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=4, features=collected)
    from_outputs = np.concatenate(collected)
    alone = member_features(net, x, CPU, batch_size=3)
    pooled, texture = net.embed(to_input(x, CPU))
    assert alone.shape == (len(x), pooled.shape[1] + texture.shape[1] + 2)  # then the grain and the grey-level entropy
    np.testing.assert_allclose(alone[:, -1], grey_entropy(x.numpy()))
    np.testing.assert_allclose(alone[:, -2], input_grain(x.numpy()))
    np.testing.assert_allclose(from_outputs, alone, rtol=1e-5, atol=1e-5)  # the unzoomed view, batch-independent
    np.testing.assert_allclose(alone[:, :pooled.shape[1]], pooled.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_image_gate_features_prepare_the_image_like_every_model_input_but_never_smoothed(net, hand_like):
    gray = np.random.default_rng(1).random((90, 70))  # any size: prepared (cropped, padded, resized) first
    features = image_gate_features(net, gray, CPU)
    prepared = torch.from_numpy(prepare(gray, net.spec.preprocess)[None])
    np.testing.assert_allclose(features, member_features(net, prepared, CPU), rtol=1e-5, atol=1e-5)
    assert features.shape[0] == 1 and np.isfinite(features).all()
    film = resize_to(hand_like, (299, 299))  # noise added at the size the grain is measured (NOISE_SIDE)
    grainy = np.clip(film + np.random.default_rng(2).normal(0, 0.02, film.shape), 0, 1).astype(np.float32)
    assert is_grainy(grainy)  # the members read it smoothed; the gate as given
    as_given = torch.from_numpy(prepare(grainy, net.spec.preprocess, grainy=False)[None])
    np.testing.assert_allclose(image_gate_features(net, grainy, CPU), member_features(net, as_given, CPU), rtol=1e-5,
                               atol=1e-5)
    assert not np.array_equal(prepare(grainy, net.spec.preprocess), as_given[0].numpy())
    other = image_gate_features(net, np.rot90(gray), CPU)
    assert np.abs(other - features).max() > 1e-4  # the features follow the image


def test_member_outputs_follow_the_images(net, images):
    x, male = images
    order = torch.tensor([6, 2, 0, 5, 1, 4, 3])
    base = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=4)
    shuffled = member_outputs(net, x[order], male[order], CPU, views=TTA_SCALES, batch_size=4)
    for head in (AGE, STAGE):
        for a, b in zip(base[head], shuffled[head], strict=True):
            np.testing.assert_allclose(b, a[order.numpy()], rtol=1e-5, atol=1e-5)


def test_member_outputs_put_the_net_in_eval_mode(images):
    model = _net(seed=1).train()
    x, male = images
    first = member_outputs(model, x, male, CPU)
    assert not model.training
    np.testing.assert_array_equal(member_outputs(model, x, male, CPU)[AGE][0], first[AGE][0])  # no dropout


def test_ensemble_members_without_a_head_do_not_vote():
    a1, a2, b1 = np.array([100.0, 10.0]), np.array([110.0, 20.0]), np.array([30.0, 30.0])
    s1 = np.array([[0.2, 0.2, 0.2, 0.2, 0.2], [0.0, 0.0, 1.0, 0.0, 0.0]])
    out = ensemble_outputs([{AGE: [a1, a2]}, {AGE: [b1], STAGE: [s1]}])
    assert list(out) == [AGE, STAGE]
    np.testing.assert_allclose(out[AGE], [80.0, 20.0])  # the mean of every view of every member
    np.testing.assert_array_equal(out[STAGE], s1)  # only the second member has a stage head
    assert list(ensemble_outputs([{STAGE: [s1]}, {AGE: [a1]}])) == [STAGE, AGE]


def test_ensemble_of_real_members_is_combine_of_all_views(net, images):
    x, male = images
    members = [member_outputs(net, x, male, CPU, views=TTA_SCALES),
               member_outputs(_net(seed=2), x, male, CPU, views=NO_TTA),
               member_outputs(_net(heads=(AGE,), seed=3), x, male, CPU, views=NO_TTA)]
    out = ensemble_outputs(members)
    views_age = members[0][AGE] + members[1][AGE] + members[2][AGE]
    np.testing.assert_allclose(out[AGE], combine(views_age), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out[AGE], np.mean(views_age, axis=0), rtol=0, atol=1e-9)
    views_stage = members[0][STAGE] + members[1][STAGE]
    np.testing.assert_allclose(out[STAGE], combine(views_stage), rtol=0, atol=1e-12)
    assert out[STAGE].shape == (7, 5)
    np.testing.assert_allclose(out[STAGE].sum(axis=1), 1.0, atol=1e-6)


def test_member_outputs_on_a_view_set_are_those_views_of_all_views(net, images):
    """Two views (image + zoom-in) give exactly the first two of the three views; the gate still reads the image."""
    x, male = images
    every, collected = member_outputs(net, x, male, CPU, views=TTA_SCALES, batch_size=4), []
    two = member_outputs(net, x, male, CPU, views=(1.0, 0.94), batch_size=4, features=collected)
    for head in (AGE, STAGE):
        assert len(two[head]) == 2
        for a, b in zip(every[head][:2], two[head], strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.concatenate(collected), member_features(net, x, CPU, batch_size=3),
                               rtol=1e-5, atol=1e-5)


def test_member_outputs_refuse_a_view_set_without_the_image(net, images):
    x, male = images
    with pytest.raises(ValueError, match="must include 1.0"):
        member_outputs(net, x, male, CPU, views=(0.94,))


def _zoom_reference(x: torch.Tensor, scale: float) -> torch.Tensor:
    """A zoomed view with its grid made for the batch (as before the grid was cached)."""
    theta = torch.tensor([[scale, 0.0, 0.0], [0.0, scale, 0.0]], dtype=x.dtype).expand(x.shape[0], 2, 3)
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize("batch,size", [(1, SIZE), (3, SIZE), (2, 288)])
def test_tta_views_with_the_cached_grid_are_the_per_batch_views(batch, size):
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(batch))
    with torch.inference_mode():  # as member_outputs runs: the cached grid must still serve gradients later
        views = tta_views(x)
    for scale, view in zip(TTA_SCALES[1:], views[1:]):
        assert torch.equal(view, _zoom_reference(x, scale))
    shape = (1, size, size)
    assert inference._zoom_grid(TTA_SCALES[1], shape, x.dtype, x.device) is inference._zoom_grid(
        TTA_SCALES[1], shape, x.dtype, x.device)  # made once
    leaf = x.clone().requires_grad_()
    tta_views(leaf)[1].sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0
