"""gate: the OOD score, orientation and laterality models on synthetic features, their file, and the fitted gate on real images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from boneage_core.errors import ArtifactError, InputError
from boneage_core.gate import (GATE_FILE, LEVELS, POOLED, TURN_ABOVE, TURN_FLAG_ABOVE, GateVerdict, InputGate,
                               NotARadiographError, QUARTER_TURNS, distinct_numbers, fit_gate, kth_distance, load_gate,
                               unit_rows)
from negatives import negative_set

F = 24  # pooled features
T = 8  # texture statistics after them
TURN_SHIFT = 10.0  # how far a turn or mirroring moves the pooled features (synthetic)


def _features(rng, n, shift=0.0, scale=1.0, texture_shift=0.0):
    """Radiograph-like gate features share a common direction at each level (dimensions 1 and F + 1); `shift`
    pulls the pooled part towards dimension 0, `texture_shift` the texture part towards dimension F."""
    base = rng.standard_normal((n, F + T)) * scale
    base[:, 1] += 10.0
    base[:, F + 1] += 10.0
    base[:, 0] += shift
    base[:, F] += texture_shift
    return base


@pytest.fixture(scope="module")
def gate() -> InputGate:
    """A gate whose turned / mirrored copies move features in known, separable directions."""
    rng = np.random.default_rng(0)
    train, val = _features(rng, 600), _features(rng, 300)
    upright = train[:200]
    turned = {k: upright + TURN_SHIFT * np.eye(F + T)[k] for k in (1, 2, 3)}
    mirrored = upright + TURN_SHIFT * np.eye(F + T)[5]
    return fit_gate(train, val, turned, mirrored, upright, n_pooled=F, refuse_rate=0.01, k=5)


def test_in_distribution_passes_and_far_points_are_refused(gate):
    rng = np.random.default_rng(1)
    inside = gate.verdicts(_features(rng, 400))
    assert np.mean([v.refused for v in inside]) < 0.05
    outside = gate.verdicts(_features(rng, 50, shift=25.0))
    assert all(v.refused for v in outside)
    assert "does not look like a hand radiograph" in outside[0].reason()


def test_either_level_alone_refuses(gate):
    """An image whose pooled features look like a radiograph's is still refused for a foreign texture."""
    rng = np.random.default_rng(4)
    texture_only = _features(rng, 50, texture_shift=25.0)
    distances = gate.distances(texture_only)
    assert np.all(distances["pooled"] <= gate.limits["pooled"] * 1.5)
    assert np.all(distances["texture"] > gate.limits["texture"])
    assert all(v.refused for v in gate.verdicts(texture_only))
    assert all(v.refused for v in gate.verdicts(_features(rng, 50, shift=25.0)))  # and the pooled level alone


def test_the_gate_needs_both_levels():
    rng = np.random.default_rng(5)
    train = _features(rng, 50)
    with pytest.raises(ValueError, match="two levels"):
        fit_gate(train, train, {k: train for k in (1, 2, 3)}, train, train, n_pooled=F + T)


def test_the_limit_is_the_validation_quantile(gate):
    rng = np.random.default_rng(0)
    _features(rng, 600)
    val = _features(rng, 300)
    assert np.mean(gate.score(val) > gate.limit) == pytest.approx(0.01, abs=0.005)
    for level in ("pooled", "texture"):  # each level refuses half the rate
        assert np.mean(gate.distances(val)[level] > gate.limits[level]) == pytest.approx(0.005, abs=0.004)


def test_turns_and_mirroring_are_detected_and_undone(gate):
    rng = np.random.default_rng(2)
    upright = _features(rng, 50)
    for k in (1, 2, 3):
        verdicts = gate.verdicts(upright + TURN_SHIFT * np.eye(F + T)[k])
        assert all(v.turn == (4 - k) % 4 for v in verdicts), k  # the turn that brings it back
    assert all(v.mirrored for v in gate.verdicts(upright + TURN_SHIFT * np.eye(F + T)[5]))
    plain = gate.verdicts(upright)
    assert not any(v.turn or v.mirrored for v in plain)
    assert set(QUARTER_TURNS) == {0, 1, 2, 3}


def test_a_film_surely_turned_but_not_surely_which_way_is_flagged(gate):
    """P(not upright) summed over the turns decides the flag; no single turn is sure enough to apply."""
    rng = np.random.default_rng(6)
    between = _features(rng, 50) + TURN_SHIFT * (np.eye(F + T)[1] + np.eye(F + T)[3])
    verdicts = gate.verdicts(between)
    assert all(v.rotated_probability >= TURN_FLAG_ABOVE for v in verdicts)
    assert all(v.turn in (1, 3) and not v.apply_turn for v in verdicts)
    assert all(any("may be rotated" in w for w in v.warnings()) for v in verdicts)


