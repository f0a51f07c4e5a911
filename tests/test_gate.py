"""gate: the OOD score, orientation and laterality models on synthetic features, their file, and the fitted gate on real images."""

from __future__ import annotations

import numpy as np
import pytest

from boneage_core.errors import ArtifactError, InputError
from boneage_core.gate import (GATE_FILE, InputGate, NotARadiographError, QUARTER_TURNS, fit_gate, load_gate)
from boneage_core.predictor import Predictor
from negatives import negative_set

F = 24


def _features(rng, n, shift=0.0, scale=1.0):
    """Radiograph-like features share a common direction (dimension 1); `shift` pulls them towards dimension 0."""
    base = rng.standard_normal((n, F)) * scale
    base[:, 1] += 10.0
    base[:, 0] += shift
    return base


@pytest.fixture(scope="module")
def gate() -> InputGate:
    """A gate whose turned / mirrored copies move features in known, separable directions."""
    rng = np.random.default_rng(0)
    train, val = _features(rng, 600), _features(rng, 300)
    upright = train[:200]
    turned = {k: upright + 8.0 * np.eye(F)[k] for k in (1, 2, 3)}
    mirrored = upright + 8.0 * np.eye(F)[5]
    return fit_gate(train, val, turned, mirrored, upright, refuse_rate=0.01, k=5)


def test_in_distribution_passes_and_far_points_are_refused(gate):
    rng = np.random.default_rng(1)
    inside = gate.verdicts(_features(rng, 400))
    assert np.mean([v.refused for v in inside]) < 0.05
    outside = gate.verdicts(_features(rng, 50, shift=25.0))
    assert all(v.refused for v in outside)
    assert "does not look like a hand radiograph" in outside[0].reason()


def test_the_limit_is_the_validation_quantile(gate):
    rng = np.random.default_rng(0)
    _features(rng, 600)
    val = _features(rng, 300)
    assert np.mean(gate.score(val) > gate.limit) == pytest.approx(0.01, abs=0.005)


def test_turns_and_mirroring_are_detected_and_undone(gate):
    rng = np.random.default_rng(2)
    upright = _features(rng, 50)
    for k in (1, 2, 3):
        verdicts = gate.verdicts(upright + 8.0 * np.eye(F)[k])
        assert all(v.turn == (4 - k) % 4 for v in verdicts), k  # the turn that brings it back
    assert all(v.mirrored for v in gate.verdicts(upright + 8.0 * np.eye(F)[5]))
    plain = gate.verdicts(upright)
    assert not any(v.turn or v.mirrored for v in plain)
    assert set(QUARTER_TURNS) == {0, 1, 2, 3}


def test_save_load_round_trip_and_member_check(gate, tmp_path):
    gate.member, gate.member_sha256 = "multihead.pt", "ab" * 32
    gate.save(tmp_path / GATE_FILE)
    loaded = load_gate(tmp_path, "multihead.pt", "ab" * 32)
    features = np.random.default_rng(3).standard_normal((5, F))
    np.testing.assert_allclose(loaded.score(features), gate.score(features))
    np.testing.assert_allclose(loaded.turn_probabilities(features), gate.turn_probabilities(features))
    with pytest.raises(ArtifactError, match="fitted on multihead.pt"):
        load_gate(tmp_path, "multihead.pt", "cd" * 32)
    assert load_gate(tmp_path / "empty", "x.pt", "0") is None
    (tmp_path / GATE_FILE).write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="not a readable input gate"):
        InputGate.load(tmp_path / GATE_FILE)


def test_refusal_is_an_input_error():
    assert issubclass(NotARadiographError, InputError) and issubclass(NotARadiographError, ValueError)


def test_the_committed_gate_passes_real_radiographs_and_refuses_generated_negatives(committed_artifacts, fullres_dir):
    predictor = Predictor.load(committed_artifacts)
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
