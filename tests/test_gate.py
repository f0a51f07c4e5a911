"""gate: the OOD score, orientation, grey-scale and laterality models on synthetic features, the rule, their file,
and the fitted gate on real images."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from boneage_core.errors import ArtifactError, InputError
from boneage_core.gate import (DOUBT_BELOW, GATE_FILE, INVERT_ABOVE, INVERT_CONFIRM_BELOW, LEVELS, MIN_GREY_ENTROPY, MIRROR_ABOVE, NO_CORRECTION, POOLED, RADIOGRAPH_ABOVE,
                               RADIOGRAPH_BELOW, RADIOGRAPH_FITS, RESCUE_ABOVE, VOUCH_GRAIN, VOUCH_NEAR,
                               TURN_ABOVE, TURN_CONFIRM_BELOW, TURN_FLAG_ABOVE,
                               Correction, GateVerdict, InputGate, NotARadiographError, QUARTER_TURNS, distinct_numbers,
                               fit_gate, kth_distance, load_gate, unit_rows)
from negatives import negative_set

F = 24  # pooled features
T = 8  # texture statistics after them
TURN_SHIFT = 10.0  # how far a turn or mirroring moves the pooled features (synthetic)
W = F + T + 2  # the gate features: pooled, texture, then the grain and the grey-level entropy
GRAINY = 0.01  # the grain of a noisy film's input (synthetic; VOUCH_GRAIN is the lower bound)
RADIOGRAPH_ENTROPY = 5.0  # bits: a radiograph's grey-level entropy (synthetic)
INVERT_DIM = F + 3  # the texture statistic an inverted grey scale moves (synthetic)
#: A MILD shift whose films the committed gate may still refuse: 2-3 % of films with noise of 3 grey levels stay below
#: RADIOGRAPH_ABOVE (docs/shift.md, "A radiograph-or-not model"); one of the four test films here is among them.
MAY_BE_REFUSED = ("noise sigma 3",)
#: The share of films under a MILD shift whose laterality answer differs from the film's as given, at most (measured 14 %).
LATERALITY_CHANGED = 0.2


def _features(rng, n, shift=0.0, scale=1.0, texture_shift=0.0):
    """Radiograph-like gate features share a common direction at each level (dimensions 1 and F + 1); `shift`
    pulls the pooled part towards dimension 0, `texture_shift` the texture part towards dimension F."""
    base = rng.standard_normal((n, W)) * scale
    base[:, -1] = RADIOGRAPH_ENTROPY
    base[:, -2] = 0.0015  # a clean film's grain
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
    turned = {k: upright + TURN_SHIFT * np.eye(W)[k] for k in (1, 2, 3)}
    mirrored = upright + TURN_SHIFT * np.eye(W)[5]
    inverted = upright + TURN_SHIFT * np.eye(W)[INVERT_DIM]
    return fit_gate(train, val, turned, mirrored, upright, inverted, n_pooled=F, refuse_rate=0.01, k=5)


def test_in_distribution_passes_and_far_points_are_refused(gate):
    rng = np.random.default_rng(1)
    inside = gate.verdicts(_features(rng, 400))
    assert np.mean([v.refused for v in inside]) < 0.05 and np.mean([v.unusual for v in inside]) < 0.05
    outside = gate.verdicts(_features(rng, 50, shift=25.0))
    assert all(v.refused and not v.unusual for v in outside)
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
        fit_gate(train, train, {k: train for k in (1, 2, 3)}, train, train, train, n_pooled=F + T)


def test_the_limit_is_the_validation_quantile(gate):
    rng = np.random.default_rng(0)
    _features(rng, 600)
    val = _features(rng, 300)
    assert np.mean(gate.score(val) > gate.usual_limit) == pytest.approx(0.01, abs=0.005)
    for level in ("pooled", "texture"):  # each level refuses half the rate
        assert np.mean(gate.distances(val)[level] > gate.limits[level]) == pytest.approx(0.005, abs=0.004)


def test_turns_inversion_and_mirroring_are_detected(gate):
    rng = np.random.default_rng(2)
    upright = _features(rng, 50)
    for k in (1, 2, 3):
        verdicts = gate.verdicts(upright + TURN_SHIFT * np.eye(W)[k])
        assert all(v.turn == (4 - k) % 4 for v in verdicts), k  # the turn that brings it back
    assert all(v.inverted for v in gate.verdicts(upright + TURN_SHIFT * np.eye(W)[INVERT_DIM]))
    mirrored = upright + TURN_SHIFT * np.eye(W)[5]
    assert np.all(gate.mirror_probability(mirrored, upright) > 0.99)  # a mirrored film, its mirror image upright
    np.testing.assert_allclose(gate.mirror_probability(upright, mirrored), 1 - gate.mirror_probability(mirrored, upright))
    plain = gate.verdicts(upright)
    assert not any(v.turn or v.inverted for v in plain)
    assert set(QUARTER_TURNS) == {0, 1, 2, 3}


def test_a_film_surely_turned_but_not_surely_which_way_is_flagged(gate):
    """P(not upright) summed over the turns decides the flag; no single turn is sure enough to apply."""
    rng = np.random.default_rng(6)
    between = _features(rng, 50) + TURN_SHIFT * (np.eye(W)[1] + np.eye(W)[3])
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
    decision = gate.decide_turn(GateVerdict(0.5, 1.0), _never_turned)
    assert not decision.refused and decision.turn == 0 and decision.warnings == ()
    refused = gate.decide_turn(GateVerdict(3.0, 1.0), _never_turned)  # no turn suggested: refused, nothing tried
    assert refused.refused and refused.turn == 0


def test_decide_scores_a_refused_film_turned_when_the_suggested_turn_passes(gate):
    rng, asked = np.random.default_rng(7), []
    as_given = GateVerdict(3.0, 1.0, turn=1, turn_probability=0.7, rotated_probability=0.95)
    decision = gate.decide_turn(as_given, _turned_to(_features(rng, 1), asked))
    assert asked == [1] and decision.turn == 1 and not decision.refused
    assert decision.as_given is as_given and decision.as_given.refused
    assert decision.warnings[0] == as_given.turned_note()


def test_decide_refuses_when_the_suggested_turn_fails_too(gate):
    rng, asked = np.random.default_rng(8), []
    as_given = GateVerdict(3.0, 1.0, turn=3, turn_probability=0.7, rotated_probability=0.95)
    decision = gate.decide_turn(as_given, _turned_to(_features(rng, 1, shift=25.0), asked))
    assert asked == [3] and decision.refused and decision.turn == 0 and decision.verdict is as_given
    assert decision.turn_flagged  # the warning that goes with the refusal: check the orientation


def test_decide_applies_a_sure_turn_even_when_the_turned_film_is_refused(gate):
    rng = np.random.default_rng(9)
    sure = GateVerdict(0.5, 1.0, turn=2, turn_probability=TURN_ABOVE, rotated_probability=TURN_ABOVE)
    passing = gate.decide_turn(sure, _turned_to(_features(rng, 1), []))
    assert passing.turn == 2 and not passing.refused and "turned by 180 degrees" in passing.warnings[0]
    failing = gate.decide_turn(sure, _turned_to(_features(rng, 1, shift=25.0), []))
    assert failing.turn == 2 and failing.refused


def _corrected_to(given: np.ndarray, asked: list[Correction], mirror_shift: int = 5, invert_shift: int = INVERT_DIM):
    """features_of for a synthetic image whose inversion and mirroring move its features along known directions."""
    def features_of(c: Correction) -> np.ndarray:
        asked.append(c)
        return given + TURN_SHIFT * (c.mirror * np.eye(W)[mirror_shift] - c.invert * np.eye(W)[invert_shift])
    return features_of


def test_decide_reads_a_clean_film_as_given_after_one_look_at_its_mirror_image(gate):
    rng, asked = np.random.default_rng(11), []
    decision = gate.decide(_features(rng, 1), _corrected_to(_features(rng, 1) * 0, asked))
    assert asked == [Correction(mirror=True)] and decision.correction == NO_CORRECTION and not decision.correction
    assert decision.warnings == () and decision.mirror_probability < 0.01 and not decision.refused


def test_decide_mirrors_a_right_hand_and_inverts_an_inverted_film_back(gate):
    rng = np.random.default_rng(12)
    left = _features(rng, 1)
    right, asked = left + 0.2 * TURN_SHIFT * np.eye(W)[5], []  # near enough not to be refused
    decision = gate.decide(right, lambda c: asked.append(c) or (left if c.mirror else right))
    assert decision.correction == Correction(mirror=True) and asked == [Correction(mirror=True)]
    assert decision.mirror_probability >= MIRROR_ABOVE and "read as a right hand" in decision.warnings[0]
    inverted, asked = left + TURN_SHIFT * np.eye(W)[INVERT_DIM], []
    decision = gate.decide(inverted, _corrected_to(inverted, asked))
    assert decision.correction == Correction(invert=True) and asked == [Correction(invert=True),
                                                                        Correction(invert=True, mirror=True)]
    assert decision.as_given.inverted and not decision.verdict.inverted
    assert "grey scale was inverted" in decision.warnings[0] and len(decision.warnings) == 1


def test_a_film_that_passes_unmirrored_is_not_refused_on_its_mirror_image(gate, monkeypatch):
    """Mirroring decides laterality, not whether the image is a radiograph: two noisy test films vouched for as given
    were refused once mirrored, on their mirror images' P(radiograph) (0.67 and 0.86; docs/shift.md)."""
    rng = np.random.default_rng(12)
    left = _features(rng, 1)
    right = left + 0.2 * TURN_SHIFT * np.eye(W)[5]
    real = gate.verdicts

    def verdicts(features: np.ndarray) -> list[GateVerdict]:  # the mirror image (left) reads as not a radiograph
        return [dataclasses.replace(v, score=10 * v.limit, radiograph_probability=0.5) for v in real(features)] \
            if features is left else real(features)

    monkeypatch.setattr(gate, "verdicts", verdicts)
    assert verdicts(left)[0].refused and not verdicts(right)[0].refused
    decision = gate.decide(right, lambda c: left if c.mirror else right)
    assert decision.correction == Correction(mirror=True) and not decision.refused
    assert decision.verdict.score == real(right)[0].score and "read as a right hand" in decision.warnings[0]


