"""heads: targets, losses, decoding, scores, the one combination rule, parsing, columns and metrics."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from boneage_core.heads import (AGE, BASELINE, CNN, HEADS, STAGE, AgeHead, StageHead, age_stage_column, combine,
                                get_head, head_metrics, parse_heads, system_column)
from boneage_core.models import ModelSpec
from boneage_core.stages import DEFAULT_SCHEME
from boneage_core.vocab import AGE_MAX_MONTHS

SPEC = ModelSpec(heads=(AGE, STAGE), age_mean=120.0, age_std=40.0)


def test_registry_and_unknown_head():
    assert set(HEADS) == {AGE, STAGE}
    assert isinstance(get_head(AGE), AgeHead) and isinstance(get_head(STAGE), StageHead)
    assert get_head(AGE).n_outputs(DEFAULT_SCHEME) == 1
    assert get_head(STAGE).n_outputs(DEFAULT_SCHEME) == DEFAULT_SCHEME.n_classes == 5
    with pytest.raises(ValueError, match="'bogus'"):
        get_head("bogus")


def test_age_target_is_the_standardised_age_and_decodes_back():
    ages = np.array([0.0, 5.5, 120.0, 150.25, 239.0])
    head = get_head(AGE)
    target = head.target(ages, np.array([0, 1, 0, 1, 0]), SPEC)
    assert target.dtype == torch.float32 and target.shape == (5,)
    np.testing.assert_allclose(target.numpy(), (ages - 120.0) / 40.0, rtol=0, atol=1e-6)
    decoded = head.decode(target, SPEC)
    assert decoded.dtype == np.float64 and decoded.shape == (5,)
    np.testing.assert_allclose(decoded, ages, rtol=0, atol=1e-4)
    # the network's (B, 1) output decodes like a (B,) one
    np.testing.assert_allclose(head.decode(target.view(-1, 1), SPEC), decoded, rtol=0, atol=0)
    np.testing.assert_array_equal(head.point(decoded), decoded)


def test_age_decode_clips_to_the_label_range():
    head = get_head(AGE)
    ages = np.array([-30.0, 300.0, 100.0])
    decoded = head.decode(head.target(ages, np.zeros(3), SPEC), SPEC)
    np.testing.assert_allclose(decoded, [0.0, AGE_MAX_MONTHS, 100.0], rtol=0, atol=1e-4)
    # a different scaling reads the same raw output differently: decode uses the spec's scaling
    other = ModelSpec(age_mean=100.0, age_std=10.0)
    np.testing.assert_allclose(head.decode(torch.tensor([[1.0], [-2.0]]), other), [110.0, 80.0], atol=1e-6)


def test_age_loss_is_l1_on_the_flattened_output():
    out = torch.tensor([[0.5], [-1.0], [2.0]])
    target = torch.tensor([0.0, 1.0, 2.0])
    assert get_head(AGE).loss(out, target).item() == pytest.approx((0.5 + 2.0 + 0.0) / 3)


def test_stage_target_and_loss():
    head = get_head(STAGE)
    # female cut-offs 24/84/156/180, male 36/108/168/192
    target = head.target(np.array([10.0, 30.0, 30.0, 200.0]), np.array([0, 0, 1, 1]), SPEC)
    assert target.dtype == torch.long
    assert target.tolist() == [0, 1, 0, 4]
    logits = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, -1.0, 0.5]])
    t = torch.tensor([0, 3])
    logp = torch.log_softmax(logits, dim=1)
    eps = 0.05
    expected = (-(1 - eps) * logp[torch.arange(2), t] - eps * logp.mean(dim=1)).mean()
    assert head.loss(logits, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_stage_decode_is_probabilities():
    torch.manual_seed(0)
    logits = torch.randn(6, 5) * 3
    probs = get_head(STAGE).decode(logits, SPEC)
    assert probs.shape == (6, 5) and probs.dtype == np.float64
    assert (probs >= 0).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(get_head(STAGE).point(probs), logits.argmax(dim=1).numpy())


def test_val_scores_on_hand_computed_arrays():
    age = get_head(AGE)
    assert age.val_score(np.array([10.0, 20.0, 30.0]), np.array([12.0, 20.0, 25.0]), np.array([0, 1, 0]),
                         DEFAULT_SCHEME) == pytest.approx(7.0 / 3.0)
    stage = get_head(STAGE)
    # true stages: a 10-month girl -> 0, a 100-month boy -> 1 (36 <= 100 < 108)
    probs = np.array([[0.5, 0.2, 0.1, 0.1, 0.1], [0.1, 0.8, 0.05, 0.05, 0.0]])
    nll = stage.val_score(probs, np.array([10.0, 100.0]), np.array([0, 1]), DEFAULT_SCHEME)
    assert nll == pytest.approx(-(math.log(0.5) + math.log(0.8)) / 2)
    # a zero probability on the true stage is a large but finite score
    worst = stage.val_score(np.array([[0.0, 1.0, 0.0, 0.0, 0.0]]), np.array([10.0]), np.array([0]), DEFAULT_SCHEME)
    assert worst == pytest.approx(-math.log(1e-12))


def test_combine_is_the_arithmetic_mean():
    a, b, c = np.array([10.0, 100.0]), np.array([20.0, 110.0]), np.array([60.0, 90.0])
    np.testing.assert_allclose(combine([a, b, c]), [30.0, 100.0])
    np.testing.assert_array_equal(combine([a]), a)
    assert combine([np.array([1, 2], dtype=np.int64)]).dtype == np.float64


def test_combine_keeps_probabilities_summing_to_one():
    rng = np.random.default_rng(0)
    members = [rng.dirichlet(np.ones(5), size=4) for _ in range(3)]
    out = combine(members)
    assert out.shape == (4, 5)
    np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(out, (members[0] + members[1] + members[2]) / 3, atol=1e-12)


def test_combine_refuses_nothing():
    with pytest.raises(ValueError, match="nothing to combine"):
        combine([])


@pytest.mark.parametrize("text,expected", [
    ("age", (AGE,)), ("age,stage", (AGE, STAGE)), ("stage,age", (STAGE, AGE)), (" stage , age ", (STAGE, AGE)),
    ("age,age,stage,age", (AGE, STAGE)), ("age,,stage,", (AGE, STAGE)), (["stage"], (STAGE,)),
    (["age", " stage", "age"], (AGE, STAGE)), ((STAGE, AGE), (STAGE, AGE)),
])
def test_parse_heads(text, expected):
    assert parse_heads(text) == expected


@pytest.mark.parametrize("text,match", [("", "at least one head"), (" , ", "at least one head"),
                                        ([], "at least one head"), ("age,bogus", "'bogus'"),
                                        (["Age"], "'Age'")])
def test_parse_heads_refuses(text, match):
    with pytest.raises(ValueError, match=match):
        parse_heads(text)


def test_columns_and_names():
    assert (CNN, BASELINE) == ("cnn", "baseline")
    assert system_column(CNN, AGE) == "cnn_age" and system_column(BASELINE, STAGE) == "baseline_stage"
    assert age_stage_column(CNN) == "cnn_age_stage"
    ages = np.array([100.0, 50.0])
    assert list(get_head(AGE).columns(CNN, ages)) == ["cnn_age"]
    np.testing.assert_array_equal(get_head(AGE).columns(CNN, ages)["cnn_age"], ages)
    probs = np.array([[0.1, 0.6, 0.1, 0.1, 0.1], [0.0, 0.0, 0.0, 0.3, 0.7]])
    cols = get_head(STAGE).columns(CNN, probs)
    assert list(cols) == ["cnn_stage"] + [f"cnn_stage_p{k}" for k in range(5)]
    np.testing.assert_array_equal(cols["cnn_stage"], [1, 4])
    for k in range(5):
        np.testing.assert_array_equal(cols[f"cnn_stage_p{k}"], probs[:, k])
    frame = pd.DataFrame(cols)
    np.testing.assert_array_equal(get_head(STAGE).from_columns(frame, CNN).to_numpy(), [1, 4])


def test_head_metrics_on_a_small_frame():
    frame = pd.DataFrame({
        "boneage": [10.0, 30.0, 100.0, 150.0, 200.0, 60.0],
        "male": [False, True, True, False, True, False],
        "cnn_age": [12.0, 30.0, 90.0, 160.0, np.nan, 60.0],
        # true stages: 0, 0, 1, 2, 4, 1
        "cnn_stage": [0, 1, 1, 2, 4, 3],
        "baseline_age": np.nan,
    })
    out = head_metrics(frame, {"cnn_age": AGE, "cnn_stage": STAGE, "baseline_age": AGE, "absent": AGE},
                       DEFAULT_SCHEME, n_boot=20, seed=0)
    assert set(out) == {"cnn_age", "cnn_stage"}  # all-missing and absent columns are left out
    age = out["cnn_age"]
    assert age["n"] == 5  # the row without a prediction is left out
    assert age["mae"] == pytest.approx((2 + 0 + 10 + 10 + 0) / 5)
    assert age["bias"] == pytest.approx((2 + 0 - 10 + 10 + 0) / 5)
    assert age["by_sex"]["female"]["n"] == 3 and age["by_sex"]["male"]["n"] == 2
    assert age["by_sex"]["male"]["mae"] == pytest.approx(5.0)
    stage = out["cnn_stage"]
    assert stage["n"] == 6 and stage["accuracy"] == pytest.approx(4 / 6)
    assert stage["confusion_matrix"][0] == [1, 1, 0, 0, 0]
    assert stage["by_sex"]["female"]["accuracy"] == pytest.approx(2 / 3)


def test_cam_targets_read_the_output_they_are_given():
    """The Grad-CAM targets decide from the CAM's own forward pass: the age's sign, the stage's likeliest class."""
    young = torch.tensor([-2.0], requires_grad=True)
    target = HEADS[AGE].cam_target(None)
    value = target(young)
    value.backward()
    assert float(value.detach()) == 2.0 and float(young.grad[0]) == -1.0  # "what made this estimate young"
    assert float(HEADS[AGE].cam_target(None)(torch.tensor([1.5]))) == 1.5
    logits = torch.tensor([0.1, 3.0, -1.0])
    shown = HEADS[STAGE].cam_target(None)
    assert float(shown(logits)) == 3.0 and shown.category == 1
    given = HEADS[STAGE].cam_target(2)
    assert float(given(logits)) == -1.0 and given.category == 2
