"""Five sex-specific developmental stages of bone age (Gilsanz & Ratib, infancy and toddler merged)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StageScheme:
    """Stage names and the lower bound (months of bone age) of stages 1..n-1 for each sex."""

    names: tuple[str, ...] = (
        "Infancy/toddler",
        "Pre-puberty",
        "Early/mid puberty",
        "Late puberty",
        "Post-puberty",
    )
    female_cutoffs: tuple[float, ...] = (24.0, 84.0, 156.0, 180.0)
    male_cutoffs: tuple[float, ...] = (36.0, 108.0, 168.0, 192.0)

    @property
    def n_classes(self) -> int:
        return len(self.names)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "StageScheme":
        return cls(
            names=tuple(data["names"]),
            female_cutoffs=tuple(float(x) for x in data["female_cutoffs"]),
            male_cutoffs=tuple(float(x) for x in data["male_cutoffs"]),
        )

    def stage_of(self, age_months, male) -> np.ndarray:
        """Stage index for each (bone age in months, male) pair; works on scalars and arrays."""
        age = np.asarray(age_months, dtype=np.float64)
        is_male = np.asarray(male, dtype=bool)
        female_stage = np.searchsorted(np.asarray(self.female_cutoffs), age, side="right")
        male_stage = np.searchsorted(np.asarray(self.male_cutoffs), age, side="right")
        return np.where(is_male, male_stage, female_stage).astype(np.int64)

    def range_text(self, stage: int, male: bool) -> str:
        """Human-readable bone-age range of a stage, e.g. '36-108 months'."""
        cuts = self.male_cutoffs if male else self.female_cutoffs
        if stage == 0:
            return f"< {cuts[0]:g} months"
        if stage == len(cuts):
            return f">= {cuts[-1]:g} months"
        return f"{cuts[stage - 1]:g}-{cuts[stage]:g} months"


DEFAULT_SCHEME = StageScheme()