def test_an_inversion_is_applied_only_when_the_image_inverted_back_confirms_it(gate):
    """A film that reads as inverted but whose inverted-back image reads as inverted too (P above INVERT_CONFIRM_BELOW)
    is scored as given with a warning, not inverted: a false inversion was read ~25 months off."""
    rng = np.random.default_rng(14)
    left = _features(rng, 1)
    looks_inverted = left + 0.7 * TURN_SHIFT * np.eye(W)[INVERT_DIM]  # P(inverted) ~0.6, unusual, not refused
    asked: list[Correction] = []
    decision = gate.decide(looks_inverted, lambda c: asked.append(c) or looks_inverted)  # inverted back: no change
    assert decision.as_given.inverted and not decision.correction.invert and not decision.refused
    assert asked[0] == Correction(invert=True) and Correction(invert=True, mirror=True) not in asked
    assert "may be inverted" in decision.warnings[0] and "read as given" in decision.warnings[0]
    unsure = left + 0.6 * TURN_SHIFT * np.eye(W)[INVERT_DIM]  # inverted back: P(inverted) above the check
    assert INVERT_CONFIRM_BELOW < gate.verdicts(unsure)[0].inverted_probability < INVERT_ABOVE
    assert not gate.decide(looks_inverted, lambda c: unsure if c.invert else looks_inverted).correction.invert
    confirmed = gate.decide(looks_inverted, _corrected_to(looks_inverted, []))
    assert confirmed.correction.invert and confirmed.as_given.confirms_inversion(confirmed.verdict)