def _never_turned(k: int) -> np.ndarray:
    raise AssertionError(f"the rule asked for the image turned by {k} without a reason to")


def _turned_to(features: np.ndarray, asked: list[int]):
    def turned(k: int) -> np.ndarray:
        asked.append(k)
        return features
    return turned


def test_decide_scores_a_passing_upright_film_as_given(gate):
    decision = gate.decide(GateVerdict(0.5, 1.0), _never_turned)
    assert not decision.refused and decision.turn == 0 and decision.warnings == ()
    refused = gate.decide(GateVerdict(3.0, 1.0), _never_turned)  # no turn suggested: refused, nothing tried
    assert refused.refused and refused.turn == 0


def test_decide_scores_a_refused_film_turned_when_the_suggested_turn_passes(gate):
    rng, asked = np.random.default_rng(7), []
    as_given = GateVerdict(3.0, 1.0, turn=1, turn_probability=0.7, rotated_probability=0.95)
    decision = gate.decide(as_given, _turned_to(_features(rng, 1), asked))
    assert asked == [1] and decision.turn == 1 and not decision.refused
    assert decision.as_given is as_given and decision.as_given.refused
    assert decision.warnings[0] == as_given.turned_note()


def test_decide_refuses_when_the_suggested_turn_fails_too(gate):
    rng, asked = np.random.default_rng(8), []
    as_given = GateVerdict(3.0, 1.0, turn=3, turn_probability=0.7, rotated_probability=0.95)
    decision = gate.decide(as_given, _turned_to(_features(rng, 1, shift=25.0), asked))
    assert asked == [3] and decision.refused and decision.turn == 0 and decision.verdict is as_given
    assert decision.turn_flagged  # the warning that goes with the refusal: check the orientation


def test_decide_applies_a_sure_turn_even_when_the_turned_film_is_refused(gate):
    rng = np.random.default_rng(9)
    sure = GateVerdict(0.5, 1.0, turn=2, turn_probability=TURN_ABOVE, rotated_probability=TURN_ABOVE)
    passing = gate.decide(sure, _turned_to(_features(rng, 1), []))
    assert passing.turn == 2 and not passing.refused and "turned by 180 degrees" in passing.warnings[0]
    failing = gate.decide(sure, _turned_to(_features(rng, 1, shift=25.0), []))
    assert failing.turn == 2 and failing.refused


def test_save_load_round_trip_and_member_check(gate, tmp_path):
    gate.member, gate.member_sha256 = "multihead.pt", "ab" * 32
    gate.save(tmp_path / GATE_FILE)
    loaded = load_gate(tmp_path, "multihead.pt", "ab" * 32)
    features = np.random.default_rng(3).standard_normal((5, F + T))
    np.testing.assert_allclose(loaded.score(features), gate.score(features))
    assert loaded.limits == gate.limits and loaded.n_pooled == F
    np.testing.assert_allclose(loaded.turn_probabilities(features), gate.turn_probabilities(features))
    with pytest.raises(ArtifactError, match="fitted on multihead.pt"):
        load_gate(tmp_path, "multihead.pt", "cd" * 32)
    assert load_gate(tmp_path / "empty", "x.pt", "0") is None
    np.savez(tmp_path / GATE_FILE, reference=np.zeros((3, F)), limit=np.asarray(0.5))  # the pooled-only format
    with pytest.raises(ArtifactError, match="older format"):
        load_gate(tmp_path, "multihead.pt", "ab" * 32)
    (tmp_path / GATE_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="not a readable input gate"):
        InputGate.load(tmp_path / GATE_FILE)


def test_refusal_is_an_input_error():
    assert issubclass(NotARadiographError, InputError) and issubclass(NotARadiographError, ValueError)


@pytest.mark.slow
def test_the_committed_gate_passes_real_radiographs_and_refuses_generated_negatives(committed_predictor,
                                                                                    fullres_dir):
    predictor = committed_predictor
    assert predictor.gate is not None, predictor.notes
    for stem, male in (("1377", False), ("1378", False), ("1380", True)):
        assert not predictor.predict(fullres_dir / f"{stem}.png", male=male).gate.refused
    refused = []
    for name, image in negative_set().items():
        try:
            predictor.predict(image, male=True, name=name)
        except InputError:
            refused.append(name)
    assert len(refused) >= 0.9 * len(negative_set()), sorted(set(negative_set()) - set(refused))


