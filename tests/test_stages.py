"""stages: the sex-specific cut-off table, exactly at its boundaries, and the class counts on the real labels."""

from __future__ import annotations

import numpy as np
import pytest

from boneage_core.data import read_labels
from boneage_core.stages import DEFAULT_SCHEME, StageScheme

FEMALE = [(0, 0), (23.999, 0), (24, 1), (83.999, 1), (84, 2), (155.999, 2), (156, 3), (179.999, 3), (180, 4),
          (240, 4)]
MALE = [(0, 0), (35.999, 0), (36, 1), (107.999, 1), (108, 2), (167.999, 2), (168, 3), (191.999, 3), (192, 4),
        (240, 4)]


@pytest.mark.parametrize("age,stage", FEMALE)
def test_female_cutoffs(age, stage):
    assert int(DEFAULT_SCHEME.stage_of(age, False)) == stage


@pytest.mark.parametrize("age,stage", MALE)
def test_male_cutoffs(age, stage):
    assert int(DEFAULT_SCHEME.stage_of(age, True)) == stage


def test_vectorised_mixed_sexes():
    ages = np.array([30.0, 30.0, 100.0, 100.0, 170.0, 170.0, 190.0, 190.0])
    male = np.array([False, True] * 4)
    assert DEFAULT_SCHEME.stage_of(ages, male).tolist() == [1, 0, 2, 1, 3, 3, 4, 3]
    assert DEFAULT_SCHEME.stage_of(ages, male).dtype == np.int64


def test_scheme_shape_and_round_trip():
    assert DEFAULT_SCHEME.n_classes == 5
    assert len(DEFAULT_SCHEME.female_cutoffs) == len(DEFAULT_SCHEME.male_cutoffs) == DEFAULT_SCHEME.n_classes - 1
    assert list(DEFAULT_SCHEME.female_cutoffs) == sorted(DEFAULT_SCHEME.female_cutoffs)
    assert list(DEFAULT_SCHEME.male_cutoffs) == sorted(DEFAULT_SCHEME.male_cutoffs)
    assert StageScheme.from_dict(DEFAULT_SCHEME.to_dict()) == DEFAULT_SCHEME
    import json

    assert StageScheme.from_dict(json.loads(json.dumps(DEFAULT_SCHEME.to_dict()))) == DEFAULT_SCHEME


def test_range_text():
    assert DEFAULT_SCHEME.range_text(0, True) == "under 36 months"
    assert DEFAULT_SCHEME.range_text(1, True) == "36 to under 108 months"
    assert DEFAULT_SCHEME.range_text(2, False) == "84 to under 156 months"
    assert DEFAULT_SCHEME.range_text(4, False) == "180 months and over"
    assert DEFAULT_SCHEME.stage_of(155.6, False) == 2 and DEFAULT_SCHEME.stage_of(156.0, False) == 3


def test_class_counts_on_real_training_labels(data_299):
    labels = read_labels(data_299 / "boneage-training-dataset.csv")
    stages = DEFAULT_SCHEME.stage_of(labels["boneage"].to_numpy(), labels["male"].to_numpy())
    assert np.bincount(stages, minlength=5).tolist() == [173, 2476, 7231, 1996, 735]


def test_the_stage_disagreement_names_the_exact_age_and_who_owns_the_cut_off():
    """At a cut-off the shown age (156, rounded) and the stage of the exact age (155.6) could seem to contradict each
    other: the warning writes the exact age and ranges that say which side owns the cut-off."""
    text = DEFAULT_SCHEME.disagreement(3, 155.6, False)
    assert "155.6 months" in text and "84 to under 156 months" in text and "156 to under 180 months" in text
    assert DEFAULT_SCHEME.disagreement(3, 156.0, False) is None