def test_decide_does_not_test_the_laterality_of_a_refused_image(gate):
    rng = np.random.default_rng(13)
    decision = gate.decide(_features(rng, 1, shift=25.0), _never_turned)
    assert decision.refused and decision.mirror_probability is None


def test_an_unusual_image_is_scored_with_a_warning_between_the_limits(gate):
    between = GateVerdict(0.5 * (1.0 + gate.limit), gate.limit)
    assert between.unusual and not between.refused and "unusual image, check it" in between.unusual_note()
    assert GateVerdict(1.0, gate.limit).unusual is False and GateVerdict(gate.limit * 1.01, gate.limit).refused
    rng = np.random.default_rng(14)
    features = _features(rng, 200, shift=3.0)
    decisions = [gate.decide(f[None], lambda c, f=f: f[None] + TURN_SHIFT * c.mirror * np.eye(W)[5])
                 for f in features]
    unusual = [d for d in decisions if d.verdict.unusual]
    assert unusual and all(any("unusual image" in w for w in d.warnings) for d in unusual)
    assert not any("unusual image" in w for d in decisions if not d.verdict.unusual for w in d.warnings)


def test_a_flat_image_is_refused_whatever_its_score(gate):
    """Too few grey levels (a drawing, a phantom, a screenshot): refused even when its deep features lie among the
    hands (the Shepp-Logan phantom's scored 0.92), without trying any correction."""
    flat = _features(np.random.default_rng(16), 1)
    flat[:, -1] = MIN_GREY_ENTROPY - 0.3
    decision = gate.decide(flat, _never_turned)
    assert gate.score(flat)[0] <= 1.0 and decision.refused and decision.correction == NO_CORRECTION
    assert not decision.verdict.unusual and "too few grey levels" in decision.verdict.reason()
    flat[:, -1] = MIN_GREY_ENTROPY + 0.3
    assert not gate.decide(flat, lambda c: flat).refused


