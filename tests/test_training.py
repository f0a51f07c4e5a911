"""training: SAM, augmentation, phases, the learning-rate schedule and tiny real fit() runs."""

from __future__ import annotations

import dataclasses
import math
import types

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from boneage_core import training
from boneage_core.errors import ResumeError
from boneage_core.heads import AGE, STAGE, get_head
from boneage_core.inference import member_outputs
from boneage_core.models import INIT_SCRATCH, BoneAgeNet, ModelSpec, create_model
from boneage_core.preprocess import PreprocessSpec
from boneage_core.training import (SAM, SHIFT_JPEG_QUALITY, FitConfig, Phase, Split, acquisition_shift, augment, fit,
                                   flip_horizontal, lr_factor, parse_phases, validate)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():  # on the shared 2-core machine two intra-op threads contend and run ~10x slower
    threads, _ = torch.get_num_threads(), torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CPU = torch.device("cpu")


# --- SAM -------------------------------------------------------------------------------------------------

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


# --- augmentation ----------------------------------------------------------------------------------------

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
    per_image = (out - x).flatten(1)
    assert (per_image.max(1).values - per_image.min(1).values).max() < 1e-5
    assert per_image.abs().max() <= 0.1 + 1e-6


_STILL = dict(max_rotation=0.0, scale=(1.0, 1.0), max_shift=0.0, brightness=0.0, contrast=(1.0, 1.0))


def test_augment_flips_every_image_at_probability_one():
    x = _batch(6)
    out = augment(x, torch.Generator().manual_seed(0), **_STILL, flip_prob=1.0)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)
    assert not torch.allclose(out, x, atol=1e-3)  # the random images are not symmetric


def test_augment_without_flips_keeps_the_image_and_the_random_stream():
    x = _batch(6)
    g_default, g_zero = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(0), **_STILL, flip_prob=0.0), x,
                               atol=1e-5, rtol=0)
    assert torch.equal(augment(x, g_default), augment(x, g_zero, flip_prob=0.0))  # today's recipe, unchanged
    assert torch.equal(torch.rand(4, generator=g_default), torch.rand(4, generator=g_zero))


def _film(b: int = 4, size: int = 64) -> torch.Tensor:
    """Smooth film-like images (a bright blob on a dark ground) in [0, 1], where blur and JPEG change little."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    blob = torch.exp(-((xx[None] - torch.linspace(-0.3, 0.3, b).view(-1, 1, 1)) ** 2 + yy[None] ** 2) * 4)
    return (0.1 + 0.8 * blob).unsqueeze(1)


def test_acquisition_shift_off_keeps_the_image_and_the_random_stream():
    x, g, g_ref = _film(), torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(acquisition_shift(x, g, 0.0), x)
    assert torch.equal(augment(x, g), augment(x, g_ref, shift_prob=0.0))  # today's recipe, unchanged
    assert torch.equal(torch.rand(3, generator=g), torch.rand(3, generator=g_ref))


def test_acquisition_shift_changes_every_image_but_keeps_the_film():
    x = _film(6)
    out = acquisition_shift(x, torch.Generator().manual_seed(0), 1.0)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    changed = (out - x).abs().flatten(1).mean(1)
    assert (changed > 0.005).all()  # every change was applied to every image
    assert (changed < 0.2).all()  # still the same film: the blob is where it was
    assert torch.equal(out, acquisition_shift(x, torch.Generator().manual_seed(0), 1.0))  # seeded


def test_acquisition_shift_applies_each_change_to_about_its_share():
    x = _film(400, size=16)
    out = acquisition_shift(x, torch.Generator().manual_seed(1), 0.2)
    untouched = (out == x).flatten(1).all(1).float().mean().item()
    assert abs(untouched - 0.8 ** 5) < 0.08  # five independent changes, each with probability 0.2


def test_acquisition_shift_jpeg_adds_blocks_that_noise_free_film_lacks():
    from boneage_core.training import _jpeg
    x = _film(2)
    worst, best = _jpeg(x, [SHIFT_JPEG_QUALITY[0]] * 2), _jpeg(x, [95, 95])
    assert (worst - x).abs().mean() > (best - x).abs().mean() > 0


def test_acquisition_shift_jpeg_of_a_narrow_window_is_scaled_up_by_the_stretch():
    from boneage_core.training import _jpeg, _jpeg_at_window
    x, q = _film(2), [30, 30]
    full = _jpeg_at_window(x, q, torch.ones(2), torch.zeros(2))
    assert torch.allclose(full, _jpeg(x, q))  # the whole 8 bits: plain JPEG
    narrow = _jpeg_at_window(x, q, torch.full((2,), 0.35), torch.tensor([0.0, 1.0]))
    assert narrow.min() >= 0 and narrow.max() <= 1
    assert (narrow - x).abs().mean() > 1.5 * (full - x).abs().mean()  # what a low-contrast film's JPEG looks like


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_shift_probability_is_validated(p):
    with pytest.raises(ValueError, match="shift_prob"):
        FitConfig(shift_prob=p)


def _flipped_mask(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Which images of `out` are `x` mirrored (each must be either mirrored or unchanged)."""
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert not (flipped & kept).any() and (flipped | kept).all()
    return flipped


