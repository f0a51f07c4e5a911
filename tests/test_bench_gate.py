"""benchmarks.bench_gate: what was done to a transformed copy of a full-size sample."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from benchmarks.bench_gate import VARIANTS, what_was_done


def _pred(turn: int = 0, mirrored: bool = False, flagged: bool = False) -> SimpleNamespace:
    return SimpleNamespace(turn=turn, mirrored=mirrored, gate=SimpleNamespace(turn_flagged=flagged))


@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_names_the_correction_that_undoes_it(name):
    make, (turn, mirrored) = VARIANTS[name]
    image = np.arange(12.0).reshape(3, 4)
    undone = np.rot90(make(image), turn)
    assert np.array_equal(undone[:, ::-1] if mirrored else undone, image)


def test_outcomes():
    assert what_was_done("not a radiograph", (3, False)) == "refused"
    assert what_was_done(_pred(turn=3), (3, False)) == "undone"
    assert what_was_done(_pred(turn=1), (3, False)) == "corrected otherwise"
    assert what_was_done(_pred(flagged=True), (3, False)) == "flagged"
    assert what_was_done(_pred(), (3, False)) == "read as given"
    assert what_was_done(_pred(mirrored=True), (0, True)) == "undone"
    assert what_was_done(_pred(), (0, False)) == "read as given"  # an upright film as filmed is never "undone"
    assert what_was_done(_pred(turn=2), (0, False)) == "corrected otherwise"