def test_an_image_refused_as_given_is_not_rescued_by_inverting_and_turning_it(gate):
    """A photograph refused as given passed the served gate once inverted back and then turned: one correction may
    rescue an image refused as given (a sideways film is scored turned), two may not."""
    rng = np.random.default_rng(15)
    inside = _features(rng, 1)
    far_turned = _features(rng, 1, shift=25.0) + TURN_SHIFT * np.eye(W)[1]
    given = far_turned + TURN_SHIFT * np.eye(W)[INVERT_DIM]
    one = gate.decide(far_turned, lambda c: inside if c.turn else far_turned)
    assert one.as_given.refused and not one.refused and one.turn  # turning alone rescues it
    asked: list[Correction] = []
    two = gate.decide(given, lambda c: asked.append(c) or (inside if c.turn else far_turned if c.invert else given))
    assert two.as_given.refused and two.as_given.inverted and any(c.invert and c.turn for c in asked)
    assert two.refused and two.correction == NO_CORRECTION and "does not look like" in two.verdict.reason()
    assert "only turned, and its grey scale reads as inverted;" in two.refusal_notes[0]
    asked = []  # its grey scale in doubt (inverted back it still reads inverted): a turn alone does not rescue it
    unsure = gate.decide(given, lambda c: asked.append(c) or (inside if c.turn else given))
    assert Correction(invert=True) in asked and not any(c.invert and c.turn for c in asked)
    assert unsure.refused and unsure.correction == NO_CORRECTION
    assert "inverted (not surely)" in unsure.refusal_notes[0]


def _clean_fit_args(rng: np.random.Generator) -> tuple:
    """fit_gate's positional arguments for 400 training films, 200 validation films and 150 of them turned, mirrored
    and inverted along the synthetic directions (TURN_SHIFT on dimensions 1-3, 5 and INVERT_DIM)."""
    train, val = _features(rng, 400), _features(rng, 200)
    upright = train[:150]
    return (train, val, {k: upright + TURN_SHIFT * np.eye(W)[k] for k in (1, 2, 3)}, upright + TURN_SHIFT * np.eye(W)[5],
            upright, upright + TURN_SHIFT * np.eye(W)[INVERT_DIM])


def test_the_laterality_test_learns_from_shifted_pairs_too():
    """Mirroring a film under an acquisition shift moves its features another way (synthetic: dimension 6, not 5): fitted
    on clean pairs alone the test cannot tell such a pair's order; with the shifted pairs it can."""
    rng = np.random.default_rng(17)
    args = _clean_fit_args(rng)
    shifted = _features(rng, 150)
    clean_only = fit_gate(*args, n_pooled=F, k=5)
    both = fit_gate(*args, n_pooled=F, k=5, shifted=shifted, shifted_mirrored=shifted + TURN_SHIFT * np.eye(W)[6])
    films = _features(rng, 60)
    right_hands = films + TURN_SHIFT * np.eye(W)[6]  # their mirror images are the films
    assert np.mean(both.mirror_probability(right_hands, films) >= MIRROR_ABOVE) > 0.95
    assert np.mean(both.mirror_probability(films, right_hands) >= MIRROR_ABOVE) < 0.05
    assert np.abs(clean_only.mirror_probability(right_hands, films) - 0.5).max() < 0.1  # a coin toss
    with pytest.raises(ValueError, match="row for row"):
        fit_gate(*args, n_pooled=F, k=5, shifted_mirrored=shifted)


RADIO_DIM = 7  # the pooled feature that tells radiographs from other images (synthetic)


def _vouching_gate() -> tuple[InputGate, np.random.Generator]:
    """A gate with a radiograph-or-not model: radiographs (also with a foreign texture, like grainy films) lie along
    +RADIO_DIM, other images along -RADIO_DIM."""
    rng = np.random.default_rng(21)
    args = _clean_fit_args(rng)
    radiographs = np.concatenate([_features(rng, 150), _features(rng, 150, texture_shift=25.0)])
    radiographs[:, RADIO_DIM] += 16.0
    others = _features(rng, 300, texture_shift=25.0)
    others[:, RADIO_DIM] -= 16.0
    gate = fit_gate(*args, n_pooled=F, k=5, radiographs=radiographs, not_radiographs=others)
    return gate, rng