def test_flip_half_of_a_big_batch_per_image_and_seeded():
    x = _batch(4000, size=8)
    out = flip_horizontal(x, 0.5, torch.Generator().manual_seed(1))
    flipped = _flipped_mask(x, out)
    assert 0.46 < flipped.float().mean().item() < 0.54  # binomial sd 0.008 for n = 4000
    again = _flipped_mask(x, flip_horizontal(x, 0.5, torch.Generator().manual_seed(1)))
    other = _flipped_mask(x, flip_horizontal(x, 0.5, torch.Generator().manual_seed(2)))
    assert torch.equal(flipped, again) and not torch.equal(flipped, other)


def test_flip_probability_scales_the_share_flipped():
    x = _batch(2000, size=8)
    shares = [_flipped_mask(x, flip_horizontal(x, p, torch.Generator().manual_seed(4))).float().mean().item()
              for p in (0.0, 0.2, 0.8, 1.0)]
    assert shares[0] == 0.0 and shares[3] == 1.0
    assert abs(shares[1] - 0.2) < 0.04 and abs(shares[2] - 0.8) < 0.04


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_flip_probability_outside_zero_one_is_refused(p):
    with pytest.raises(ValueError, match="probability"):
        flip_horizontal(_batch(), p)


# --- phases and schedule ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text,expected", [
    ("64:1", (Phase(64, 1, 1e-3, 0, 0.0),)),
    ("176:2:1e-3:3,224:2:5e-4:3", (Phase(176, 2, 1e-3, 3), Phase(224, 2, 5e-4, 3))),
    (" 32:3:0.01:0:2.5 , 96:1 ,", (Phase(32, 3, 0.01, 0, 2.5), Phase(96, 1))),
])
def test_parse_phases(text, expected):
    assert parse_phases(text) == expected


@pytest.mark.parametrize("text", ["", " , ", "64", "64:1:1e-3:0:1:9", "x:1", "64:1.5", "64:1:fast", "64:1:1e-3:0.5",
                                  "31:1", "64:0", "64:1:0", "64:1:-1e-3", "64:1:1e-3:-1", "64:1:1e-3:0:-1",
                                  "64:1,48"])
def test_parse_phases_refuses(text):
    with pytest.raises(ValueError, match="phase"):
        parse_phases(text)


def test_phase_to_dict():
    assert Phase(96, 2, 5e-4, 1, 3.0).to_dict() == {"image_size": 96, "epochs": 2, "lr": 5e-4, "freeze_blocks": 1,
                                                    "minutes": 3.0}


def test_lr_factor_warm_up_and_cosine():
    warmup = 0.2
    assert lr_factor(0.0, warmup) == pytest.approx(1e-3 / warmup)  # starts near zero, not at zero
    assert lr_factor(0.1, warmup) == pytest.approx((0.1 + 1e-3) / warmup)
    assert lr_factor(warmup, warmup) == pytest.approx(1.0)  # peak at the end of the warm-up
    assert lr_factor(0.6, warmup) == pytest.approx(0.5)  # half-way down the cosine
    assert lr_factor(1.0, warmup) == pytest.approx(0.0, abs=1e-12)
    assert lr_factor(1.5, warmup) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at zero
    assert lr_factor(0.0, 0.0) == pytest.approx(1.0)  # no warm-up: the cosine from its top
    warm = [lr_factor(p, warmup) for p in np.linspace(0, warmup - 1e-6, 20)]
    cool = [lr_factor(p, warmup) for p in np.linspace(warmup, 1.0, 20)]
    assert np.all(np.diff(warm) > 0) and np.all(np.diff(cool) < 0)