def test_decide_turns_a_film_it_is_sure_is_not_upright_by_the_turn_that_makes_it_upright(gate):
    """Sure the film is not upright (P = 1.00) but not of the turn: each turn is tried and the most upright one wins,
    instead of scoring an upside-down film as given with a contradictory "not sure enough to turn it"."""
    rng = np.random.default_rng(10)
    upright, sideways = _features(rng, 1), _features(rng, 1) + TURN_SHIFT * np.eye(F + T)[1]
    as_given = GateVerdict(0.5, 1.0, turn=1, turn_probability=0.6, rotated_probability=TURN_ABOVE)
    asked: list[int] = []

    def turned(k: int) -> np.ndarray:
        asked.append(k)
        return upright if k == 2 else sideways

    decision = gate.decide(as_given, turned)
    assert sorted(asked) == [1, 2, 3] and decision.turn == 2 and not decision.refused
    assert "turned by 180 degrees" in decision.warnings[0] and "not sure" not in " ".join(decision.warnings)
    unsure = GateVerdict(0.5, 1.0, turn=1, turn_probability=0.6, rotated_probability=0.9)  # below TURN_ABOVE
    flagged = gate.decide(unsure, _never_turned)
    assert flagged.turn == 0 and flagged.turn_flagged and "scored as given" in flagged.warnings[0]


def test_a_refusal_names_numbers_that_differ():
    """A score just above the limit is written with enough decimals to be seen above it ("1.004", not "1.00")."""
    reason = GateVerdict(1.0041, 1.0).reason()
    assert "score 1.004, above the limit 1.000" in reason
    assert distinct_numbers(0.5, 1.0) == ("0.50", "1.00")


# --- k-NN distance: one float32 product and a partial sort (issue 30), equal to the float64 full sort ---


def _kth_distance_float64(reference: np.ndarray, features: np.ndarray, k: int) -> np.ndarray:
    """The former computation: float64 copy of the bank, full sort of the distances."""
    distances = 1.0 - unit_rows(features) @ reference.astype(np.float64).T
    return np.sort(distances, axis=1)[:, k - 1]


def test_kth_distance_matches_the_float64_sort_on_the_committed_banks(committed_artifacts):
    gate = InputGate.load(committed_artifacts / GATE_FILE)
    rng = np.random.default_rng(0)
    for level in LEVELS:
        bank = gate.references[level]
        near = bank[rng.choice(len(bank), 8)].astype(np.float64) + rng.normal(0, 0.02, (8, bank.shape[1]))
        far = rng.normal(size=(4, bank.shape[1]))
        for features in (near, far):
            for k in (1, gate.k, len(bank)):
                assert np.abs(kth_distance(bank, features, k) - _kth_distance_float64(bank, features, k)).max() < 1e-5
        assert kth_distance(bank, near, gate.k).dtype == np.float64


def test_kth_distance_is_the_kth_nearest():
    bank = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 1.0]])).astype(np.float16)
    assert kth_distance(bank, np.array([[2.0, 0.0]]), 1)[0] == pytest.approx(0.0, abs=1e-6)
    assert kth_distance(bank, np.array([[2.0, 0.0]]), 2)[0] == pytest.approx(1 - np.sqrt(0.5), abs=1e-4)
    assert kth_distance(bank, np.array([[2.0, 0.0]]), 4)[0] == pytest.approx(2.0, abs=1e-6)


def test_the_gate_converts_each_bank_once_and_again_when_replaced(gate):
    gate = dataclasses.replace(gate)  # a copy: the module's gate stays as it is
    first = gate.bank(POOLED)
    assert first.dtype == np.float32 and gate.bank(POOLED) is first
    np.testing.assert_array_equal(first, gate.references[POOLED].astype(np.float32))
    gate.references = {level: bank[:-1] for level, bank in gate.references.items()}
    assert gate.bank(POOLED) is not first and len(gate.bank(POOLED)) == len(first) - 1


def test_the_committed_gate_scores_like_the_float64_sort(committed_predictor, fullres_dir, data_299, monkeypatch):
    """Predictions end to end: the gate's scores move by < 1e-5, ages by <= 0.05 months, stages not at all."""
    predictor = committed_predictor
    films = [fullres_dir / "1377.png", fullres_dir / "1380.png", data_299 / "boneage-training-dataset" / "1377.webp"]
    new = [predictor.predict(film, male=True) for film in films]
    monkeypatch.setattr("boneage_core.gate.kth_distance", _kth_distance_float64)
    old = [predictor.predict(film, male=True) for film in films]
    for a, b in zip(new, old):
        assert abs(a.gate.score - b.gate.score) < 1e-5
        assert abs(a.bone_age_months - b.bone_age_months) <= 0.05 and a.stage == b.stage