def test_the_radiograph_model_lets_a_sure_radiograph_through_a_texture_refusal():
    """A grainy film's texture lies as far from the training films as a photograph's: the OOD score refuses both, and
    the radiograph-or-not model, where it reads a radiograph, lets the film through as unusual (never the photograph)."""
    gate, rng = _vouching_gate()
    grainy = _features(rng, 40, texture_shift=25.0)
    grainy[:, RADIO_DIM] += 16.0
    grainy[:, -2] = GRAINY
    photo = _features(rng, 40, texture_shift=25.0)
    photo[:, RADIO_DIM] -= 16.0
    photo[:, -2] = GRAINY
    assert np.all(gate.score(grainy) > gate.limit) and np.all(gate.score(photo) > gate.limit)
    films = gate.verdicts(grainy)
    assert np.mean([v.vouched for v in films]) >= 0.75
    assert all(not v.refused and v.unusual and v.radiograph_probability >= RADIOGRAPH_ABOVE
               if v.vouched else v.refused for v in films)
    assert "radiograph model reads it as a" in next(v for v in films if v.vouched).unusual_note()
    assert not any(v.vouched or not v.refused for v in gate.verdicts(photo))
    assert "P(radiograph) 0.0" in gate.verdicts(photo)[0].reason()
    film = grainy[[next(i for i, v in enumerate(films) if v.vouched)]]
    decision = gate.decide(film, lambda c: film + TURN_SHIFT * c.mirror * np.eye(W)[5])
    assert not decision.refused and any("radiograph model reads it as a" in w for w in decision.warnings)
    smooth = grainy.copy()
    smooth[:, -2] = VOUCH_GRAIN - 1e-4  # read as a radiograph, but not grainy: the OOD score's refusal stands
    assert all(v.refused and not v.vouched for v in gate.verdicts(smooth))


def test_the_radiograph_model_does_not_overrule_a_flat_image_or_a_gate_without_it(gate):
    vouching, rng = _vouching_gate()
    flat = _features(rng, 1, texture_shift=25.0)
    flat[:, RADIO_DIM] += 16.0
    flat[:, -2] = GRAINY
    assert vouching.verdicts(flat)[0].vouched
    flat[:, -1] = MIN_GREY_ENTROPY - 0.3
    assert vouching.verdicts(flat)[0].refused and not vouching.verdicts(flat)[0].vouched
    far = _features(rng, 5, texture_shift=25.0)
    far[:, RADIO_DIM] += 16.0
    far[:, -2] = GRAINY
    assert gate.radio_w.size == 0 and np.all(np.isnan(gate.radiograph_probability(far)))
    assert all(v.refused for v in gate.verdicts(far))  # no model, no overruling
    probability = GateVerdict(2.0, 1.1, radiograph_probability=RADIOGRAPH_ABOVE - 1e-6, grain=GRAINY)
    assert probability.refused and not probability.vouched
    assert not GateVerdict(2.0, 1.1, radiograph_probability=RADIOGRAPH_ABOVE, grain=GRAINY).refused
    assert GateVerdict(2.0, 1.1, radiograph_probability=1.0, grain=VOUCH_GRAIN - 1e-6).refused


def test_the_radiograph_model_vouches_for_a_smooth_image_only_near_the_limit():
    """A blurred or strongly compressed film just past the limit is scored as unusual when the model reads it as a
    radiograph; a smooth image far past it stays refused whatever the model says."""
    near = GateVerdict(VOUCH_NEAR * 1.1 - 1e-6, 1.1, radiograph_probability=RADIOGRAPH_ABOVE, grain=0.0)
    assert near.vouched and not near.refused and near.unusual and "radiograph model reads it" in near.unusual_note()
    assert GateVerdict(VOUCH_NEAR * 1.1 + 1e-6, 1.1, radiograph_probability=1.0, grain=0.0).refused
    assert GateVerdict(1.2, 1.1, radiograph_probability=RADIOGRAPH_ABOVE - 1e-6, grain=0.0).refused
    flat = GateVerdict(1.2, 1.1, radiograph_probability=1.0, grain=0.0, grey_entropy=MIN_GREY_ENTROPY - 0.1)
    assert flat.refused and not flat.vouched


def test_what_the_radiograph_model_reads_as_clearly_not_a_radiograph_is_refused_whatever_its_score():
    """A photograph whose features the OOD score lets through (a turned or inverted one did) is refused when the model
    gives it P < RADIOGRAPH_BELOW; one along the radiographs' direction never is."""
    gate, rng = _vouching_gate()
    others = _features(rng, 30, texture_shift=25.0)
    others[:, RADIO_DIM] -= 60.0  # far along the direction of the model's not-radiographs
    assert all(v.clearly_not and v.refused and not v.unusual for v in gate.verdicts(others))
    within = GateVerdict(0.5, 1.1, radiograph_probability=0.001)  # the OOD score lets it through
    assert within.refused and "reads it as clearly not one" in within.reason()
    films = _features(rng, 30)
    films[:, RADIO_DIM] += 16.0
    assert not any(v.clearly_not for v in gate.verdicts(films))
    assert not GateVerdict(0.5, 1.1).refused  # no model (P is NaN): nothing refused for it
    assert GateVerdict(0.5, 1.1, radiograph_probability=RADIOGRAPH_BELOW / 2).refused