# --- fit -------------------------------------------------------------------------------------------------

def _split(n: int, size: int, g: torch.Generator) -> Split:
    return Split(torch.randint(0, 256, (n, size, size), dtype=torch.uint8, generator=g),
                 torch.randint(0, 2, (n,), generator=g),
                 (torch.rand(n, generator=g, dtype=torch.float64) * 200 + 10).numpy())


def _data(n_train: int, n_val: int, calls: list | None = None):
    """data(image_size) -> (train, val) of random images; records the sizes asked for."""
    def data(size: int) -> tuple[Split, Split]:
        if calls is not None:
            calls.append(size)
        g = torch.Generator().manual_seed(size)
        return _split(n_train, size, g), _split(n_val, size, g)
    return data


def _net(heads=(AGE,), seed: int = 0) -> BoneAgeNet:
    torch.manual_seed(seed)
    spec = ModelSpec(heads=heads, sex_embedding_dim=4, preprocess=PreprocessSpec(image_size=32),
                     age_mean=120.0, age_std=40.0)
    return create_model(spec, INIT_SCRATCH)[0]


def _cfg(**kwargs) -> FitConfig:
    return FitConfig(**{"batch_size": 4, "warmup_epochs": 0.5, "ema_decay": 0.9, "patience": 5, "seed": 0, **kwargs})


@pytest.fixture(scope="module")
def two_phase():
    """A multi-head net trained 32 px (two frozen stages) then 48 px, one epoch each, on 24 images."""
    net, calls = _net((AGE, STAGE)), []
    result = fit(net, _data(24, 8, calls), _cfg(), parse_phases("32:1:1e-3:2,48:1:5e-4"), CPU)
    return net, result, calls


def test_fit_runs_every_phase_at_its_size(two_phase):
    net, result, calls = two_phase
    assert calls == [32, 48]
    assert result.phases_run == 2 and result.image_size == 48
    assert net.spec.preprocess.image_size == 48  # the checkpoint's input size is the last phase's
    assert result.stopped == "completed 1 epoch(s)" and result.notes == []
    assert result.seconds > 0


def test_fit_history_has_one_row_per_epoch(two_phase):
    _, result, _ = two_phase
    history = result.history
    assert isinstance(history, pd.DataFrame) and len(history) == 2
    assert history["epoch"].tolist() == [1, 2]
    assert history["phase"].tolist() == [1, 2] and history["image_size"].tolist() == [32, 48]
    assert all(0 <= lr < base for lr, base in zip(history["lr"], [1e-3, 5e-4]))  # the rate reached, decayed per phase
    assert {"train_loss", "val_score", "val_age", "val_stage", "seconds", "images_per_s"} <= set(history)
    assert np.isfinite(history[["train_loss", "val_score", "val_age", "val_stage"]].to_numpy()).all()
    assert history["val_score"].tolist() == history["val_age"].tolist()  # the first head decides
    # the best weights are the last phase's
    assert result.best_epoch == 2 and result.best_score == pytest.approx(history["val_age"].iloc[-1])


def test_fit_result_weights_load_into_the_final_spec(two_phase):
    net, result, _ = two_phase
    fresh = BoneAgeNet(net.spec)
    fresh.load_state_dict(result.state_dict, strict=True)
    val = _data(24, 8)(48)[1]
    scores = validate(fresh, val, CPU)
    assert scores[AGE] == pytest.approx(result.best_score, rel=1e-4)


def test_fit_sets_freezing_per_phase(two_phase):
    net, _, _ = two_phase
    assert all(p.requires_grad for p in net.parameters())  # phase 1 froze two stages, the last phase none


