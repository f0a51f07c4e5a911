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
        """Human-readable bone-age range of a stage, saying which side owns a cut-off: '36 to under 108 months'."""
        cuts = self.male_cutoffs if male else self.female_cutoffs
        if stage == 0:
            return f"under {cuts[0]:g} months"
        if stage == len(cuts):
            return f"{cuts[-1]:g} months and over"
        return f"{cuts[stage - 1]:g} to under {cuts[stage]:g} months"

    def disagreement(self, head_stage: int, age_months: float, male: bool) -> str | None:
        """The warning when the stage head's stage is not the stage of the predicted bone age, else None.

        The age is written to one decimal: at a cut-off a rounded age (156) could seem to contradict the stage
        its exact value (155.6) falls in.
        """
        from_age = int(self.stage_of(age_months, male))
        if from_age == head_stage:
            return None
        return (f"the stage head says {self.names[head_stage]} ({self.range_text(head_stage, male)}), but the "
                f"predicted bone age, {age_months:.1f} months, falls in {self.names[from_age]} "
                f"({self.range_text(from_age, male)}): treat the stage with caution")


DEFAULT_SCHEME = StageScheme()