def test_a_refusal_says_what_the_radiograph_model_read():
    smooth = GateVerdict(2.0, 1.1, radiograph_probability=0.97, grain=VOUCH_GRAIN / 3)
    assert smooth.refused and "only for a grainy image or one near the limit (up to 1.43)" in smooth.reason()
    below = GateVerdict(2.0, 1.1, radiograph_probability=0.5, grain=0.01)
    assert below.refused and "P(radiograph) 0.500, below the 0.9" in below.reason()
    none = GateVerdict(2.0, 1.1, radiograph_probability=0.005, grain=0.01)
    assert "clearly not one: P(radiograph) 0.005" in none.reason()


def test_an_image_clearly_not_a_radiograph_as_given_is_refused_without_trying_a_correction():
    """A photograph that looks inverted is not inverted back and scored: no correction makes it a film."""
    gate, rng = _vouching_gate()
    photo = _features(rng, 1, texture_shift=25.0)
    photo[:, RADIO_DIM] -= 60.0
    photo += TURN_SHIFT * np.eye(W)[INVERT_DIM]  # looks inverted
    assert gate.verdicts(photo)[0].clearly_not and gate.verdicts(photo)[0].inverted
    decision = gate.decide(photo, _never_turned)
    assert decision.refused and decision.correction == NO_CORRECTION