def test_frozen_stages_do_not_train():
    net = _net(seed=1)
    before = {k: v.detach().clone() for k, v in net.named_parameters()}
    fit(net, _data(8, 4), _cfg(), parse_phases("32:1:1e-2:2"), CPU)
    after = dict(net.named_parameters())
    assert torch.equal(after["backbone.blocks.1.0.conv_dw.weight"], before["backbone.blocks.1.0.conv_dw.weight"])
    assert not torch.equal(after["backbone.blocks.2.0.conv_pw.weight"], before["backbone.blocks.2.0.conv_pw.weight"])
    assert not torch.equal(after["heads.age.3.weight"], before["heads.age.3.weight"])


def test_validate_scores_every_head_through_the_inference_path():
    net = _net((STAGE, AGE), seed=2)
    val = _data(4, 6)(32)[1]
    scores = validate(net, val, CPU)
    outs = member_outputs(net, val.images, val.male, CPU)
    assert list(scores) == [STAGE, AGE]
    assert scores[AGE] == pytest.approx(np.abs(outs[AGE][0] - val.boneage).mean())
    assert scores[STAGE] == pytest.approx(get_head(STAGE).val_score(outs[STAGE][0], val.boneage, val.male.numpy(),
                                                                     net.spec.scheme))


def _count_steps(monkeypatch, after_step=None) -> list:
    """Count optimizer steps (and how many training forwards each took); after_step() runs after each."""
    steps = []
    real = training._train_step

    def counting(net, *args, **kwargs):
        forwards = []
        handle = net.backbone.conv_stem.register_forward_hook(lambda m, i, o: forwards.append(m.training))
        try:
            loss = real(net, *args, **kwargs)
        finally:
            handle.remove()
        steps.append(len(forwards))
        if after_step:
            after_step()
        return loss

    monkeypatch.setattr(training, "_train_step", counting)
    return steps


def test_time_budget_stops_inside_the_first_epoch(monkeypatch):
    """A clock that jumps an hour after the first step: the run stops there and skips the second phase."""
    now = [1_000.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))
    steps = _count_steps(monkeypatch, after_step=lambda: now.__setitem__(0, now[0] + 3600.0))
    calls = []
    result = fit(_net(seed=3), _data(24, 4, calls), _cfg(max_train_minutes=5.0), parse_phases("32:2,48:1"), CPU)
    assert len(steps) == 1  # of 6 steps per epoch
    assert calls == [32]
    assert len(result.history) == 1 and result.phases_run == 1 and result.image_size == 32
    assert "time budget" in result.stopped and "5 min" in result.stopped
    assert any("2-2 skipped" in note and "time budget" in note for note in result.notes)
    assert result.best_epoch == 1 and math.isfinite(result.best_score)


def test_tiny_time_budget_still_stops_inside_the_first_epoch():
    """Real clock, a budget shorter than the setup: the run should still train (and stop) in the first epoch."""
    result = fit(_net(seed=3), _data(24, 4), _cfg(max_train_minutes=1e-9), parse_phases("32:2,48:1"), CPU)
    assert "time budget" in result.stopped
    assert len(result.history) == 1 and result.phases_run == 1
    assert any("skipped" in note for note in result.notes)


def test_phase_minutes_end_a_phase(monkeypatch):
    now = [1_000.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))
    steps = _count_steps(monkeypatch, after_step=lambda: now.__setitem__(0, now[0] + 30.0))
    result = fit(_net(seed=3), _data(8, 4), _cfg(), parse_phases("32:5:1e-3:0:1,48:1"), CPU)
    assert len(steps) == 2 + 2  # two 30 s steps fill phase 1's minute; phase 2 has one 2-step epoch
    assert result.history["phase"].tolist() == [1, 2] and result.phases_run == 2
    assert result.stopped == "completed 1 epoch(s)"


def test_early_stopping_by_patience(monkeypatch):
    scores = iter([5.0, 4.0, 4.5, 4.0, 6.0, 1.0, 0.5])

    def worsening(net, val, device):
        return {AGE: next(scores)}

    monkeypatch.setattr(training, "validate", worsening)
    result = fit(_net(seed=4), _data(8, 4), _cfg(patience=3), parse_phases("32:7"), CPU)
    assert result.history["val_age"].tolist() == [5.0, 4.0, 4.5, 4.0, 6.0]
    assert result.stopped == "early stop: no improvement for 3 epochs"
    assert result.best_epoch == 2 and result.best_score == 4.0


