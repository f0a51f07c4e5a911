"""training: SAM, augmentation, TTA views, and a tiny real fit() run."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from boneage_core.config import TrainConfig
from boneage_core.models import BoneAgeNet, ModelSpec, build_model
from boneage_core.preprocess import PreprocessSpec
from boneage_core.training import SAM, augment, fit, predict_outputs, resolve_device, tta_views


def _regression_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3
    return x, y


def test_sam_reduces_linear_regression_loss():
    x, y = _regression_problem()
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def loss_fn():
        return ((model(x) - y) ** 2).mean()

    start = loss_fn().item()
    for _ in range(100):
        loss_fn().backward()
        opt.first_step(zero_grad=True)
        loss_fn().backward()
        opt.second_step(zero_grad=True)
    assert loss_fn().item() < 0.01 * start
    torch.testing.assert_close(model.weight.detach(), torch.tensor([[1.5, -2.0, 0.5]]), atol=0.05, rtol=0)


def test_sam_first_and_second_step_match_the_formula():
    x, y = _regression_problem(1)
    torch.manual_seed(1)
    model = nn.Linear(3, 1)
    rho, lr = 0.2, 0.05
    opt = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)

    def loss_at(w, b):
        return ((x @ w.T + b - y) ** 2).mean()

    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    # independent computation with functional autograd
    wr, br = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    gw, gb = torch.autograd.grad(loss_at(wr, br), (wr, br))
    norm = torch.sqrt((gw ** 2).sum() + (gb ** 2).sum())  # one norm over all parameters
    ew, eb = rho * gw / norm, rho * gb / norm
    wp, bp = (w0 + ew).requires_grad_(), (b0 + eb).requires_grad_()
    gw1, gb1 = torch.autograd.grad(loss_at(wp, bp), (wp, bp))

    ((model(x) - y) ** 2).mean().backward()
    opt.first_step(zero_grad=True)
    torch.testing.assert_close(model.weight.detach(), w0 + ew)
    torch.testing.assert_close(model.bias.detach(), b0 + eb)
    assert model.weight.grad is None or torch.all(model.weight.grad == 0)
    ((model(x) - y) ** 2).mean().backward()
    opt.second_step(zero_grad=True)
    # back at w0, then one SGD step with the gradient taken at the perturbed point
    torch.testing.assert_close(model.weight.detach(), w0 - lr * gw1)
    torch.testing.assert_close(model.bias.detach(), b0 - lr * gb1)
    assert all("e_w" not in opt.state[p] for p in model.parameters())


def test_sam_closure_step_and_argument_checks():
    x, y = _regression_problem(2)
    model = nn.Linear(3, 1)
    opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.1)

    def closure():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        return loss

    start = closure().item()
    for _ in range(30):
        closure()
        opt.step(closure)
    assert closure().item() < 0.1 * start
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)


def _batch(b: int = 4, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 1, size, size, generator=torch.Generator().manual_seed(seed))


def test_augment_shape_range_and_determinism():
    x = _batch()
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert not torch.allclose(a, x)


def test_augment_with_zero_strength_is_identity():
    x = _batch()
    out = augment(x, torch.Generator().manual_seed(0), max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0,
                  brightness=0.0, contrast=(1.0, 1.0))
    torch.testing.assert_close(out, x, atol=1e-5, rtol=0)


def test_augment_brightness_only_shifts_by_a_constant():
    x = _batch() * 0.5 + 0.25  # away from the clamp
    out = augment(x, torch.Generator().manual_seed(0), max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0,
                  brightness=0.1, contrast=(1.0, 1.0))
    shift = out - x
    per_image = shift.flatten(1)
    assert (per_image.max(1).values - per_image.min(1).values).max() < 1e-5
    assert per_image.abs().max() <= 0.1 + 1e-6


def test_tta_views():
    x = _batch(3, 32)
    views = tta_views(x)
    assert len(views) == 3 and all(v.shape == x.shape for v in views)
    assert views[0] is x
    # s = 0.94 samples a smaller area (zoom in), so the image border region changes but the centre stays
    assert not torch.allclose(views[1], x) and not torch.allclose(views[2], x)
    ones = torch.ones(1, 1, 32, 32)
    zoom_out = tta_views(ones)[2]
    assert zoom_out[0, 0, 0, 0] < 1 and zoom_out[0, 0, 16, 16] == pytest.approx(1.0)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")


def _tiny_data(n: int, size: int, task: str, seed: int):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g)
    male = torch.randint(0, 2, (n,), generator=g)
    if task == "regression":
        target = torch.randn(n, generator=g)
    else:
        target = torch.randint(0, 5, (n,), generator=g)
    return images, male, target


@pytest.mark.parametrize("task,optimizer", [("regression", "adamw"), ("classification", "sam")])
def test_fit_tiny_run(task, optimizer):
    size = 64
    n_out = 1 if task == "regression" else 5
    spec = ModelSpec(task=task, n_outputs=n_out, sex_embedding_dim=4, preprocess=PreprocessSpec(image_size=size),
                     age_mean=100.0, age_std=50.0)
    cfg = replace(TrainConfig(), image_size=size, epochs=2, batch_size=8, warmup_epochs=0.5, patience=5,
                  pretrained=False, optimizer=optimizer, ema_decay=0.9, seed=0)
    torch.manual_seed(0)
    net = build_model(spec)
    train = _tiny_data(32, size, task, 1)
    val = _tiny_data(8, size, task, 2)
    result = fit(net, train, val, cfg, torch.device("cpu"))
    assert isinstance(result.history, pd.DataFrame)
    assert result.history["epoch"].tolist() == [1, 2]
    assert {"train_loss", "val_loss", "val_score", "lr", "seconds", "images_per_s"} <= set(result.history)
    assert np.isfinite(result.history[["train_loss", "val_loss", "val_score"]].to_numpy()).all()
    assert result.best_epoch in (1, 2)
    assert result.best_score == pytest.approx(result.history["val_score"].min())
    assert result.stopped == "completed all epochs"
    fresh = BoneAgeNet(spec)
    fresh.load_state_dict(result.state_dict, strict=True)
    out = predict_outputs(fresh, val[0], val[1], torch.device("cpu"), batch_size=4)
    assert out.shape == ((8,) if task == "regression" else (8, 5))
    if task == "classification":  # log-probabilities
        np.testing.assert_allclose(np.exp(out).sum(1), 1.0, atol=1e-4)
    tta = predict_outputs(fresh, val[0], val[1], torch.device("cpu"), batch_size=4, tta=True)
    assert tta.shape == out.shape


def test_time_budget_leaves_room_for_one_more_epoch():
    from boneage_core.training import _over_budget

    assert not _over_budget(elapsed_s=600, last_epoch_s=300, max_minutes=20)  # 15 min < 20
    assert _over_budget(elapsed_s=900, last_epoch_s=400, max_minutes=20)  # would end at 21.7 min
    assert not _over_budget(elapsed_s=10_000, last_epoch_s=10_000, max_minutes=0)  # no limit