def test_a_correction_rescues_an_image_refused_as_given_only_when_the_corrected_image_reads_as_a_radiograph():
    """A camera photograph given inverted passed the served gate once turned (P 0.13 there); rescued films got P >= 0.998."""
    gate, rng = _vouching_gate()
    inside = _features(rng, 1)
    given = _features(rng, 1, shift=25.0) + TURN_SHIFT * np.eye(W)[1]  # far, and turned
    turned_back = lambda c: inside if c.turn else given
    rescued = gate.decide(given, turned_back)
    assert rescued.as_given.refused and not rescued.refused and rescued.turn
    assert rescued.verdict.radiograph_probability >= RESCUE_ABOVE
    doubting = [dataclasses.replace(gate, radio_b=gate.radio_b + d) for d in np.linspace(-8, 0, 33)]  # the model's P moved down
    doubting = [g for g in doubting if RADIOGRAPH_BELOW < g.radiograph_probability(inside)[0] < RESCUE_ABOVE / 2
                and g.radiograph_probability(given)[0] > RADIOGRAPH_BELOW]
    assert doubting  # the synthetic model has a middle ground
    refused = doubting[len(doubting) // 2].decide(given, turned_back)
    assert refused.refused and refused.correction == NO_CORRECTION and refused.as_given.score > refused.as_given.limit
    note = refused.refusal_notes[0]
    assert "turned by" in note and "does not read the corrected image as a radiograph" in note and not refused.warnings


def test_the_radiograph_model_needs_both_classes_and_survives_the_file(tmp_path):
    vouching, rng = _vouching_gate()
    features = _features(rng, 6, texture_shift=25.0)
    vouching.save(tmp_path / GATE_FILE)
    loaded = InputGate.load(tmp_path / GATE_FILE)
    np.testing.assert_allclose(loaded.radiograph_probability(features), vouching.radiograph_probability(features))
    assert loaded.radio_w.shape == (RADIOGRAPH_FITS, W - 2) and loaded.radio_b.shape == (RADIOGRAPH_FITS,)
    train = _features(rng, 50)
    with pytest.raises(ValueError, match="both radiographs and not_radiographs"):
        fit_gate(train, train, {k: train for k in (1, 2, 3)}, train, train, train, n_pooled=F, k=5, radiographs=train)


def test_the_orientation_model_learns_from_shifted_films_turned_too():
    """Turning a grainy film moves its features another way (synthetic: dimensions 8-10, not 1-3): fitted on clean films
    alone the orientation model does not see the turn; with the shifted films turned it does."""
    rng = np.random.default_rng(18)
    args = _clean_fit_args(rng)
    shifted = _features(rng, 150)
    turned = {k: shifted + TURN_SHIFT * np.eye(W)[7 + k] for k in (1, 2, 3)}
    clean_only = fit_gate(*args, n_pooled=F, k=5, shifted=shifted)
    both = fit_gate(*args, n_pooled=F, k=5, shifted=shifted, shifted_turned=turned)
    grainy = _features(rng, 60)
    for k in (1, 2, 3):
        assert np.mean([v.turn == (4 - k) % 4 for v in both.verdicts(grainy + TURN_SHIFT * np.eye(W)[7 + k])]) > 0.9
        assert np.mean([v.turn == (4 - k) % 4 for v in clean_only.verdicts(grainy + TURN_SHIFT * np.eye(W)[7 + k])]) < 0.5
    assert not any(v.turn for v in both.verdicts(grainy))
    with pytest.raises(ValueError, match="shifted films it turns"):
        fit_gate(*args, n_pooled=F, k=5, shifted_turned=turned)


def test_correction_undoes_in_order_invert_turn_mirror():
    g = np.arange(12, dtype=np.float32).reshape(3, 4) / 11
    np.testing.assert_array_equal(Correction(invert=True, turn=1, mirror=True).apply(g), np.fliplr(np.rot90(1 - g)))
    np.testing.assert_array_equal(NO_CORRECTION.apply(g), g)


def test_save_load_round_trip_and_member_check(gate, tmp_path):
    gate.member, gate.member_sha256 = "multihead.pt", "ab" * 32
    gate.save(tmp_path / GATE_FILE)
    loaded = load_gate(tmp_path, "multihead.pt", "ab" * 32)
    features = np.random.default_rng(3).standard_normal((5, W))
    np.testing.assert_allclose(loaded.score(features), gate.score(features))
    assert loaded.limits == gate.limits and loaded.n_pooled == F and loaded.limit == gate.limit
    np.testing.assert_allclose(loaded.turn_probabilities(features), gate.turn_probabilities(features))
    np.testing.assert_allclose(loaded.inverted_probability(features), gate.inverted_probability(features))
    np.testing.assert_allclose(loaded.mirror_probability(features, features[::-1]),
                               gate.mirror_probability(features, features[::-1]))
    with pytest.raises(ArtifactError, match="fitted on multihead.pt"):
        load_gate(tmp_path, "multihead.pt", "cd" * 32)
    assert load_gate(tmp_path / "empty", "x.pt", "0") is None
    np.savez(tmp_path / GATE_FILE, reference=np.zeros((3, F)), limit=np.asarray(0.5))  # the pooled-only format
    with pytest.raises(ArtifactError, match="older format"):
        load_gate(tmp_path, "multihead.pt", "ab" * 32)
    gate.save(tmp_path / "current.npz")
    with np.load(tmp_path / "current.npz") as z:  # a file of version 1 had the same arrays but no format
        np.savez(tmp_path / GATE_FILE, **{k: z[k] for k in z.files if k != "format"})
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
    refused, negatives = [], negative_set(fullres_dir)
    for name, image in negatives.items():
        try:
            predictor.predict(image, male=True, name=name)
        except InputError:
            refused.append(name)
    assert sorted(set(negatives) - set(refused)) == []  # a photograph and the Shepp-Logan phantom once were scored


def test_decide_turns_a_film_it_is_sure_is_not_upright_by_the_turn_that_makes_it_upright(gate):
    """Sure the film is not upright (P = 1.00) but not of the turn: each turn is tried and the most upright one wins,
    instead of scoring an upside-down film as given with a contradictory "not sure enough to turn it"."""
    rng = np.random.default_rng(10)
    upright, sideways = _features(rng, 1), _features(rng, 1) + TURN_SHIFT * np.eye(W)[1]
    as_given = GateVerdict(0.5, 1.0, turn=1, turn_probability=0.6, rotated_probability=TURN_ABOVE)
    asked: list[int] = []

    def turned(k: int) -> np.ndarray:
        asked.append(k)
        return upright if k == 2 else sideways

    decision = gate.decide_turn(as_given, turned)
    assert sorted(asked) == [1, 2, 3] and decision.turn == 2 and not decision.refused
    assert "turned by 180 degrees" in decision.warnings[0] and "not sure" not in " ".join(decision.warnings)
    unsure = GateVerdict(0.5, 1.0, turn=1, turn_probability=0.6, rotated_probability=0.9)  # below TURN_ABOVE
    asked.clear()
    confirmed = gate.decide_turn(unsure, turned)  # one turn makes it surely upright: applied
    assert sorted(asked) == [1, 2, 3] and confirmed.turn == 2 and "turned by 180 degrees" in confirmed.warnings[0]
    assert gate.verdicts(upright)[0].rotated_probability <= TURN_CONFIRM_BELOW
    flagged = gate.decide_turn(unsure, lambda k: sideways)  # no turn makes it look upright: scored as given, flagged
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


@pytest.fixture(scope="module")
def test_films(committed_artifacts, data_299):
    """Four test-split films of the committed split (299 px WebP), as gray images."""
    import pandas as pd

    from boneage_core.data import attach_paths, find_dataset, read_labels, with_split
    from boneage_core.imaging import load_gray

    csv, image_dir = find_dataset(data_299)
    split = pd.read_csv(committed_artifacts / "split.csv", dtype={"id": str})
    films = with_split(attach_paths(read_labels(csv), image_dir), split)
    return [load_gray(p) for p in films[films["split"] == "test"]["path"].iloc[:4]]


def test_the_committed_gate_accepts_films_under_ordinary_acquisition_shifts(committed_predictor, test_films):
    """Every MILD shift is read (at most an "unusual image" warning), never refused or inverted, and rarely mirrored;
    a noisy film, whose texture the OOD score would refuse, is read with the radiograph model's warning or refused with
    its reason, never read silently; the same films inverted or mirrored are read corrected."""
    from boneage_core.acquisition import MILD, SHIFTS, as_upload

    mirrored, found = [], 0
    for i, gray in enumerate(test_films):
        clean = committed_predictor.decide(gray)
        # a test film may be a right hand: then it is mirrored as given and its shifted copies with it
        assert not clean.refused and not clean.correction.invert and not clean.turn, (i, clean.warnings)
        for name in MILD:
            decision = committed_predictor.decide(as_upload(SHIFTS[name](gray)))
            if name in MAY_BE_REFUSED and decision.refused:  # below RADIOGRAPH_ABOVE, never read as clearly not a film
                assert not decision.verdict.clearly_not and "P(radiograph)" in decision.verdict.reason(), (i, name)
                continue
            assert not decision.refused, (i, name, decision.verdict.score, decision.verdict.radiograph_probability)
            if decision.as_given.score > decision.as_given.limit:
                assert decision.verdict.unusual and any("unusual image" in w for w in decision.warnings), (i, name)
            assert not decision.correction.invert, (i, name, decision.warnings)
            mirrored += [(i, name)] * (decision.correction.mirror != clean.correction.mirror)
        assert committed_predictor.decide(1.0 - gray).correction.invert, i
        flipped = committed_predictor.decide(np.ascontiguousarray(gray[:, ::-1]))
        found += flipped.correction.mirror and not clean.correction.mirror
    # measured 9 of 64 (14 %): blur, down-sampling, JPEG q30 and contrast change the laterality answer; the test was
    # fitted on clean pairs only (issue 29: fit it on shifted pairs too). This bound keeps it from getting worse.
    assert len(mirrored) <= LATERALITY_CHANGED * len(test_films) * len(MILD), mirrored
    # the film read as a left hand and its mirror image as a right hand: at least 2 of the 4 (a dead laterality model,
    # p = 0.5 for every film, finds none; a film between 0.35 and 0.65 is mirrored neither way, and a test film may be
    # a right hand as filmed). The rate on 300 test films is bench_gate_shift's (docs/shift.md).
    assert found >= 2, found


def test_a_film_the_radiograph_model_doubts_is_scored_with_a_warning():
    """Within the OOD limit, P(radiograph) between RADIOGRAPH_BELOW and DOUBT_BELOW: scored as unusual, with its own
    note; from DOUBT_BELOW, or with no radiograph model (P NaN), as usual; below RADIOGRAPH_BELOW, refused."""
    doubted = GateVerdict(0.5, 1.1, radiograph_probability=DOUBT_BELOW - 1e-6)
    assert doubted.doubtful and doubted.unusual and not doubted.refused
    assert "radiograph model is not sure" in doubted.unusual_note() and f"{DOUBT_BELOW - 1e-6:.2f}" in doubted.unusual_note()
    for usual in (GateVerdict(0.5, 1.1, radiograph_probability=DOUBT_BELOW), GateVerdict(0.5, 1.1)):
        assert not usual.doubtful and not usual.unusual and not usual.refused
    clearly_not = GateVerdict(0.5, 1.1, radiograph_probability=RADIOGRAPH_BELOW - 1e-6)
    assert not clearly_not.doubtful and clearly_not.refused and not clearly_not.unusual
    past = GateVerdict(1.05, 1.1, radiograph_probability=0.5)  # past the usual limit too: both reasons in one note
    assert past.unusual and "farther from the training radiographs" in past.unusual_note()
    assert "radiograph model is not sure it is a hand radiograph either (P(radiograph) 0.50" in past.unusual_note()
    assert "radiograph model" not in GateVerdict(1.05, 1.1, radiograph_probability=0.95).unusual_note()


@pytest.mark.slow
def test_the_framed_low_contrast_films_read_far_off_are_now_flagged(committed_predictor, data_299):
    """Two test films, small and low-contrast in wide black frames, were read 27 and 64 months too old with no warning;
    the radiograph model doubts them (P 0.22 and 0.70): they carry the unusual-image warning. An ordinary film does not."""
    folder = data_299 / "boneage-training-dataset"
    for film in ("3395", "3820"):
        pred = committed_predictor.predict(folder / f"{film}.webp", male=film == "3820")
        assert pred.gate.doubtful and any("radiograph model is not sure" in w for w in pred.warnings), film
    ordinary = committed_predictor.predict(folder / "1377.webp", male=True)
    assert not ordinary.gate.unusual and not any("unusual image" in w for w in ordinary.warnings)