def test_sam_path_runs_two_forwards_a_step(monkeypatch):
    steps = _count_steps(monkeypatch)
    net = _net((AGE, STAGE), seed=5)
    before = net.heads["stage"][3].weight.detach().clone()
    result = fit(net, _data(8, 4), _cfg(optimizer="sam"), parse_phases("32:1"), CPU)
    assert steps == [2, 2]  # one epoch of 8 images in batches of 4; SAM's closure runs twice
    assert np.isfinite(result.history["train_loss"]).all() and math.isfinite(result.best_score)
    assert not torch.equal(net.heads["stage"][3].weight, before)


def test_adamw_path_runs_one_forward_a_step(monkeypatch):
    steps = _count_steps(monkeypatch)
    fit(_net(seed=5), _data(8, 4), _cfg(optimizer="adamw"), parse_phases("32:1"), CPU)
    assert steps == [1, 1]


def _final_state(seed: int, net_seed: int = 6) -> dict:
    result = fit(_net(seed=net_seed), _data(8, 4), _cfg(seed=seed), parse_phases("32:1"), CPU)
    return result.state_dict


def test_fit_is_deterministic_for_a_seed():
    a, b, c = _final_state(0), _final_state(0), _final_state(1)
    assert set(a) == set(b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)  # the seed matters (shuffle, augmentation, dropout)


@pytest.mark.parametrize("flip_prob,augmenting", [(0.5, True), (0.0, True), (0.5, False)])
def test_fit_passes_the_flip_probability_to_augment(monkeypatch, flip_prob, augmenting):
    seen = []
    real = training.augment

    def recording(x, generator=None, **kwargs):
        seen.append(kwargs.get("flip_prob"))
        return real(x, generator, **kwargs)

    monkeypatch.setattr(training, "augment", recording)
    fit(_net(seed=7), _data(8, 4), _cfg(flip_prob=flip_prob, augment=augmenting), parse_phases("32:1"), CPU)
    assert seen == ([flip_prob] * 2 if augmenting else [])  # one call per step of 4 images; none without augment


# --- resuming --------------------------------------------------------------------------------------------

_RESUME_PHASES = "32:3:1e-3:2,48:2:5e-4"  # 5 epochs of 2 steps (8 images, batches of 4), two phases
_COMPARED = ["epoch", "phase", "image_size", "train_loss", "val_score", "val_age", "val_stage", "lr"]


def _stored(state: training.TrainState, path) -> training.TrainState:
    """The state after a trip through a file, as a resume reads it (restricted unpickler)."""
    torch.save(state.to_dict(), path)
    return training.TrainState.from_dict(torch.load(path, map_location="cpu", weights_only=True))


def _chunk(monkeypatch, resume=None, cut_after_step: int = 0, **cfg) -> tuple[training.FitResult, list]:
    """One fit of the resume schedule; with cut_after_step the run's 1-minute budget runs out after that step."""
    now, saved = [1_000.0], []
    with monkeypatch.context() as patch:
        patch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))
        steps = _count_steps(patch, after_step=lambda: now.__setitem__(
            0, now[0] + (3600.0 if len(steps) == cut_after_step else 0.0)))
        result = fit(_net((AGE, STAGE), seed=8), _data(8, 4),
                     _cfg(max_train_minutes=1.0 if cut_after_step else 0.0, **cfg), parse_phases(_RESUME_PHASES), CPU,
                     resume=resume, save_state=saved.append)
    return result, saved


@pytest.mark.parametrize("optimizer", ["adamw", "sam"])
def test_a_run_cut_by_its_budget_and_resumed_repeats_the_uninterrupted_run(monkeypatch, tmp_path, optimizer):
    whole, whole_states = _chunk(monkeypatch, optimizer=optimizer)
    assert whole.finished and len(whole_states) == 5
    # chunk 1 runs out of time in the middle of epoch 3 (step 5 of 10): its last saved state is after epoch 2
    first, saved = _chunk(monkeypatch, cut_after_step=5, optimizer=optimizer)
    assert "time budget" in first.stopped and not first.finished and len(first.history) == 3  # epoch 3 only begun
    assert len(saved) == 2 and (saved[-1].phase, saved[-1].epoch, saved[-1].steps) == (0, 2, 4)
    # chunk 2 goes on from there, in the middle of phase 1 (optimizer state restored), through phase 2
    second, _ = _chunk(monkeypatch, resume=_stored(saved[-1], tmp_path / "state.pt"), optimizer=optimizer)
    assert second.first_epoch == 3 and second.finished
    pd.testing.assert_frame_equal(second.history[_COMPARED], whole.history[_COMPARED])
    assert second.best_epoch == whole.best_epoch and second.best_score == whole.best_score
    assert all(torch.equal(second.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)


def test_a_run_resumed_at_a_phase_boundary_repeats_the_uninterrupted_run(monkeypatch, tmp_path):
    whole, _ = _chunk(monkeypatch)
    _, saved = _chunk(monkeypatch, cut_after_step=7)  # in epoch 4: the last saved state is phase 1's end
    assert (saved[-1].phase, saved[-1].epoch, saved[-1].optimizer is not None) == (1, 0, True)
    second, _ = _chunk(monkeypatch, resume=_stored(saved[-1], tmp_path / "state.pt"))
    assert second.first_epoch == 4
    pd.testing.assert_frame_equal(second.history[_COMPARED], whole.history[_COMPARED])
    assert all(torch.equal(second.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)


def test_resuming_without_the_random_states_would_not_repeat_the_run(monkeypatch):
    """The check above can fail: the same state with a fresh batch-order / augmentation generator goes elsewhere."""
    whole, _ = _chunk(monkeypatch)
    _, saved = _chunk(monkeypatch, cut_after_step=5)
    fresh = torch.Generator().manual_seed(0).get_state()
    state = dataclasses.replace(saved[-1], rng=[{**saved[-1].rng[0], "generator": fresh}])
    second, _ = _chunk(monkeypatch, resume=state)
    assert second.history["train_loss"].iloc[2] != whole.history["train_loss"].iloc[2]


def test_a_finished_run_resumes_to_its_result(monkeypatch):
    whole, saved = _chunk(monkeypatch)
    again, _ = _chunk(monkeypatch, resume=saved[-1])
    assert again.finished and again.first_epoch == 6 and again.phases_run == 2 and again.image_size == 48
    assert again.stopped == whole.stopped and again.best_score == whole.best_score
    assert all(torch.equal(again.state_dict[k], whole.state_dict[k]) for k in whole.state_dict)
    assert again.notes == [] and len(again.history) == 5


def test_resuming_with_another_plan_is_refused(monkeypatch):
    _, saved = _chunk(monkeypatch, cut_after_step=5)
    with pytest.raises(ResumeError, match="batch_size"):
        fit(_net((AGE, STAGE)), _data(8, 4), _cfg(batch_size=2), parse_phases(_RESUME_PHASES), CPU, resume=saved[-1])
    with pytest.raises(ResumeError, match="phases"):
        fit(_net((AGE, STAGE)), _data(8, 4), _cfg(), parse_phases("32:4:1e-3:2,48:2:5e-4"), CPU, resume=saved[-1])


def test_a_minutes_phase_resumes_with_the_phase_time_already_spent(monkeypatch):
    """Phase 1 is limited to 1 minute: a resume after 30 s of it leaves it the other 30 s (one more step)."""
    now = [1_000.0]
    monkeypatch.setattr(training, "time", types.SimpleNamespace(time=lambda: now[0]))
    steps = _count_steps(monkeypatch, after_step=lambda: now.__setitem__(0, now[0] + 15.0))
    saved = []
    fit(_net(seed=3), _data(8, 4), _cfg(), parse_phases("32:5:1e-3:0:1,48:1"), CPU, save_state=saved.append)
    after_first = saved[0]  # one epoch (two 15 s steps) of phase 1
    assert (after_first.phase, after_first.epoch, after_first.phase_seconds) == (0, 1, 30.0)
    steps.clear()
    result = fit(_net(seed=3), _data(8, 4), _cfg(), parse_phases("32:5:1e-3:0:1,48:1"), CPU, resume=after_first)
    assert len(steps) == 2 + 2 and result.history["phase"].tolist() == [1, 1, 2]
